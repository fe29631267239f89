"""Tracker evaluation on a built corpus (engine/evaluation.py): follow with and without the
piece given, identification, out-of-library audio, jumps, radio medleys (4 pieces x 45 s back to back).

    python benchmarks/tracker.py --corpus data/corpus --library data/lib_valid --split valid \
        [--unknown-library data/lib_test] [--set kappa=10 ...] [--out benchmarks/results/tracker_valid.json]

Settings are chosen on the valid split; the test split is run once with the chosen settings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scorestream.engine import evaluation as ev  # noqa: E402
from scorestream.engine.engine import Engine  # noqa: E402
from scorestream.engine.library import Library  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=str(REPO / "data" / "corpus"))
    ap.add_argument("--library", required=True)
    ap.add_argument("--split", default="valid")
    ap.add_argument("--perf", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--modes", nargs="+", default=["piece", "identify", "unknown", "structure"],
                    help="piece identify unknown nonmusic after structure radio")
    ap.add_argument("--unknown-corpus-split", default=None, help="pieces of this split (not in the library) as out-of-library audio")
    ap.add_argument("--nonmusic-items", type=int, default=2, help="nonmusic mode: takes of 60 s per kind")
    ap.add_argument("--medleys", type=int, default=20, help="radio mode: medleys of 4 pieces x 45 s")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="tracker setting override")
    ap.add_argument("--cache", default=str(REPO / "data" / "eval_cache"))
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    lib = Library.open(a.library)
    cfg = ev.config_with(a.set)
    engine = Engine(lib, tracker_config=cfg)
    cache = ev.EmbeddingCache(engine, a.cache)
    from scorestream.models.corpus.reader import Corpus

    corpus = Corpus(a.corpus)
    ids = [p for p in corpus.piece_ids(a.split) if p in engine.by_id][: a.limit]
    takes = ev.corpus_takes(a.corpus, ids, a.perf)
    res = {"library": a.library, "pieces_in_library": len(engine.pieces), "split": a.split, "pieces": len(ids),
           "takes": len(takes), "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}}
    t0 = time.time()
    for mode in a.modes:
        if mode in ("piece", "identify"):
            r = ev.evaluate_follow(engine, takes, cache, mode=mode, config=cfg)
        elif mode == "unknown":
            split = a.unknown_corpus_split or ("test" if a.split != "test" else "valid")
            out_ids = [p for p in corpus.piece_ids(split) if p not in engine.by_id][: a.limit or 40]
            r = ev.evaluate_unknown(engine, ev.corpus_takes(a.corpus, out_ids, (0,)), cache, config=cfg)
        elif mode == "nonmusic":
            r = ev.evaluate_nonmusic(engine, ev.nonmusic_takes(items=a.nonmusic_items), cache, config=cfg)
        elif mode == "after":
            r = ev.evaluate_after_piece(engine, [t for t in takes if t.name.endswith("/p0")], cache, config=cfg)
        elif mode == "structure":
            r = ev.evaluate_structure(engine, [t for t in takes if t.name.endswith("/p0")], cache, config=cfg)
        elif mode == "radio":
            def prog(i, n, its):
                print(f"  radio {i}/{n}: " + ", ".join(
                    f"{it['piece']} {'never' if it['reidentify_s'] is None else format(it['reidentify_s'], '.1f') + ' s'}"
                    f"{' ERROR' if it['error'] else ''}" for it in its), flush=True)
            r = ev.evaluate_radio(engine, [t for t in takes if t.name.endswith("/p0")], cache, medleys=a.medleys,
                                  config=cfg, progress=prog)
        else:
            raise SystemExit(f"unknown mode {mode}")
        res[mode] = r
        brief = {k: v for k, v in r.items() if k not in ("per_take", "per_medley")}
        print(mode, json.dumps(brief, default=float), f"({time.time() - t0:.0f} s)", flush=True)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
