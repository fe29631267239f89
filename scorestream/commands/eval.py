"""``scorestream eval …``: evaluation of models and of the engine."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


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
