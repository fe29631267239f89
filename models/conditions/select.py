"""Choose fine-tuned checkpoints on the realistic VALIDATION conditions (never the test split).

    python -m scorestream.models.conditions.select --run runs/v2/bl1_2s --run runs/v2/bl2_4s_at \
        --out runs/v2/selection.json [--every 2]

For every run folder: the snapshots ``snapshots/step_*.pt`` (copies of ``ckpt.pt`` taken
during training by ``finetune_v2.sh``), ``best.pt`` (best on the pack's own validation
set) and, as the baseline, the shipped model of the same architecture are exported to
ONNX (``models/export.py``, under ``RUN/onnx/``) and scored on

* ``realistic_valid`` (valid split, concert-pianist model, Salamander Grand, rooms,
  noise, codecs; 10,000 candidates) and
* ``vienna_schubert_realistic`` (22 real pianists, Schubert D783/15: the Vienna piece
  outside the reserved test repertoire; Salamander + scenes),

score = mean A2S MRR of the two.  The best snapshot of each run is kept, and the ensemble
of the chosen ones is compared with the shipped ensemble on the same conditions.  Nothing
is shipped here: shipping also needs the synthetic test split not to get worse (see
MODEL_CARD.md); this tool only writes its findings to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

SELECTION = ("realistic_valid", "vienna_schubert_realistic")


def _score(res: dict, name: str) -> float:
    return float(res["models"][name]["A2S"]["MRR"])


def evaluate_prefixes(prefixes: list[str], candidates: int = 10000, conditions=SELECTION, threads: int = 1) -> dict:
    from scorestream.models.embedder import load_embedder
    from scorestream.models.evaluate import evaluate_condition

    out = {}
    for cond in conditions:
        res = evaluate_condition(prefixes, cond, candidates=candidates,
                                 embedder_factory=lambda n: load_embedder(n, intra_op_threads=threads))
        for name, m in res["models"].items():
            out.setdefault(name, {})[cond] = {"A2S": m["A2S"], "S2A": m["S2A"]}
    for name, per in out.items():
        per["score"] = sum(per[c]["A2S"]["MRR"] for c in conditions) / len(conditions)
    return out


def export(ckpt: Path, out_prefix: Path) -> str:
    from scorestream.models.export import export_model
    from scorestream.models.nets import load_model

    if not (out_prefix.parent / f"{out_prefix.name}_audio.onnx").is_file():
        export_model(load_model(ckpt), out_prefix)
    return str(out_prefix)


def main(argv=None) -> int:
    from scorestream.models.embedder import WEIGHTS

    ap = argparse.ArgumentParser(prog="python -m scorestream.models.conditions.select", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", required=True, help="training output folder (repeatable)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--every", type=int, default=1, help="score every n-th snapshot (plus the last and best.pt)")
    ap.add_argument("--candidates", type=int, default=10000)
    a = ap.parse_args(argv)
    t0 = time.time()
    report: dict = {"conditions": list(SELECTION), "runs": {}}
    chosen = []
    shipped_names = []
    for run in map(Path, a.run):
        cfg = json.loads((run / "snapshots" / "config.json").read_text()) if (run / "snapshots" / "config.json").is_file() else {}
        snaps = sorted((run / "snapshots").glob("step_*.pt"), key=lambda p: int(re.findall(r"\d+", p.stem)[0]))
        pick = snaps[:: max(1, a.every)]
        if snaps and snaps[-1] not in pick:
            pick.append(snaps[-1])
        cands = {p.stem: p for p in pick}
        if (run / "best.pt").is_file():
            cands["best"] = run / "best.pt"
        # unique export names: evaluation caches embeddings by model name
        prefixes = {name: export(p, run / "onnx" / f"{run.name}_{name}") for name, p in cands.items()}
        shipped = cfg.get("shipped") or ("bl2_4s_at" if "bl2" in run.name or "long" in run.name else "bl1_2s")
        shipped_names.append(shipped)
        res = evaluate_prefixes([str(WEIGHTS / shipped)] + list(prefixes.values()), a.candidates)
        base = res[shipped]["score"]
        best_name = max(prefixes, key=lambda n: res[Path(prefixes[n]).name]["score"])
        report["runs"][str(run)] = {"shipped": shipped, "shipped_score": base, "candidates": {n: res[Path(p).name] for n, p in prefixes.items()},
                                    "shipped_result": res[shipped], "chosen": best_name,
                                    "chosen_score": res[Path(prefixes[best_name]).name]["score"]}
        chosen.append(prefixes[best_name])
        print(f"{run}: shipped {shipped} score {base:.4f}; best {best_name} {report['runs'][str(run)]['chosen_score']:.4f}", flush=True)
    if len(chosen) > 1:
        ens = evaluate_prefixes(["+".join(str(WEIGHTS / s) for s in shipped_names), "+".join(chosen)], a.candidates)
        report["ensemble"] = ens
        for k, v in ens.items():
            print(f"ensemble {k}: score {v['score']:.4f}", flush=True)
    report["wall_s"] = round(time.time() - t0, 1)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
