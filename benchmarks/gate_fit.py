"""Fit the music / not-music classifier of the tracker's gate (engine/gate.py) and write
configs/gate.toml.

    python benchmarks/gate_fit.py --train-corpus data/corpus_train --valid-corpus data/corpus \
        [--out configs/gate.toml] [--json benchmarks/results/gate_fit.json]

Training: windows of the training split's music (every corpus timbre, plain and concert
takes with rooms) against generated non-music (engine/nonmusic.py): speech from one set of
espeak-ng voices and sentences, noise of random spectral slopes, applause, hum, room tone.
Validation (threshold and the reported numbers): the valid split's music, and non-music from
other voices, other sentences and other seeds.  Only windows that pass the gate's fixed
thresholds (silence / flat noise / steady) reach the classifier, so only those are used.
The threshold is the largest p(not music) that keeps at most ``--max-music-loss`` of the
valid music windows rejected.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scorestream.core.frontend import FrontEndConfig, spectrogram  # noqa: E402
from scorestream.engine import nonmusic  # noqa: E402
from scorestream.engine.gate import FEATURES, GateConfig, gate_features, gate_vector  # noqa: E402

WINDOW = 42                   # frames per window (the default audio model's 2.1 s)
TRAIN_VOICES = {"en": ["en-gb", "en-gb-scotland", "en-029", "en-gb+m1", "en-029+f2"], "de": ["de", "de+m1", "de+f4"]}
VALID_VOICES = {"en": ["en-us", "en-gb-x-rp+f3", "en-us+Andy"], "de": ["de+f3", "de+m3"]}


def windows(frames: np.ndarray, step: int, rng: np.random.Generator, limit: int | None = None) -> list[np.ndarray]:
    starts = list(range(0, max(0, len(frames) - WINDOW), step))
    if limit is not None and len(starts) > limit:
        starts = sorted(rng.choice(starts, limit, replace=False))
    return [frames[s:s + WINDOW].T for s in starts]


def passes_fixed_gate(w: np.ndarray, cfg=GateConfig()) -> bool:
    return gate_features(w, cfg).reason(cfg) is None


def music_set(corpus: str, split: str, per_take: int, rng: np.random.Generator, max_pieces: int | None) -> tuple[np.ndarray, list]:
    from scorestream.models.corpus.reader import Corpus

    c = Corpus(corpus)
    ids = c.piece_ids(split)
    if max_pieces is not None and len(ids) > max_pieces:
        ids = [ids[i] for i in sorted(rng.choice(len(ids), max_pieces, replace=False))]
    X, tags = [], []
    for k, pid in enumerate(ids):
        p = c.piece(pid)
        for j in range(len(p.meta["performances"])):
            spec, _ = p.performance(j)
            for w in windows(spec, 10, rng, per_take):
                if passes_fixed_gate(w):
                    X.append(gate_vector(w))
                    tags.append(("music", pid))
        if (k + 1) % 50 == 0:
            print(f"  music {split}: {k + 1}/{len(ids)} pieces, {len(X)} windows", flush=True)
    return np.array(X), tags


def nonmusic_set(valid: bool, seconds: float, seed: int) -> tuple[np.ndarray, list]:
    fe = FrontEndConfig()
    sr = fe.sample_rate
    rng = np.random.default_rng(seed)
    items = []
    for lang in ("en", "de"):
        texts = nonmusic.TEXTS[lang]
        texts = texts[-1:] if valid else texts[:-1]
        voices = (VALID_VOICES if valid else TRAIN_VOICES)[lang]
        items.append((f"speech_{lang}", nonmusic.speech(2 * seconds, lang, rng, sr, voices=voices, texts=texts)))
    if valid:
        for color in ("white", "pink", "brown"):
            items.append((f"noise_{color}", nonmusic.noise(seconds, color, rng, sr)))
    else:
        for _ in range(6):
            items.append(("noise", nonmusic.noise(seconds / 3, float(rng.uniform(0.0, 2.5)), rng, sr)))
    items.append(("applause", nonmusic.applause(seconds, rng, sr)))
    items.append(("hum", np.concatenate([nonmusic.hum(seconds / 4, rng, sr) for _ in range(4)])))
    items.append(("room_tone", nonmusic.silence(seconds / 2, rng, sr, floor_dbfs=float(rng.uniform(-75, -55)))))
    X, tags = [], []
    for kind, y in items:
        for w in windows(spectrogram(y, fe), 5, rng):
            if passes_fixed_gate(w):
                X.append(gate_vector(w))
                tags.append((kind, ""))
    return np.array(X), tags


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = 1e-2, iters: int = 50) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Class-balanced L2 logistic regression by Newton's method on standardised features."""
    mean, scale = X.mean(axis=0), X.std(axis=0) + 1e-9
    Z = np.hstack([(X - mean) / scale, np.ones((len(X), 1))])
    sw = np.where(y == 1, 0.5 / max(1, y.sum()), 0.5 / max(1, (1 - y).sum())) * len(y)
    w = np.zeros(Z.shape[1])
    reg = np.full(Z.shape[1], l2)
    reg[-1] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(Z @ w, -60, 60)))
        g = Z.T @ (sw * (p - y)) / len(y) + reg * w
        H = (Z * (sw * p * (1 - p))[:, None]).T @ Z / len(y) + np.diag(reg + 1e-9)
        step = np.linalg.solve(H, g)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return mean, scale, w[:-1], float(w[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-corpus", required=True)
    ap.add_argument("--valid-corpus", required=True)
    ap.add_argument("--train-pieces", type=int, default=300)
    ap.add_argument("--per-take", type=int, default=40)
    ap.add_argument("--nonmusic-s", type=float, default=240.0)
    ap.add_argument("--max-music-loss", type=float, default=0.01, help="share of valid music windows the classifier may reject")
    ap.add_argument("--out", default=str(REPO / "configs" / "gate.toml"))
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "results" / "gate_fit.json"))
    a = ap.parse_args(argv)
    t0 = time.time()
    rng = np.random.default_rng(0)
    Xm, _ = music_set(a.train_corpus, "train", a.per_take, rng, a.train_pieces)
    Xn, tn = nonmusic_set(False, a.nonmusic_s, 1)
    print(f"train: {len(Xm)} music, {len(Xn)} non-music windows ({time.time() - t0:.0f} s)", flush=True)
    X = np.vstack([Xm, Xn])
    y = np.concatenate([np.zeros(len(Xm)), np.ones(len(Xn))])
    mean, scale, w, b = fit_logistic(X, y)

    def p_of(Xs):
        return 1.0 / (1.0 + np.exp(-np.clip(((Xs - mean) / scale) @ w + b, -60, 60)))

    Vm, _ = music_set(a.valid_corpus, "valid", a.per_take, np.random.default_rng(2), None)
    Vn, vt = nonmusic_set(True, a.nonmusic_s / 2, 3)
    pm, pn = p_of(Vm), p_of(Vn)
    thr = float(np.quantile(pm, 1.0 - a.max_music_loss))
    kinds = sorted({k for k, _ in vt})
    per_kind = {k: float(np.mean(pn[[i for i, (kk, _) in enumerate(vt) if kk == k]] > thr)) for k in kinds}
    res = {"features": list(FEATURES), "train": {"music": len(Xm), "nonmusic": len(Xn)},
           "valid": {"music": len(Vm), "nonmusic": len(Vn)}, "threshold": thr,
           "valid_music_rejected": float(np.mean(pm > thr)),
           "valid_nonmusic_rejected": float(np.mean(pn > thr)), "valid_nonmusic_rejected_per_kind": per_kind,
           "train_music_rejected": float(np.mean(p_of(Xm) > thr)), "train_nonmusic_rejected": float(np.mean(p_of(Xn) > thr)),
           "weights": dict(zip(FEATURES, map(float, w))), "wall_s": time.time() - t0}
    print(json.dumps({k: v for k, v in res.items() if k != "weights"}, indent=1))
    fmt = lambda v: "[" + ", ".join(f"{x:.6g}" for x in v) + "]"  # noqa: E731
    Path(a.out).write_text(
        "# The tracker gate's music / not-music classifier (engine/gate.py MusicClassifier).\n"
        "# Written by benchmarks/gate_fit.py: logistic model on the features below, fitted on training-split\n"
        "# music against generated speech / noise / applause / hum (engine/nonmusic.py); the threshold keeps\n"
        f"# {a.max_music_loss:.1%} of the valid split's music windows rejected at most.  Measured on valid:\n"
        f"# music rejected {res['valid_music_rejected']:.2%}, non-music rejected {res['valid_nonmusic_rejected']:.1%} "
        f"({', '.join(f'{k} {v:.0%}' for k, v in per_kind.items())}).\n"
        "[classifier]\n"
        f"features = [{', '.join(json.dumps(f) for f in FEATURES)}]\n"
        f"mean = {fmt(mean)}\nscale = {fmt(scale)}\nweights = {fmt(w)}\nbias = {b:.6g}\nthreshold = {thr:.6g}\n")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(res, indent=1))
    print(f"wrote {a.out} and {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
