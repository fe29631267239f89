"""Staff-system detection (engine/systems.py) on engraved pages with exact truth,
on degraded "scans" of them, and on pages without music."""

from __future__ import annotations

import math
import os
import random
import tracemalloc
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from scorestream.engine.systems import (
    DetectedSystem,
    NoStavesError,
    SystemDetectionConfig,
    detect_systems,
    draw_systems,
)

verovio = pytest.importorskip("verovio")
music21 = pytest.importorskip("music21")
pytest.importorskip("resvg_py")

from scorestream.models.corpus.engrave import EngravingStyle, load_score, new_toolkit, parse_svg_layout, rasterize  # noqa: E402
from scorestream.models.corpus.scorefile import load_for_engraving  # noqa: E402

CORPUS = os.path.join(os.path.dirname(music21.__file__), "corpus")


def _first_part(text: str) -> str:
    """Keep only the first part of a partwise MusicXML text (a one-staff score)."""
    root = ET.fromstring(text.encode("utf-8"))
    parts = root.findall("part")
    keep = parts[0].get("id")
    for p in parts[1:]:
        root.remove(p)
    pl = root.find("part-list")
    for el in list(pl):
        if el.tag != "score-part" or el.get("id") != keep:
            pl.remove(el)
    return ET.tostring(root, encoding="unicode")


# (corpus file, keyboard only, first part only, what it tests)
SCORES = {
    "piano": ("joplin/maple_leaf_rag.mxl", True, False),  # grand staff, 2 staves
    "single": ("beethoven/opus18no1/movement3.mxl", False, True),  # violin I alone: 1-staff systems
    "voice_piano": ("schubert/Lindenbaum.xml", False, False),  # voice + piano: 3 staves
    "quartet": ("beethoven/opus18no1/movement3.mxl", False, False),  # string quartet: 4 staves
}
STYLES = {
    "default": EngravingStyle(),
    "random": EngravingStyle.random(random.Random(7)),
}


SCAN_WIDTH = 2480  # an A4 page at 300 dpi


@pytest.fixture(scope="module")
def engraved():
    """{(score, style): svg} for page 1 of each score in each style."""
    tk = new_toolkit()
    out = {}
    for key, (path, keyboard, first) in SCORES.items():
        text = load_for_engraving(os.path.join(CORPUS, path), keyboard=keyboard)
        if first:
            text = _first_part(text)
        for sname, style in STYLES.items():
            load_score(tk, text, style)
            out[(key, sname)] = tk.renderToSVG(1)
    return out


@pytest.fixture(scope="module")
def pages(engraved):
    """{(score, style): (image, layout)}: the pages at the library's 835-px width."""
    return {k: (rasterize(svg), parse_svg_layout(svg)) for k, svg in engraved.items()}


@pytest.fixture(scope="module")
def pages_300dpi(engraved):
    """The same pages at 300 dpi (what a scanner sees of the printed page)."""
    return {k: (rasterize(svg, SCAN_WIDTH), parse_svg_layout(svg, SCAN_WIDTH)) for k, svg in engraved.items() if k[1] == "random"}


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def check(det: list[DetectedSystem], truth: list[dict], min_iou: float, ss_tol: float = 0.05):
    """Every truth system found once (IoU, staff count, staff space), no other detection."""
    assert len(det) == len(truth), ([d.bbox for d in det], [t["bbox"] for t in truth])
    for d, t in zip(det, truth):  # both top to bottom
        v = iou(d.bbox, t["bbox"])
        assert v >= min_iou, (d.bbox, t["bbox"], v)
        assert d.n_staves == t["n_staves"]
        assert len(d.staff_lines) == 5 * d.n_staves
        assert abs(d.staff_space - t["staff_space"]) <= ss_tol * t["staff_space"], (d.staff_space, t["staff_space"])


def truth_of(layout, scale: float = 1.0, rot=None) -> list[dict]:
    """Truth systems, optionally scaled and rotated like the degraded page (bbox of the
    transformed staff-line end points)."""
    out = []
    for s in layout.systems:
        pts = np.array([[s.x0, s.y0], [s.x1, s.y0], [s.x0, s.y1], [s.x1, s.y1]]) * scale
        if rot is not None:
            pts = rot(pts)
        out.append({"bbox": [pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()],
                    "n_staves": len(s.staves), "staff_space": s.staff_space * scale})
    return out


EXPECTED_STAVES = {"piano": 2, "single": 1, "voice_piano": 3, "quartet": 4}


@pytest.mark.parametrize("style", list(STYLES))
@pytest.mark.parametrize("score", list(SCORES))
def test_engraved_page(pages, score, style):
    img, layout = pages[(score, style)]
    assert img.shape[1] == 835
    assert {len(s.staves) for s in layout.systems} == {EXPECTED_STAVES[score]}
    det = detect_systems(img)
    check(det, truth_of(layout), 0.8)
    for d in det:
        assert abs(d.skew_deg) < 0.05
        assert d.y0 == pytest.approx(d.staves[0][0], abs=0.5) and d.y1 == pytest.approx(d.staves[-1][1], abs=0.5)
        assert all(b > a for a, b in d.staves)
        assert d.staff_lines == sorted(d.staff_lines)


def degrade(img: np.ndarray, seed: int = 0, angle: float = 0.7):
    """A 1-bit "scan" of a 300-dpi page: rotated, blurred, noisy, speckled, binarised to
    1 bit, with grey scanner margins.  Returns (page, point transform of the rotation)."""
    rng = np.random.default_rng(seed)
    H, width = img.shape
    big = Image.fromarray(img)
    cx, cy = width / 2.0, H / 2.0
    big = big.rotate(angle, resample=Image.BICUBIC, center=(cx, cy), fillcolor=255)  # counter-clockwise
    a = ndimage.gaussian_filter(np.asarray(big).astype(np.float32), 1.2)
    a += rng.normal(0, 25, a.shape).astype(np.float32)
    a = np.where(a < 150, 0, 255).astype(np.uint8)  # 1-bit
    n = int(a.size * 0.002)  # speckle: isolated dots and small blobs, black and white
    ys, xs = rng.integers(0, H - 3, n), rng.integers(0, width - 3, n)
    for k, v in ((0, 0), (1, 255)):
        sel = slice(k * n // 2, (k + 1) * n // 2)
        for dy in range(2):
            for dx in range(2):
                a[ys[sel] + dy, xs[sel] + dx] = v
    bed = np.full((H + 50, width + 70), 120, np.uint8)  # the grey scanner bed around the paper
    bed[:H, 70:] = a
    t = math.radians(angle)

    def rot(p):
        dx, dy = p[:, 0] - cx, p[:, 1] - cy
        return np.stack([70 + cx + dx * math.cos(t) + dy * math.sin(t), cy - dx * math.sin(t) + dy * math.cos(t)], axis=1)

    return bed, rot


@pytest.mark.parametrize("score", list(SCORES))
def test_degraded_scan(pages_300dpi, score):
    img, layout = pages_300dpi[(score, "random")]
    scan, rot = degrade(img, seed=len(score))
    assert scan.shape[1] == SCAN_WIDTH + 70
    det = detect_systems(scan)
    check(det, truth_of(layout, 1.0, rot), 0.7)
    for d in det:
        # the page was turned counter-clockwise: lines rise to the right (negative skew)
        assert d.skew_deg == pytest.approx(-0.7, abs=0.15)


def test_skew_other_way_and_grey_scan(pages):
    """Clockwise skew, a grey (not 1-bit) page with uneven paper: Sauvola path."""
    img, layout = pages[("piano", "default")]
    h, w = img.shape
    f = 2.0
    big = Image.fromarray(img).resize((int(w * f), int(h * f)), Image.BICUBIC)
    cx, cy = big.width / 2.0, big.height / 2.0
    big = big.rotate(-1.8, resample=Image.BICUBIC, center=(cx, cy), fillcolor=255)
    a = np.asarray(big).astype(np.float32)
    yy, xx = np.mgrid[0:a.shape[0], 0:a.shape[1]]
    paper = 200 + 40 * xx / a.shape[1] + 10 * np.sin(yy / 300.0)  # uneven grey paper
    a = a / 255.0 * paper + np.random.default_rng(1).normal(0, 6, a.shape)
    a = np.clip(a, 0, 255).astype(np.uint8)
    t = math.radians(-1.8)

    def rot(p):
        dx, dy = p[:, 0] - cx, p[:, 1] - cy
        return np.stack([cx + dx * math.cos(t) + dy * math.sin(t), cy - dx * math.sin(t) + dy * math.cos(t)], axis=1)

    det = detect_systems(a)
    check(det, truth_of(layout, f, rot), 0.7)
    assert all(d.skew_deg == pytest.approx(1.8, abs=0.15) for d in det)


def test_staff_lines_in_original_frame(pages_300dpi):
    """Reported line heights follow the lines of the skewed page (checked on the pixels)."""
    img, _ = pages_300dpi[("piano", "random")]
    scan, _ = degrade(img, seed=3, angle=1.2)
    det = detect_systems(scan)
    for d in det:
        t = math.tan(math.radians(d.skew_deg))
        xm = 0.5 * (d.x0 + d.x1)
        for x in (d.x0 + 0.1 * (d.x1 - d.x0), d.x1 - 0.1 * (d.x1 - d.x0)):
            col = scan[:, int(x) - 20:int(x) + 20] < 128
            for y in d.staff_lines:
                yy = y + (x - xm) * t
                band = col[int(yy) - 3:int(yy) + 4].mean(axis=1)
                assert band.max() > 0.5, (x, yy)


def test_json_roundtrip_and_drawing(pages):
    img, _ = pages[("voice_piano", "default")]
    det = detect_systems(img)
    for d in det:
        j = d.to_json()
        assert set(j) == {"x0", "y0", "x1", "y1", "staves", "staff_lines", "staff_space", "skew_deg"}
        back = DetectedSystem.from_json(j)
        assert back.bbox == pytest.approx(d.bbox, abs=1e-3)
        assert np.allclose(back.staves, d.staves, atol=1e-3) and isinstance(back.staves[0], tuple)
        assert back.staff_lines == pytest.approx(d.staff_lines, abs=1e-3)
        assert d.bbox == [d.x0, d.y0, d.x1, d.y1]
    out = draw_systems(img, det)
    assert out.mode == "RGB" and out.size == (img.shape[1], img.shape[0])
    arr = np.asarray(out)
    assert ((arr[..., 0] > 180) & (arr[..., 1] < 60)).any()  # red boxes drawn


def test_config_binarisation_modes(pages, pages_300dpi):
    img, layout = pages[("piano", "random")]
    check(detect_systems(img, SystemDetectionConfig(binarize="global")), truth_of(layout), 0.8)
    img, layout = pages_300dpi[("piano", "random")]
    for mode in ("global", "sauvola"):
        check(detect_systems(img, SystemDetectionConfig(binarize=mode)), truth_of(layout), 0.8)


# --------------------------------------------------------------------------- no music


def _text_page() -> np.ndarray:
    im = Image.new("L", (1240, 1754), 255)
    d = ImageDraw.Draw(im)
    try:
        font = ImageFont.load_default(size=28)
        big = ImageFont.load_default(size=64)
    except TypeError:  # Pillow < 10.1
        font = big = ImageFont.load_default()
    d.text((300, 80), "SONATE No. 11", font=big, fill=0)
    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog while music plays andante grazioso".split()
    y = 220
    while y < 1650:
        d.text((100, y), " ".join(rng.choice(words) for _ in range(12)), font=font, fill=0)
        y += 36
    d.line([(100, 200), (1140, 200)], fill=0, width=3)  # a rule under the title
    return np.asarray(im)


@pytest.mark.parametrize("kind", ["text", "noise", "white", "black_border"])
def test_no_staves(kind):
    if kind == "text":
        page = _text_page()
    elif kind == "noise":
        rng = np.random.default_rng(0)
        a = ndimage.gaussian_filter(rng.normal(0, 1, (1400, 1000)), 3)
        page = np.clip(128 + a / a.std() * 60, 0, 255).astype(np.uint8)
    elif kind == "white":
        page = np.full((1169, 835), 255, np.uint8)
    else:  # a blank scan with black borders and a dark gutter
        page = np.full((3300, 2500), 250, np.uint8)
        page[:, :120] = 20
        page[:90, :] = 30
        page[:, 1240:1260] = 60
    with pytest.raises(NoStavesError, match="no music staves"):
        detect_systems(page)


def test_huge_blank_page_bounded():
    page = np.broadcast_to(np.uint8(255), (20000, 20000))  # a 400-Mpx page that takes no memory
    tracemalloc.start()
    with pytest.raises(NoStavesError):
        detect_systems(page)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 200e6, peak  # no full-resolution copy
    with pytest.raises(ValueError, match="too large"):
        detect_systems(np.broadcast_to(np.uint8(255), (30000, 30000)))


def test_bad_input():
    with pytest.raises(ValueError):
        detect_systems(np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(ValueError):
        detect_systems(np.zeros((100, 100), np.float32))
    assert issubclass(NoStavesError, ValueError)


def test_lone_short_staff_is_ledger_lines():
    """Five stacked ledger lines under a system can look like a short staff: a single-staff
    "system" far narrower than the page's systems is dropped; a page of short staves keeps them."""
    from scorestream.engine.systems import DetectedSystem, SystemDetectionConfig, _drop_ledger_staves

    def sysm(x0, x1, y0, n):
        staves = [(y0 + 80 * i, y0 + 80 * i + 29) for i in range(n)]
        return DetectedSystem(x0, y0, x1, staves[-1][1], staves=staves)

    cfg = SystemDetectionConfig()
    page = [sysm(75, 815, 87, 2), sysm(123, 181, 499, 1), sysm(75, 815, 671, 2), sysm(75, 300, 900, 1)]
    kept = _drop_ledger_staves(page, cfg)
    assert [d.y0 for d in kept] == [87, 671, 900]           # the 58 px "staff" goes, a 225 px closing staff stays
    short = [sysm(100, 160, 100, 1), sysm(100, 170, 300, 1)]
    assert _drop_ledger_staves(short, cfg) == short
