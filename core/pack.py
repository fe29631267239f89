"""The training-pack file format (``pack.npz``, see models/PACK.md): read and write, numpy only.

Every reader of a pack (training, evaluation, repacking) goes through
:func:`read_pack`, which knows both formats:

* version 1 (``scorestream corpus pack``): ``np.savez_compressed`` of uint8
  spectrograms (T, bins) and 1-bit strips packed along rows (ceil(H/8), W);
* version 2 (``scorestream corpus repack``): the same arrays as lzma streams,
  spectrogram bins-major at ``spec_bits`` bits.

A file that is not a pack (empty, truncated, another archive) gives a
:class:`PackError` that names the file and says how to make a pack.
"""

from __future__ import annotations

import json
import lzma
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

# columns of the ``perfs`` table
P_SPEC_START, P_SPEC_LEN, P_STRIP_START, P_STRIP_LEN, P_SPLIT, P_TIMBRE, P_TEMPO, P_PIECE = range(8)
PERF_COLUMNS = ("spec_start", "spec_len", "strip_start", "strip_len", "split", "timbre", "tempo_milli", "piece")
# columns of the ``pairs`` table
PAIR_COLUMNS = ("perf", "frame", "x", "y")

SPEC_SCALE = 64.0     # version 1: uint8 = round(log_spec * 64), log values 0 .. 3.98
_KEYS = ("meta", "spec", "strips", "perfs", "pairs")
_HOW = "make one with 'scorestream corpus pack CORPUS --out FILE'"


class PackError(InputError):
    """A file that is not a readable training pack."""


@dataclass
class PackData:
    """A pack's arrays in version-1 layout (whatever the file's version)."""

    meta: dict
    spec: np.ndarray      # uint8 (T, bins): value / meta["spec_scale"] = log spectrogram
    strips: np.ndarray    # uint8 (ceil(strip_height / 8), W): np.packbits(ink, axis=0)
    perfs: np.ndarray     # int64 (P, 8), columns PERF_COLUMNS
    pairs: np.ndarray     # int64 (N, 4), columns PAIR_COLUMNS

    @property
    def spec_scale(self) -> float:
        return float(self.meta["spec_scale"])

    @property
    def strip_height(self) -> int:
        return int(self.meta.get("strip_height", 200))

    def ink(self) -> np.ndarray:
        """All strips as a binary ink image (strip_height, W), uint8 1 = black."""
        return np.unpackbits(self.strips, axis=0)[: self.strip_height]

    def perf_spec(self, perf: int) -> np.ndarray:
        """Decoded float32 log spectrogram (T, bins) of one performance row."""
        s0, sl = int(self.perfs[perf, P_SPEC_START]), int(self.perfs[perf, P_SPEC_LEN])
        return self.spec[s0: s0 + sl].astype(np.float32) / np.float32(self.spec_scale)


def quantize_spec(spec: np.ndarray, scale: float = SPEC_SCALE) -> np.ndarray:
    """Version-1 uint8 code of a float log spectrogram."""
    return np.clip(np.round(np.asarray(spec) * scale), 0, 255).astype(np.uint8)


def pack_ink(strip: np.ndarray) -> np.ndarray:
    """1-bit packed ink (ceil(H/8), W) of a grayscale strip image (255 = white)."""
    return np.packbits((np.asarray(strip) < 128).astype(np.uint8), axis=0)


def _decode(meta: dict, spec: np.ndarray, strips: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    codec = meta.get("codec")
    if not codec:
        return np.ascontiguousarray(spec, dtype=np.uint8), np.asarray(strips, dtype=np.uint8)
    if codec != "lzma":
        raise PackError(f"{path}: unknown pack codec {codec!r}; this scorestream reads version 1 (zlib) and version 2 (lzma) packs")
    try:
        t, b = meta["spec_shape"]
        spec = np.frombuffer(lzma.decompress(spec.tobytes()), dtype=np.uint8).reshape(b, t).T
        strips = np.frombuffer(lzma.decompress(strips.tobytes()), dtype=np.uint8).reshape(meta["strips_shape"])
    except (lzma.LZMAError, ValueError, KeyError, TypeError) as exc:
        raise PackError(f"{path}: damaged version-2 pack ({exc}); repack it with 'scorestream corpus repack'") from exc
    return np.ascontiguousarray(spec), strips


def read_pack(path: str | Path) -> PackData:
    """Read a version-1 or version-2 pack; raise :class:`PackError` for anything else."""
    path = Path(path)
    if not path.is_file():
        raise PackError(f"pack {path} not found; {_HOW}")
    if path.stat().st_size == 0:
        raise PackError(f"{path} is empty (0 bytes), not a training pack; {_HOW}")
    if not zipfile.is_zipfile(path):
        raise PackError(f"{path} is not a training pack (not an .npz archive); {_HOW}")
    try:
        with np.load(str(path), allow_pickle=False) as z:
            missing = [k for k in _KEYS if k not in z.files]
            if missing:
                raise PackError(f"{path} is an .npz without {', '.join(missing)}: not a training pack; {_HOW}")
            meta = json.loads(str(z["meta"][()]))
            spec, strips = _decode(meta, z["spec"], z["strips"], path)
            perfs = np.asarray(z["perfs"], dtype=np.int64)
            pairs = np.asarray(z["pairs"], dtype=np.int64)
    except PackError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, json.JSONDecodeError, KeyError) as exc:
        raise PackError(f"{path}: damaged or truncated pack ({type(exc).__name__}: {exc}); {_HOW}") from exc
    if not isinstance(meta, dict) or "spec_scale" not in meta:
        raise PackError(f"{path}: pack metadata lacks spec_scale; {_HOW}")
    bins = int(meta.get("spec_bins", 92))
    if spec.ndim != 2 or spec.shape[1] != bins:
        raise PackError(f"{path}: spec has shape {spec.shape}, expected (T, {bins})")
    h = int(meta.get("strip_height", 200))
    if strips.ndim != 2 or strips.shape[0] != (h + 7) // 8:
        raise PackError(f"{path}: strips have shape {strips.shape}, expected ({(h + 7) // 8}, W)")
    if perfs.ndim != 2 or perfs.shape[1] != len(PERF_COLUMNS) or pairs.ndim != 2 or pairs.shape[1] != len(PAIR_COLUMNS):
        raise PackError(f"{path}: perfs must be (P, 8) and pairs (N, 4), got {perfs.shape} and {pairs.shape}")
    return PackData(meta, spec, strips, perfs, pairs)


def write_pack_v1(path: str | Path, meta: dict, spec: np.ndarray, strips: np.ndarray, perfs: np.ndarray, pairs: np.ndarray) -> Path:
    """Write a version-1 pack (zlib-compressed .npz)."""
    meta = {**meta, "version": 1}
    meta.pop("codec", None)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, meta=np.array(json.dumps(meta)), spec=np.ascontiguousarray(spec, np.uint8),
                        strips=np.ascontiguousarray(strips, np.uint8), perfs=np.asarray(perfs, np.int64),
                        pairs=np.asarray(pairs, np.int32))
    return path


def lzma_bytes(a: np.ndarray, preset: int = 6) -> np.ndarray:
    return np.frombuffer(lzma.compress(np.ascontiguousarray(a).tobytes(), preset=preset), dtype=np.uint8)


def encode_v2(spec_q: np.ndarray, strips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """lzma streams of a version-2 pack: the (T, bins) b-bit spectrogram stored bins-major, and the strips."""
    return lzma_bytes(np.asarray(spec_q, np.uint8).T), lzma_bytes(np.asarray(strips, np.uint8))


def write_pack_v2(path: str | Path, meta: dict, spec_z: np.ndarray, strips_z: np.ndarray, perfs: np.ndarray, pairs: np.ndarray) -> Path:
    """Write a version-2 pack from the lzma streams of :func:`encode_v2` (``meta`` must carry
    ``spec_bits``, ``spec_shape``, ``strips_shape`` and the divided ``spec_scale``)."""
    for k in ("spec_bits", "spec_shape", "strips_shape", "spec_scale"):
        if k not in meta:
            raise ValueError(f"version-2 pack metadata needs {k!r}")
    meta = {**meta, "version": 2, "codec": "lzma", "spec_layout": "bins_major"}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, meta=np.array(json.dumps(meta)), spec=spec_z, strips=strips_z, perfs=np.asarray(perfs, np.int64),
             pairs=np.asarray(pairs, np.int32))
    return path
