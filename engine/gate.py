"""Is there music in this audio window?  Cheap spectral features (pure functions, numpy).

Digital silence and steady noise map to one nearly constant embedding whose nearest
snippet would win every vote; the tracker therefore asks this gate first and lets
only music-like windows count as evidence.  Features of a (bins, frames) log
spectrogram window (log10(1 + x) of filterbank magnitudes):

* ``level``: mean log magnitude — silence is ~0;
* ``flatness``: median over loud frames of the spectral flatness (geometric / arithmetic
  mean of the band magnitudes) — white or pink noise is flat, a piano's partials are peaky;
* ``flux``: mean positive frame-to-frame change relative to the level — music has onsets,
  a steady hum or noise floor has few.

Speech passes the gate on purpose (it is not steady): the tracker's sequential
alignment, not the gate, rejects it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GateConfig:
    min_level: float = 0.02        # mean log10(1+x) below this is silence
    max_flatness: float = 0.55     # spectral flatness above this is noise
    min_flux: float = 0.015        # relative onset strength below this is a steady sound
    loud_frame_level: float = 0.01  # frames quieter than this are ignored for flatness/flux


@dataclass(frozen=True)
class GateFeatures:
    level: float
    flatness: float
    flux: float

    def is_music(self, cfg: GateConfig) -> bool:
        return self.level >= cfg.min_level and self.flatness <= cfg.max_flatness and self.flux >= cfg.min_flux

    def reason(self, cfg: GateConfig) -> str | None:
        if self.level < cfg.min_level:
            return "silence"
        if self.flatness > cfg.max_flatness:
            return "noise"
        if self.flux < cfg.min_flux:
            return "steady"
        return None


def gate_features(spec: np.ndarray, cfg: GateConfig = GateConfig()) -> GateFeatures:
    """Features of one window, ``spec`` (bins, frames) float32."""
    s = np.asarray(spec, np.float32)
    level = float(s.mean()) if s.size else 0.0
    frame_level = s.mean(axis=0)
    loud = frame_level >= cfg.loud_frame_level
    if loud.sum() < 2:
        return GateFeatures(level, 1.0, 0.0)
    mag = np.power(10.0, s[:, loud]) - 1.0 + 1e-6                 # band magnitudes (bins, n)
    geo = np.exp(np.mean(np.log(mag), axis=0))
    flat = float(np.median(geo / mag.mean(axis=0)))
    d = np.diff(s, axis=1)
    flux = float(np.maximum(d, 0).mean() / max(level, 1e-6))
    return GateFeatures(level, flat, flux)


# --------------------------------------------------------------------------- music / not-music classifier
#
# The thresholds above catch silence, flat noise and steady sounds.  Speech, applause and
# coloured (brown) noise pass them: they are loud, not flat, and change.  A small logistic
# model on the features below separates them from music (fitted by benchmarks/gate_fit.py on
# training-split music and generated non-music; weights in configs/gate.toml, chosen and
# checked on held-out music and voices).  It looks at what piano music has and those lack:
# partials that stay on their bands from frame to frame, a spectrum that is peaky, few gaps.

FEATURES = ("level", "flatness", "flatness_p90", "flux", "stability", "peak_persistence", "peaks_per_frame",
            "level_sd", "gap_share", "mod_syllabic", "centroid", "centroid_sd", "low_share", "high_share")
PEAK_PROMINENCE = 0.03        # log10 units above both neighbours (±2 bands) for a spectral peak
LOUD_FRAME_LEVEL = 0.01


def gate_vector(spec: np.ndarray, fps: float = 20.0) -> np.ndarray:
    """The classifier's features of one window ``spec`` (bins, frames): float64 (len(FEATURES),)."""
    s = np.asarray(spec, np.float64)
    b, t = s.shape
    out = np.zeros(len(FEATURES))
    fl = s.mean(axis=0)
    out[0] = np.log10(max(float(fl.mean()), 1e-5))
    loud = fl >= LOUD_FRAME_LEVEL
    if loud.sum() < 3:
        out[1:] = [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.5, 0.0, 0.0, 0.0]
        return out
    sl = s[:, loud]
    mag = np.power(10.0, sl) - 1.0 + 1e-6
    flat = np.exp(np.mean(np.log(mag), axis=0)) / mag.mean(axis=0)
    out[1] = np.median(flat)
    out[2] = np.quantile(flat, 0.9)
    out[3] = np.maximum(np.diff(s, axis=1), 0).mean() / max(float(fl.mean()), 1e-6)
    a = sl - sl.mean(axis=0)
    num = (a[:, 1:] * a[:, :-1]).sum(axis=0)
    den = np.sqrt((a[:, 1:] ** 2).sum(axis=0) * (a[:, :-1] ** 2).sum(axis=0)) + 1e-12
    out[4] = np.median(num / den) if sl.shape[1] > 1 else 0.0
    pk = np.zeros_like(sl, bool)
    mid = sl[2:-2]
    pk[2:-2] = ((mid - np.maximum(sl[:-4], sl[1:-3]) > PEAK_PROMINENCE) & (mid - np.maximum(sl[4:], sl[3:-1]) > PEAK_PROMINENCE))
    n_pk = pk.sum(axis=0)
    both = (pk[:, 1:] & (pk[:, :-1] | np.roll(pk[:, :-1], 1, axis=0) | np.roll(pk[:, :-1], -1, axis=0))).sum(axis=0)
    out[5] = both.sum() / max(1, n_pk[1:].sum())
    out[6] = np.median(n_pk) / b
    lf = np.log10(fl + 1e-4)
    out[7] = lf.std()
    out[8] = np.mean(fl < 0.2 * np.quantile(fl, 0.9))
    env = fl - fl.mean()
    if t >= 8:
        p = np.abs(np.fft.rfft(env * np.hanning(t))) ** 2
        f = np.fft.rfftfreq(t, 1.0 / fps)
        out[9] = p[(f >= 2.5) & (f <= 7.0)].sum() / max(p[f > 0.4].sum(), 1e-12)
    else:
        out[9] = 0.5
    w = mag / mag.sum(axis=0)
    cen = (np.arange(b)[:, None] * w).sum(axis=0) / b
    out[10] = cen.mean()
    out[11] = cen.std()
    tot = mag.sum()
    out[12] = mag[: b // 6].sum() / tot
    out[13] = mag[-(b // 4):].sum() / tot
    return out


@dataclass(frozen=True)
class MusicClassifier:
    """Logistic model: p(not music) = sigmoid(w . (x - mean) / scale + bias); not music above ``threshold``."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    threshold: float

    def p_not_music(self, x: np.ndarray) -> float:
        z = float(np.dot(self.weights, (np.asarray(x) - self.mean) / np.asarray(self.scale)) + self.bias)
        return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))

    def is_music(self, spec: np.ndarray, fps: float = 20.0) -> bool:
        return self.p_not_music(gate_vector(spec, fps)) <= self.threshold

    @classmethod
    def load(cls, path=None) -> "MusicClassifier | None":
        """``configs/gate.toml`` (or ``path``); None when the file has no ``[classifier]``."""
        from scorestream.core.config import CONFIG_DIR, read_toml

        data = read_toml(path or CONFIG_DIR / "gate.toml").get("classifier")
        if not data:
            return None
        if tuple(data.get("features", ())) != FEATURES:
            raise ValueError(f"{path or 'configs/gate.toml'}: classifier features {data.get('features')} "
                             f"do not match this version's {FEATURES}; refit with benchmarks/gate_fit.py")
        return cls(tuple(data["mean"]), tuple(data["scale"]), tuple(data["weights"]), float(data["bias"]),
                   float(data["threshold"]))
