"""Rebuild a torch checkpoint (``best.pt``) from a shipped ONNX model, to fine-tune from it.

Only the ONNX files of the shipped models are in the repository (no ``.pt``).  The
exporter folded every BatchNorm into the convolution before it (``W' = W g / s``,
``b' = (b - m) g / s + beta``), so the graph holds one weight and one bias per
convolution.  To get back a trainable network of ``models/nets.py`` (convolutions
without bias, each followed by BatchNorm):

1. every convolution gets the folded weight ``W'``, its BatchNorm is set to add ``b'``
   (mean 0, variance 1 - eps, scale 1) — the network now computes exactly the ONNX
   function in eval mode;
2. a batch of real training inputs is passed through, and each BatchNorm's input mean
   ``mu`` and variance ``var`` per channel are measured; the BatchNorm is re-parametrised
   to ``running_mean = mu, running_var = var, weight = sqrt(var + eps), bias = b' + mu``,
   which leaves the eval-mode function unchanged (still exactly the ONNX one) while making
   the *training-mode* BatchNorm (batch statistics) start close to it as well.

The result is checked against onnxruntime (max |difference| of the embeddings).

    python -m scorestream.models.conditions.onnx_init --model bl1_2s --pack pack/pack.npz --out runs/init/bl1_2s.pt
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _onnx_convs(path: Path) -> tuple[list[tuple[np.ndarray, np.ndarray | None]], dict[str, np.ndarray]]:
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    convs = []
    for node in m.graph.node:
        if node.op_type == "Conv":
            w = init[node.input[1]]
            b = init[node.input[2]] if len(node.input) > 2 else None
            convs.append((w, b))
    return convs, init


def _load_pathway(module, convs, init: dict, prefix: str) -> None:
    """Assign folded conv weights to the torch convs of ``module`` (in order) and identity-plus-bias BatchNorms."""
    import torch
    import torch.nn as nn

    mods = list(module.modules())
    pairs = []
    for i, m in enumerate(mods):
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            bn = mods[i + 1] if i + 1 < len(mods) and isinstance(mods[i + 1], (nn.BatchNorm1d, nn.BatchNorm2d)) else None
            pairs.append((m, bn))
    if len(pairs) != len(convs):
        raise ValueError(f"{prefix}: torch has {len(pairs)} convolutions, the ONNX graph {len(convs)}")
    with torch.no_grad():
        for (conv, bn), (w, b) in zip(pairs, convs):
            if tuple(conv.weight.shape) != tuple(w.shape):
                raise ValueError(f"{prefix}: conv weight {tuple(conv.weight.shape)} vs ONNX {w.shape}")
            conv.weight.copy_(torch.from_numpy(np.array(w)))
            bias = torch.from_numpy(np.array(b)) if b is not None else torch.zeros(w.shape[0])
            if bn is None:
                conv.bias.copy_(bias)
            else:
                bn.running_mean.zero_()
                bn.running_var.fill_(1.0 - bn.eps)
                bn.weight.fill_(1.0)
                bn.bias.copy_(bias)
        fc_w = init.get(f"{prefix}fc.weight", init.get("pathway.fc.weight"))
        fc_b = init.get(f"{prefix}fc.bias", init.get("pathway.fc.bias"))
        fc = module.pathway.fc if hasattr(module, "pathway") else module.fc
        fc.weight.copy_(torch.from_numpy(np.array(fc_w)))
        fc.bias.copy_(torch.from_numpy(np.array(fc_b)))
    return None


def recalibrate_bn(model, spec, sheet) -> None:
    """Re-parametrise every BatchNorm so its running statistics are the measured input statistics (eval output unchanged)."""
    import torch
    import torch.nn as nn

    stats = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            def hook(mod, inp, out, name=name):
                x = inp[0].float()
                dims = [0] + list(range(2, x.dim()))
                stats[name] = (x.mean(dim=dims), x.var(dim=dims, unbiased=False))
            hooks.append(m.register_forward_hook(hook))
    model.eval()
    with torch.no_grad():
        model(spec, sheet)
    for h in hooks:
        h.remove()
    with torch.no_grad():
        for name, m in model.named_modules():
            if name in stats:
                mu, var = stats[name]
                var = var.clamp_min(1e-6)
                old_bias = m.bias.detach().clone()
                m.running_mean.copy_(mu)
                m.running_var.copy_(var)
                m.weight.copy_(torch.sqrt(var + m.eps))
                m.bias.copy_(old_bias + mu)


def from_onnx(prefix: str | Path, pack: str | Path | None = None, n: int = 2048, seed: int = 0):
    """A :class:`models.nets.AudioSheetNet` equal to the ONNX model ``prefix`` (``…/NAME`` of NAME_audio.onnx)."""
    import torch

    from scorestream.models.nets import AudioSheetNet, ModelConfig

    prefix = Path(prefix)
    info = json.loads(prefix.with_name(prefix.name + ".json").read_text())
    cfg = ModelConfig.from_dict(info["config"])
    model = AudioSheetNet(cfg)
    a_convs, a_init = _onnx_convs(prefix.with_name(prefix.name + "_audio.onnx"))
    s_convs, s_init = _onnx_convs(prefix.with_name(prefix.name + "_sheet.onnx"))
    _load_pathway(model.audio, a_convs, a_init, "pathway.")
    _load_pathway(model.sheet, s_convs, s_init, "pathway.")
    if pack is not None:
        from scorestream.models.packdata import AugConfig, BatchMaker, Pack

        pk = Pack.load(pack, "cpu")
        maker = BatchMaker(pk, cfg.audio_frames, AugConfig.none(), audio_offset_frames=cfg.audio_offset_frames,
                           sheet_offset_px=cfg.sheet_offset_px)
        g = torch.Generator().manual_seed(seed)
        idx = pk.sample_pairs("train", n, g)
        spec, sheet = maker.batch(idx, train=False)
        recalibrate_bn(model, spec, sheet)
    return model.eval()


def check_against_onnx(model, prefix: str | Path, n: int = 16, seed: int = 0) -> float:
    """Max |onnxruntime - torch| over random inputs for both pathways."""
    import onnxruntime as ort
    import torch

    prefix = Path(prefix)
    rng = np.random.default_rng(seed)
    worst = 0.0
    cfg = model.cfg
    for part, shape, mod in (("audio", (n, 1, cfg.spec_bins, cfg.audio_frames), model.audio),
                             ("sheet", (n, 1, *cfg.sheet_shape), model.sheet)):
        x = rng.random(shape, dtype=np.float32) * (3.0 if part == "audio" else 1.0)
        sess = ort.InferenceSession(str(prefix.with_name(f"{prefix.name}_{part}.onnx")), providers=["CPUExecutionProvider"])
        ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        with torch.no_grad():
            got = mod(torch.from_numpy(x)).numpy()
        worst = max(worst, float(np.abs(ref - got).max()))
    return worst


def main(argv=None) -> int:
    from scorestream.models.embedder import WEIGHTS
    from scorestream.models.nets import save_best

    ap = argparse.ArgumentParser(prog="python -m scorestream.models.conditions.onnx_init", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="shipped model name (models/weights/NAME) or a path prefix")
    ap.add_argument("--pack", default=None, help="training pack for the BatchNorm statistics (recommended)")
    ap.add_argument("--out", required=True, help="best.pt to write")
    a = ap.parse_args(argv)
    prefix = Path(a.model) if "/" in a.model else WEIGHTS / a.model
    model = from_onnx(prefix, a.pack)
    diff = check_against_onnx(model, prefix)
    print(f"{prefix.name}: max |onnxruntime - torch| = {diff:.2e}")
    if diff > 1e-4:
        raise SystemExit(f"import does not reproduce the ONNX model (max difference {diff:.2e})")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    save_best(a.out, model, {"step": 0, "source": f"imported from {prefix}_{{audio,sheet}}.onnx", "onnx_max_abs_diff": diff})
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
