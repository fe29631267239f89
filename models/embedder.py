"""Serving-side embedder: runs the exported ONNX pathways with onnxruntime.

No torch here (the serving install has none).

    emb = OnnxEmbedder("models/weights/bl1")         # prefix, or the two paths
    a = emb.embed_audio(spec_windows)                 # (B, 92, F) -> (B, 32)
    s = emb.embed_sheet(snippets)                     # (B, 80, 100) in [0, 1], ink = 1 -> (B, 32)

    emb = load_embedder("bl1_2s+bl2_4s_at")           # an ensemble of shipped models, same interface

Spectrogram windows are in the training pack's decoded units (pack value /
spec_scale, i.e. the log-filterbank values), F = `emb.audio_frames`.  Sheet
snippets are 160x200 px crops of the unrolled strip (staff centred, staff
space as in the pack) downscaled to 80x100, ink = 1, paper = 0.  Outputs are
L2-normalised float32.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import onnxruntime as ort

from scorestream.core.errors import IncompatibleModelError
from scorestream.core.spec import ModelInputSpec

WEIGHTS = Path(__file__).resolve().parent / "weights"
_REEXPORT = "re-export it with 'python -m scorestream.models.export --ckpt CKPT --out PREFIX'"


@runtime_checkable
class Embedder(Protocol):
    """What the library, the tracker and the server need of a model (single or ensemble)."""

    name: str
    spec_bins: int
    audio_frames: int              # spectrogram frames per audio window
    sheet_shape: tuple[int, int]   # network input (rows, cols) of a sheet snippet
    embed_dim: int
    input_spec: ModelInputSpec
    fingerprint: str               # identifies the weights (hash of the ONNX files)

    def embed_audio(self, spec_windows: np.ndarray) -> np.ndarray: ...

    def embed_sheet(self, snippets: np.ndarray) -> np.ndarray: ...


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_input_spec(json_path: Path) -> ModelInputSpec:
    """The ModelInputSpec stored in an export's NAME.json."""
    if not json_path.is_file():
        raise IncompatibleModelError(f"{json_path} is missing: the model's input contract is unknown; {_REEXPORT}")
    try:
        info = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise IncompatibleModelError(f"{json_path}: unreadable model description ({exc}); {_REEXPORT}") from exc
    if "input_spec" not in info:
        raise IncompatibleModelError(f"{json_path} has no input_spec; {_REEXPORT}")
    return ModelInputSpec.from_json(info["input_spec"])


class OnnxEmbedder:
    """One exported model (audio + sheet pathway) run by onnxruntime; satisfies :class:`Embedder`."""

    def __init__(self, prefix: str | Path | None = None, *, audio_path: str | Path | None = None,
                 sheet_path: str | Path | None = None, providers: list[str] | None = None,
                 batch_size: int = 256, intra_op_threads: int = 0, check_spec: bool = True):
        if prefix is not None:
            prefix = Path(prefix)
            audio_path = audio_path or prefix.parent / f"{prefix.name}_audio.onnx"
            sheet_path = sheet_path or prefix.parent / f"{prefix.name}_sheet.onnx"
        if audio_path is None or sheet_path is None:
            raise ValueError("give a prefix or both audio_path and sheet_path")
        for p in (audio_path, sheet_path):
            if not Path(p).is_file():
                raise FileNotFoundError(f"ONNX model not found: {p}")
        self.name = Path(audio_path).name.removesuffix(".onnx").removesuffix("_audio")
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
        self.fingerprint = hashlib.sha256((_sha256(Path(audio_path)) + _sha256(Path(sheet_path))).encode()).hexdigest()[:16]
        serving = ModelInputSpec.serving(self.audio_frames, self.embed_dim)
        json_path = Path(audio_path).with_name(f"{self.name}.json")
        if check_spec:
            stored = read_input_spec(json_path)
            stored.require_equal(serving, f"model {self.name} ({json_path})",
                                 "this scorestream computes other features than the model was trained on; "
                                 "use the scorestream version it was exported with, or retrain")
            if stored.sheet_input != self.sheet_shape or stored.spec_bins != self.spec_bins:
                raise IncompatibleModelError(f"{json_path}: input spec does not match the ONNX input shapes; {_REEXPORT}")
        self.input_spec = serving
        # where the onset sits in the inputs (models.nets.ModelConfig; 0, 0 = centred)
        cfg = {}
        if json_path.is_file():
            try:
                cfg = json.loads(json_path.read_text()).get("config", {}) or {}
            except (OSError, json.JSONDecodeError):
                cfg = {}
        self.audio_offset_frames = int(cfg.get("audio_offset_frames", 0))
        self.sheet_offset_px = int(cfg.get("sheet_offset_px", 0))

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


class EnsembleEmbedder:
    """Several embedders used as one model.

    Why: two independently trained pathways make partly independent mistakes;
    averaging their cosine similarities retrieves better than either alone
    (measured on the corpus test split, 10,000 candidates: bl1_2s 58.8 %,
    bl2_4s_at 54.6 %, both together 64.5 % audio-to-sheet R@1).  Member
    embeddings are concatenated and each scaled by 1/sqrt(k), so the result is
    still L2-normalised and its dot product is the mean of the members' cosines —
    everything downstream (index, tracker) treats it like one wider model.

    Audio windows are cut for the longest member (``audio_frames``); a member
    with a shorter context gets the centred part of that window, which is
    exactly the window it would have been given on its own.
    """

    def __init__(self, members: list[OnnxEmbedder]):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        bins = {m.spec_bins for m in members}
        shapes = {tuple(m.sheet_shape) for m in members}
        if len(bins) != 1 or len(shapes) != 1:
            raise ValueError(f"ensemble members disagree on input shapes: spec bins {sorted(bins)}, sheet {sorted(shapes)}")
        self.members = list(members)
        self.name = "+".join(m.name for m in members)
        self.spec_bins = bins.pop()
        self.sheet_shape = shapes.pop()
        # a centred window around the onset frame that holds every member's own window
        # (a member trained with audio_offset_frames sits off-centre in it)
        spans = [(int(getattr(m, "audio_offset_frames", 0)) - m.audio_frames // 2, m.audio_frames) for m in members]
        half = max(max(-lo, lo + n) for lo, n in spans)
        self.audio_frames = 2 * half if any(lo != -(n // 2) for lo, n in spans) else max(n for _, n in spans)
        self.embed_dim = sum(m.embed_dim for m in members)
        self.providers = members[0].providers
        self._scale = np.float32(1.0 / np.sqrt(len(members)))
        self.fingerprint = hashlib.sha256("+".join(m.fingerprint for m in members).encode()).hexdigest()[:16]
        self.input_spec = ModelInputSpec.serving(self.audio_frames, self.embed_dim)
        self.audio_offset_frames = 0      # the ensemble's window is centred; each member takes its own part
        offs = {int(getattr(m, "sheet_offset_px", 0)) for m in self.members}
        # one crop serves all members only when they agree; else use embed_sheet_at (per-member crops)
        self.sheet_offset_px = offs.pop() if len(offs) == 1 else None
        for m in self.members:
            start = self._member_start(m)
            if not 0 <= start <= self.audio_frames - m.audio_frames:
                raise ValueError(f"ensemble member {m.name}: its audio window (offset {m.audio_offset_frames} frames) "
                                 f"does not fit in the ensemble's {self.audio_frames}-frame window")

    def _member_start(self, m) -> int:
        """First frame of member ``m``'s window inside the ensemble's (both about the same onset frame)."""
        return self.audio_frames // 2 - m.audio_frames // 2 + int(getattr(m, "audio_offset_frames", 0))

    def embed_audio(self, spec_windows: np.ndarray) -> np.ndarray:
        """(B, bins, F) with F = ``audio_frames`` (the longest member's) -> (B, embed_dim)."""
        x = OnnxEmbedder._check(spec_windows, (self.spec_bins, self.audio_frames), "spec_windows")
        outs = []
        for m in self.members:
            off = self._member_start(m)
            outs.append(m.embed_audio(x[:, :, off: off + m.audio_frames]))
        return self.combine(outs)

    def embed_sheet(self, snippets: np.ndarray) -> np.ndarray:
        """(B, 80, 100) in [0, 1], ink = 1 -> (B, embed_dim).  Needs members that agree on
        ``sheet_offset_px`` (the crops are cut once); otherwise use :func:`embed_sheet_at`."""
        if self.sheet_offset_px is None:
            raise ValueError(f"ensemble {self.name}: members crop the sheet at different offsets; "
                             "embed with embed_sheet_at(embedder, ink_strip, xs)")
        return self.combine([m.embed_sheet(snippets) for m in self.members])

    def combine(self, member_embeddings: list[np.ndarray]) -> np.ndarray:
        """The ensemble embedding from the members' own embeddings (in member order).

        Lets a caller that already has each member's embeddings (evaluation of
        several models over the same pairs) build the ensemble's without running
        the networks again."""
        if len(member_embeddings) != len(self.members):
            raise ValueError(f"need one embedding array per member ({len(self.members)}), got {len(member_embeddings)}")
        return np.concatenate(member_embeddings, axis=1) * self._scale


def embed_sheet_at(embedder, ink_strip: np.ndarray, xs) -> np.ndarray:
    """Sheet embeddings for notehead columns ``xs`` of a binary ink strip (200, W), each model's
    crop placed as it was trained (its ``sheet_offset_px``; ensemble members one by one)."""
    from scorestream.core.geometry import sheet_snippets

    xs = np.round(np.asarray(xs, np.float64)).astype(np.int64).reshape(-1)
    off = getattr(embedder, "sheet_offset_px", 0)
    if off is not None:
        return embedder.embed_sheet(sheet_snippets(ink_strip, xs + int(off)))
    return embedder.combine([embed_sheet_at(m, ink_strip, xs) for m in embedder.members])


def audio_windows_at(embedder, spec: np.ndarray, frames) -> np.ndarray:
    """(B, bins, F) audio windows for onset ``frames`` of ``spec`` (T, bins), placed as the model
    was trained (``audio_offset_frames``; an ensemble's members take their parts themselves)."""
    from scorestream.core.geometry import audio_windows

    frames = np.asarray(frames, np.int64).reshape(-1)
    return audio_windows(spec, frames + int(getattr(embedder, "audio_offset_frames", 0)), embedder.audio_frames)


def _member_prefix(part: str, weights: Path) -> Path:
    p = Path(part)
    if p.parent != Path(".") or (p.parent / f"{p.name}_audio.onnx").is_file():
        return p
    return weights / part


def load_embedder(spec: str | Path, weights: str | Path = WEIGHTS, **kw) -> OnnxEmbedder | EnsembleEmbedder:
    """An embedder from a model spec.

    ``spec`` is a shipped model name (``bl1_2s``: models/weights/bl1_2s_{audio,sheet}.onnx),
    a path prefix (``runs/x/export`` for ``runs/x/export_audio.onnx`` …), or several of
    these joined by ``+`` for an ensemble (``bl1_2s+bl2_4s_at``).  Keyword arguments go
    to every :class:`OnnxEmbedder`.
    """
    parts = [p.strip() for p in str(spec).split("+") if p.strip()]
    if not parts:
        raise ValueError(f"empty model spec {spec!r}: give a model name such as 'bl1_2s' or 'bl1_2s+bl2_4s_at'")
    members = [OnnxEmbedder(_member_prefix(p, Path(weights)), **kw) for p in parts]
    return members[0] if len(members) == 1 else EnsembleEmbedder(members)
