"""Why identification fails on real scans: the evidence per window (engine/tracker.py, nats before
the allowance) of the right piece and of the wrong candidates, on real timing against real scans
(Vienna 4x22, the 4-scan library of benchmarks/real_vienna.py) and on the synthetic valid split;
and identification on the scans with other evidence allowances, each with its cost on audio that
is not in the library (the take's own scan removed from the library).

    python benchmarks/evidence_scale.py [--allowances 1.7 0.8] [--pieces Schubert_D783_no15] [--limit 22]

Needs what real_vienna.py built (its library and cached embeddings, data/real_vienna) and, for the
synthetic side, data/lib_valid + data/corpus + data/eval_cache (benchmarks/tracker.py).  Writes
benchmarks/results/evidence_scale.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import real_vienna as rv  # noqa: E402

from scorestream.engine import evaluation as ev  # noqa: E402
from scorestream.engine.engine import Engine  # noqa: E402
from scorestream.engine.library import Library  # noqa: E402
from scorestream.models.conditions.matchfile import read_match  # noqa: E402


def evidence(engine, ws, emb, truth: str | None) -> tuple[list[float], list[float], list]:
    """Per-window evidence of the right piece and of every other candidate; the results."""
    tr = engine.new_tracker(None)
    right, other, res = [], [], []
    for w, e in zip(ws, emb):
        res.append(tr.update(w, e))
        if not tr.history[-1].music:          # the gate's silence / not-music: no evidence this window
            continue
        for c in tr.cands.values():
            (right if c.piece.id == truth else other).append(float(c.last_inc))
    return right, other, res


def stats(x: list[float]) -> dict:
    a = np.asarray(x, float)
    if not len(a):
        return {"n": 0}
    return {"n": int(len(a)), "mean": float(a.mean()), "p10": float(np.percentile(a, 10)),
            "p50": float(np.median(a)), "p90": float(np.percentile(a, 90))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="/work/shared/data")
    ap.add_argument("--library", default=str(REPO / "data" / "lib_vienna"))
    ap.add_argument("--cache", default=str(REPO / "data" / "real_vienna"))
    ap.add_argument("--pieces", nargs="+", default=None)
    ap.add_argument("--limit", type=int, default=None, help="first N pianists per piece")
    ap.add_argument("--allowances", type=float, nargs="+", default=[1.7, 0.8])
    ap.add_argument("--valid-library", default=str(REPO / "data" / "lib_valid"))
    ap.add_argument("--corpus", default=str(REPO / "data" / "corpus"))
    ap.add_argument("--valid-takes", type=int, default=20, help="synthetic valid takes (0: skip)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "evidence_scale"))
    a = ap.parse_args(argv)
    fx = json.loads(rv.FIXTURE.read_text())
    src = Path(a.data) / "vienna4x22"
    cache = Path(a.cache)
    lib = Library.open(a.library)
    base = ev.config_with([])
    pieces = a.pieces or list(fx["pieces"])
    ids = [p.id for p in Engine(lib).pieces]
    out = {"benchmark": "evidence_scale", "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "library": a.library,
           "pieces": pieces, "limit": a.limit, "allowances": a.allowances, "vienna": {}, "synthetic_valid": None}
    for allow in a.allowances:
        cfg = replace(base, evidence_allowance_nats=allow)
        full = Engine(lib, tracker_config=cfg)
        rows = {}
        for name in pieces:
            pid = fx["pieces"][name]["library_id"]
            without = Engine(lib, tracker_config=cfg, pieces=[i for i in ids if i != pid])
            acc = {"results": 0, "right": 0, "wrong": 0, "ool_results": 0, "ool_named": 0, "right_inc": [], "other_inc": []}
            for mp in sorted((src / "match").glob(f"{name}_p*.match"))[: a.limit]:
                audio, sr = rv.render_take(read_match(mp), src / "midi", cache / "audio")
                ws, emb = rv.windows_and_embeddings(full, audio, sr, cache / "emb", mp.stem)
                r_inc, o_inc, res = evidence(full, ws, emb, pid)
                acc["right_inc"] += r_inc
                acc["other_inc"] += o_inc
                acc["results"] += len(res)
                acc["right"] += sum(r.state == "tracking" and r.piece == pid for r in res)
                acc["wrong"] += sum(r.state == "tracking" and r.piece != pid for r in res)
                tr = without.new_tracker(None)
                named = [tr.update(w, e).state == "tracking" for w, e in zip(ws, emb)]
                acc["ool_results"] += len(named)
                acc["ool_named"] += sum(named)
            rows[name] = {"right_piece": acc["right"] / max(acc["results"], 1),
                          "wrong_piece": acc["wrong"] / max(acc["results"], 1),
                          "out_of_library_named": acc["ool_named"] / max(acc["ool_results"], 1),
                          "evidence_right": stats(acc["right_inc"]), "evidence_other": stats(acc["other_inc"])}
            print(f"allowance {allow}: {name}: right piece {100 * rows[name]['right_piece']:.1f} %, wrong "
                  f"{100 * rows[name]['wrong_piece']:.1f} %, out of library named {100 * rows[name]['out_of_library_named']:.1f} %; "
                  f"evidence right {rows[name]['evidence_right'].get('mean', float('nan')):.2f}, "
                  f"other {rows[name]['evidence_other'].get('mean', float('nan')):.2f}", flush=True)
        out["vienna"][str(allow)] = rows
    if a.valid_takes:
        from scorestream.models.corpus.reader import Corpus

        eng = Engine(Library.open(a.valid_library), tracker_config=base)
        ecache = ev.EmbeddingCache(eng, REPO / "data" / "eval_cache")
        corpus = Corpus(a.corpus)
        vids = [p for p in corpus.piece_ids("valid") if p in eng.by_id][: a.valid_takes]
        tids = [p for p in corpus.piece_ids("test") if p not in eng.by_id][: a.valid_takes]
        right, other, ool = [], [], []
        for t in ev.corpus_takes(a.corpus, vids, (0,)):
            r, o, _ = evidence(eng, *ecache.get(t), t.piece)
            right += r
            other += o
        for t in ev.corpus_takes(a.corpus, tids, (0,)):
            _, o, _ = evidence(eng, *ecache.get(t), None)
            ool += o
        out["synthetic_valid"] = {"library": a.valid_library, "takes": len(vids), "out_of_library_takes": len(tids),
                                  "evidence_right": stats(right), "evidence_other": stats(other),
                                  "evidence_out_of_library": stats(ool)}
        print("synthetic valid: evidence right %.2f, other candidates %.2f, out-of-library candidates %.2f"
              % (np.mean(right), np.mean(other), np.mean(ool)), flush=True)
    o = Path(a.out)
    o.parent.mkdir(parents=True, exist_ok=True)
    o.with_suffix(".json").write_text(json.dumps(out, indent=1))
    o.with_suffix(".md").write_text(markdown(out))
    print(f"wrote {o.with_suffix('.json')} and {o.with_suffix('.md')}")
    return 0


def markdown(out: dict) -> str:
    def pc(x):
        return f"{100 * x:.1f} %"

    def ev_(s):
        return "–" if not s.get("n") else f"{s['mean']:.2f} ({s['p10']:.2f}–{s['p90']:.2f})"

    lines = ["# Evidence per window: real scans against synthetic engravings (benchmarks/evidence_scale.py)", "",
             f"{out['date']}; Vienna library `{out['library']}` (the 4 scans); the tracker's evidence per window "
             "(nats before the allowance; mean, 10th–90th percentile) for the right piece and for the other "
             "candidates, and identification with each evidence allowance (`evidence_allowance_nats`; shipped 1.7). "
             "Out of library: the same takes with their own scan removed from the library. Pianists per piece: "
             f"{out.get('limit') or 'all (22)'}. Schubert D783 is the selection piece (configs/tracker_scans.toml's allowance was chosen on it: "
             "the largest that named nothing out of library); the other three pieces are held out.", "",
             "| allowance | piece | right piece named | wrong piece named | out of library: named | evidence, right piece | evidence, other candidates |",
             "|---|---|---|---|---|---|---|"]
    for allow, rows in out["vienna"].items():
        for name, r in rows.items():
            lines.append(f"| {allow} | {name} | {pc(r['right_piece'])} | {pc(r['wrong_piece'])} | {pc(r['out_of_library_named'])} | "
                         f"{ev_(r['evidence_right'])} | {ev_(r['evidence_other'])} |")
    s = out.get("synthetic_valid")
    if s:
        lines += ["", f"Synthetic valid split (library `{s['library']}`, {s['takes']} takes in the library, "
                      f"{s['out_of_library_takes']} test takes not in it), shipped settings:", "",
                  "| | evidence per window |", "|---|---|",
                  f"| right piece | {ev_(s['evidence_right'])} |", f"| other candidates | {ev_(s['evidence_other'])} |",
                  f"| candidates for audio not in the library | {ev_(s['evidence_out_of_library'])} |"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
