"""Export a trained model to two ONNX files (audio and sheet pathway).

    python -m scorestream.models.export --ckpt runs/bl/best.pt --out models/weights/NAME [--opset 17]

writes NAME_audio.onnx  (input "spec"  (B,1,92,F) float32 -> output "embedding" (B,32))
       NAME_sheet.onnx  (input "sheet" (B,1,80,100) float32 -> output "embedding" (B,32))
       NAME.json        (model config, input shapes, export check)
with a dynamic batch axis, then checks onnxruntime against torch (max abs diff
<= 1e-4 on random inputs) and prints the file sizes.  Uses the legacy
TorchScript exporter (dynamo=False; works offline), falling back to the
dynamo exporter if that fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from scorestream.core.spec import ModelInputSpec
from scorestream.models.nets import AudioSheetNet, load_model

TOL = 1e-4


def _export_one(module: nn.Module, example: torch.Tensor, path: Path, input_name: str, opset: int) -> str:
    names = dict(input_names=[input_name], output_names=["embedding"])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=opset,
                              dynamic_axes={input_name: {0: "batch"}, "embedding": {0: "batch"}},
                              do_constant_folding=True, **names)
        return "torchscript"
    except Exception as exc:  # pragma: no cover - fallback path
        print(f"legacy exporter failed ({exc!r}); trying dynamo exporter", file=sys.stderr)
        batch = torch.export.Dim("batch", min=1, max=65536)
        prog = torch.onnx.export(module, (example,), dynamo=True, opset_version=opset,
                                 dynamic_shapes=({0: batch},), external_data=False, **names)
        prog.save(str(path))
        return "dynamo"


def _ort_session(path: Path):
    import onnxruntime as ort
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def check_onnx(module: nn.Module, path: Path, input_name: str, shape: tuple[int, ...], seed: int = 0,
               batches=(1, 7)) -> float:
    """Max abs difference between onnxruntime and torch on random inputs of several batch sizes."""
    import onnx
    onnx.checker.check_model(str(path))
    sess = _ort_session(path)
    rng = np.random.default_rng(seed)
    worst = 0.0
    for b in batches:
        x = rng.random((b, *shape), dtype=np.float32)
        if input_name == "spec":
            x *= 4.0
        with torch.no_grad():
            ref = module(torch.from_numpy(x)).numpy()
        got = sess.run(["embedding"], {input_name: x})[0]
        if got.shape != ref.shape:
            raise AssertionError(f"{path.name}: onnx output {got.shape} != torch {ref.shape}")
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


def export_model(model: AudioSheetNet, out_prefix: str | Path, opset: int = 17, check: bool = True) -> dict:
    """Write OUT_audio.onnx, OUT_sheet.onnx and OUT.json; returns an info dict."""
    model = model.float().eval().to("cpu")
    cfg = model.cfg
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    specs = {
        "audio": (model.audio, "spec", (1, cfg.spec_bins, cfg.audio_frames)),
        "sheet": (model.sheet, "sheet", (1, *cfg.sheet_shape)),
    }
    info: dict = {"config": cfg.to_dict(), "opset": opset, "files": {},
                  "input_spec": ModelInputSpec.serving(cfg.audio_frames, cfg.embed_dim).to_json()}
    for part, (module, input_name, shape) in specs.items():
        path = out_prefix.parent / f"{out_prefix.name}_{part}.onnx"
        example = torch.rand(2, *shape)
        exporter = _export_one(module, example, path, input_name, opset)
        entry = {"path": path.name, "input": input_name, "shape": ["batch", *shape], "exporter": exporter,
                 "bytes": path.stat().st_size}
        if check:
            diff = check_onnx(module, path, input_name, shape)
            entry["max_abs_diff"] = diff
            if not diff <= TOL:
                raise AssertionError(f"{path.name}: onnxruntime differs from torch by {diff:.2e} > {TOL}")
        info["files"][part] = entry
    with open(out_prefix.parent / f"{out_prefix.name}.json", "w") as fh:
        json.dump(info, fh, indent=2)
    return info


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m scorestream.models.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="best.pt (or ckpt.pt) written by models.train")
    p.add_argument("--out", required=True, help="output prefix, e.g. models/weights/bl1")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--no-check", action="store_true")
    args = p.parse_args(argv)
    model = load_model(args.ckpt)
    info = export_model(model, args.out, opset=args.opset, check=not args.no_check)
    total = 0
    for part, e in info["files"].items():
        total += e["bytes"]
        diff = f", max |ort - torch| = {e['max_abs_diff']:.2e}" if "max_abs_diff" in e else ""
        print(f"{part}: {e['path']} {e['bytes'] / 1e6:.2f} MB ({e['exporter']}){diff}")
    print(f"total {total / 1e6:.2f} MB")
    return info


if __name__ == "__main__":
    main(sys.argv[1:])
