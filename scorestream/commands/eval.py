"""``scorestream eval …``: evaluation of models and of the engine."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scorestream.core.errors import InputError


def _candidates(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 2:
        raise argparse.ArgumentTypeError(f"needs at least 2 candidates, got {v}")
    return v


def _retrieval(a: argparse.Namespace) -> int:
    from scorestream.models.evaluate import default_models, evaluate, markdown

    if a.condition:
        return _condition(a)
    if not a.corpus and not a.pack:
        raise SystemExit("scorestream eval retrieval: error: give --corpus DIR or --pack FILE")
    if a.corpus:
        from .corpus import _corpus_dir

        _corpus_dir(a.corpus)
    res = evaluate(a.model or default_models(), corpus=a.corpus, pack=a.pack, split=a.split, candidates=a.candidates,
                   timbre=a.timbre)
    table = markdown(res)
    print(table)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1))
    if a.markdown:
        Path(a.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(a.markdown).write_text(table + "\n")
    return 0


def _condition(a: argparse.Namespace) -> int:
    from scorestream.models.evaluate import condition_markdown, default_models, evaluate_condition

    if a.pack:
        raise SystemExit("scorestream eval retrieval: error: --condition works on --corpus (or on built conditions), not --pack")
    if a.corpus:
        from .corpus import _corpus_dir

        _corpus_dir(a.corpus)
    from scorestream.models.embedder import load_embedder

    res = evaluate_condition(a.model or default_models(), a.condition, corpus=a.corpus, candidates=a.candidates,
                             root=a.conditions_root, fill_candidates=a.fill_candidates,
                             embedder_factory=lambda n: load_embedder(n, intra_op_threads=a.threads))
    table = condition_markdown(res)
    print(table)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1))
    if a.markdown:
        Path(a.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(a.markdown).write_text(table + "\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="evaluate models and the engine")
    esub = ev.add_subparsers(dest="eval_command", required=True, metavar="COMMAND")
    register_engine(esub)
    r = esub.add_parser("retrieval", help="the paper's snippet-retrieval protocol (R@k, MRR, median rank)")
    src = r.add_mutually_exclusive_group()
    src.add_argument("--corpus", metavar="DIR", help="built corpus folder (uses its --split)")
    src.add_argument("--pack", metavar="NPZ", help="or a training pack (version 1 or 2)")
    r.add_argument("--split", default="test", choices=("train", "valid", "test"), help="which split to evaluate (default test)")
    r.add_argument("--candidates", type=_candidates, default=10000, help="candidates per query (default 10000, the paper's)")
    r.add_argument("--timbre", default=None, help="corpus only: a timbre name or 'any' instead of the paper's condition "
                   "(held-out timbre, tempo 1.0); the valid split needs it")
    r.add_argument("--model", action="append", default=None, metavar="SPEC",
                   help="model under models/weights or a path prefix; A+B is an ensemble "
                        "(repeatable; default: every shipped model and their ensemble)")
    r.add_argument("--condition", default=None, metavar="NAME",
                   help="a realistic evaluation condition instead of the paper's protocol: "
                        "paper, hard, vienna, vienna_realistic, vienna_schubert, vienna_schubert_realistic, "
                        "realistic, realistic_hard, realistic_valid (choose checkpoints on realistic_valid / "
                        "vienna_schubert*; see models/conditions/registry.py); prints breakdowns by corpus and composer")
    r.add_argument("--fill-candidates", type=int, default=0, metavar="N",
                   help="with --condition: top each pool up to N candidates with test-split distractors "
                        "(needs --corpus; e.g. 10000 for Vienna, whose pools hold ~1,000 pairs)")
    r.add_argument("--conditions-root", default=None, metavar="DIR", help="where built conditions live (default data/conditions)")
    r.add_argument("--threads", type=int, default=0, metavar="N", help="with --condition: onnxruntime threads (default 0: all cores)")
    r.add_argument("--json", default=None, metavar="FILE", help="write results here")
    r.add_argument("--markdown", default=None, metavar="FILE", help="write a Markdown table here")
    r.set_defaults(func=_retrieval)


def _engine_eval(a: argparse.Namespace) -> int:
    """``eval identify`` / ``eval follow``: the tracker on a corpus split against a library."""
    from scorestream.engine import evaluation as E
    from scorestream.engine.engine import Engine
    from scorestream.engine.library import Library
    from scorestream.models.corpus.reader import Corpus

    from .corpus import _corpus_dir

    corpus_dir = _corpus_dir(a.corpus)
    engine = Engine(Library.open(a.library))
    ids = [p for p in Corpus(corpus_dir).piece_ids(a.split) if p in engine.by_id][: a.limit]
    if not ids:
        raise InputError(f"no {a.split} piece of {corpus_dir} is in {a.library}; build it with "
                         f"'scorestream library import-corpus {corpus_dir} --library {a.library} --split {a.split}'")
    takes = E.corpus_takes(corpus_dir, ids, a.perf)
    cache = E.EmbeddingCache(engine, a.cache)
    mode = "identify" if a.eval_command == "identify" else ("piece" if a.piece_given else "identify")
    res = E.evaluate_follow(engine, takes, cache, mode=mode)
    res.update({"library": str(a.library), "library_pieces": len(engine.pieces), "split": a.split, "pieces": len(ids)})
    p = res["pooled"]
    lines = [f"| {a.eval_command} ({mode}) | takes | within 0.5 s | within 1 s | within 2 s | tracked to end |",
             "|---|---|---|---|---|---|",
             f"| {a.split}, {len(engine.pieces)} pieces | {res['takes']} | {100 * p['within_0.5s']:.1f} % | "
             f"{100 * p['within_1s']:.1f} % | {100 * p['within_2s']:.1f} % | {100 * res['tracked_to_end']:.1f} % |"]
    if "identification" in res:
        idn = res["identification"]
        vo = idn.get("votes_only") or {}
        lines += ["", "| after | top-1 | top-5 | MRR | votes only: top-1 | top-5 | MRR |", "|---|---|---|---|---|---|---|"]
        for c in ("5s", "10s", "30s"):
            if idn[c]:
                v = vo.get(c)
                lines.append(f"| {c} | {100 * idn[c]['top1']:.1f} % | {100 * idn[c]['top5']:.1f} % | {idn[c]['rr']:.3f} | "
                             + (f"{100 * v['top1']:.1f} % | {100 * v['top5']:.1f} % | {v['rr']:.3f} |" if v else "– | – | – |"))
        lines.append(f"\nmedian time to identify (and stay): {idn['time_to_identify_median_s']:.1f} s; "
                     f"never identified: {idn['never_identified']} of {res['takes']}")
        if vo:
            lines.append(f"votes only (the most kNN votes, no alignment, never 'unknown'): median time until the right piece "
                         f"leads and stays {vo['time_to_identify_median_s']:.1f} s; never: {vo['never_identified']}")
    table = "\n".join(lines)
    print(table)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1, default=float))
    if a.markdown:
        Path(a.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(a.markdown).write_text(table + "\n")
    return 0


def register_engine(esub) -> None:
    for name, what in (("identify", "which piece: top-1/top-5/MRR after 5, 10, 30 s, time to identify"),
                       ("follow", "where: share of results within 0.5/1/2 s, pieces tracked to the end")):
        e = esub.add_parser(name, help=f"the tracker on a corpus split ({what})")
        e.add_argument("--corpus", required=True, metavar="DIR", help="built corpus folder")
        e.add_argument("--library", required=True, metavar="DIR", help="library built with 'library import-corpus'")
        e.add_argument("--split", default="test", choices=("train", "valid", "test"), help="which split's performances (default test)")
        e.add_argument("--perf", type=int, nargs="+", default=[0], metavar="J", help="performance numbers (default 0)")
        e.add_argument("--limit", type=int, default=None, metavar="N", help="at most N pieces")
        e.add_argument("--cache", default=None, metavar="DIR", help="cache window embeddings here (reruns are fast)")
        if name == "follow":
            e.add_argument("--piece-given", action="store_true", help="follow with the piece given (no identification)")
        e.add_argument("--json", default=None, metavar="FILE", help="write results here")
        e.add_argument("--markdown", default=None, metavar="FILE", help="write a Markdown table here")
        e.set_defaults(func=_engine_eval, piece_given=False)
