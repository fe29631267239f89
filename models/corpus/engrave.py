"""Engraving scores with verovio and reading the layout back from its SVG.

Verovio gives us, for free, what no scan can: the exact page position of every
notehead and staff system, and (through its timemap and MIDI) the time each
note sounds in the performed order with repeats unfolded.  This module turns
one score text plus a random "engraving style" into page images and a layout
table; :mod:`models.corpus.perform` turns the timemap into audio.
"""

from __future__ import annotations

import io
import random
import re
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from .scorefile import ScoreError

PAGE_WIDTH_PX = 835
FONTS = ("Leipzig", "Bravura", "Gootville", "Leland", "Petaluma")

_SVG = "{http://www.w3.org/2000/svg}"
_XLINK = "{http://www.w3.org/1999/xlink}href"
_TRANSLATE = re.compile(r"translate\(\s*([-\d.eE]+)[ ,]+([-\d.eE]+)\s*\)")
_SCALE = re.compile(r"scale\(\s*([-\d.eE]+)")
_LINE = re.compile(r"M\s*([-\d.]+)[ ,]+([-\d.]+)\s*L\s*([-\d.]+)[ ,]+([-\d.]+)")
# SMuFL notehead advance widths in staff spaces (whole notes and breves are wider).
_HEAD_WIDTH = {"E0A0": 2.0, "E0A1": 2.0, "E0A2": 1.69}
_DEFAULT_HEAD_WIDTH = 1.18


@dataclass
class EngravingStyle:
    """One random-but-plausible house style: music font, size and spacing."""

    font: str = "Leipzig"
    page_width_units: int = 2100  # verovio units at scale 100; larger = smaller music on the page
    spacing_linear: float = 0.25
    spacing_non_linear: float = 0.6
    spacing_staff: int = 12
    spacing_system: int = 12
    header: str = "auto"

    @classmethod
    def random(cls, rng: random.Random) -> "EngravingStyle":
        return cls(
            font=rng.choice(FONTS),
            page_width_units=rng.randint(1850, 2450),
            spacing_linear=round(rng.uniform(0.18, 0.35), 3),
            spacing_non_linear=round(rng.uniform(0.5, 0.7), 3),
            spacing_staff=rng.randint(8, 16),
            spacing_system=rng.randint(6, 18),
            header=rng.choice(("auto", "none")),
        )

    def verovio_options(self) -> dict:
        w = self.page_width_units
        return {
            "pageWidth": w,
            "pageHeight": int(round(w * 1.41421)),
            "scale": 40,
            "font": self.font,
            "spacingLinear": self.spacing_linear,
            "spacingNonLinear": self.spacing_non_linear,
            "spacingStaff": self.spacing_staff,
            "spacingSystem": self.spacing_system,
            "header": self.header,
            "footer": "none",
            "breaks": "auto",
            "adjustPageHeight": False,
            # note ids from a checksum of the input: the same score gets the same ids in
            # every build, whatever the toolkit loaded before (reproducible corpora)
            "xmlIdChecksum": True,
        }


@dataclass
class System:
    """A staff system on a page, in page pixels."""

    x0: float
    y0: float  # top line of the first staff
    x1: float
    y1: float  # bottom line of the last staff
    staves: list[tuple[float, float]] = field(default_factory=list)
    staff_space: float = 0.0


@dataclass
class PageLayout:
    width: int
    height: int
    staff_space: float
    systems: list[System]
    # note id -> (system index, x0, y0, x1, y1) notehead box in page pixels
    notes: dict[str, tuple[int, float, float, float, float]]

    def to_json(self) -> dict:
        return {
            "width": self.width,
            "height": self.height,
            "staff_space": self.staff_space,
            "systems": [asdict(s) for s in self.systems],
            "notes": {k: [v[0], *[round(x, 2) for x in v[1:]]] for k, v in self.notes.items()},
        }

    @classmethod
    def from_json(cls, d: dict) -> "PageLayout":
        systems = [System(s["x0"], s["y0"], s["x1"], s["y1"], [tuple(t) for t in s["staves"]], s["staff_space"]) for s in d["systems"]]
        notes = {k: (int(v[0]), *map(float, v[1:])) for k, v in d["notes"].items()}
        return cls(d["width"], d["height"], d["staff_space"], systems, notes)  # type: ignore[arg-type]


def new_toolkit():
    """A verovio toolkit with quiet logging (imported lazily: training-only dependency)."""
    import verovio

    verovio.enableLog(verovio.LOG_OFF)
    return verovio.toolkit()


def load_score(tk, text: str, style: EngravingStyle) -> int:
    """Load score text into ``tk`` with ``style``; return the page count."""
    tk.setOptions(style.verovio_options())
    if not tk.loadData(text):
        raise ScoreError("verovio could not load the score")
    n = tk.getPageCount()
    if n < 1:
        raise ScoreError("verovio engraved no page")
    return n


def _walk(el: ET.Element, tx: float, ty: float):
    """Yield (element, accumulated translation) in document order."""
    tr = el.get("transform")
    if tr and el.tag == _SVG + "g":
        m = _TRANSLATE.search(tr)
        if m:
            tx, ty = tx + float(m.group(1)), ty + float(m.group(2))
    yield el, tx, ty
    for child in el:
        yield from _walk(child, tx, ty)


def parse_svg_layout(svg: str, width_px: int = PAGE_WIDTH_PX) -> PageLayout:
    """Systems, staff space and notehead boxes of one verovio SVG page, in pixels
    of a raster ``width_px`` wide."""
    root = ET.fromstring(svg)
    inner = next((e for e in root.iter(_SVG + "svg") if e.get("viewBox")), None)
    if inner is None:
        raise ScoreError("verovio SVG without a viewBox")
    vb = [float(v) for v in inner.get("viewBox").split()]
    f = width_px / vb[2]
    height_px = int(round(vb[3] * f))

    systems: list[System] = []
    notes: dict[str, tuple[int, float, float, float, float]] = {}
    spaces: list[float] = []
    for sys_el, sx, sy in _walk(inner, 0.0, 0.0):
        if sys_el.get("class") != "system":
            continue
        staff_lines: dict[int, list[tuple[float, float, float]]] = {}
        head_uses: list[tuple[str, float, float, str, float]] = []
        # Staff lines are drawn per measure: the n-th staff of each measure is staff n.
        for meas, mx, my in _walk(sys_el, sx, sy):
            if meas.get("class") != "measure":
                continue
            n = 0
            for st in meas:
                if st.get("class") != "staff":
                    continue
                ys = []
                for path in st:
                    if path.tag != _SVG + "path":
                        continue
                    m = _LINE.match(path.get("d", ""))
                    if m and abs(float(m.group(2)) - float(m.group(4))) < 1e-6:
                        ys.append((float(m.group(2)) + my, float(m.group(1)) + mx, float(m.group(3)) + mx))
                if len(ys) >= 2:
                    staff_lines.setdefault(n, []).extend(ys)
                n += 1
        for note, tx, ty in _walk(sys_el, sx, sy):
            if "note" != (note.get("class") or "").split(" ")[0] or note.get("id") is None:
                continue
            for head in note:
                if (head.get("class") or "") != "notehead":
                    continue
                for use in head:
                    if use.tag != _SVG + "use":
                        continue
                    m = _TRANSLATE.search(use.get("transform", ""))
                    if not m:
                        continue
                    s = _SCALE.search(use.get("transform", ""))
                    glyph = (use.get(_XLINK) or "#")[1:5]
                    head_uses.append((note.get("id"), float(m.group(1)) + tx, float(m.group(2)) + ty, glyph, float(s.group(1)) if s else 1.0))
                    break
        if not staff_lines:
            continue
        staves = []
        x0s, x1s, sp = [], [], []
        for n in sorted(staff_lines):
            lines = staff_lines[n]
            ys = sorted({round(y, 1) for y, _, _ in lines})
            if len(ys) >= 2:
                sp.append(float(np.median(np.diff(ys))))
            staves.append((min(ys) * f, max(ys) * f))
            x0s.extend(a for _, a, _ in lines)
            x1s.extend(b for _, _, b in lines)
        ss_units = float(np.median(sp)) if sp else 180.0
        ss = ss_units * f
        spaces.append(ss)
        system = System(min(x0s) * f, staves[0][0], max(x1s) * f, staves[-1][1], staves, ss)
        k = len(systems)
        systems.append(system)
        for nid, x, y, glyph, scale in head_uses:
            cue = min(1.0, scale / 0.72) if scale > 0 else 1.0  # verovio draws normal heads at 0.72
            w = _HEAD_WIDTH.get(glyph, _DEFAULT_HEAD_WIDTH) * ss * cue
            h = ss * cue
            notes[nid] = (k, x * f, y * f - h / 2, x * f + w, y * f + h / 2)
    if not systems:
        raise ScoreError("engraved page has no staff system")
    return PageLayout(width_px, height_px, float(np.median(spaces)), systems, notes)


def rasterize(svg: str, width_px: int = PAGE_WIDTH_PX) -> np.ndarray:
    """Render an SVG page to an 8-bit grayscale image (white background)."""
    import resvg_py

    png = resvg_py.svg_to_bytes(svg_string=svg, background="#ffffff", width=width_px)
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"))
