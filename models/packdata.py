"""Training-pack loading and batched, device-resident batch assembly.

The whole pack (`pack.npz`, see models/PACK.md) lives on one device (the GPU
when there is one): spectrogram frames as uint8, score strips still packed at
1 bit per pixel.  A batch is built from a tensor of pair indices with batched
gathers and one `grid_sample`: no Python per-sample loops and no CPU data
loader.

    pack = Pack.load("pack.npz", device="cuda")
    maker = BatchMaker(pack, audio_frames=42, aug=AugConfig())
    idx = pack.sample_pairs("train", 1024, generator)
    spec, sheet = maker.batch(idx, train=True, generator=generator)
    # spec (B,1,92,F) float32, sheet (B,1,80,100) float32 in [0,1], ink = 1

Eval windows (`train=False`) are deterministic: the audio window covers frames
frame - F//2 ... frame + F - F//2 - 1, the sheet crop is the 160x200 px box
centred on (row 100, column x), box-filtered to 80x100.  Everything outside the
pair's own performance (spectrogram) or engraving (strip) span is zero / white.

`make_synthetic_pack` writes a small learnable pack in the same format for
tests and smoke runs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from scorestream.core.geometry import CENTER_ROW as STRIP_CENTER_ROW
from scorestream.core.geometry import CROP_H, CROP_W, OUT_H, OUT_W
from scorestream.core.pack import (P_PIECE, P_SPEC_LEN, P_SPEC_START, P_SPLIT, P_STRIP_LEN, P_STRIP_START,  # noqa: F401
                                   P_TEMPO, P_TIMBRE, read_pack, write_pack_v1)
from scorestream.core.splits import PAPER_TEMPO_MILLI, SPLITS, split_code

PATCH_W = 256                    # strip columns gathered around x (covers crop + scale/rotation/shift)


def _split_id(split: str | int) -> int:
    return split_code(split)


@dataclass
class Pack:
    """Pack arrays on a device (plus numpy copies of the small tables)."""

    meta: dict
    spec: torch.Tensor          # (T, 92) uint8
    strips_t: torch.Tensor      # (W, 25) uint8, packed bits, column-major for fast gathers
    perfs: torch.Tensor         # (P, 8) int64
    pairs: torch.Tensor         # (N, 4) int64
    perfs_np: np.ndarray
    pairs_np: np.ndarray
    device: torch.device

    @property
    def spec_scale(self) -> float:
        return float(self.meta["spec_scale"])

    @property
    def strip_height(self) -> int:
        return int(self.meta.get("strip_height", 200))

    @property
    def n_pairs(self) -> int:
        return int(self.pairs_np.shape[0])

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "Pack":
        """Load a version-1 or version-2 pack (:func:`scorestream.core.pack.read_pack`) onto ``device``."""
        device = torch.device(device)
        data = read_pack(path)
        meta, spec, strips, perfs, pairs = data.meta, data.spec, data.strips, data.perfs, data.pairs
        return cls(
            meta=meta,
            spec=torch.from_numpy(spec).to(device),
            strips_t=torch.from_numpy(np.ascontiguousarray(strips.T)).to(device),
            perfs=torch.from_numpy(perfs).to(device),
            pairs=torch.from_numpy(pairs).to(device),
            perfs_np=perfs,
            pairs_np=pairs,
            device=device,
        )

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.spec, self.strips_t, self.perfs, self.pairs))

    # ---- pair subsets
    def split_pairs(self, split: str | int) -> np.ndarray:
        """Sorted pair indices whose performance belongs to `split`."""
        s = _split_id(split)
        perf_split = self.perfs_np[self.pairs_np[:, 0], P_SPLIT]
        return np.flatnonzero(perf_split == s)

    def select_pairs(self, split: str | int, timbre: int | None = None, tempo_milli: int | None = None) -> np.ndarray:
        idx = self.split_pairs(split)
        perf = self.perfs_np[self.pairs_np[idx, 0]]
        keep = np.ones(len(idx), dtype=bool)
        if timbre is not None:
            keep &= perf[:, P_TIMBRE] == int(timbre)
        if tempo_milli is not None:
            keep &= perf[:, P_TEMPO] == int(tempo_milli)
        return idx[keep]

    def sample_pairs(self, split: str | int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n random pair indices (with replacement) from a split, on the pack's device."""
        pool = self._pool(split)
        j = torch.randint(0, pool.numel(), (n,), device=self.device, generator=generator)
        return pool[j]

    def _pool(self, split: str | int) -> torch.Tensor:
        cache = self.__dict__.setdefault("_pools", {})
        s = _split_id(split)
        if s not in cache:
            idx = self.split_pairs(s)
            if len(idx) == 0:
                raise ValueError(f"no pairs in split {SPLITS[s]!r}")
            cache[s] = torch.from_numpy(idx).to(self.device)
        return cache[s]


def evenly_spaced(indices: np.ndarray, n: int) -> np.ndarray:
    """min(n, len) entries evenly spaced (np.linspace) over the sorted index list."""
    indices = np.sort(np.asarray(indices))
    if len(indices) <= n:
        return indices
    pos = np.unique(np.round(np.linspace(0, len(indices) - 1, n)).astype(np.int64))
    return indices[pos]


def valid_subset(pack: Pack, n: int = 2000, seed: int = 0) -> np.ndarray:
    """Fixed validation pairs: up to n, evenly spaced over the valid split.

    Several performances share one engraving, so the same strip x appears in
    several pairs; one of them (chosen with a fixed seed) is kept per x, so that
    no sheet snippet is a candidate twice.
    """
    idx = pack.split_pairs("valid")
    if len(idx) == 0:
        raise ValueError("the pack has no validation pairs: build it from a corpus with valid pieces "
                         "(configs/corpus.toml valid_fraction > 0)")
    idx = np.random.default_rng(seed).permutation(idx)
    _, first = np.unique(pack.pairs_np[idx, 2], return_index=True)
    return evenly_spaced(idx[first], n)


def protocol_pairs(pack: Pack, n: int = 10000) -> tuple[np.ndarray, dict]:
    """Paper test protocol: split test, held-out timbre, tempo 1.0; C = min(n, available).

    Returns (pair indices, info).  If the pack's meta has no `test_timbre`, all
    timbres are used and info["note"] says so.
    """
    info: dict = {}
    timbre = pack.meta.get("test_timbre")
    if isinstance(timbre, str):
        timbre = list(pack.meta.get("timbres", [])).index(timbre)
    if timbre is None:
        info["note"] = "meta has no test_timbre: all timbres used"
    idx = pack.select_pairs("test", timbre=timbre, tempo_milli=PAPER_TEMPO_MILLI)
    info.update(test_timbre=timbre, available=int(len(idx)))
    sel = evenly_spaced(idx, n)
    info["candidates"] = int(len(sel))
    return sel, info


# --------------------------------------------------------------------------- augmentation config

@dataclass
class AugConfig:
    """Per-sample random augmentations; a probability of 0 switches one off."""

    audio: bool = True
    sheet: bool = True
    # audio
    jitter_frames: int = 1
    p_stretch: float = 0.5
    stretch: tuple[float, float] = (0.9, 1.1)
    db_unit: float | None = None   # log-spectrogram units per dB; None: meta["db_unit"] or 0.05 (log10 magnitude)
    p_gain: float = 0.5
    gain_db: float = 6.0
    p_eq: float = 0.3
    tilt_db: float = 6.0
    eq_db: float = 3.0
    p_lowpass: float = 0.2
    lowpass_db: float = 30.0
    p_noise: float = 0.3
    noise_rel: float = 0.15        # noise std relative to the window's mean level
    p_time_mask: float = 0.3
    time_mask_frac: float = 0.15
    p_freq_mask: float = 0.3
    freq_mask_bins: int = 12
    # sheet geometry (applied when sheet=True)
    shift_x: float = 3.0
    shift_y: float = 5.0
    scale: tuple[float, float] = (0.95, 1.05)
    rotate_deg: float = 2.0
    p_elastic: float = 0.3
    elastic_px: float = 1.5
    # sheet appearance
    p_blur: float = 0.3
    blur_sigma: tuple[float, float] = (0.3, 1.0)
    p_thicken: float = 0.15
    p_binarise: float = 0.2
    binarise: tuple[float, float] = (0.3, 0.7)
    p_contrast: float = 0.2
    p_gauss_noise: float = 0.3
    gauss_noise: float = 0.08
    p_salt_pepper: float = 0.2
    salt_pepper: float = 0.01
    p_speckle: float = 0.15

    @classmethod
    def none(cls) -> "AugConfig":
        kw = {f.name: 0.0 for f in fields(cls) if f.name.startswith("p_")}
        return cls(audio=False, sheet=False, jitter_frames=0, **kw)

    def replace(self, **kw) -> "AugConfig":
        return replace(self, **kw)


# --------------------------------------------------------------------------- batch assembly

def _u(shape, lo, hi, device, g) -> torch.Tensor:
    return torch.rand(shape, device=device, generator=g) * (hi - lo) + lo


def _coin(n, p, device, g) -> torch.Tensor:
    if p <= 0:
        return torch.zeros(n, dtype=torch.bool, device=device)
    return torch.rand(n, device=device, generator=g) < p


class BatchMaker:
    """Builds (spec, sheet) batches from pair indices, entirely on the pack's device."""

    def __init__(self, pack: Pack, audio_frames: int, aug: AugConfig | None = None, *,
                 audio_offset_frames: int = 0, sheet_offset_px: int = 0):
        """``audio_offset_frames`` / ``sheet_offset_px``: where the pair's onset sits in the
        inputs (models.nets.ModelConfig; 0, 0 = centred)."""
        self.pack = pack
        self.frames = int(audio_frames)
        self.audio_offset = int(audio_offset_frames)
        self.sheet_offset = int(sheet_offset_px)
        self.aug = aug if aug is not None else AugConfig()
        self.device = pack.device
        self.bins = pack.spec.shape[1]
        # window frames relative to the onset frame (a time stretch scales them about the onset)
        self._offs = torch.arange(self.frames, device=self.device) - self.frames // 2 + self.audio_offset
        self._shifts = torch.arange(7, -1, -1, device=self.device, dtype=torch.uint8)
        self._bin_pos = torch.linspace(0, 1, self.bins, device=self.device)
        self.db_unit = float(self.aug.db_unit if self.aug.db_unit is not None else pack.meta.get("db_unit", 0.05))
        # coarsely quantised (dense, version-2) packs: training windows are dithered within one step
        self.dither = int(pack.meta.get("spec_bits", 8)) < 8

    # ---- public
    def batch(self, idx: torch.Tensor, train: bool, generator: torch.Generator | None = None):
        idx = idx.to(self.device)
        return self.audio(idx, train, generator), self.sheet(idx, train, generator)

    # ---- audio
    def audio(self, idx: torch.Tensor, train: bool, g: torch.Generator | None = None) -> torch.Tensor:
        """(B,1,bins,F) float32 spectrogram windows centred on each pair's frame."""
        pk, dev, B, Fr = self.pack, self.device, idx.numel(), self.frames
        pairs = pk.pairs[idx]
        perf = pk.perfs[pairs[:, 0]]
        lo = perf[:, P_SPEC_START, None]
        hi = lo + perf[:, P_SPEC_LEN, None]
        frame = pairs[:, 1]
        a = self.aug
        if train and a.jitter_frames > 0:
            frame = frame + torch.randint(-a.jitter_frames, a.jitter_frames + 1, (B,), device=dev, generator=g)
        rate = None
        if train and a.audio and a.p_stretch > 0:
            r = _u(B, a.stretch[0], a.stretch[1], dev, g)
            rate = torch.where(_coin(B, a.p_stretch, dev, g), r, torch.ones_like(r))
        if rate is None:
            pos = frame[:, None] + self._offs[None, :]
            x, valid = self._gather_frames(pos, lo, hi)
        else:
            posf = frame[:, None].float() + self._offs[None, :].float() * rate[:, None]
            p0 = torch.floor(posf)
            frac = (posf - p0)[:, :, None]
            p0 = p0.long()
            x0, v0 = self._gather_frames(p0, lo, hi)
            x1, v1 = self._gather_frames(p0 + 1, lo, hi)
            x = x0 * (1 - frac) + x1 * frac
            valid = v0 | v1
        if train and self.dither:
            x = x + (torch.rand(x.shape, device=dev, generator=g) - 0.5) * (valid[:, :, None].float() / pk.spec_scale)
        x = x.transpose(1, 2)                              # (B, bins, F)
        if train and a.audio:
            x = self._augment_audio(x, valid, g)
        return x.unsqueeze(1).contiguous()

    def _gather_frames(self, pos: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
        valid = (pos >= lo) & (pos < hi)
        T = self.pack.spec.shape[0]
        rows = self.pack.spec[pos.clamp(0, T - 1)]        # (B, F, bins) uint8
        x = rows.float() * (valid[:, :, None].float() / self.pack.spec_scale)
        return x, valid

    def _augment_audio(self, x: torch.Tensor, valid: torch.Tensor, g) -> torch.Tensor:
        a, dev = self.aug, self.device
        B, nb, Fr = x.shape
        bpos = self._bin_pos[None, :]                     # (1, bins) in [0, 1]
        unit = self.db_unit
        if a.p_gain > 0:
            off = _u(B, -a.gain_db, a.gain_db, dev, g) * unit * _coin(B, a.p_gain, dev, g)
            x = x + off[:, None, None]
        if a.p_eq > 0:
            tilt = _u((B, 1), -a.tilt_db, a.tilt_db, dev, g) * (bpos - 0.5)
            freq = _u((B, 2, 1), 0.5, 3.0, dev, g)
            phase = _u((B, 2, 1), 0, 2 * math.pi, dev, g)
            amp = _u((B, 2, 1), 0, a.eq_db, dev, g)
            ripple = (amp * torch.cos(2 * math.pi * freq * bpos[:, None, :] + phase)).sum(1)
            eq = (tilt + ripple) * unit * _coin(B, a.p_eq, dev, g)[:, None]
            x = x + eq[:, :, None]
        if a.p_lowpass > 0:
            cut = _u((B, 1), 0.4, 0.9, dev, g)
            ramp = ((bpos - cut) / 0.15).clamp(0, 1)
            att = ramp * (a.lowpass_db * unit) * _coin(B, a.p_lowpass, dev, g)[:, None]
            x = x - att[:, :, None]
        x = x.clamp_min(0)
        if a.p_noise > 0:
            level = x.mean(dim=(1, 2), keepdim=True)
            std = _u((B, 1, 1), 0, a.noise_rel, dev, g) * level * _coin(B, a.p_noise, dev, g)[:, None, None]
            x = (x + std * torch.randn(x.shape, device=dev, generator=g)).clamp_min(0)
        if a.p_time_mask > 0:
            t = torch.arange(Fr, device=dev)[None, :]
            w = (_u((B, 1), 0, a.time_mask_frac * Fr, dev, g)).long()
            s = (torch.rand((B, 1), device=dev, generator=g) * Fr).long()
            m = (t >= s) & (t < s + w) & _coin(B, a.p_time_mask, dev, g)[:, None]
            x = x * (~m)[:, None, :]
        if a.p_freq_mask > 0:
            b = torch.arange(nb, device=dev)[None, :]
            w = (_u((B, 1), 0, a.freq_mask_bins, dev, g)).long()
            s = (torch.rand((B, 1), device=dev, generator=g) * nb).long()
            m = (b >= s) & (b < s + w) & _coin(B, a.p_freq_mask, dev, g)[:, None]
            x = x * (~m)[:, :, None]
        return x * valid[:, None, :]                      # padding stays exactly zero

    # ---- sheet
    def sheet(self, idx: torch.Tensor, train: bool, g: torch.Generator | None = None) -> torch.Tensor:
        """(B,1,80,100) float32 snippets in [0,1] (ink = 1)."""
        pk, dev, B = self.pack, self.device, idx.numel()
        pairs = pk.pairs[idx]
        perf = pk.perfs[pairs[:, 0]]
        lo = perf[:, P_STRIP_START, None]
        hi = lo + perf[:, P_STRIP_LEN, None]
        cols = (pairs[:, 2, None] + self.sheet_offset) + torch.arange(-PATCH_W // 2, PATCH_W // 2, device=dev)[None, :]
        valid = (cols >= lo) & (cols < hi)
        W = pk.strips_t.shape[0]
        packed = pk.strips_t[cols.clamp(0, W - 1)] * valid[:, :, None].to(torch.uint8)   # (B, Pw, 25)
        bits = (packed[..., None] >> self._shifts) & 1                                     # (B, Pw, 25, 8)
        img = bits.reshape(B, PATCH_W, -1)[:, :, : pk.strip_height].transpose(1, 2)        # (B, H, Pw)
        img = img.float().unsqueeze(1)
        H = img.shape[2]
        img = F.avg_pool2d(img, 2)                         # box filter: 0.5x downscale, anti-aliased
        a = self.aug
        geo = train and a.sheet
        if geo:
            ang = _u(B, -a.rotate_deg, a.rotate_deg, dev, g) * (math.pi / 180)
            sc = _u(B, a.scale[0], a.scale[1], dev, g)
            tx = _u(B, -a.shift_x, a.shift_x, dev, g)
            ty = _u(B, -a.shift_y, a.shift_y, dev, g)
        else:
            ang = torch.zeros(B, device=dev)
            sc = torch.ones(B, device=dev)
            tx = torch.zeros(B, device=dev)
            ty = torch.zeros(B, device=dev)
        # Output normalised coords (xo, yo) in [-1, 1] span the crop: dx = 100*xo, dy = 80*yo
        # strip pixels from the crop centre, which is the left/top edge of pixel (row 100,
        # column x), so the crop is rows 20..179, columns x-100..x+99.  Input normalised
        # coords (align_corners=False) are relative to the patch centre (H/2, PATCH_W/2).
        # Without augmentation every output pixel is exactly one 2x2 box of the crop.
        cos, sin = torch.cos(ang) * sc, torch.sin(ang) * sc
        hx, hy = CROP_W / 2, CROP_H / 2
        cy = STRIP_CENTER_ROW - H / 2                     # crop centre row relative to patch centre
        theta = torch.stack([
            torch.stack([cos * hx, -sin * hy, tx], 1) * (2 / PATCH_W),
            torch.stack([sin * hx, cos * hy, cy + ty], 1) * (2 / H),
        ], 1)
        grid = F.affine_grid(theta, [B, 1, OUT_H, OUT_W], align_corners=False)
        if geo and a.p_elastic > 0:
            disp = torch.randn((B, 2, 4, 5), device=dev, generator=g) * a.elastic_px
            disp = disp * _coin(B, a.p_elastic, dev, g)[:, None, None, None]
            disp = F.interpolate(disp, size=(OUT_H, OUT_W), mode="bicubic", align_corners=True)
            scale = torch.tensor([2 / PATCH_W, 2 / H], device=dev)
            grid = grid + disp.permute(0, 2, 3, 1) * scale
        out = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if train and a.sheet:
            out = self._augment_sheet(out, g)
        return out.contiguous()

    def _augment_sheet(self, x: torch.Tensor, g) -> torch.Tensor:
        a, dev = self.aug, self.device
        B = x.shape[0]
        if a.p_blur > 0:
            sig = _u(B, a.blur_sigma[0], a.blur_sigma[1], dev, g)
            sig = torch.where(_coin(B, a.p_blur, dev, g), sig, torch.full_like(sig, 1e-3))
            t = torch.arange(-2, 3, device=dev, dtype=torch.float32)
            k = torch.exp(-(t[None, :] ** 2) / (2 * sig[:, None] ** 2))
            k = k / k.sum(1, keepdim=True)                # (B, 5)
            y = x.reshape(1, B, OUT_H, OUT_W)
            y = F.conv2d(F.pad(y, (2, 2, 0, 0), mode="replicate"), k[:, None, None, :], groups=B)
            y = F.conv2d(F.pad(y, (0, 0, 2, 2), mode="replicate"), k[:, None, :, None], groups=B)
            x = y.reshape(B, 1, OUT_H, OUT_W)
        if a.p_thicken > 0:
            sel = _coin(B, a.p_thicken, dev, g)[:, None, None, None]
            thick = F.max_pool2d(x, (2, 2), stride=1)
            thick = F.pad(thick, (0, 1, 0, 1))
            x = torch.where(sel, torch.maximum(x, thick), x)
        if a.p_binarise > 0:
            th = _u((B, 1, 1, 1), a.binarise[0], a.binarise[1], dev, g)
            sel = _coin(B, a.p_binarise, dev, g)[:, None, None, None]
            x = torch.where(sel, (x > th).float(), x)
        if a.p_contrast > 0:
            sel = _coin(B, a.p_contrast, dev, g)[:, None, None, None]
            c = _u((B, 1, 1, 1), 0.6, 1.1, dev, g)
            b = _u((B, 1, 1, 1), -0.05, 0.2, dev, g)
            x = torch.where(sel, x * c + b, x)
        if a.p_gauss_noise > 0:
            std = _u((B, 1, 1, 1), 0, a.gauss_noise, dev, g) * _coin(B, a.p_gauss_noise, dev, g)[:, None, None, None]
            x = x + std * torch.randn(x.shape, device=dev, generator=g)
        if a.p_salt_pepper > 0:
            rate = _u((B, 1, 1, 1), 0, a.salt_pepper, dev, g) * _coin(B, a.p_salt_pepper, dev, g)[:, None, None, None]
            r = torch.rand(x.shape, device=dev, generator=g)
            x = torch.where(r < rate / 2, torch.ones_like(x), x)
            x = torch.where((r >= rate / 2) & (r < rate), torch.zeros_like(x), x)
        if a.p_speckle > 0:
            sel = _coin(B, a.p_speckle, dev, g)[:, None, None, None]
            mult = 1 + 0.2 * torch.randn(x.shape, device=dev, generator=g)
            dust = (torch.rand((B, 1, OUT_H // 2, OUT_W // 2), device=dev, generator=g) > 0.995).float()
            dust = F.interpolate(dust, scale_factor=2, mode="nearest")
            x = torch.where(sel, torch.maximum(x * mult, dust), x)
        return x.clamp(0, 1)


# --------------------------------------------------------------------------- writing packs

def save_pack(path: str | Path, meta: dict, spec: np.ndarray, ink: np.ndarray,
              perfs: np.ndarray, pairs: np.ndarray) -> None:
    """Write a version-1 pack (models/PACK.md); `ink` is the (200, W) 0/1 strip image."""
    write_pack_v1(path, meta, spec, np.packbits(np.asarray(ink, dtype=np.uint8), axis=0), perfs, pairs)


def make_synthetic_pack(path: str | Path, n_pieces: int = 12, notes_per_piece: int = 60,
                        seed: int = 0, tempos=(1000, 850, 1150)) -> dict:
    """Write a small, learnable synthetic pack; returns its meta.

    Each piece is a random melody (17 staff positions, durations 1-2 beats).
    Its engraving: a 5-line staff centred on row 100, filled noteheads at the
    pitch's staff position and x = cumulative duration, stems, bar lines every
    4 beats.  Its performances (3 timbres x tempos): onsets at cumulative
    duration, each note a harmonic comb in the spectrogram whose base bin follows
    the pitch, decaying with a timbre-specific rate.  Pieces are split 60/20/20
    into train/valid/test; test_timbre = 2.
    """
    rng = np.random.default_rng(seed)
    S = 50.0
    staff_space = 10
    timbres = ["pianoA", "organB", "guitarC"]
    timbre_h = [np.array([1.0, 0.5, 0.3, 0.15]), np.array([0.7, 0.7, 0.5, 0.4]), np.array([1.0, 0.3, 0.1, 0.05])]
    timbre_decay = [0.8, 0.97, 0.7]
    n_train = max(1, int(round(0.6 * n_pieces)))
    n_valid = max(1, int(round(0.2 * n_pieces)))
    split_of = [0] * n_train + [1] * n_valid + [2] * max(1, n_pieces - n_train - n_valid)
    spec_parts, ink_parts, perfs, pairs = [], [], [], []
    t_total, w_total = 0, 0
    rr, cc = np.mgrid[-4:5, -5:6]
    head = (rr / 3.2) ** 2 + (cc / 4.5) ** 2 <= 1.0
    for piece in range(n_pieces):
        steps = rng.integers(-8, 9, notes_per_piece)
        dur = rng.integers(1, 3, notes_per_piece)
        beats = np.concatenate([[0], np.cumsum(dur)[:-1]])
        # engraving
        px_per_beat = 14
        xs = 30 + beats * px_per_beat + rng.integers(-1, 2, notes_per_piece)
        width = int(xs[-1] + 40)
        ink = np.zeros((200, width), np.uint8)
        for k in range(-2, 3):
            ink[100 + k * staff_space, :] = 1
        for b in range(0, int(beats[-1]) + 2, 4):
            xb = 30 + b * px_per_beat - 6
            ink[80:121, max(0, xb)] = 1
        ys = 100 - steps * (staff_space // 2)
        for x, y, s in zip(xs, ys, steps):
            ink[y - 4:y + 5, x - 5:x + 6] |= head.astype(np.uint8)
            if s < 0:
                ink[y - 30:y, x + 4] = 1
            else:
                ink[y:y + 30, x - 5] = 1
        ink_parts.append(ink)
        strip_start = w_total
        w_total += width
        for timbre in range(len(timbres)):
            for tempo in tempos:
                if split_of[piece] != 0 and tempo != 1000 and timbre != 2:
                    continue
                fpb = 5.0 * 1000.0 / tempo
                onsets = np.round(beats * fpb).astype(np.int64) + 10
                n_frames = int(onsets[-1] + 20)
                energy = np.zeros((n_frames, 92))
                for o, s, d in zip(onsets, steps, dur):
                    base = 12 + 2 * (s + 8)
                    length = int(round(d * fpb))
                    env = timbre_decay[timbre] ** np.arange(length)
                    for h, hb in zip(timbre_h[timbre], (0, 12, 19, 24)):
                        b = base + hb
                        if b < 92:
                            energy[o:o + length, b] += 30 * h * env[: n_frames - o]
                            if b + 1 < 92:
                                energy[o:o + length, b + 1] += 10 * h * env[: n_frames - o]
                energy += rng.exponential(0.3, energy.shape)
                logspec = np.log10(1 + energy)
                spec_parts.append(np.clip(np.round(logspec * S), 0, 255).astype(np.uint8))
                perf_id = len(perfs)
                perfs.append([t_total, n_frames, strip_start, width, split_of[piece], timbre, tempo, piece])
                for o, x, y in zip(onsets, xs, ys):
                    pairs.append([perf_id, t_total + o, strip_start + x, y])
                t_total += n_frames
    meta = {"version": 1, "spec_bins": 92, "fps": 20, "spec_scale": S, "strip_height": 200,
            "staff_space": staff_space, "timbres": timbres, "splits": list(SPLITS),
            "pieces": [f"synth{p:03d}" for p in range(n_pieces)], "test_timbre": 2, "synthetic": True}
    save_pack(path, meta, np.concatenate(spec_parts), np.concatenate(ink_parts, axis=1),
              np.array(perfs, np.int64), np.array(pairs, np.int32))
    return meta
