"""Snippet retrieval accuracy and embedding speed of the shipped models.

Accuracy: the paper's protocol (``scorestream eval retrieval``) on a built
corpus — test pieces, the held-out timbre, tempo 1.0, ``--candidates`` pairs
chosen evenly over the pool, both directions — for every shipped model and
their ensemble, checked against the targets of issue 3:

* audio→sheet R@1 >= 60 % and MRR >= 0.70,
* sheet→audio within 0.05 of the audio→sheet R@1 and MRR.

Speed: embeddings per second through onnxruntime on one CPU thread (what one
serving worker gets), for audio windows and sheet snippets, batch 256.

Prints Markdown tables and writes ``benchmarks/results/retrieval.json``.

Usage: ``.venv/bin/python benchmarks/retrieval.py [--corpus data/corpus] [--candidates 10000]``
(the corpus comes from ``scorestream corpus build``; see the README).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scorestream.models.embedder import load_embedder  # noqa: E402
from scorestream.models.evaluate import default_models, evaluate, markdown  # noqa: E402

TARGET = {"A2S_R@1": 60.0, "A2S_MRR": 0.70, "S2A_max_gap": 0.05}


def check_targets(m: dict) -> dict:
    a, s = m["A2S"], m["S2A"]
    return {
        "A2S R@1 >= 60 %": a["R@1"] >= TARGET["A2S_R@1"],
        "A2S MRR >= 0.70": a["MRR"] >= TARGET["A2S_MRR"],
        "S2A within 0.05": abs(s["R@1"] - a["R@1"]) / 100 <= TARGET["S2A_max_gap"]
        and abs(s["MRR"] - a["MRR"]) <= TARGET["S2A_max_gap"],
    }


def embedding_speed(name: str, n: int = 2048, repeats: int = 3) -> dict:
    emb = load_embedder(name, intra_op_threads=1)
    rng = np.random.default_rng(0)
    spec = (rng.random((n, emb.spec_bins, emb.audio_frames)) * 3).astype(np.float32)
    sheet = (rng.random((n, *emb.sheet_shape)) < 0.2).astype(np.float32)
    out = {}
    for what, fn, x in (("audio", emb.embed_audio, spec), ("sheet", emb.embed_sheet, sheet)):
        fn(x[:256])                                          # warm-up
        best = min(_timed(fn, x) for _ in range(repeats))
        out[f"{what}_per_s"] = n / best
    return out


def _timed(fn, x) -> float:
    t0 = time.perf_counter()
    fn(x)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=str(REPO / "data" / "corpus"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--candidates", type=int, default=10000)
    ap.add_argument("--model", action="append", default=None, help="as for scorestream eval retrieval (default: shipped + ensemble)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "retrieval.json"))
    a = ap.parse_args(argv)
    if not (Path(a.corpus) / "corpus.json").is_file():
        print(f"error: {a.corpus} is not a built corpus: run `scorestream corpus build` first (README, 'Training data')",
              file=sys.stderr)
        return 2
    models = a.model or default_models()
    t0 = time.time()
    res = evaluate(models, corpus=a.corpus, split=a.split, candidates=a.candidates)
    print(markdown(res))
    print("\n| model | " + " | ".join(check_targets(next(iter(res["models"].values())))) + " | audio emb/s | sheet emb/s |")
    print("|---|" + "---|" * 3 + "---:|---:|")
    for name, m in res["models"].items():
        m["targets"] = check_targets(m)
        m["speed_1thread"] = embedding_speed(name)
        flags = " | ".join("pass" if ok else "FAIL" for ok in m["targets"].values())
        print(f"| {name} | {flags} | {m['speed_1thread']['audio_per_s']:,.0f} | {m['speed_1thread']['sheet_per_s']:,.0f} |")
    res["targets"] = TARGET
    res["machine"] = {"platform": platform.platform(), "python": platform.python_version(), "processor": platform.processor()}
    res["wall_s"] = time.time() - t0
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(f"\nwrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
