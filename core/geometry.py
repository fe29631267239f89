"""Model input geometry, defined once: audio windows and sheet crops (numpy only).

These are the exact crops the training batches use (``models.packdata``
without augmentation), so a model sees the same thing in training,
evaluation and live serving:

* audio: ``F`` frames centred on frame ``f`` — frames ``f - F//2 … f - F//2 + F - 1``,
  zeros outside the performance;
* sheet: strip rows 20…179 and columns ``x - 100 … x + 99`` (160×200 px around the
  staff centre line), ink = 1 / paper = 0 after binarisation at mid-grey, 2×2 box
  averaged to 80×100; white outside the strip.
"""

from __future__ import annotations

import numpy as np

CROP_H, CROP_W = 160, 200      # sheet snippet, strip pixels (rows x cols) around (CENTER_ROW, x)
OUT_H, OUT_W = 80, 100         # network input: the crop box-averaged 2x2
STRIP_HEIGHT = 200             # unrolled strip height; each system is cut +-100 px around its centre line
CENTER_ROW = 100               # strip row of a system's centre line
STAFF_SPACE = 7.2              # strip px between staff lines (verovio's default at an 835 px wide page)
INK_THRESHOLD = 128            # grey < 128 is ink


def audio_windows(spec: np.ndarray, frames: np.ndarray, n_frames: int) -> np.ndarray:
    """(B, bins, F) float32 windows of ``spec`` (T, bins) centred on ``frames``."""
    spec = np.asarray(spec, np.float32)
    frames = np.asarray(frames, np.int64).reshape(-1)
    pos = frames[:, None] + (np.arange(n_frames) - n_frames // 2)[None, :]
    valid = (pos >= 0) & (pos < len(spec))
    out = spec[np.clip(pos, 0, len(spec) - 1)] * valid[:, :, None]
    return np.ascontiguousarray(out.transpose(0, 2, 1))


def ink(strip: np.ndarray) -> np.ndarray:
    """Binary ink image (uint8 1 = black) of a grayscale strip (255 = white)."""
    return (np.asarray(strip) < INK_THRESHOLD).astype(np.uint8)


def sheet_snippets(ink_strip: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """(B, 80, 100) float32 snippets of a binary ink strip (200, W) centred on columns ``xs``."""
    if ink_strip.shape[0] != STRIP_HEIGHT:
        raise ValueError(f"strip must be {STRIP_HEIGHT} px high, got {ink_strip.shape[0]}")
    xs = np.round(np.asarray(xs, np.float64)).astype(np.int64).reshape(-1)
    W = ink_strip.shape[1]
    top = CENTER_ROW - CROP_H // 2
    rows = ink_strip[top: top + CROP_H].astype(np.float32)
    cols = xs[:, None] + (np.arange(CROP_W) - CROP_W // 2)[None, :]
    valid = (cols >= 0) & (cols < W)
    crop = rows[:, np.clip(cols, 0, W - 1)] * valid[None, :, :]  # (160, B, 200)
    crop = crop.transpose(1, 0, 2)
    return crop.reshape(len(xs), OUT_H, 2, OUT_W, 2).mean(axis=(2, 4))
