"""Serving-side embedder: runs the exported ONNX pathways with onnxruntime.

No torch here (the serving install has none).

    emb = Embedder("models/weights/bl1")             # prefix, or the two paths
    a = emb.embed_audio(spec_windows)                 # (B, 92, F) -> (B, 32)
    s = emb.embed_sheet(snippets)                     # (B, 80, 100) in [0, 1], ink = 1 -> (B, 32)

Spectrogram windows are in the training pack's decoded units (pack value /
spec_scale, i.e. the log-filterbank values), F = `emb.audio_frames`.  Sheet
snippets are 160x200 px crops of the unrolled strip (staff centred, staff
space as in the pack) downscaled to 80x100, ink = 1, paper = 0.  Outputs are
L2-normalised float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort


class Embedder:
    def __init__(self, prefix: str | Path | None = None, *, audio_path: str | Path | None = None,
                 sheet_path: str | Path | None = None, providers: list[str] | None = None,
                 batch_size: int = 256, intra_op_threads: int = 0):
        if prefix is not None:
            prefix = Path(prefix)
            audio_path = audio_path or prefix.parent / f"{prefix.name}_audio.onnx"
            sheet_path = sheet_path or prefix.parent / f"{prefix.name}_sheet.onnx"
        if audio_path is None or sheet_path is None:
            raise ValueError("give a prefix or both audio_path and sheet_path")
        for p in (audio_path, sheet_path):
            if not Path(p).is_file():
                raise FileNotFoundError(f"ONNX model not found: {p}")
        if providers is None:
            avail = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]
        opts = ort.SessionOptions()
        if intra_op_threads:
            opts.intra_op_num_threads = int(intra_op_threads)
        self.batch_size = int(batch_size)
        self._audio = ort.InferenceSession(str(audio_path), sess_options=opts, providers=providers)
        self._sheet = ort.InferenceSession(str(sheet_path), sess_options=opts, providers=providers)
        self.providers = self._audio.get_providers()
        self._audio_in = self._audio.get_inputs()[0]
        self._sheet_in = self._sheet.get_inputs()[0]
        a_shape, s_shape = self._audio_in.shape, self._sheet_in.shape
        if len(a_shape) != 4 or len(s_shape) != 4:
            raise ValueError(f"unexpected model input ranks: audio {a_shape}, sheet {s_shape}")
        self.spec_bins = int(a_shape[2])
        self.audio_frames = int(a_shape[3])
        self.sheet_shape = (int(s_shape[2]), int(s_shape[3]))
        self.embed_dim = int(self._audio.get_outputs()[0].shape[1])

    # ---- public
    def embed_audio(self, spec_windows: np.ndarray) -> np.ndarray:
        """(B, bins, F) (or one (bins, F) window) -> (B, embed_dim)."""
        x = self._check(spec_windows, (self.spec_bins, self.audio_frames), "spec_windows")
        return self._run(self._audio, self._audio_in.name, x)

    def embed_sheet(self, snippets: np.ndarray) -> np.ndarray:
        """(B, 80, 100) (or one (80, 100) snippet) in [0, 1], ink = 1 -> (B, embed_dim)."""
        x = self._check(snippets, self.sheet_shape, "snippets")
        lo, hi = float(x.min(initial=0.0)), float(x.max(initial=0.0))
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"snippets must be in [0, 1] (ink = 1), got range [{lo:.3g}, {hi:.3g}]")
        return self._run(self._sheet, self._sheet_in.name, x)

    # ---- internals
    @staticmethod
    def _check(arr, shape: tuple[int, int], what: str) -> np.ndarray:
        x = np.asarray(arr)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or tuple(x.shape[1:]) != tuple(shape):
            raise ValueError(f"{what} must have shape (B, {shape[0]}, {shape[1]}), got {np.shape(arr)}")
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise TypeError(f"{what} must be numeric, got dtype {x.dtype}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            raise ValueError(f"{what} contains NaN or inf")
        return x

    def _run(self, sess, name: str, x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        if n == 0:
            return np.zeros((0, self.embed_dim), np.float32)
        outs = []
        for s in range(0, n, self.batch_size):
            chunk = x[s:s + self.batch_size, None]
            outs.append(sess.run(None, {name: chunk})[0])
        return np.concatenate(outs).astype(np.float32, copy=False)
