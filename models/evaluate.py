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
from scorestream.core.geometry import ink, sheet_snippets
from scorestream.core.pack import P_PIECE, P_SPLIT, P_TEMPO, P_TIMBRE, read_pack
from scorestream.core.splits import PAPER_TEMPO_MILLI, is_paper_test_take, split_code

from .embedder import WEIGHTS, EnsembleEmbedder, audio_windows_at, embed_sheet_at, load_embedder
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


def corpus_protocol(corpus_dir: str | Path, split: str, candidates: int, timbre: str | None = None,
                    piece_filter=None) -> tuple[list, dict]:
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
        if piece_filter is not None and not piece_filter(pid):
            continue
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
        a_out.append(embedder.embed_audio(audio_windows_at(embedder, spec, frames)))
        s_out.append(embed_sheet_at(embedder, ink(piece.strip(0).image), xs))
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
        a_list.append(audio_windows_at(embedder, pk.perf_spec(perf), [frame - s0])[0])
        off = embedder.sheet_offset_px
        s_list.append(sheet_snippets(ink_all[:, x0: x0 + xl], [x - x0 + off])[0] if off is not None
                      else embed_sheet_at(embedder, ink_all[:, x0: x0 + xl], [x - x0])[0])
    a = np.concatenate([embedder.embed_audio(np.stack(a_list[k: k + 1024])) for k in range(0, len(a_list), 1024)])
    if embedder.sheet_offset_px is not None:     # crops: embed in batches
        s = np.concatenate([embedder.embed_sheet(np.stack(s_list[k: k + 1024])) for k in range(0, len(s_list), 1024)])
    else:                                        # mixed members: already embedded one by one
        s = np.stack(s_list)
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


# --------------------------------------------------------------------------- realistic conditions

def condition_protocol(name: str, candidates: int = 10000, corpus: str | Path | None = None,
                       root: str | Path | None = None) -> tuple[list[dict], dict]:
    """Retrieval pools of a named condition (``models.conditions.registry``).

    Returns ``(sets, facts)``; each set is ``{"name", "selection", "labels"}`` where
    ``selection`` has the form :func:`corpus_protocol` returns and ``labels`` one dict
    (piece, corpus, composer) per selected pair.  Within a set, ``candidates`` pairs are
    chosen evenly (linspace) over all its pairs, as in the paper's protocol; sets are
    evaluated separately and their ranks pooled."""
    from .conditions import registry
    from .conditions.realistic import piece_labels
    from .conditions.store import ConditionData

    try:
        cond = registry.get(name)
    except KeyError as exc:
        raise InputError(str(exc).strip("'\"")) from None
    if cond.kind == "corpus":
        if not corpus:
            raise InputError(f"condition {name!r} needs --corpus DIR (the built corpus with its test split)")
        selection, facts = corpus_protocol(corpus, "test", candidates, None, cond.piece_filter)
        labels = [{"piece": piece.id, **piece_labels(piece.id)} for piece, _, frames, _ in selection for _ in frames]
        facts.update(condition=name, description=cond.description, sets=1)
        return [{"name": "all", "selection": selection, "labels": labels}], facts
    folder = registry.folder_of(cond, root)
    try:
        data = ConditionData(folder)
    except FileNotFoundError:
        raise InputError(f"condition {name!r} is not built ({folder}); build it with "
                         f"'python -m scorestream.models.conditions build {cond.folder}'") from None
    sets, pool_total, chosen_total, pieces = [], 0, 0, set()
    for set_name, takes in sorted(data.sets().items()):
        pool = []
        for t in takes:
            if cond.piece_filter is not None and not cond.piece_filter(t.info.piece):
                continue
            pr = t.pairs()
            pool.extend((t, int(f), float(x)) for f, x in zip(pr["frame"], pr["strip_x"]))
        if not pool:
            continue
        sel = _evenly(len(pool), candidates)
        groups: dict[str, list] = {}
        order: list = []
        for i in sel:
            t, f, x = pool[i]
            if t.id not in groups:
                groups[t.id] = []
                order.append(t)
            groups[t.id].append((f, x))
        selection = [(t, 0, np.array([g[0] for g in groups[t.id]]), np.array([g[1] for g in groups[t.id]])) for t in order]
        labels = []
        for t, _, frames, _ in selection:
            lab = {"piece": t.info.piece, "corpus": t.info.labels.get("corpus", "?"), "composer": t.info.labels.get("composer", "?")}
            labels.extend([lab] * len(frames))
            pieces.add(t.info.piece)
        sets.append({"name": set_name, "selection": selection, "labels": labels})
        pool_total += len(pool)
        chosen_total += len(sel)
    if not sets:
        raise InputError(f"condition {name!r}: no pairs in {folder}")
    sizes = [sum(len(f) for _, _, f, _ in st["selection"]) for st in sets]
    facts = {"source": str(folder), "condition": name, "description": cond.description, "split": data.meta["settings"].get("split", "eval"),
             "timbre": data.meta["settings"].get("timbre", "?"), "tempo": "performed", "sets": len(sets),
             "pool": pool_total, "candidates": int(round(np.mean(sizes))), "candidates_per_set": [int(min(sizes)), int(max(sizes))],
             "pairs": chosen_total, "pieces": len(pieces), "selection_ok": cond.selection_ok}
    return sets, facts


def _ranks_with_extra(q: np.ndarray, c: np.ndarray, extra: np.ndarray | None, chunk: int = 2048) -> np.ndarray:
    """1-based rank of candidate i for query i among ``c`` plus the ``extra`` distractor candidates."""
    from .metrics import retrieval_ranks

    ranks = retrieval_ranks(q, c)
    if extra is not None and len(extra):
        for s0 in range(0, len(q), chunk):
            e0 = min(len(q), s0 + chunk)
            true = np.einsum("ij,ij->i", q[s0:e0], c[s0:e0])
            ranks[s0:e0] += ((q[s0:e0] @ extra.T) > true[:, None]).sum(axis=1)
    return ranks


def _breakdown(ranks: np.ndarray, labels: list[dict], key: str) -> dict:
    from .metrics import metrics_from_ranks

    out = {}
    vals = np.array([lab.get(key, "?") for lab in labels])
    for v in sorted(set(vals)):
        m = metrics_from_ranks(ranks[vals == v])
        out[str(v)] = {"R@1": m["R@1"], "MRR": m["MRR"], "n": m["n"]}
    return out


def evaluate_condition(models: list[str], condition: str, corpus: str | None = None, candidates: int = 10000,
                       root: str | Path | None = None, fill_candidates: int = 0, embedder_factory=None) -> dict:
    """Retrieval metrics of ``models`` on a named condition, pooled over its sets, with
    breakdowns by piece, corpus and composer.

    ``fill_candidates``: also rank every set's queries after topping its candidates up to
    this many with distractor pairs from the paper condition of the corpus test split
    (other pieces, both directions; ``entry["filled"]``), so that a small pool (Vienna:
    ~1,000 pairs per pianist) is searched among as many candidates as the paper's
    protocol.  ``A2S``/``S2A`` stay the own-pool numbers."""
    from .metrics import metrics_from_ranks

    if not models:
        raise FileNotFoundError(f"no shipped model in {WEIGHTS} (expected NAME_audio.onnx + NAME_sheet.onnx)")
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 2:
        raise InputError(f"--candidates must be an integer of at least 2, got {candidates!r}")
    sets, facts = condition_protocol(condition, candidates, corpus, root)
    distract_sel = None
    if fill_candidates:
        if not corpus:
            raise InputError("--fill-candidates needs --corpus DIR (distractors come from its test split)")
        need = max(0, fill_candidates - min(len(st["labels"]) for st in sets))
        if need:
            distract_sel, dfacts = corpus_protocol(corpus, "test", need)
            facts["distractors"] = {"from": dfacts["source"], "pool": dfacts["pool"], "max_used": dfacts["candidates"]}
            facts["candidates_filled_to"] = fill_candidates
    factory = embedder_factory or load_embedder
    cache: dict[str, list] = {}
    dcache: dict[str, tuple] = {}

    def embed(e):
        if e.name not in cache:
            cache[e.name] = [embed_corpus_selection(st["selection"], e, label=f"{condition} {st['name']} {e.name}" if k % 8 == 0 else "")
                             for k, st in enumerate(sets)]
            if distract_sel is not None:
                dcache[e.name] = embed_corpus_selection(distract_sel, e, label=f"distractors {e.name}")
        return cache[e.name], dcache.get(e.name)

    results: dict = {"protocol": facts, "models": {}}
    for name in models:
        emb = factory(name)
        if isinstance(emb, EnsembleEmbedder):
            parts = [embed(m) for m in emb.members]
            per_set = [(emb.combine([p[0][k][0] for p in parts]), emb.combine([p[0][k][1] for p in parts])) for k in range(len(sets))]
            dist = (emb.combine([p[1][0] for p in parts]), emb.combine([p[1][1] for p in parts])) if distract_sel is not None else None
        else:
            per_set, dist = embed(emb)
        a2s, s2a, fa2s, fs2a, labels, err = [], [], [], [], [], {"A2S": [], "S2A": []}
        for k, (st, (a, s)) in enumerate(zip(sets, per_set)):
            a2s.append(_ranks_with_extra(a, s, None))
            s2a.append(_ranks_with_extra(s, a, None))
            if dist is not None:
                need = max(0, fill_candidates - len(a))
                pick = _evenly(len(dist[0]), need) if need else np.zeros(0, np.int64)
                fa2s.append(_ranks_with_extra(a, s, dist[1][pick]))
                fs2a.append(_ranks_with_extra(s, a, dist[0][pick]))
            labels.extend(st["labels"])
            g = selection_groups(st["selection"])
            err["A2S"].append((len(a), error_breakdown(a, s, g)))
            err["S2A"].append((len(a), error_breakdown(s, a, g)))
        ra, rs = np.concatenate(a2s), np.concatenate(s2a)
        entry = {"A2S": metrics_from_ranks(ra), "S2A": metrics_from_ranks(rs), "audio_frames": emb.audio_frames, "errors": {}}
        if dist is not None:
            fra, frs = np.concatenate(fa2s), np.concatenate(fs2a)
            entry["filled"] = {"candidates": fill_candidates, "A2S": metrics_from_ranks(fra), "S2A": metrics_from_ranks(frs),
                               "by_piece": {"A2S": _breakdown(fra, labels, "piece")}}
        for d, rows in err.items():
            n = sum(w for w, _ in rows)
            entry["errors"][d] = {key: float(sum(w * e[key] for w, e in rows) / n) for key in rows[0][1]}
        entry["by_piece"] = {"A2S": _breakdown(ra, labels, "piece"), "S2A": _breakdown(rs, labels, "piece")}
        entry["by_corpus"] = {"A2S": _breakdown(ra, labels, "corpus"), "S2A": _breakdown(rs, labels, "corpus")}
        entry["by_composer"] = {"A2S": _breakdown(ra, labels, "composer"), "S2A": _breakdown(rs, labels, "composer")}
        results["models"][emb.name] = entry
    return results


def condition_markdown(results: dict, breakdown: tuple[str, ...] = ("corpus", "composer")) -> str:
    """The condition's table (as :func:`markdown`) plus A2S breakdowns by corpus / composer / piece."""
    p = results["protocol"]
    head = (f"Condition `{p['condition']}` ({p['description']}): {p['pairs']:,} query pairs in {p['sets']} set(s) of "
            f"{p['candidates_per_set'][0]:,}–{p['candidates_per_set'][1]:,} candidates"
            if "candidates_per_set" in p else
            f"Condition `{p['condition']}` ({p['description']}): {p['candidates']:,} candidates from {p['pool']:,} pairs")
    if p.get("candidates_filled_to"):
        head += f" (rows marked '{p['candidates_filled_to']:,} candidates': topped up with paper-condition test-split distractors)"
    lines = [head + f", {p['pieces']} pieces, {p['source']}", "",
             "| model | direction | R@1 % | R@5 % | R@25 % | MRR | median rank |", "|---|---|---:|---:|---:|---:|---:|"]
    for name, r in results["models"].items():
        for d in ("A2S", "S2A"):
            m = r[d]
            lines.append(f"| {name} | {d} | {m['R@1']:.1f} | {m['R@5']:.1f} | {m['R@25']:.1f} | {m['MRR']:.3f} | {m['MR']:g} |")
        if "filled" in r:
            for d in ("A2S", "S2A"):
                m = r["filled"][d]
                lines.append(f"| {name}, {r['filled']['candidates']:,} candidates | {d} | {m['R@1']:.1f} | {m['R@5']:.1f} | "
                             f"{m['R@25']:.1f} | {m['MRR']:.3f} | {m['MR']:g} |")
    for key in breakdown:
        groups = sorted({g for r in results["models"].values() for g in r.get(f"by_{key}", {}).get("A2S", {})})
        if len(groups) < 2:
            continue
        names = list(results["models"])
        lines += ["", f"A2S R@1 % / MRR by {key}:", "", "| " + key + " | n | " + " | ".join(names) + " |",
                  "|---|---:|" + "---:|" * len(names)]
        for g in groups:
            cells, n = [], 0
            for nm in names:
                m = results["models"][nm][f"by_{key}"]["A2S"].get(g)
                n = m["n"] if m else n
                cells.append(f"{m['R@1']:.1f} / {m['MRR']:.3f}" if m else "–")
            lines.append(f"| {g} | {n:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
