"""Tracker cost per update per stream (embedding excluded) at the test library's size and at
~1,000 pieces (the test library's pieces plus perturbed copies as distractors: same sizes and
similarity structure, so the index and the candidate filters do the same work).

    python benchmarks/tracker_cost.py --library data/lib_test --corpus data/corpus [--copies 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scorestream.engine import evaluation as ev  # noqa: E402
from scorestream.engine.engine import BACKGROUND_SAMPLE, Engine  # noqa: E402
from scorestream.engine.index import SnippetIndex  # noqa: E402
from scorestream.engine.library import Library  # noqa: E402
from scorestream.models.corpus.reader import Corpus  # noqa: E402


def enlarge(engine: Engine, copies: int, noise: float = 0.05, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    base = list(engine.pieces)
    for c in range(copies):
        for p in base:
            e = p.emb + noise * rng.standard_normal(p.emb.shape).astype(np.float32)
            e /= np.linalg.norm(e, axis=1, keepdims=True)
            q = replace(p, index=len(engine.pieces), id=f"{p.id}~copy{c}", emb=np.ascontiguousarray(e))
            engine.pieces.append(q)
    engine.by_id = {p.id: p for p in engine.pieces}
    offs, rows, owner = 0, [], []
    for p in engine.pieces:
        p.offset = offs
        offs += p.n
        rows.append(p.emb)
        owner.append(np.full(p.n, p.index, np.int32))
    engine.size = offs
    all_emb = np.concatenate(rows)
    engine.owner = np.concatenate(owner)
    engine.index = SnippetIndex(all_emb, threads=1)
    pick = rng.choice(engine.size, size=min(engine.size, BACKGROUND_SAMPLE), replace=False)
    engine.background_emb = np.ascontiguousarray(all_emb[np.sort(pick)])
    engine.piece_sizes = np.array([p.n for p in engine.pieces], np.float64)


def measure(engine, takes, cache) -> dict:
    ms, hits = [], 0
    for tk in takes:
        ws, emb = cache.get(tk)
        tr = engine.new_tracker(None)
        for w, e in zip(ws, emb):
            t0 = time.perf_counter()
            r = tr.update(w, e)
            ms.append((time.perf_counter() - t0) * 1e3)
        hits += r.piece == tk.piece
    a = np.array(ms)
    return {"pieces": len(engine.pieces), "snippets": engine.size, "index": engine.index.kind, "updates": len(a),
            "ms_median": float(np.median(a)), "ms_p90": float(np.percentile(a, 90)), "ms_p99": float(np.percentile(a, 99)),
            "right_piece_at_end": hits, "takes": len(takes)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--library", default=str(REPO / "data" / "lib_test"))
    ap.add_argument("--corpus", default=str(REPO / "data" / "corpus"))
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--takes", type=int, default=6)
    ap.add_argument("--cache", default=str(REPO / "data" / "eval_cache"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "tracker_cost.json"))
    a = ap.parse_args(argv)
    engine = Engine(Library.open(a.library))
    ids = [p for p in Corpus(a.corpus).piece_ids("test") if p in engine.by_id][: a.takes]
    takes = ev.corpus_takes(a.corpus, ids, (0,))
    cache = ev.EmbeddingCache(engine, a.cache)
    t0 = time.perf_counter()
    emb_ms = []
    for tk in takes[:2]:
        ws = ev.windows_of(engine, tk.frames)
        s = time.perf_counter()
        engine.embed(ws[:200])
        emb_ms.append((time.perf_counter() - s) * 1e3 / min(200, len(ws)))
    out = {"embedding_ms_per_window_batched": float(np.median(emb_ms)),
           "embedding_s_per_stream_second": float(np.median(emb_ms)) / 1e3 / engine.stride_s}
    out["small"] = measure(engine, takes, cache)
    enlarge(engine, a.copies)
    out["large"] = measure(engine, takes, cache)
    out["seconds"] = time.perf_counter() - t0
    print(json.dumps(out, indent=1))
    Path(a.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
