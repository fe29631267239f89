"""Train the audio–sheet embedding networks from a training pack.

    python -m scorestream.models.train --pack pack/pack.npz --config baseline --out runs/bl \
        [--device auto|cpu|cuda] [--budget-min 8] [--batch 256] [--lr 1e-3] \
        [--loss infonce|hinge] [--resume]

The pack stays resident on the training device; batches are assembled there
(models/packdata.py).  Training stops when the wall-clock budget is spent (the
budget covers pack loading, training, validation and a reserve for the final
test evaluation; with --resume it is the total over all runs), when
--max-steps is reached, or when the valid MRR has not improved for --patience
validations.  Then the best checkpoint is evaluated on the paper's test
protocol.

Files in --out:
    ckpt.pt       latest state (model, loss, optimiser, step, best score, RNG) for --resume
    best.pt       best model by valid audio-to-sheet MRR: {"config", "state_dict", ...}
    train.log     log lines (also printed)
    metrics.json  test-protocol metrics of best.pt, both directions, plus run statistics
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from scorestream.models import metrics as M
from scorestream.models.nets import AudioSheetNet, ModelConfig, build_model, count_params, load_config, save_best
from scorestream.models.packdata import AugConfig, BatchMaker, Pack, protocol_pairs, valid_subset


# --------------------------------------------------------------------------- loss

class RetrievalLoss(nn.Module):
    """Symmetric InfoNCE over the batch (learnable or fixed temperature), or the
    pairwise hinge ranking loss (margin 0.7, all other batch items as contrastive
    examples, both directions)."""

    def __init__(self, kind: str = "infonce", tau: float = 0.07, learn_tau: bool = True, margin: float = 0.7):
        super().__init__()
        if kind not in ("infonce", "hinge"):
            raise ValueError(f"unknown loss {kind!r}")
        self.kind = kind
        self.margin = float(margin)
        self.log_inv_tau = nn.Parameter(torch.tensor(math.log(1.0 / tau)), requires_grad=learn_tau)

    @property
    def tau(self) -> float:
        return float(torch.exp(-self.log_inv_tau.detach().clamp(max=math.log(100.0))))

    def forward(self, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        a, s = a.float(), s.float()
        sim = a @ s.T
        n = sim.shape[0]
        if self.kind == "infonce":
            logits = sim * self.log_inv_tau.clamp(max=math.log(100.0)).exp()
            target = torch.arange(n, device=sim.device)
            return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        pos = sim.diagonal()
        off = ~torch.eye(n, dtype=torch.bool, device=sim.device)
        a2s = F.relu(self.margin - pos[:, None] + sim)[off]
        s2a = F.relu(self.margin - pos[None, :] + sim)[off]
        return 0.5 * (a2s.mean() + s2a.mean())


# --------------------------------------------------------------------------- embedding / evaluation

@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (AVX512-BF16 or AMX).

    There bf16 autocast makes CPU training ~2.5x faster (measured: 116 vs 41
    pairs/s for the baseline on 2 EPYC cores); elsewhere bf16 is emulated and
    slower than float32, so it stays off."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _autocast(device: torch.device, enabled: bool):
    """bf16 autocast where it pays: CUDA, and CPUs with native bf16 (else a no-op)."""
    if enabled and (device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _optimise(fmodel, loss_fn, opt, spec: torch.Tensor, sheet: torch.Tensor, device: torch.device, amp: bool) -> torch.Tensor:
    """One optimiser step on one batch; returns the (detached later) loss."""
    with _autocast(device, amp):
        a, s = fmodel(spec, sheet)
    loss = loss_fn(a, s)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


@torch.no_grad()
def embed_pairs(model: AudioSheetNet, maker: BatchMaker, pair_idx, batch: int = 1024,
                amp: bool = True, channels_last: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (no augmentation, no jitter) embeddings of pairs: (audio, sheet) numpy."""
    was_training = model.training
    model.eval()
    dev = maker.device
    idx = torch.as_tensor(np.asarray(pair_idx), device=dev, dtype=torch.long)
    outs_a, outs_s = [], []
    for s in range(0, idx.numel(), batch):
        spec, sheet = maker.batch(idx[s:s + batch], train=False)
        if channels_last:
            spec = spec.contiguous(memory_format=torch.channels_last)
            sheet = sheet.contiguous(memory_format=torch.channels_last)
        with _autocast(dev, amp):
            a, b = model(spec, sheet)
        outs_a.append(a.float().cpu())
        outs_s.append(b.float().cpu())
    model.train(was_training)
    return torch.cat(outs_a).numpy(), torch.cat(outs_s).numpy()


def evaluate_pairs(model, maker, pair_idx, **kw) -> dict:
    a, s = embed_pairs(model, maker, pair_idx, **kw)
    return M.both_directions(a, s)


def evaluate_test_protocol(model, pack: Pack, maker: BatchMaker, n: int = 10000, **kw) -> tuple[dict, dict]:
    idx, info = protocol_pairs(pack, n)
    if len(idx) < 2:
        raise ValueError(f"test protocol selects {len(idx)} pairs: {info}")
    return evaluate_pairs(model, maker, idx, **kw), info


# --------------------------------------------------------------------------- training

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    return torch.device(name)


def lr_factor(progress: float, step: int, warmup: int, sched: str) -> float:
    w = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    p = min(max(progress, 0.0), 1.0)
    if sched == "cosine":
        f = 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * p))
    elif sched == "step":
        f = 1.0 if p < 0.6 else (0.1 if p < 0.85 else 0.01)
    else:
        f = 1.0
    return w * f


class Logger:
    def __init__(self, path: Path):
        self.fh = open(path, "a", buffering=1)

    def __call__(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        self.fh.write(line + "\n")

    def close(self) -> None:
        self.fh.close()


def _rng_state(gen: torch.Generator) -> dict:
    st = {"torch": torch.get_rng_state(), "gen": gen.get_state(), "numpy": np.random.get_state(),
          "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(st["torch"])
    gen.set_state(st["gen"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        with contextlib.suppress(Exception):
            torch.cuda.set_rng_state_all(st["cuda"])


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, str(tmp))
    os.replace(tmp, path)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m scorestream.models.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pack", required=True, help="pack.npz (models/PACK.md)")
    p.add_argument("--config", default="baseline", help="section of the model config TOML (baseline|long)")
    p.add_argument("--model-config", default=None, help="model config TOML (default configs/model.toml)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--budget-min", type=float, default=8.0, help="wall-clock budget in minutes (total over resumes)")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: no limit)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--sched", default="cosine", choices=["cosine", "step", "const"])
    p.add_argument("--warmup", type=int, default=200, help="linear LR warm-up steps")
    p.add_argument("--loss", default="infonce", choices=["infonce", "hinge"])
    p.add_argument("--tau", type=float, default=0.07, help="InfoNCE temperature (initial value if learnable)")
    p.add_argument("--fixed-tau", action="store_true", help="do not learn the temperature")
    p.add_argument("--margin", type=float, default=0.7, help="hinge loss margin")
    p.add_argument("--no-aug", action="store_true", help="no augmentation (jitter included)")
    p.add_argument("--val-every", type=int, default=250)
    p.add_argument("--val-pairs", type=int, default=2000)
    p.add_argument("--test-pairs", type=int, default=10000)
    p.add_argument("--patience", type=int, default=20, help="validations without improvement before stopping")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch default)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--no-amp", action="store_true", help="no bf16 autocast (default: on for CUDA and for CPUs with native bf16)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt if present")
    p.add_argument("--init", default=None, help="start from the weights of a best.pt/ckpt.pt (fine-tuning); config taken from it")
    p.add_argument("--audio-offset-frames", type=int, default=None, metavar="N",
                   help="audio window position relative to the onset frame (ModelConfig.audio_offset_frames; "
                        "-20 with 42 frames: the window ends at the onset, a causal model); default: the config's")
    p.add_argument("--sheet-offset-px", type=int, default=None, metavar="PX",
                   help="sheet crop centre relative to the notehead column (ModelConfig.sheet_offset_px); default: the config's")
    p.add_argument("--benchmark", type=int, default=0, metavar="N",
                   help="only measure throughput over N training steps (batch assembly and full step), then exit")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    t_start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = Logger(out / "train.log")
    try:
        return _run(args, out, log, t_start)
    finally:
        log.close()


def _run(args, out: Path, log: Logger, t_start: float) -> dict:
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    amp = (cuda or cpu_has_native_bf16()) and not args.no_amp
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    ckpt_path = out / "ckpt.pt"
    ckpt = None
    init = None
    if args.resume and ckpt_path.exists():
        ckpt = torch.load(str(ckpt_path), map_location="cpu", weights_only=False)
        cfg = ModelConfig.from_dict(ckpt["config"])
        log(f"resuming from {ckpt_path} at step {ckpt['step']}")
    elif args.init:
        init = torch.load(str(args.init), map_location="cpu", weights_only=False)
        cfg = ModelConfig.from_dict(init["config"])
        log(f"fine-tuning from {args.init} (fresh optimiser, schedule and budget)")
    else:
        cfg = load_config(args.config, args.model_config)

    if ckpt is None and (args.audio_offset_frames is not None or args.sheet_offset_px is not None):
        d = cfg.to_dict()
        if args.audio_offset_frames is not None:
            d["audio_offset_frames"] = args.audio_offset_frames
        if args.sheet_offset_px is not None:
            d["sheet_offset_px"] = args.sheet_offset_px
        cfg = ModelConfig.from_dict(d)

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    gen = torch.Generator(device=device)
    gen.manual_seed(args.seed)

    pack = Pack.load(args.pack, device)
    aug = AugConfig.none() if args.no_aug else AugConfig()
    maker = BatchMaker(pack, cfg.audio_frames, aug, audio_offset_frames=cfg.audio_offset_frames,
                       sheet_offset_px=cfg.sheet_offset_px)
    model = build_model(cfg).to(device)
    model = model.to(memory_format=torch.channels_last)
    loss_fn = RetrievalLoss(args.loss, args.tau, not args.fixed_tau, args.margin).to(device)
    params = list(model.parameters()) + [p for p in loss_fn.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=args.lr)

    step, pairs_seen, prior_train_s = 0, 0, 0.0
    best, best_step, bad = -1.0, -1, 0
    if init is not None:
        model.load_state_dict(init.get("state_dict") or init["model"])
        if "loss" in init:
            loss_fn.load_state_dict(init["loss"])
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        loss_fn.load_state_dict(ckpt["loss"])
        opt.load_state_dict(ckpt["optimizer"])
        step, pairs_seen, prior_train_s = ckpt["step"], ckpt["pairs_seen"], ckpt["elapsed_s"]
        best, best_step, bad = ckpt["best_score"], ckpt["best_step"], ckpt["bad_evals"]
        _set_rng_state(ckpt["rng"], gen)
    fmodel = torch.compile(model) if args.compile else model
    if args.benchmark:
        return _benchmark(args, device, pack, maker, fmodel, loss_fn, opt, gen, amp, log)

    valid_idx = valid_subset(pack, args.val_pairs)
    log(f"device {device} | pack {args.pack}: {pack.n_pairs} pairs, {pack.nbytes() / 2**20:.1f} MiB on device | "
        f"valid {len(valid_idx)} pairs")
    log(f"model {cfg.name or args.config}: audio_frames={cfg.audio_frames} attention={cfg.attention} "
        f"offsets audio={cfg.audio_offset_frames} frames sheet={cfg.sheet_offset_px} px "
        f"params audio={count_params(model.audio)} sheet={count_params(model.sheet)} | loss {args.loss} "
        f"batch {args.batch} lr {args.lr} sched {args.sched} amp={amp} compile={args.compile}")

    budget_s = args.budget_min * 60.0
    setup_s = time.time() - t_start
    t_loop = time.time()
    est_final_s = 5.0  # refined after the first validation

    def train_elapsed() -> float:
        return prior_train_s + (time.time() - t_loop)

    def time_left() -> float:
        return budget_s - setup_s - train_elapsed() - est_final_s

    def progress() -> float:
        p = train_elapsed() / max(1e-9, budget_s - setup_s - est_final_s)
        if args.max_steps:
            p = max(p, step / args.max_steps)
        return p

    def validate() -> float:
        nonlocal best, best_step, bad, est_final_s
        t0 = time.time()
        res = evaluate_pairs(model, maker, valid_idx, amp=amp, channels_last=True)  # eager: no recompiles
        dt = time.time() - t0
        est_final_s = 2.0 + dt * max(1.0, min(args.test_pairs, pack.n_pairs) / max(1, len(valid_idx)))
        mrr = res["A2S"]["MRR"]
        improved = mrr > best
        if improved:
            best, best_step, bad = mrr, step, 0
            save_best(out / "best.pt", model, {"step": step, "valid": res})
        else:
            bad += 1
        log(f"valid step {step}: A2S MRR {mrr:.4f} R@1 {res['A2S']['R@1']:.1f} | S2A MRR {res['S2A']['MRR']:.4f} "
            f"| best {best:.4f} @ {best_step}{' *' if improved else ''} ({dt:.1f} s)")
        _atomic_save({
            "config": cfg.to_dict(), "model": model.state_dict(), "loss": loss_fn.state_dict(),
            "optimizer": opt.state_dict(), "step": step, "pairs_seen": pairs_seen,
            "elapsed_s": train_elapsed(), "best_score": best, "best_step": best_step, "bad_evals": bad,
            "rng": _rng_state(gen), "args": vars(args),
        }, ckpt_path)
        return mrr

    model.train()
    loss_acc = torch.zeros((), device=device)
    n_acc, t_log, last_val_step = 0, time.time(), step if ckpt is not None else -1
    stop_reason = ""
    while True:
        if args.max_steps and step >= args.max_steps:
            stop_reason = "max steps"
            break
        if time_left() <= 0:
            stop_reason = "budget"
            break
        if bad >= args.patience:
            stop_reason = "early stopping"
            break
        for g_ in opt.param_groups:
            g_["lr"] = args.lr * lr_factor(progress(), step, args.warmup, args.sched)
        idx = pack.sample_pairs("train", args.batch, gen)
        spec, sheet = maker.batch(idx, train=True, generator=gen)
        spec = spec.contiguous(memory_format=torch.channels_last)
        sheet = sheet.contiguous(memory_format=torch.channels_last)
        loss = _optimise(fmodel, loss_fn, opt, spec, sheet, device, amp)
        step += 1
        pairs_seen += args.batch
        loss_acc += loss.detach()
        n_acc += 1
        if step % args.log_every == 0:
            lval = float(loss_acc) / n_acc   # syncs
            now = time.time()
            log(f"step {step} loss {lval:.4f} lr {opt.param_groups[0]['lr']:.2e} tau {loss_fn.tau:.4f} "
                f"{n_acc * args.batch / (now - t_log):.0f} pairs/s elapsed {train_elapsed():.0f} s")
            loss_acc.zero_()
            n_acc, t_log = 0, now
        if step % args.val_every == 0:
            validate()
            last_val_step = step
            t_log = time.time()
    if last_val_step != step:
        validate()
    train_s = train_elapsed()
    log(f"stopped ({stop_reason}) at step {step}: {pairs_seen} pairs seen, training time {train_s:.1f} s")

    # ---- final evaluation of the best model
    best_obj = torch.load(str(out / "best.pt"), map_location=device, weights_only=False)
    model.load_state_dict(best_obj["state_dict"])
    try:
        res, info = evaluate_test_protocol(model, pack, maker, args.test_pairs, amp=amp, channels_last=True)
    except ValueError as e:            # a pack without test pieces (a fine-tuning pack): report on conditions instead
        log(f"no test-protocol evaluation: {e}")
        res, info = None, {"skipped": str(e)}
    wall = time.time() - t_start
    result = {
        "config": cfg.to_dict(), "test": res, "protocol": info,
        "valid_best_mrr": best, "best_step": best_step, "steps": step, "pairs_seen": pairs_seen,
        "train_s": train_s, "wall_s": wall, "stop_reason": stop_reason, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
        "batch": args.batch, "loss": args.loss, "tau": loss_fn.tau, "published": M.PUBLISHED,
    }
    with open(out / "metrics.json", "w") as fh:
        json.dump(result, fh, indent=2)
    log("test protocol " + json.dumps(info))
    if res is not None:
        log("\n" + M.format_table(res, name=cfg.name or args.config))
    log(f"pairs seen {pairs_seen}, wall time {wall:.1f} s this run (training {train_s:.1f} s over all runs)")
    return result


def _benchmark(args, device, pack, maker, fmodel, loss_fn, opt, gen, amp, log) -> dict:
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def assemble():
        idx = pack.sample_pairs("train", args.batch, gen)
        spec, sheet = maker.batch(idx, train=True, generator=gen)
        spec = spec.contiguous(memory_format=torch.channels_last)
        sheet = sheet.contiguous(memory_format=torch.channels_last)
        return spec, sheet

    def train_step():
        spec, sheet = assemble()
        _optimise(fmodel, loss_fn, opt, spec, sheet, device, amp)

    res = {}
    for name, fn in (("batch_assembly", assemble), ("train_step", train_step)):
        for _ in range(3):
            fn()
        sync()
        t0 = time.time()
        for _ in range(args.benchmark):
            fn()
        sync()
        dt = time.time() - t0
        res[name] = args.batch * args.benchmark / dt
        log(f"benchmark {name}: {res[name]:.0f} pairs/s (batch {args.batch}, {args.benchmark} steps, {dt:.2f} s)")
    if cuda:
        res["max_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        log(f"benchmark max GPU memory {res['max_mem_gib']:.2f} GiB")
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
