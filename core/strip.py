"""The "unrolled score": staff systems cut out of their pages and laid side by side.

Audio is one long line in time; a score is folded into systems and pages.
Unrolling it into one horizontal strip of fixed height lets the model (and
the tracker) treat the sheet as a 1-D sequence too.  Every system is scaled so
that its staff space is ``staff_space`` pixels, which makes strips from
different engravings, scans and zoom levels look alike to the network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from .geometry import STAFF_SPACE, STRIP_HEIGHT

# Horizontal margins of a system's crop, in staff spaces of the page: left of the first
# staff-line pixel (clef and brace start there) and right of the last one.
MARGIN_LEFT_SS = 1.5
MARGIN_RIGHT_SS = 0.5


@dataclass
class Segment:
    """Where one system of one page sits in the strip."""

    page: int
    system: int
    src_x0: float  # page pixels of the crop
    src_y_centre: float
    scale: float  # strip px per page px
    strip_x0: int
    width: int
    # a skewed system (scans): its centre line is y = src_y_centre + (x - x_ref) * tan on the page
    tan: float = 0.0
    x_ref: float = 0.0

    def centre_y(self, x: float) -> float:
        """Page y of the system's centre line at page column x."""
        return self.src_y_centre + (x - self.x_ref) * self.tan

    def page_to_strip(self, x: float, y: float) -> tuple[float, float]:
        return self.strip_x0 + (x - self.src_x0) * self.scale, STRIP_HEIGHT / 2 + (y - self.centre_y(x)) * self.scale

    def strip_to_page(self, sx: float, sy: float = STRIP_HEIGHT / 2) -> tuple[float, float]:
        x = self.src_x0 + (sx - self.strip_x0) / self.scale
        return x, self.centre_y(x) + (sy - STRIP_HEIGHT / 2) / self.scale


@dataclass
class Strip:
    image: np.ndarray  # uint8 (STRIP_HEIGHT, W), white = 255
    segments: list[Segment]
    staff_space: float = STAFF_SPACE

    def to_json(self) -> dict:
        return {"height": STRIP_HEIGHT, "width": int(self.image.shape[1]), "staff_space": self.staff_space, "segments": [asdict(s) for s in self.segments]}

    @staticmethod
    def segments_from_json(d: dict) -> list[Segment]:
        return [Segment(**s) for s in d["segments"]]

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    def segment_at(self, strip_x: float) -> Segment:
        """The system segment that covers strip column ``strip_x`` (clamped)."""
        return self.segments[segment_index(self.segments, strip_x)]

    def strip_to_page(self, strip_x: float, strip_y: float = STRIP_HEIGHT / 2) -> tuple[int, int, float, float]:
        """(page, system, x, y) on the page (0-based page/system, page pixels) of a strip point."""
        seg = self.segment_at(strip_x)
        x, y = seg.strip_to_page(strip_x, strip_y)
        return seg.page, seg.system, x, y

    def page_to_strip(self, page: int, system: int, x: float, y: float) -> tuple[float, float]:
        """Strip point of page point (x, y) in system ``system`` of page ``page`` (0-based)."""
        for seg in self.segments:
            if seg.page == page and seg.system == system:
                return seg.page_to_strip(x, y)
        raise KeyError(f"no system {system} on page {page} in this strip")


def segment_index(segments: list[Segment], strip_x: float) -> int:
    """Index of the segment that covers strip column ``strip_x`` (clamped to the first/last)."""
    starts = np.array([s.strip_x0 for s in segments])
    return int(np.clip(np.searchsorted(starts, strip_x, side="right") - 1, 0, len(segments) - 1))


# below this slope a system is cut axis-aligned (engraved pages: exactly the corpus's crops)
MIN_SHEAR_TAN = 1e-3


def _sheared_column(img: np.ndarray, cx0: float, cx1: float, yc: float, x_ref: float, tan: float, scale: float) -> np.ndarray:
    """STRIP_HEIGHT-row strip of a skewed system: the centre line y = yc + (x - x_ref) tan becomes row 100.

    The region is first scaled (antialiased) to the strip resolution, then sheared at unit
    scale, so a 300 dpi scan is filtered as well as an axis-aligned crop."""
    h, w = img.shape
    half = STRIP_HEIGHT / 2 / scale
    span = abs(tan) * (cx1 - cx0) + 2
    top = int(np.floor(yc - half - span))
    bottom = int(np.ceil(yc + half + span))
    ix0, ix1 = int(cx0), int(np.ceil(cx1))
    crop = np.full((bottom - top, ix1 - ix0), 255, np.uint8)
    st, sb = max(top, 0), min(bottom, h)
    if sb > st:
        crop[st - top: sb - top] = img[st:sb, ix0:ix1]
    out_w = max(1, int(round(crop.shape[1] * scale)))
    out_h = max(1, int(round(crop.shape[0] * scale)))
    sx, sy = out_w / crop.shape[1], out_h / crop.shape[0]
    resized = Image.fromarray(crop).resize((out_w, out_h), Image.Resampling.BILINEAR)
    # output (X, R) -> resized (X, (yc + (x - x_ref) tan - top) sy + R - 100), x = ix0 + X / sx
    c = (yc + (ix0 - x_ref) * tan - top) * sy - STRIP_HEIGHT / 2
    d = tan * sy / sx
    col = resized.transform((out_w, STRIP_HEIGHT), Image.Transform.AFFINE, (1.0, 0.0, 0.0, d, 1.0, c),
                            resample=Image.Resampling.BILINEAR, fillcolor=255)
    return np.asarray(col)


def unroll(pages: list[np.ndarray], systems: list[list[tuple[float, ...]]], staff_space: float = STAFF_SPACE) -> Strip:
    """Cut every system (x0, y0, x1, y1, staff space[, tan]; page pixels) and concatenate.

    ``systems[p]`` lists page ``p``'s systems top to bottom.  Each crop spans
    the system's staff lines horizontally (plus a little margin) and
    ``STRIP_HEIGHT`` strip pixels vertically around the system's centre line.
    A sixth value ``tan`` (slope of the staff lines, scans) shears the crop so
    that the centre line, ``y = (y0 + y1) / 2`` at ``x = (x0 + x1) / 2``, is
    horizontal in the strip.
    """
    cols = []
    segments = []
    x = 0
    for p, (img, page_systems) in enumerate(zip(pages, systems)):
        h, w = img.shape
        for k, sysbox in enumerate(page_systems):
            x0, y0, x1, y1, ss = sysbox[:5]
            tan = float(sysbox[5]) if len(sysbox) > 5 else 0.0
            scale = staff_space / ss if ss > 0 else 1.0
            yc = (y0 + y1) / 2
            half = STRIP_HEIGHT / 2 / scale
            cx0 = max(0.0, x0 - MARGIN_LEFT_SS * ss)
            cx1 = min(float(w), x1 + MARGIN_RIGHT_SS * ss)
            if abs(tan) >= MIN_SHEAR_TAN:
                col = _sheared_column(img, cx0, cx1, yc, (x0 + x1) / 2, tan, scale)
                out_w = col.shape[1]
                cols.append(col)
                segments.append(Segment(p, k, int(cx0), yc, out_w / (int(np.ceil(cx1)) - int(cx0)), x, out_w,
                                        tan=tan, x_ref=(x0 + x1) / 2))
                x += out_w
                continue
            top, bottom = int(np.floor(yc - half)), int(np.ceil(yc + half))
            crop = np.full((bottom - top, int(np.ceil(cx1)) - int(cx0)), 255, np.uint8)
            st, sb = max(top, 0), min(bottom, h)
            if sb > st:
                crop[st - top : sb - top] = img[st:sb, int(cx0) : int(np.ceil(cx1))]
            out_w = max(1, int(round(crop.shape[1] * scale)))
            out_h = max(1, int(round(crop.shape[0] * scale)))
            resized = np.asarray(Image.fromarray(crop).resize((out_w, out_h), Image.Resampling.BILINEAR))
            # exact vertical placement: row of the centre line must land on STRIP_HEIGHT/2
            off = int(round((yc - top) * scale - STRIP_HEIGHT / 2))
            col = np.full((STRIP_HEIGHT, out_w), 255, np.uint8)
            a, b = max(off, 0), min(off + STRIP_HEIGHT, out_h)
            if b > a:
                col[a - off : b - off] = resized[a:b]
            cols.append(col)
            segments.append(Segment(p, k, int(cx0), yc, scale * (out_w / (crop.shape[1] * scale)), x, out_w))
            x += out_w
    if not cols:
        raise ValueError("no system to unroll")
    return Strip(np.concatenate(cols, axis=1), segments, staff_space)
