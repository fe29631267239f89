"""Snippet retrieval of the shipped models under realistic conditions (issue 12).

For every model (default: every shipped model and their ensemble) and every condition of
``models/conditions/registry.py`` that is built, the paper's retrieval protocol
(``scorestream eval retrieval --condition NAME``): up to ``--candidates`` pairs chosen evenly
over each pool, both directions, ranks pooled over the condition's sets.  Vienna's pools
(one pianist, ~1,000 pairs) are also searched with distractors from the paper condition's
test split topped up to 10,000 candidates.  Also measured: how fast real pianists move
through the unrolled strip (px per second of performance) against the corpus's takes.

Writes ``benchmarks/results/retrieval_conditions.json`` and ``.md``.

Usage: ``.venv/bin/python benchmarks/retrieval_conditions.py [--corpus data/corpus] [--condition NAME ...]``
(build the conditions first: ``python -m scorestream.models.conditions build vienna`` … ).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scorestream.models.conditions.registry import CONDITIONS, folder_of  # noqa: E402
from scorestream.models.embedder import load_embedder  # noqa: E402
from scorestream.models.evaluate import condition_markdown, default_models, evaluate_condition  # noqa: E402

ORDER = ("paper", "hard", "realistic", "realistic_hard", "vienna", "vienna_realistic", "realistic_valid",
         "vienna_schubert", "vienna_schubert_realistic")
FILL = {"vienna", "vienna_realistic", "vienna_schubert", "vienna_schubert_realistic"}


def _summary(results: dict) -> list[str]:
    models = list(next(iter(results.values()))["models"])
    lines = ["| condition | pairs | candidates | " + " | ".join(f"{m} A2S R@1 / MRR" for m in models) + " | " +
             " | ".join(f"{m} S2A R@1 / MRR" for m in models) + " |",
             "|---|---:|---:|" + "---:|" * (2 * len(models))]
    for name, res in results.items():
        p = res["protocol"]
        cands = f"{p['candidates_per_set'][0]:,}–{p['candidates_per_set'][1]:,}" if "candidates_per_set" in p else f"{p['candidates']:,}"
        row = [name + (" (choose checkpoints here)" if p.get("selection_ok") else ""), f"{p.get('pairs', p['candidates']):,}", cands]
        for d in ("A2S", "S2A"):
            row += [f"{res['models'][m][d]['R@1']:.1f} / {res['models'][m][d]['MRR']:.3f}" for m in models]
        lines.append("| " + " | ".join(row) + " |")
        if any("filled" in r for r in res["models"].values()):
            f = next(r["filled"]["candidates"] for r in res["models"].values())
            row = [f"{name}, filled to {f:,} candidates", f"{p.get('pairs', p['candidates']):,}", f"{f:,}"]
            for d in ("A2S", "S2A"):
                row += [f"{res['models'][m]['filled'][d]['R@1']:.1f} / {res['models'][m]['filled'][d]['MRR']:.3f}" for m in models]
            lines.append("| " + " | ".join(row) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=str(REPO / "data" / "corpus"))
    ap.add_argument("--conditions-root", default=None)
    ap.add_argument("--condition", action="append", default=None, help=f"default: every built one of {', '.join(ORDER)}")
    ap.add_argument("--candidates", type=int, default=10000)
    ap.add_argument("--fill", type=int, default=10000, help="Vienna pools are also topped up to this many candidates")
    ap.add_argument("--model", action="append", default=None, help="as for scorestream eval retrieval (default: shipped + ensemble)")
    ap.add_argument("--no-speed", action="store_true", help="skip the strip px/s measurement")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime threads per session (default 1: a shared machine)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "retrieval_conditions.json"))
    a = ap.parse_args(argv)
    models = a.model or default_models()
    names = a.condition or [c for c in ORDER if CONDITIONS[c].kind == "corpus" or folder_of(CONDITIONS[c], a.conditions_root).is_dir()]
    t0 = time.time()
    results, timings = {}, {}
    for name in names:
        t1 = time.time()
        res = evaluate_condition(models, name, corpus=a.corpus, candidates=a.candidates, root=a.conditions_root,
                                 fill_candidates=a.fill if name in FILL else 0,
                                 embedder_factory=lambda n: load_embedder(n, intra_op_threads=a.threads))
        timings[name] = round(time.time() - t1, 1)
        results[name] = res
        print(condition_markdown(res), "\n", flush=True)
    out = {"conditions": results, "models": models, "candidates": a.candidates, "fill": a.fill,
           "machine": {"platform": platform.platform(), "python": platform.python_version()}, "seconds": timings}
    md = ["# Retrieval under realistic conditions", "",
          f"Shipped models, paper protocol ({a.candidates:,} candidates where the pool allows; pools of one set are "
          "searched together, ranks pooled over sets). Built with `benchmarks/retrieval_conditions.py`; conditions: "
          "`models/conditions/registry.py`.", ""] + _summary(results)
    if not a.no_speed:
        from scorestream.models.conditions.realistic import condition_speed, corpus_speed
        from scorestream.models.conditions.store import DEFAULT_ROOT

        root = Path(a.conditions_root or DEFAULT_ROOT)
        speed = {}
        if (root / "vienna").is_dir():
            speed["vienna4x22 (22 real pianists)"] = condition_speed(root / "vienna")
        if (root / "realistic").is_dir():
            speed["realistic (concert model, test split)"] = condition_speed(root / "realistic")
        speed.update({f"corpus {k} ({Path(a.corpus).name})": v for k, v in corpus_speed(a.corpus, step=2).items()})
        for extra in ("corpus_v2",):
            if (REPO / "data" / extra / "corpus.json").is_file():
                speed.update({f"corpus {k} ({extra})": v for k, v in corpus_speed(REPO / "data" / extra, ("train", "valid"), step=8).items()})
        out["strip_speed_px_per_s"] = speed
        md += ["", "## How fast the music moves through the strip", "",
               "Strip px per second of performance: least-squares slope of notehead strip x over onset time within each "
               "pass through a system (>= 6 onsets, >= 2 s), quantiles weighted by duration.", "",
               "| takes | systems | p05 | p25 | median | p75 | p95 |", "|---|---:|---:|---:|---:|---:|---:|"]
        for k, v in speed.items():
            if v:
                md.append(f"| {k} | {v['systems']:,} | {v['p05']:.0f} | {v['p25']:.0f} | {v['median']:.0f} | {v['p75']:.0f} | {v['p95']:.0f} |")
    md += ["", "## Details", ""]
    for name, res in results.items():
        md += [f"### {name}", "", condition_markdown(res), ""]
    out["wall_s"] = round(time.time() - t0, 1)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    Path(a.out).with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md[: 8 + len(results) * 2]))
    print(f"\nwrote {a.out} and {Path(a.out).with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
