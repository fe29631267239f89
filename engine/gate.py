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
