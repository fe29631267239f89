"""``scorestream eval retrieval``: the paper's snippet-retrieval protocol, serving stack only.

Protocol (Dorfer et al. 2018): test pieces, the timbre never used in training,
tempo 1.0 without rubato; from all aligned (audio excerpt, sheet snippet)
pairs of that condition, ``C`` candidates are chosen evenly (linspace) over
the pool.  Each audio excerpt queries the ``C`` sheet snippets (A2S) and each
snippet the ``C`` excerpts (S2A).  Reported: R@1, R@5, R@25 (percent), MRR,
median rank.  Embeddings come from the shipped ONNX files via onnxruntime —
the same code path the server uses — not from torch.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from scorestream.core.errors import InputError
from scorestream.core.geometry import audio_windows, ink, sheet_snippets
from scorestream.core.pack import P_PIECE, P_SPLIT, P_TEMPO, P_TIMBRE, read_pack
from scorestream.core.splits import PAPER_TEMPO_MILLI, is_paper_test_take, split_code

from .embedder import WEIGHTS, EnsembleEmbedder, load_embedder
from .metrics import PUBLISHED, both_directions, error_breakdown

log = logging.getLogger(__name__)


def shipped_models(weights: Path = WEIGHTS) -> list[str]:
    return sorted(p.name[: -len("_audio.onnx")] for p in weights.glob("*_audio.onnx") if (weights / p.name.replace("_audio", "_sheet")).is_file())


def default_models(weights: Path = WEIGHTS) -> list[str]:
    """Every shipped model, plus the ensemble of all of them when there are several."""
    names = shipped_models(weights)
    return names + (["+".join(names)] if len(names) > 1 else [])


def _evenly(n: int, c: int) -> np.ndarray:
    if n <= c:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, c)).astype(np.int64))


def corpus_protocol(corpus_dir: str | Path, split: str, candidates: int, timbre: str | None = None) -> tuple[list, dict]:
    """Selected pairs per piece: [(piece, perf, frames, strip_x)], plus protocol facts.

    ``timbre=None`` is the paper's condition (held-out timbre, tempo 1.0, no
    rubato).  A timbre name, or ``"any"``, takes each piece's first performance
    in that timbre at whatever tempo: the validation split has only training
    timbres, and model selection must not look at the test split.
    """
    from .corpus.reader import Corpus

    corpus = Corpus(corpus_dir)
    info = json.loads((Path(corpus_dir) / "corpus.json").read_text())
    want = info["timbres"]["test"] if timbre is None else timbre
    pool = []  # (piece, perf, frame, x)
    for pid in corpus.piece_ids(split):
        piece = corpus.piece(pid)
        for j, perf in enumerate(piece.meta["performances"]):
            st = perf["style"]
            if timbre is None:
                ok = is_paper_test_take(st, want)
            else:
                ok = want == "any" or st["timbre"] == want
            if ok:
                pr = piece.pairs(j, 0)
                pool.extend((pid, j, int(f), float(x)) for f, x in zip(pr.frame, pr.strip_x))
                break
    if not pool:
        cond = f"the held-out timbre {want!r} at tempo 1.0" if timbre is None else f"timbre {want!r}"
        raise InputError(f"{corpus_dir}: no {split} pairs with {cond} (try --timbre any for the validation split)")
    sel = _evenly(len(pool), candidates)
    chosen = [pool[i] for i in sel]
    groups: dict[tuple[str, int], list[tuple[int, float]]] = {}
    for pid, j, f, x in chosen:
        groups.setdefault((pid, j), []).append((f, x))
    facts = {"source": str(corpus_dir), "split": split, "timbre": want, "tempo": 1.0 if timbre is None else "any",
             "pool": len(pool), "candidates": len(chosen),
             "pieces": len({c[0] for c in chosen})}
    return [(corpus.piece(pid), j, np.array([g[0] for g in v]), np.array([g[1] for g in v])) for (pid, j), v in groups.items()], facts


def selection_groups(selection: list) -> np.ndarray:
    """Piece number of every selected pair, in embedding order."""
    return np.concatenate([np.full(len(frames), k) for k, (_, _, frames, _) in enumerate(selection)])


def embed_corpus_selection(selection: list, embedder, label: str = "") -> tuple[np.ndarray, np.ndarray]:
    a_out, s_out = [], []
    step = max(1, len(selection) // 10)
    for k, (piece, j, frames, xs) in enumerate(selection):
        if label and (k % step == 0 or k == len(selection) - 1):
            log.info("%s: piece %d/%d", label, k + 1, len(selection))
        spec, _ = piece.performance(j)
        a_out.append(embedder.embed_audio(audio_windows(spec, frames, embedder.audio_frames)))
        s_out.append(embedder.embed_sheet(sheet_snippets(ink(piece.strip(0).image), xs)))
    return np.concatenate(a_out), np.concatenate(s_out)


def pack_protocol(pack_path: str | Path, split: str, candidates: int, embedder) -> tuple[np.ndarray, np.ndarray, dict]:
    """Same protocol on a training pack, either format (numpy decode, no torch); facts["groups"] holds piece ids."""
    pk = read_pack(pack_path)
    meta, perfs, pairs = pk.meta, pk.perfs, pk.pairs
    code = split_code(split)
    pr = perfs[pairs[:, 0]]
    mask = (pr[:, P_SPLIT] == code) & (pr[:, P_TIMBRE] == meta["test_timbre"]) & (pr[:, P_TEMPO] == PAPER_TEMPO_MILLI)
    pool = np.flatnonzero(mask)
    if not len(pool):
        raise InputError(f"{pack_path}: no {split} pairs in the test condition (held-out timbre, tempo 1.0)")
    sel = pool[_evenly(len(pool), candidates)]
    ink_all = pk.ink()
    a_list, s_list = [], []
    for i in sel:
        perf, frame, x, _ = pairs[i]
        s0, sl, x0, xl = perfs[perf][:4]
        a_list.append(audio_windows(pk.perf_spec(perf), [frame - s0], embedder.audio_frames)[0])
        s_list.append(sheet_snippets(ink_all[:, x0: x0 + xl], [x - x0])[0])
    a = np.concatenate([embedder.embed_audio(np.stack(a_list[k: k + 1024])) for k in range(0, len(a_list), 1024)])
    s = np.concatenate([embedder.embed_sheet(np.stack(s_list[k: k + 1024])) for k in range(0, len(s_list), 1024)])
    return a, s, {"source": str(pack_path), "split": split, "timbre": meta["timbres"][meta["test_timbre"]], "tempo": 1.0,
                  "pool": int(len(pool)), "candidates": int(len(sel)), "pieces": int(len(np.unique(pr[sel, P_PIECE]))),
                  "groups": pr[sel, P_PIECE]}


def markdown(results: dict) -> str:
    p = results["protocol"]
    lines = [f"Retrieval, {p['candidates']:,} candidates from {p['pool']:,} {p['split']} pairs "
             f"(timbre {p['timbre']}, tempo {p['tempo']}), {p['source']}", "",
             "| model | direction | R@1 % | R@5 % | R@25 % | MRR | median rank |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, r in results["models"].items():
        for d in ("A2S", "S2A"):
            m = r[d]
            lines.append(f"| {name} | {d} | {m['R@1']:.1f} | {m['R@5']:.1f} | {m['R@25']:.1f} | {m['MRR']:.3f} | {m['MR']:g} |")
    for name, m in PUBLISHED.items():
        lines.append(f"| {name} (published, MSMD synthetic) | A2S | {m['R@1']:.1f} | – | – | {m['MRR']:.2f} | – |")
    if any("errors" in r for r in results["models"].values()):
        lines += ["", "Where the errors are (R@1 % searching only the query's own piece / leaving its own piece's "
                  "other candidates out; % of queries whose top hit is wrong and in the same / another piece):", "",
                  "| model | direction | R@1 within piece | R@1 across pieces | wrong, same piece | wrong, other piece |",
                  "|---|---|---:|---:|---:|---:|"]
        for name, r in results["models"].items():
            for d in ("A2S", "S2A"):
                e = r.get("errors", {}).get(d)
                if e:
                    lines.append(f"| {name} | {d} | {e['R@1_within_piece']:.1f} | {e['R@1_across_pieces']:.1f} | "
                                 f"{e['top1_wrong_same_piece']:.1f} | {e['top1_wrong_other_piece']:.1f} |")
    return "\n".join(lines)


def evaluate(models: list[str], corpus: str | None = None, pack: str | None = None, split: str = "test", candidates: int = 10000,
             timbre: str | None = None) -> dict:
    if not models:
        raise FileNotFoundError(f"no shipped model in {WEIGHTS} (expected NAME_audio.onnx + NAME_sheet.onnx)")
    if not corpus and not pack:
        raise InputError("give --corpus DIR or --pack FILE")
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 2:
        raise InputError(f"--candidates must be an integer of at least 2, got {candidates!r}")
    results: dict = {"models": {}}
    selection = None
    cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}   # member name -> (audio, sheet) embeddings

    def embed(e) -> tuple[np.ndarray, np.ndarray]:
        nonlocal selection, groups
        if e.name in cache:
            return cache[e.name]
        if corpus:
            if selection is None:
                selection, facts = corpus_protocol(corpus, split, candidates, timbre)
                results["protocol"] = facts
                groups = selection_groups(selection)
            out = embed_corpus_selection(selection, e, label=f"embedding {e.name}")
        else:
            *out, facts = pack_protocol(pack, split, candidates, e)
            groups = facts.pop("groups")
            results["protocol"] = facts
        cache[e.name] = tuple(out)
        return cache[e.name]

    groups = None
    for name in models:
        emb = load_embedder(name)
        if isinstance(emb, EnsembleEmbedder):
            # each member sees exactly its own windows inside the ensemble (models.embedder),
            # so members already embedded are reused instead of run again
            parts = [embed(m) for m in emb.members]
            a, s = emb.combine([p[0] for p in parts]), emb.combine([p[1] for p in parts])
        else:
            a, s = embed(emb)
        results["models"][emb.name] = {
            **both_directions(a, s), "audio_frames": emb.audio_frames,
            "errors": {"A2S": error_breakdown(a, s, groups), "S2A": error_breakdown(s, a, groups)}}
    return results
