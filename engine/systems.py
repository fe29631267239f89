"""Staff-system detection on page images (pure image processing: numpy, scipy, numba).

``detect_systems(page)`` finds the staff systems of one printed music page: the
groups of 5-line staves that are read together (a piano grand staff, voice + piano,
a string-quartet system, a single melody staff), with their bounding boxes, staff
lines, staff space and skew, in pixels of the page as given.

Pipeline (see docs/systems.md):

1. **Scale.**  Staff-line thickness and staff space are estimated from vertical
   black/white run lengths of a sample of columns (Fujinaga / Cardoso: the most
   common black run is the line thickness, the most common black+white pair is the
   line distance).  Pages with a large staff space are block-averaged to a working
   resolution of ~``work_staff_space`` pixels per staff space (bounded memory and time
   on huge scans); all coordinates are mapped back at the end.
2. **Binarise.**  A generous global threshold for clean pages (engraved renders,
   1-bit scans: keeps the grey anti-aliased 1-px staff lines of small renders);
   Sauvola for pages that look like grey scans (uneven paper, grey margins, noise).
3. **Line candidates.**  Black pixels in *thin* vertical runs (about the line
   thickness: removes noteheads, stems, beams, braces, black scan margins), then in
   *long* horizontal runs (removes text, speckle, halftone dots).
4. **Skew.**  The horizontal projection of the candidates, computed in vertical
   strips that are shifted against each other (a shear), is sharpest at the page's
   skew angle: coarse-to-fine search.  Lines keep their positions in the sheared
   frame; every reported coordinate is in the original, unrotated page.
5. **Staves.**  Projection peaks are chained into 5-line groups with consistent
   spacing; each candidate is checked along its lines (at least 3 of the 5 lines
   inked per column, gaps under a few staff spaces bridged) for its x extent and
   line coverage; overlapping candidates are resolved by strength.
6. **Systems.**  Vertically adjacent staves belong to one system when an ink
   component (the system's initial barline, brace or bracket) crosses the gap
   between them at their left end; a gap-statistics fallback repairs pages where
   that evidence is missing (broken braces in scans).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, asdict

import numpy as np
from scipy import ndimage

try:  # numba is a hard dependency of the package, but keep the module importable without it
    from numba import njit
except ImportError:  # pragma: no cover
    def njit(*args, **kwargs):
        if args and callable(args[0]):
            return args[0]
        return lambda f: f


__all__ = [
    "DetectedSystem",
    "SystemDetectionConfig",
    "NoStavesError",
    "detect_systems",
    "draw_systems",
]


class NoStavesError(ValueError):
    """The page has no music staves (blank page, text page, picture)."""


@dataclass(frozen=True)
class SystemDetectionConfig:
    """Parameters of :func:`detect_systems` (defaults fit engraved pages and 150-600 dpi scans)."""

    # binarisation: "auto" (global for clean pages, Sauvola for scan-like pages), "global", "sauvola"
    binarize: str = "auto"
    sauvola_k: float = 0.1
    sauvola_window_ss: float = 4.0  # Sauvola window, in staff spaces
    # pages whose staff space is larger are block-averaged to about this many pixels per staff space
    work_staff_space: float = 10.0
    # skew search range and final precision (degrees)
    max_skew_deg: float = 5.0
    skew_step_deg: float = 0.02
    # staff model
    spacing_tol: float = 0.18  # a staff's 4 line gaps agree within this relative tolerance
    min_staff_width_ss: float = 6.0  # shortest staff accepted, in staff spaces
    min_lone_staff_share: float = 0.25  # a single-staff system narrower than this share of the widest is ledger lines
    # share of the staff's width where each line must be inked: as a thin line / with any ink
    min_line_coverage: float = 0.15
    min_ink_coverage: float = 0.75
    # line coverage minus the coverage of the spaces between the lines
    min_space_contrast: float = 0.3
    gap_bridge_ss: float = 3.0  # breaks of the staff lines bridged (chords, clefs, scan breaks)
    # grouping
    connect_window_ss: float = 3.0  # search for the system barline / brace this far left of the staff
    gap_fallback: bool = True
    # inputs larger than this (pixels) are refused
    max_pixels: int = 450_000_000


@dataclass(frozen=True)
class DetectedSystem:
    """One staff system, in pixels of the page as given.

    ``x0, x1``: left and right ends of the staff lines; ``y0``: top line of the first
    staff, ``y1``: bottom line of the last staff (the axis-aligned envelope of the
    lines when the page is skewed).  ``staves`` and ``staff_lines`` give the line
    heights at the horizontal centre of the system; a line's height at column x is
    ``y + (x - (x0 + x1) / 2) * tan(radians(skew_deg))`` (positive skew: lines descend
    to the right).
    """

    x0: float
    y0: float
    x1: float
    y1: float
    staves: list[tuple[float, float]] = field(default_factory=list)
    staff_lines: list[float] = field(default_factory=list)
    staff_space: float = 0.0
    skew_deg: float = 0.0

    @property
    def bbox(self) -> list[float]:
        return [self.x0, self.y0, self.x1, self.y1]

    @property
    def n_staves(self) -> int:
        return len(self.staves)

    def to_json(self) -> dict:
        d = asdict(self)
        r = lambda v: round(float(v), 3)  # noqa: E731
        return {
            "x0": r(self.x0), "y0": r(self.y0), "x1": r(self.x1), "y1": r(self.y1),
            "staves": [[r(a), r(b)] for a, b in self.staves],
            "staff_lines": [r(v) for v in self.staff_lines],
            "staff_space": r(self.staff_space),
            "skew_deg": round(float(d["skew_deg"]), 4),
        }

    @classmethod
    def from_json(cls, d: dict) -> "DetectedSystem":
        return cls(
            float(d["x0"]), float(d["y0"]), float(d["x1"]), float(d["y1"]),
            [(float(a), float(b)) for a, b in d.get("staves", [])],
            [float(v) for v in d.get("staff_lines", [])],
            float(d.get("staff_space", 0.0)),
            float(d.get("skew_deg", 0.0)),
        )


# --------------------------------------------------------------------------- numba kernels


@njit(cache=True)
def _run_histograms(cols, max_len):
    """Vertical runs of sampled binary columns ``cols`` (n_rows, n_cols; 1 = ink):
    histogram of black run lengths and of (black run + following white run) sums."""
    h, w = cols.shape
    black = np.zeros(max_len + 1, np.int64)
    pair = np.zeros(max_len + 1, np.int64)
    for j in range(w):
        i = 0
        while i < h and cols[i, j]:  # runs touching the top edge are incomplete
            i += 1
        while i < h and not cols[i, j]:
            i += 1
        while i < h:
            b0 = i
            while i < h and cols[i, j]:
                i += 1
            b = i - b0
            if i >= h:
                break
            w0 = i
            while i < h and not cols[i, j]:
                i += 1
            if i >= h:
                break  # white run touching the bottom edge
            wl = i - w0
            if b <= max_len:
                black[b] += 1
                if b + wl <= max_len:
                    pair[b + wl] += 1
    return black, pair


@njit(cache=True)
def _thin_vertical(b, max_len):
    """Ink pixels whose vertical run is at most ``max_len`` long."""
    h, w = b.shape
    out = np.zeros((h, w), np.uint8)
    for j in range(w):
        i = 0
        while i < h:
            if b[i, j]:
                s = i
                while i < h and b[i, j]:
                    i += 1
                if i - s <= max_len:
                    for k in range(s, i):
                        out[k, j] = 1
            else:
                i += 1
    return out


@njit(cache=True)
def _long_horizontal(t, min_len, max_gap):
    """Horizontal runs of ``t`` at least ``min_len`` long, gaps up to ``max_gap`` pixels
    bridged (dotted lines of faint 1-bit scans); the whole run is marked."""
    h, w = t.shape
    out = np.zeros((h, w), np.uint8)
    for i in range(h):
        j = 0
        while j < w:
            if t[i, j]:
                s = j
                last = j
                j += 1
                while j < w and j - last <= max_gap + 1:
                    if t[i, j]:
                        last = j
                    j += 1
                if last + 1 - s >= min_len:
                    for k in range(s, last + 1):
                        out[i, k] = 1
                j = last + 1
            else:
                j += 1
    return out


# --------------------------------------------------------------------------- helpers


def _otsu(hist: np.ndarray) -> int:
    """Otsu threshold of a 256-bin histogram: values <= t are the dark class."""
    hist = hist.astype(np.float64)
    total = hist.sum()
    if total <= 0:
        return 127
    p = hist / total
    omega = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    mu_t = mu[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        sb = (mu_t * omega - mu) ** 2 / (omega * (1.0 - omega))
    sb = np.nan_to_num(sb, nan=0.0, posinf=0.0)
    return int(np.argmax(sb))


def _block_mean(page: np.ndarray, k: int) -> np.ndarray:
    """Average k x k blocks (uint8 result), in row chunks to bound memory."""
    if k == 1:
        return page
    h, w = page.shape
    hh, ww = h // k, w // k
    out = np.empty((hh, ww), np.uint8)
    rows = max(1, (1 << 22) // max(1, w))  # ~4M source pixels per chunk
    for r0 in range(0, hh, rows):
        r1 = min(hh, r0 + rows)
        chunk = page[r0 * k:r1 * k, :ww * k].reshape(r1 - r0, k, ww, k)
        s = chunk.sum(axis=(1, 3), dtype=np.uint32)
        out[r0:r1] = ((s + (k * k) // 2) // (k * k)).astype(np.uint8)
    return out


def _mode_refined(hist: np.ndarray, lo: int) -> tuple[int, float, int]:
    """Mode of ``hist`` at index >= lo, its count-weighted mean over mode +-1, and its count."""
    h = hist.copy()
    h[:lo] = 0
    m = int(np.argmax(h))
    a, b = max(lo, m - 1), min(len(h) - 1, m + 1)
    ws = h[a:b + 1].astype(np.float64)
    mean = float((np.arange(a, b + 1) * ws).sum() / max(ws.sum(), 1.0))
    return m, mean, int(h[m])


@dataclass
class _Staff:
    lines: np.ndarray  # 5 line heights at column xref (working frame); y(x) = y + (x - xref) * tan
    strength: float
    tan: float = 0.0
    x0: float = 0.0  # working-frame columns
    x1: float = 0.0
    coverage: float = 0.0
    contrast: float = 1.0

    @property
    def top(self) -> float:
        return float(self.lines[0])

    @property
    def bottom(self) -> float:
        return float(self.lines[-1])

    @property
    def space(self) -> float:
        return float(np.mean(np.diff(self.lines)))


# --------------------------------------------------------------------------- main entry


@dataclass
class _Ctx:
    """Working-resolution images and page scale shared by the steps."""

    work: np.ndarray  # grey page at working resolution
    b: np.ndarray  # binary ink
    thin: np.ndarray  # ink in thin vertical runs
    prof: np.ndarray  # strip profiles of the line candidates (rows x strips)
    xc: np.ndarray  # strip centre columns
    xref: float
    ss: float  # staff space (working pixels)
    lt: float  # line thickness (working pixels)
    paper: float
    cfg: SystemDetectionConfig


def detect_systems(page: np.ndarray, config: SystemDetectionConfig = SystemDetectionConfig()) -> list[DetectedSystem]:
    """Staff systems of one page image, top to bottom.

    ``page``: 2-D uint8 grayscale, 255 = white paper, any resolution.
    Raises :class:`NoStavesError` when the page has no 5-line staves.
    """
    cfg = config
    page = np.asarray(page)
    if page.ndim != 2:
        raise ValueError(f"detect_systems wants a 2-D grayscale page, got shape {page.shape}")
    if page.dtype != np.uint8:
        raise ValueError(f"detect_systems wants a uint8 page, got {page.dtype}")
    H, W = page.shape
    if H * W > cfg.max_pixels:
        raise ValueError(f"page image too large ({W} x {H} pixels; at most {cfg.max_pixels} pixels)")
    if H < 40 or W < 40:
        raise NoStavesError("no music staves found on this page (the image is too small)")

    # ---- 1. global grey levels from a subsample (bounded work on huge pages)
    step = max(1, int(math.sqrt(H * W / 2.0e6)))
    sub = page[::step, ::step]
    hist = np.bincount(sub.ravel(), minlength=256)
    paper = float(np.searchsorted(np.cumsum(hist), 0.9 * hist.sum()))
    t_otsu = _otsu(hist)
    dark = hist[: t_otsu + 1]
    ink = float((np.arange(t_otsu + 1) * dark).sum() / max(dark.sum(), 1))
    if paper - ink < 40 or dark.sum() < 1e-4 * hist.sum():
        raise NoStavesError("no music staves found on this page (the page is blank)")
    t_glob = ink + 0.72 * (paper - ink)

    # ---- 2. scale from vertical runs of sampled columns at full resolution
    ncols = min(W, 400)
    cidx = np.linspace(0.03 * W, 0.97 * W, ncols).astype(np.int64)
    cols = (page[:, cidx] < t_glob).astype(np.uint8)
    bh, ph = _run_histograms(cols, int(min(H // 4, 1200)))
    lt_mode, _, _ = _mode_refined(bh, 1)
    _, ss_full, npair = _mode_refined(ph, max(3, lt_mode + 2))
    if npair < 20 or ss_full < 3:
        raise NoStavesError("no music staves found on this page")
    k = max(1, int(ss_full // cfg.work_staff_space))
    work = _block_mean(page, k)
    h, w = work.shape

    # ---- 3. binarise at working resolution
    mode = cfg.binarize
    scanned, noise = _looks_scanned(work, ss_full / k)
    if mode == "auto":
        mode = "sauvola" if scanned else "global"
    if mode == "sauvola":
        b = _sauvola(work, ss_full / k, cfg)
    else:
        # generous on clean pages: a thin anti-aliased line drawn between two pixel rows is two
        # rows of light grey (~200 of 255) on small renders
        t_clean = max(t_glob, min(ink + 0.9 * (paper - ink), paper - 4.0 * noise - 2.0))
        b = (work < t_clean).astype(np.uint8)
    if b.mean() < 1e-4:
        raise NoStavesError("no music staves found on this page (the page is blank)")
    # the scale again, at working resolution
    cw = np.ascontiguousarray(b[:, np.linspace(0, w - 1, min(w, 400)).astype(np.int64)])
    bh, ph = _run_histograms(cw, int(min(h // 4, 400)))
    lt_m, lt_w, _ = _mode_refined(bh, 1)
    _, ss_w, npair = _mode_refined(ph, max(3, lt_m + 2))
    if npair < 20:
        raise NoStavesError("no music staves found on this page")

    # ---- 4. line candidates: thin vertical runs, long horizontal runs
    max_thick = int(max(lt_m + 2, math.ceil(1.6 * lt_w)))
    thin = _thin_vertical(b, max_thick)
    lines_mask = _long_horizontal(thin, max(3, int(round(0.8 * ss_w))), int(round(0.2 * ss_w)))

    # ---- 5. page skew from sheared strip projections
    sw = 16 if w >= 320 else 8
    n_strips = w // sw
    prof = lines_mask[:, : n_strips * sw].reshape(h, n_strips, sw).sum(axis=2, dtype=np.int32).astype(np.float32)
    xc = (np.arange(n_strips) + 0.5) * sw
    ctx = _Ctx(work, b, thin, prof, xc, w / 2.0, ss_w, lt_w, paper, cfg)
    theta = _estimate_skew(prof, xc, ctx.xref, cfg)
    tan_rows = _skew_field(prof, xc, ctx.xref, ss_w, theta, cfg)
    proj = _project(prof, xc, ctx.xref, tan_rows)

    # ---- 6. staves (each refined with its own skew)
    staves = _find_staves(proj, tan_rows, ctx)
    if not staves:
        raise NoStavesError("no music staves found on this page")

    # ---- 7. systems
    groups = _group_staves(staves, ctx)
    systems = [_make_system([staves[i] for i in g], k, ctx) for g in groups]
    return _drop_ledger_staves(systems, cfg)


def _drop_ledger_staves(systems: list, cfg: SystemDetectionConfig) -> list:
    """A lone short "staff" next to full systems is the ledger lines of a run of very low or high
    notes (five or more stacked ledger lines look like a staff): drop single-staff systems narrower
    than ``min_lone_staff_share`` of the page's widest system. Real short systems (a closing
    bar, an incipit) are wider than that; a page with only short staves keeps them."""
    if len(systems) < 2:
        return systems
    widest = max(d.bbox[2] - d.bbox[0] for d in systems)
    keep = [d for d in systems if d.n_staves > 1 or d.bbox[2] - d.bbox[0] >= cfg.min_lone_staff_share * widest]
    return keep or systems


# --------------------------------------------------------------------------- steps


def _looks_scanned(work: np.ndarray, ss: float) -> tuple[bool, float]:
    """(looks like a grey scan, paper noise std): grey or uneven paper, grey margins or noisy
    paper call for Sauvola instead of a global threshold."""
    h, w = work.shape
    bs = int(max(16, min(128, round(4 * ss))))
    hb, wb = h // bs, w // bs
    if hb < 2 or wb < 2:
        return False, 0.0
    blocks = work[: hb * bs, : wb * bs].reshape(hb, bs, wb, bs).transpose(0, 2, 1, 3).reshape(hb, wb, bs * bs)
    blocks = blocks[:, :, :: max(1, (bs * bs) // 256)]  # thin the sample for speed
    bg = np.percentile(blocks, 90, axis=2)
    lo, med, hi = np.percentile(bg, [5, 50, 95])
    # paper noise: spread of the bright pixels in mostly-white blocks
    vals = blocks[bg >= med - 5].ravel()
    vals = vals[vals > med - 60]
    noise = float(np.std(vals)) if vals.size else 0.0
    return bool(med < 225 or hi - lo > 25 or noise > 10.0), noise


def _sauvola(work: np.ndarray, ss: float, cfg: SystemDetectionConfig) -> np.ndarray:
    win = int(max(15, round(cfg.sauvola_window_ss * ss))) | 1
    f = work.astype(np.float32)
    m = ndimage.uniform_filter(f, win, mode="reflect")
    m2 = ndimage.uniform_filter(f * f, win, mode="reflect")
    s = np.sqrt(np.maximum(m2 - m * m, 0.0))
    t = m * (1.0 + cfg.sauvola_k * (s / 128.0 - 1.0))
    return (f < t).astype(np.uint8)


def _project(prof: np.ndarray, xc: np.ndarray, xref: float, tan_t, integer: bool = False,
             ys: np.ndarray | None = None) -> np.ndarray:
    """Projection of the strip profiles along lines y(x) = y' + (x - xref) tan_t, for y' in ``ys``."""
    h, n = prof.shape
    if ys is None:
        ys = np.arange(h, dtype=np.float64)
    if np.ndim(tan_t):  # one slope per output row (a skew that drifts down the page)
        d = np.asarray(tan_t, np.float64)[:, None] * (xc - xref)[None, :]
    else:
        d = ((xc - xref) * tan_t)[None, :]
    cols = np.arange(n)[None, :]
    if integer:
        idx = ys[:, None] + np.round(d)
        ok = (idx >= 0) & (idx < h)
        idx = np.clip(idx, 0, h - 1).astype(np.int64)
        return (prof[idx, cols] * ok).sum(axis=1)
    pos = ys[:, None] + d
    i0 = np.floor(pos)
    fr = (pos - i0).astype(np.float32)
    i0 = i0.astype(np.int64)
    ok0 = (i0 >= 0) & (i0 < h)
    ok1 = (i0 >= -1) & (i0 < h - 1)
    v0 = prof[np.clip(i0, 0, h - 1), cols] * ok0
    v1 = prof[np.clip(i0 + 1, 0, h - 1), cols] * ok1
    return ((1 - fr) * v0 + fr * v1).sum(axis=1)


def _estimate_skew(prof: np.ndarray, xc: np.ndarray, xref: float, cfg: SystemDetectionConfig) -> float:
    def score(a: float, integer: bool) -> float:
        p = _project(prof, xc, xref, math.tan(math.radians(a)), integer)
        return float(np.dot(p, p))

    if prof.sum() == 0:
        return 0.0
    coarse = np.arange(-cfg.max_skew_deg, cfg.max_skew_deg + 1e-9, 0.25)
    sc = [score(a, True) for a in coarse]
    best = float(coarse[int(np.argmax(sc))])
    fine = np.arange(best - 0.3, best + 0.3 + 1e-9, 0.06)
    best = float(fine[int(np.argmax([score(a, False) for a in fine]))])
    fine = np.arange(best - 0.06, best + 0.06 + 1e-9, cfg.skew_step_deg)
    best = float(fine[int(np.argmax([score(a, False) for a in fine]))])
    return 0.0 if abs(best) < 1e-9 else best


def _skew_field(prof: np.ndarray, xc: np.ndarray, xref: float, ss: float, theta: float,
                cfg: SystemDetectionConfig) -> np.ndarray:
    """Slope of the lines for every row: the skew of overlapping horizontal bands (scanned
    pages are rarely flat: the skew drifts by a few tenths of a degree down the page),
    interpolated between bands with enough line ink, the page skew elsewhere."""
    h = prof.shape[0]
    hb, step = int(max(8, round(10 * ss))), int(max(4, round(5 * ss)))
    mass = prof.sum(axis=1)
    centres, angles, masses = [], [], []
    for r0 in range(0, max(1, h - hb // 2), step):
        r1 = min(h, r0 + hb)
        m = float(mass[r0:r1].sum())
        if m <= 0:
            continue
        ys = np.arange(r0, r1, dtype=np.float64)

        def score(a: float, integer: bool) -> float:
            p = _project(prof, xc, xref, math.tan(math.radians(a)), integer, ys=ys)
            return float(np.dot(p, p))

        cand = np.arange(theta - 1.0, theta + 1.0 + 1e-9, 0.1)
        best = float(cand[int(np.argmax([score(a, True) for a in cand]))])
        cand = np.arange(best - 0.08, best + 0.08 + 1e-9, 0.02)
        best = float(cand[int(np.argmax([score(a, False) for a in cand]))])
        centres.append(0.5 * (r0 + r1))
        angles.append(best)
        masses.append(m)
    tan_rows = np.full(h, math.tan(math.radians(theta)))
    if not centres:
        return tan_rows
    masses = np.asarray(masses)
    good = masses >= 0.25 * np.median(masses[masses >= np.percentile(masses, 50)])
    if good.sum() == 0:
        return tan_rows
    c, a = np.asarray(centres)[good], np.asarray(angles)[good]
    if a.size >= 3:  # one odd band (a text block, a beam-heavy passage) should not bend the field
        a = np.asarray([np.median(a[max(0, i - 1):i + 2]) for i in range(a.size)])
    return np.tan(np.radians(np.interp(np.arange(h) + 0.5, c, a)))


def _peaks(proj: np.ndarray, lt: float) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel positions (pixel-edge coordinates) and strengths of projection peaks."""
    sm = ndimage.gaussian_filter1d(proj.astype(np.float64), max(0.5, 0.5 * lt))
    n = len(sm)
    if n < 3:
        return np.zeros(0), np.zeros(0)
    c = sm[1:-1]
    idx = np.nonzero((c >= sm[:-2]) & (c > sm[2:]) & (c > 0))[0] + 1
    r = int(math.ceil(0.5 * lt + 1))
    ys, st = [], []
    for i in idx:
        a, bb = max(0, i - r), min(n, i + r + 1)
        seg = proj[a:bb].astype(np.float64)
        tot = seg.sum()
        if tot <= 0:
            continue
        ys.append(float(((np.arange(a, bb) + 0.5) * seg).sum() / tot))
        st.append(float(sm[i]))
    return np.asarray(ys), np.asarray(st)


def _line_rows(y: float, tan: float, ctx: _Ctx, half: float, x0: int = 0, x1: int | None = None):
    """Rows (n_off, n_cols) of the band |row centre - line| <= half around a line, with validity."""
    h, w = ctx.b.shape
    x1 = w if x1 is None else x1
    x = np.arange(x0, x1) + 0.5
    yc = y + (x - ctx.xref) * tan
    lo = np.floor(yc - half).astype(np.int64)
    n_off = int(math.ceil(2 * half)) + 2
    rows = lo[None, :] + np.arange(n_off)[:, None]
    ok = (rows + 0.5 >= yc - half) & (rows + 0.5 <= yc + half) & (rows >= 0) & (rows < h)
    return np.clip(rows, 0, h - 1), ok, yc


def _line_ink(y: float, tan: float, ctx: _Ctx, img: np.ndarray | None = None) -> np.ndarray:
    """For every column, whether the line at height ``y`` (at xref) has ink of ``img`` (default: thin)."""
    img = ctx.thin if img is None else img
    half = 0.5 * ctx.lt + max(0.75, 0.1 * ctx.ss)
    rows, ok, _ = _line_rows(y, tan, ctx, half)
    cols = np.arange(img.shape[1])[None, :]
    return ((img[rows, cols] > 0) & ok).any(axis=0)


def _extent(ok: np.ndarray, bridge: int, join: int, min_piece: int) -> tuple[int, int]:
    """x extent of a staff from its per-column evidence: chains of True columns with gaps
    <= ``bridge``; chains of at least ``min_piece`` inked columns closer than ``join`` are merged
    into the chain with the most ink."""
    idx = np.nonzero(ok)[0]
    if idx.size == 0:
        return 0, 0
    breaks = np.nonzero(np.diff(idx) > bridge + 1)[0]
    starts = idx[np.concatenate([[0], breaks + 1])]
    ends = idx[np.concatenate([breaks, [idx.size - 1]])] + 1
    counts = np.diff(np.concatenate([[0], breaks + 1, [idx.size]]))
    j = int(np.argmax(counts))
    a, bb = int(starts[j]), int(ends[j])
    for i in range(j - 1, -1, -1):  # extend left
        if a - ends[i] > join or counts[i] < min_piece:
            break
        a = int(starts[i])
    for i in range(j + 1, len(starts)):  # extend right
        if starts[i] - bb > join or counts[i] < min_piece:
            break
        bb = int(ends[i])
    return a, bb


def _refine_staff(c: _Staff, tan0: float, ctx: _Ctx, grey: bool = True) -> _Staff:
    """The staff's own skew and line heights (strip projections around it), grey-level line centres."""
    ss = c.space
    sel = (ctx.xc >= c.x0) & (ctx.xc <= c.x1)
    if sel.sum() >= 3:
        prof, xc = ctx.prof[:, sel], ctx.xc[sel]
        xs = 0.5 * (c.x0 + c.x1)
        y_mid = c.lines.mean() + (xs - ctx.xref) * tan0  # staff centre height at its own centre
        band = np.arange(math.floor(c.top - 1.0 * ss), math.ceil(c.bottom + 1.0 * ss) + 1, dtype=np.float64)
        best, best_sc, best_p = tan0, -1.0, None
        t0 = math.degrees(math.atan(tan0))
        for a in np.arange(t0 - 0.6, t0 + 0.6 + 1e-9, 0.05):
            ta = math.tan(math.radians(a))
            shift = y_mid - (xs - ctx.xref) * ta - c.lines.mean()  # band offset in this frame
            ys = band + round(shift)
            p = _project(prof, xc, ctx.xref, ta, ys=ys)
            sc = float(np.dot(p, p))
            if sc > best_sc:
                best, best_sc, best_p, best_ys = ta, sc, p, ys
        new_lines = []
        shift = y_mid - (xs - ctx.xref) * best - c.lines.mean()
        for y in c.lines:
            yy = y + shift
            m = np.abs(best_ys + 0.5 - yy) <= 0.35 * ss
            wts = best_p[m] - best_p[m].min()
            new_lines.append(float(((best_ys[m] + 0.5) * wts).sum() / wts.sum()) if wts.sum() > 0 else yy)
        c = _Staff(np.asarray(new_lines), c.strength, best, c.x0, c.x1, c.coverage, c.contrast)
    if not grey:
        return c
    # grey-level centroid of each line: sub-pixel heights on anti-aliased renders
    x0, x1 = int(c.x0), int(c.x1)
    half = 0.5 * ctx.lt + 1.5
    out = []
    cols = np.arange(x0, x1)[None, :]
    for y in c.lines:
        rows, ok, yc = _line_rows(y, c.tan, ctx, half, x0, x1)
        thick = (ctx.b[rows, cols] > 0) & (ctx.thin[rows, cols] == 0) & ok
        use = ~thick.any(axis=0) & ((ctx.thin[rows, cols] > 0) & ok).any(axis=0)
        if use.sum() < 4:
            out.append(float(y))
            continue
        dk = np.maximum(0.0, ctx.paper - ctx.work[rows, cols].astype(np.float64) - 8.0) * ok * use[None, :]
        tot = dk.sum()
        if tot <= 0:
            out.append(float(y))
            continue
        delta = float((dk * (rows + 0.5 - yc[None, :])).sum() / tot)
        out.append(float(y) + max(-0.5 * ss, min(0.5 * ss, delta)))
    c.lines = np.asarray(out)
    return c


def _measure_extent(c: _Staff, ctx: _Ctx) -> tuple[int, int, np.ndarray]:
    cfg, ss = ctx.cfg, c.space
    inks = np.stack([_line_ink(y, c.tan, ctx) for y in c.lines])
    cnt = inks.sum(axis=0)
    x0, x1 = _extent(cnt >= 3, int(round(cfg.gap_bridge_ss * ss)), int(round(8 * ss)), int(round(2 * ss)))
    if x1 > x0:
        # barlines at the ends (thick ink across the lines) belong to the staff
        full = np.stack([_line_ink(y, c.tan, ctx, ctx.b) for y in c.lines]).sum(axis=0) >= 4
        lim = int(round(0.8 * ss))
        n = 0
        while x0 > 0 and full[x0 - 1] and n < lim:
            x0 -= 1
            n += 1
        n = 0
        while x1 < len(full) and full[x1] and n < lim:
            x1 += 1
            n += 1
    return x0, x1, inks


def _find_staves(proj: np.ndarray, tan_rows: np.ndarray, ctx: _Ctx) -> list[_Staff]:
    cfg, ss = ctx.cfg, ctx.ss
    ys, st = _peaks(proj, ctx.lt)
    keep = st >= 2.0 * ss  # a line shorter than two staff spaces in total is no staff line
    ys, st = ys[keep], st[keep]
    n = ys.size
    if n < 5:
        return []
    cands: list[_Staff] = []
    # chains of 5 peaks, spacing in [0.6, 1.5] x the run-length staff space; seeds: the
    # distance to each following peak in that range, and the page's staff space
    seen = set()
    for i in range(n):
        seeds = [ss]
        for j in range(i + 1, n):
            d = ys[j] - ys[i]
            if d > 1.5 * ss:
                break
            if d >= 0.6 * ss:
                seeds.append(d)
        for d in seeds:
            chain = [i]
            dd = d
            for m in range(1, 5):
                target = ys[i] + m * dd
                near = np.nonzero(np.abs(ys - target) <= max(1.0, 0.25 * dd))[0]
                if near.size == 0:
                    break
                chain.append(int(near[np.argmax(st[near])]))
                dd = (ys[chain[-1]] - ys[i] + d) / (m + 1)
            if len(chain) < 5 or tuple(chain) in seen:
                continue
            seen.add(tuple(chain))
            ly = ys[chain]
            gaps = np.diff(ly)
            gm = gaps.mean()
            if gm < 0.6 * ss or gm > 1.5 * ss or np.any(np.abs(gaps - gm) > max(1.5, cfg.spacing_tol * gm)):
                continue
            cands.append(_Staff(ly.copy(), float(st[chain].min()), float(tan_rows[min(len(tan_rows) - 1, int(ly.mean()))])))
    # strongest first; validated along the lines; no overlaps
    cands.sort(key=lambda c: -c.strength)
    chosen: list[_Staff] = []
    for c in cands:
        if any(c.top <= o.bottom + 0.5 * ss and c.bottom >= o.top - 0.5 * ss for o in chosen):
            continue
        # the staff's own skew first (pages are not flat: the skew drifts down a scan)
        c.x0, c.x1 = 0.0, float(ctx.b.shape[1])
        c = _refine_staff(c, c.tan, ctx, grey=False)
        x0, x1, inks = _measure_extent(c, ctx)
        if x1 - x0 < cfg.min_staff_width_ss * c.space:
            continue
        cov = inks[:, x0:x1].mean(axis=1)
        if cov.min() < cfg.min_line_coverage:
            continue
        cov_b = np.stack([_line_ink(y, c.tan, ctx, ctx.b)[x0:x1] for y in c.lines]).mean(axis=1)
        if cov_b.min() < cfg.min_ink_coverage:
            continue
        # the spaces between the lines are mostly paper (noise, hatching and text are not)
        mids = 0.5 * (c.lines[1:] + c.lines[:-1])
        cov_m = np.stack([_line_ink(y, c.tan, ctx, ctx.b)[x0:x1] for y in mids]).mean(axis=1)
        c.contrast = float(cov_b.mean() - cov_m.mean())
        if c.contrast < cfg.min_space_contrast:
            continue
        c.x0, c.x1, c.coverage = float(x0), float(x1), float(cov.mean())
        c = _refine_staff(c, c.tan, ctx)
        # printed staves are evenly spaced: a robust (Theil-Sen) fit of the five lines, so that a
        # tie or ledger line next to one line does not bend the staff
        i = np.arange(5)
        d = float(np.median([(c.lines[q] - c.lines[p]) / (q - p) for p in range(5) for q in range(p + 1, 5)]))
        y0 = float(np.median(c.lines - i * d))
        fit = y0 + i * d
        if np.abs(c.lines - fit).max() > max(1.5, 0.25 * d) or not 0.6 * ss <= d <= 1.5 * ss:
            continue
        c.lines = fit
        x0, x1, inks = _measure_extent(c, ctx)
        if x1 - x0 >= cfg.min_staff_width_ss * c.space:
            c.x0, c.x1 = float(x0), float(x1)
        chosen.append(c)
    chosen.sort(key=lambda c: c.top)
    return chosen


def _y_at(s: _Staff, y: float, x: float, ctx: _Ctx) -> float:
    return y + (x - ctx.xref) * s.tan


def _connected(a: _Staff, c: _Staff, ctx: _Ctx, music_top: float, music_bottom: float) -> bool:
    """Is there a system barline, brace or bracket between staff a (above) and c at their left end?

    Ink components of the left-end columns (a few staff spaces left of the staves to just
    inside them) that cross the whole gap between the staves count when they are attached
    to the lines of both staves (the system's initial barline) or stay within a few staff
    spaces of the two staves (brace, bracket).  Components wider than a bracket (black
    blobs) or running beyond all the staves of the page (page borders, scan margins) do not."""
    cfg, ss, lt = ctx.cfg, ctx.ss, ctx.lt
    h, w = ctx.b.shape
    x0 = min(a.x0, c.x0)
    xa = int(max(0, math.floor(x0 - cfg.connect_window_ss * ss)))
    xb = int(min(w, math.ceil(x0 + 0.6 * ss)))
    if xb - xa < 2:
        return False
    ya_top = _y_at(a, a.top, x0, ctx)
    ya = _y_at(a, a.bottom, x0, ctx)
    yb = _y_at(c, c.top, x0, ctx)
    yb_bot = _y_at(c, c.bottom, x0, ctx)
    g0, g1 = int(math.floor(ya + 0.5 * lt + 1.0)), int(math.ceil(yb - 0.5 * lt - 1.0))
    if g1 - g0 < 2:
        return True  # touching staves
    if g0 < 0 or g1 >= h:
        return False
    crop = ctx.b[:, xa:xb].astype(bool)  # the full page height: borders are recognised by their length
    r = int(max(1, round(lt)))  # tolerate small breaks (scans): close vertically by about a line
    crop = ndimage.binary_closing(np.pad(crop, ((r, r), (0, 0))), structure=np.ones((2 * r + 1, 1), bool))[r:-r]
    lab, n = ndimage.label(crop, structure=np.ones((3, 3), bool))
    if n == 0:
        return False
    gap_labels = (set(np.unique(lab[g0])) & set(np.unique(lab[g1]))) - {0}
    if not gap_labels:
        return False
    inner = max(0, int(round(x0 - xa)) - 1)  # crop column of the staff start
    a_rows = slice(max(0, int(ya_top)), int(math.ceil(ya)) + 1)
    c_rows = slice(max(0, int(yb)), int(math.ceil(yb_bot)) + 1)
    objs = ndimage.find_objects(lab)
    for L in gap_labels:
        sl = objs[L - 1]
        comp = lab[sl] == L
        if not comp[g0 - sl[0].start:g1 + 1 - sl[0].start].any(axis=1).all():
            continue
        top, bot = sl[0].start, sl[0].stop
        if comp.sum() / max(1, bot - top) > 2.0 * ss:
            continue  # a black blob or margin, not a thin line
        if top < music_top - 2.0 * ss and bot > music_bottom + 2.0 * ss:
            continue  # runs beyond all the music: a page border
        full = lab == L
        if full[a_rows, inner:].any() and full[c_rows, inner:].any():
            return True  # the system barline
        if top >= ya_top - 3.0 * ss and bot <= yb_bot + 3.0 * ss:
            return True  # a brace or bracket around the two staves
    return False


def _group_staves(staves: list[_Staff], ctx: _Ctx) -> list[list[int]]:
    n = len(staves)
    if n == 1:
        return [[0]]
    sp = float(np.median([s.space for s in staves]))
    conn, gaps = [], []
    for i in range(n - 1):
        a, c = staves[i], staves[i + 1]
        gaps.append((c.top - a.bottom) / sp)
        aligned = abs(a.x0 - c.x0) <= 2.0 * sp
        conn.append(aligned and _connected(a, c, ctx, staves[0].top, staves[-1].bottom))
    conn = np.asarray(conn, bool)
    gaps = np.asarray(gaps)
    if ctx.cfg.gap_fallback and n >= 3:
        conn = _gap_repair(conn, gaps)
    groups = [[0]]
    for i in range(n - 1):
        if conn[i]:
            groups[-1].append(i + 1)
        else:
            groups.append([i + 1])
    return groups


def _gap_repair(conn: np.ndarray, gaps: np.ndarray) -> np.ndarray:
    """Join unconnected neighbours whose gap is clearly a within-system gap.

    Used where the page shows both kinds of gap: the gaps of connected pairs (within
    systems) must be clearly smaller than those of the unconnected pairs that separate
    systems; an unconnected pair whose gap falls in the within-system range (a broken
    brace or barline on a scan) is then joined."""
    conn = conn.copy()
    if conn.all():
        return conn
    if not conn.any():
        return _gap_grouping(gaps, conn)
    hi_in = float(gaps[conn].max())
    out = gaps[~conn]
    between = out[out > 1.1 * hi_in + 0.2]
    if between.size == 0 or between.min() < 1.15 * hi_in + 0.3:
        return conn
    lo_out = float(between.min())

    def sizes(cn):
        s, out = 1, []
        for v in cn:
            if v:
                s += 1
            else:
                out.append(s)
                s = 1
        return out + [s]

    biggest = max(sizes(conn))  # no repaired system larger than the largest connected one
    for i in np.nonzero(~conn)[0]:
        if gaps[i] <= 1.1 * hi_in + 0.2 and gaps[i] * 1.1 < lo_out:
            trial = conn.copy()
            trial[i] = True
            if max(sizes(trial)) <= biggest:
                conn = trial
    return conn


def _gap_grouping(gaps: np.ndarray, conn: np.ndarray) -> np.ndarray:
    """No staff of the page is joined to another (left edge cut off or faint on a scan):
    group by gaps alone, but only when they fall clearly into two sizes that make every
    system the same size (grand staves, voice + piano); otherwise single-staff systems."""
    if gaps.size < 3:
        return conn
    srt = np.sort(gaps)
    ratios = (srt[1:] + 0.5) / (srt[:-1] + 0.5)
    k = int(np.argmax(ratios))
    if ratios[k] < 1.6:
        return conn
    small = gaps <= srt[k]
    sizes, n = [], 1
    for v in small:
        if v:
            n += 1
        else:
            sizes.append(n)
            n = 1
    sizes.append(n)
    if len(sizes) >= 2 and len(set(sizes)) == 1 and sizes[0] >= 2:
        return small
    return conn


def _make_system(staves: list[_Staff], k: int, ctx: _Ctx) -> DetectedSystem:
    x0 = min(s.x0 for s in staves)
    x1 = max(s.x1 for s in staves)
    xm = 0.5 * (x0 + x1)
    first, last = staves[0], staves[-1]
    y0 = min(_y_at(first, first.top, x0, ctx), _y_at(first, first.top, x1, ctx))
    y1 = max(_y_at(last, last.bottom, x0, ctx), _y_at(last, last.bottom, x1, ctx))
    lines = [_y_at(s, y, xm, ctx) * k for s in staves for y in s.lines]
    st = [(_y_at(s, s.top, xm, ctx) * k, _y_at(s, s.bottom, xm, ctx) * k) for s in staves]
    ss = float(np.median([(s.bottom - s.top) / 4.0 for s in staves])) * k
    skew = math.degrees(math.atan(float(np.median([s.tan for s in staves]))))
    return DetectedSystem(
        x0=float(x0 * k), y0=float(y0 * k), x1=float(x1 * k), y1=float(y1 * k),
        staves=[(float(p), float(q)) for p, q in st], staff_lines=[float(v) for v in lines],
        staff_space=ss, skew_deg=round(skew, 4),
    )


# --------------------------------------------------------------------------- drawing


def draw_systems(page: np.ndarray, systems: list[DetectedSystem]):
    """The page (RGB PIL image) with each system's box, its staff lines and its number."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.fromarray(np.asarray(page)).convert("RGB")
    d = ImageDraw.Draw(img)
    W, H = img.size
    lw = max(1, int(round(max(W, H) / 1200)))
    try:
        font = ImageFont.load_default(size=max(12, int(H / 60)))
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    for n, s in enumerate(systems, 1):
        d.rectangle([s.x0, s.y0, s.x1, s.y1], outline=(220, 0, 0), width=2 * lw)
        t = math.tan(math.radians(s.skew_deg))
        xm = 0.5 * (s.x0 + s.x1)
        for y in s.staff_lines:
            d.line([(s.x0, y + (s.x0 - xm) * t), (s.x1, y + (s.x1 - xm) * t)], fill=(0, 120, 255), width=lw)
        for a, bb in s.staves:
            d.line([(s.x0 - 4 * lw, a + (s.x0 - xm) * t), (s.x0 - 4 * lw, bb + (s.x0 - xm) * t)], fill=(0, 170, 0), width=2 * lw)
        d.text((max(0, s.x0 - 6 * lw), s.y0), str(n), fill=(220, 0, 0), font=font, anchor="rb")
    return img
