"""The score library (engine/library.py, engine/pages.py, engine/index.py, ``scorestream library …``).

No mocks: scores from music21's bundled corpus engraved with verovio at test time, added
through the real command line (subprocesses) with the shipped ONNX ensemble, checked
against the engraver's own layout. Covered: PNG pages, the same pages as a PDF (with a
title page without staves), a folder of pages, a degraded 1-bit 300 dpi scan; atomic add
under ``kill -9`` (during embedding, and between the folder rename and the commit),
readers during add and remove, refusal of a library built with other weights, every bad
input of issue 9 as a one-line error that changes nothing, remove, and the snippet
index's recall on realistic data (tests/fixtures/index_realistic.npz: a mixture fitted to
a real library's snippets and real audio-window queries, written by
``benchmarks/library.py --write-index-fixture``)."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from scorestream.core.errors import IncompatibleModelError
from scorestream.engine.index import SnippetIndex, _exact_topk, default_nlist, default_nprobe
from scorestream.engine.library import DB_NAME, STAGING, Library
from scorestream.models.corpus.engrave import EngravingStyle, load_score, new_toolkit, parse_svg_layout, rasterize
from scorestream.models.corpus.scorefile import load_for_engraving

ROOT = Path(__file__).resolve().parent.parent
EXE = [sys.executable, "-m", "scorestream.cli"]
PDF_PX = 1670            # engine/pages.py renders PDF pages this wide
SCAN_PX = 2480           # an A4 page at 300 dpi
SCAN_ANGLE = 0.7         # degrees, counter-clockwise
SCAN_MARGIN = (70, 50)   # black scanner bed left of and below the paper (px)
HOP = 20


# --------------------------------------------------------------------------- helpers


def cli(*args, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    p = subprocess.run(EXE + [str(a) for a in args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check and p.returncode:
        raise AssertionError(f"scorestream {' '.join(map(str, args))} failed ({p.returncode}): {p.stderr}")
    return p


def cli_json(*args):
    return json.loads(cli(*args).stdout)


def assert_one_line_error(p: subprocess.CompletedProcess, *needles: str) -> str:
    """Failed with exit code != 0 and one line on stderr, no traceback."""
    assert p.returncode != 0, p.stdout
    err = p.stderr.strip()
    assert "Traceback" not in p.stderr, p.stderr
    assert len(err.splitlines()) == 1 and err.startswith("scorestream: error: "), p.stderr
    for n in needles:
        assert n in err, (n, err)
    return err


def state(lib: Path) -> dict:
    """Everything a user or reader sees of a library: list, stats, every piece's pages and
    systems, and the bytes of every file the library refers to (paths relative)."""
    pieces = cli_json("library", "list", "--library", lib, "--json")
    stats = cli_json("library", "stats", "--library", lib, "--json")
    stats.pop("library")
    shows, files = {}, {}
    for p in pieces:
        sh = cli_json("library", "show", "--library", lib, p["id"], "--json")
        for pg in sh["pages"]:
            img = Path(pg["image"])
            pg["image"] = str(img.relative_to(lib))
            folder = img.parent
            for f in sorted(folder.iterdir()):
                files[str(f.relative_to(lib))] = hashlib.sha256(f.read_bytes()).hexdigest()
        shows[p["id"]] = sh
    return {"list": pieces, "stats": stats, "show": shows, "files": files}


def leftovers(lib: Path) -> list[str]:
    """Folders under pieces/ that no piece refers to, and anything staged."""
    with Library.open(lib, check_model=False) as L:
        known = {r[0] for r in L._conn.execute("SELECT folder FROM pieces")}
    out = [f"pieces/{d.name}" for d in (lib / "pieces").iterdir() if d.name not in known]
    if (lib / STAGING).exists():
        out += [f"{STAGING}/{d.name}" for d in (lib / STAGING).iterdir()]
    return out


def copy_library(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# --------------------------------------------------------------------------- score fixtures


def engrave(path: str, *, keyboard: bool, pages: int, widths=(835,)) -> dict[int, list]:
    """{width: [(image, layout) per page]} for the first ``pages`` pages of a corpus score."""
    import music21

    tk = new_toolkit()
    text = load_for_engraving(str(Path(music21.__file__).resolve().parent / "corpus" / path), keyboard=keyboard)
    n = load_score(tk, text, EngravingStyle())
    svgs = [tk.renderToSVG(p) for p in range(1, min(n, pages) + 1)]
    return {w: [(rasterize(s, w), parse_svg_layout(s, w)) for s in svgs] for w in widths}


def truth_systems(layout, transform=None) -> list[dict]:
    """Truth systems of a page (bbox of the staff-line end points, optionally transformed)."""
    out = []
    for s in layout.systems:
        pts = np.array([[s.x0, s.y0], [s.x1, s.y0], [s.x0, s.y1], [s.x1, s.y1]], float)
        if transform is not None:
            pts = transform(pts)
        out.append({"bbox": [pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()],
                    "staves": [list(t) for t in s.staves], "staff_space": s.staff_space})
    return out


def text_page(width: int, height: int) -> np.ndarray:
    """A title / preface page: big title, lines of text, a rule (no staves)."""
    im = Image.new("L", (width, height), 255)
    d = ImageDraw.Draw(im)
    f = width / 1240
    try:
        font, big = ImageFont.load_default(size=int(28 * f)), ImageFont.load_default(size=int(64 * f))
    except TypeError:  # Pillow < 10.1
        font = big = ImageFont.load_default()
    d.text((int(300 * f), int(80 * f)), "POLONAISE No. 1", font=big, fill=0)
    words = "the composer wrote this polonaise at ten years old for her father's pupils".split()
    y, k = int(220 * f), 0
    while y < height - 100 * f:
        d.text((int(100 * f), y), " ".join(words[(k + i) % len(words)] for i in range(11)), font=font, fill=0)
        y += int(36 * f)
        k += 3
    d.line([(100 * f, 200 * f), (width - 100 * f, 200 * f)], fill=0, width=max(1, int(3 * f)))
    return np.asarray(im)


def degrade(img: np.ndarray, seed: int, angle: float = SCAN_ANGLE):
    """A 1-bit 300 dpi "scan": rotated counter-clockwise, blurred, noisy, binarised, speckled,
    on a black scanner bed.  Returns (bool image, True = white) and the point transform."""
    rng = np.random.default_rng(seed)
    h, w = img.shape
    cx, cy = w / 2.0, h / 2.0
    rot = Image.fromarray(img).rotate(angle, resample=Image.BICUBIC, center=(cx, cy), fillcolor=255)
    a = ndimage.gaussian_filter(np.asarray(rot).astype(np.float32), 1.2) + rng.normal(0, 25, (h, w)).astype(np.float32)
    white = a >= 150
    n = int(white.size * 0.002)
    ys, xs = rng.integers(0, h - 2, n), rng.integers(0, w - 2, n)
    for dy in (0, 1):
        for dx in (0, 1):
            white[ys[: n // 2] + dy, xs[: n // 2] + dx] = False
            white[ys[n // 2:] + dy, xs[n // 2:] + dx] = True
    mx, my = SCAN_MARGIN
    bed = np.zeros((h + my, w + mx), bool)
    bed[:h, mx:] = white
    t = math.radians(angle)

    def transform(p):
        dx, dy = p[:, 0] - cx, p[:, 1] - cy
        return np.stack([mx + cx + dx * math.cos(t) + dy * math.sin(t), cy - dx * math.sin(t) + dy * math.cos(t)], axis=1)

    return bed, transform


@dataclass
class Scores:
    folder: Path
    files: dict[str, list[Path]] = field(default_factory=dict)       # piece -> input files
    truth: dict[str, list[list[dict]]] = field(default_factory=dict)  # piece -> per library page, truth systems
    to_png: dict = field(default_factory=dict)                        # piece -> (x, y) of its pages -> polonaise PNG pixels
    sizes: dict[str, list[tuple[int, int]]] = field(default_factory=dict)   # piece -> (width, height) of each kept page


@pytest.fixture(scope="session")
def scores(tmp_path_factory) -> Scores:
    """Page files of the test pieces and the engraver's truth for every page the library keeps.
    Needs the train extra (verovio, music21, resvg); the index tests run without it."""
    for mod in ("verovio", "music21", "resvg_py"):
        pytest.importorskip(mod)
    out = Scores(tmp_path_factory.mktemp("library_scores"))
    f = out.folder
    pol = engrave("schumann_clara/polonaise_op1n1.mxl", keyboard=True, pages=2, widths=(835, PDF_PX, SCAN_PX))

    # polonaise: two PNG pages (grand staff), the library keeps their own pixels
    out.files["polonaise"] = []
    for i, (img, _) in enumerate(pol[835], 1):
        Image.fromarray(img).save(f / f"polonaise-{i}.png")
        out.files["polonaise"].append(f / f"polonaise-{i}.png")
    out.truth["polonaise"] = [truth_systems(lay) for _, lay in pol[835]]
    out.sizes["polonaise"] = [img.shape[::-1] for img, _ in pol[835]]

    # the same pages as a PDF (1670 px per page as rendered), after a title page without staves
    pages = [Image.fromarray(text_page(*pol[PDF_PX][0][0].shape[::-1]))] + [Image.fromarray(img) for img, _ in pol[PDF_PX]]
    pages[0].save(f / "polonaise.pdf", save_all=True, append_images=pages[1:], resolution=144.0)   # 835 pt wide
    out.files["polonaise-pdf"] = [f / "polonaise.pdf"]
    out.truth["polonaise-pdf"] = [truth_systems(lay) for _, lay in pol[PDF_PX]]
    out.sizes["polonaise-pdf"] = [img.shape[::-1] for img, _ in pol[PDF_PX]]
    out.to_png["polonaise-pdf"] = lambda x, y: (x * 835 / PDF_PX, y * 835 / PDF_PX)

    # a degraded 1-bit 300 dpi scan of the same pages
    out.files["polonaise-scan"], out.truth["polonaise-scan"] = [], []
    t = math.radians(SCAN_ANGLE)
    for i, (img, lay) in enumerate(pol[SCAN_PX], 1):
        bed, tr = degrade(img, seed=i)
        Image.fromarray(bed).save(f / f"scan-{i}.png", dpi=(300, 300))      # mode "1"
        out.files["polonaise-scan"].append(f / f"scan-{i}.png")
        out.truth["polonaise-scan"].append(truth_systems(lay, tr))
        out.sizes.setdefault("polonaise-scan", []).append(bed.shape[::-1])
    cx, cy = SCAN_PX / 2.0, pol[SCAN_PX][0][0].shape[0] / 2.0

    def scan_to_png(x, y):
        dx, dy = np.asarray(x) - SCAN_MARGIN[0] - cx, np.asarray(y) - cy      # inverse rotation
        return ((cx + dx * math.cos(t) - dy * math.sin(t)) * 835 / SCAN_PX, (cy + dx * math.sin(t) + dy * math.cos(t)) * 835 / SCAN_PX)

    out.to_png["polonaise-scan"] = scan_to_png

    # a song (voice + piano: 3-staff systems) as a folder of pages: natural order s9 < s10
    lied = engrave("schubert/Lindenbaum.xml", keyboard=False, pages=2)[835]
    (f / "lied").mkdir()
    for name, (img, _) in zip(("s9.png", "s10.png"), lied):
        Image.fromarray(img).save(f / "lied" / name)
    out.files["lied"] = [f / "lied"]
    out.truth["lied"] = [truth_systems(lay) for _, lay in lied]

    # a one-page chorale (4-staff systems): the small library of the model-check tests
    (img, lay), = engrave("bach/bwv66.6.mxl", keyboard=False, pages=1)[835]
    Image.fromarray(img).save(f / "chorale.png")
    out.files["chorale"] = [f / "chorale.png"]
    out.truth["chorale"] = [truth_systems(lay)]
    Image.fromarray(text_page(835, 1181)).save(f / "text.png")
    return out


@dataclass
class Built:
    path: Path
    added: dict[str, subprocess.CompletedProcess]


ADD_ORDER = ("polonaise", "polonaise-pdf", "lied", "polonaise-scan")
META = {"polonaise": ("Polonaise op. 1 no. 1", "Clara Schumann")}


@pytest.fixture(scope="session")
def library(scores, tmp_path_factory) -> Built:
    """A library of the test pieces, built through ``scorestream library add`` (never modified by tests: copy it)."""
    lib = tmp_path_factory.mktemp("library") / "lib"
    added = {}
    for pid in ADD_ORDER:
        title, composer = META.get(pid, (pid.title(), "test"))
        added[pid] = cli("library", "add", "--library", lib, "--id", pid, "--title", title, "--composer", composer,
                         "--no-progress", *scores.files[pid])
    return Built(lib, added)


def show(lib: Path, pid: str) -> dict:
    return cli_json("library", "show", "--library", lib, pid, "--json")


def check_against_truth(pages: list[dict], truth: list[list[dict]], *, tol_ss: float, min_iou: float | None = None):
    """Systems of every library page against the engraver's: same count and staves; bbox within
    ``tol_ss`` staff spaces (or IoU >= ``min_iou``); staff lines on the truth's staves; staff space."""
    assert len(pages) == len(truth)
    for pg, tr in zip(pages, truth):
        assert len(pg["systems"]) == len(tr), ([s["bbox"] for s in pg["systems"]], [t["bbox"] for t in tr])
        for s, t in zip(pg["systems"], tr):
            ss = t["staff_space"]
            if min_iou is None:
                assert np.allclose(s["bbox"], t["bbox"], atol=tol_ss * ss), (s["bbox"], t["bbox"])
                lines = np.asarray(s["staff_lines"]).reshape(-1, 5)
                assert np.allclose(lines[:, [0, 4]], t["staves"], atol=tol_ss * ss), (lines[:, [0, 4]], t["staves"])
            else:
                assert iou(s["bbox"], t["bbox"]) >= min_iou, (s["bbox"], t["bbox"])
            assert len(s["staves"]) == len(t["staves"]) and len(s["staff_lines"]) == 5 * len(t["staves"])
            assert s["staff_space"] == pytest.approx(ss, rel=0.05)
            assert s["staff_lines"] == sorted(s["staff_lines"])


# --------------------------------------------------------------------------- ingest


def test_png_pages_match_the_engraver(library, scores):
    lst = cli_json("library", "list", "--library", library.path, "--json")
    assert [p["id"] for p in lst] == sorted(ADD_ORDER)
    for p in lst:
        assert {"id", "title", "pages", "systems", "snippets"} <= set(p)
    pol = next(p for p in lst if p["id"] == "polonaise")
    assert (pol["title"], pol["composer"], pol["pages"], pol["systems"]) == ("Polonaise op. 1 no. 1", "Clara Schumann", 2, 10)
    assert pol["snippets"] == pytest.approx(pol["strip_width"] / HOP, abs=1)
    sh = show(library.path, "polonaise")
    assert [pg["page"] for pg in sh["pages"]] == [1, 2]
    for pg, src in zip(sh["pages"], scores.files["polonaise"]):
        assert {"page", "image", "width", "height", "systems"} <= set(pg)
        with Image.open(pg["image"]) as im, Image.open(src) as orig:
            assert im.size == orig.size == (pg["width"], pg["height"])          # the pixels as given
        for s in pg["systems"]:
            assert {"bbox", "staff_lines", "staff_space"} <= set(s) and len(s["bbox"]) == 4
            assert abs(s["skew_deg"]) < 0.05
    check_against_truth(sh["pages"], scores.truth["polonaise"], tol_ss=0.35)
    assert "added polonaise: 2 pages, 10 systems" in library.added["polonaise"].stdout


def test_pdf_pages_match_the_engraver_and_the_title_page_is_skipped(library, scores):
    sh = show(library.path, "polonaise-pdf")
    assert len(sh["pages"]) == 2                                    # the title page is not kept ...
    warn = library.added["polonaise-pdf"].stderr
    assert "polonaise.pdf page 1: no music staves found; page skipped" in warn   # ... and said so
    for pg, n, size in zip(sh["pages"], (2, 3), scores.sizes["polonaise-pdf"]):
        assert pg["source"].endswith(f"polonaise.pdf page {n}")
        assert (pg["width"], pg["height"]) == tuple(size)           # rendered 1670 px wide: the engraver's 1670 px raster
        with Image.open(pg["image"]) as im:
            assert im.size == (pg["width"], pg["height"])               # coordinates refer to the kept rendering
    check_against_truth(sh["pages"], scores.truth["polonaise-pdf"], tol_ss=0.35)


def test_folder_of_pages_in_natural_order(library, scores):
    sh = show(library.path, "lied")
    assert [Path(pg["source"]).name for pg in sh["pages"]] == ["s9.png", "s10.png"]
    check_against_truth(sh["pages"], scores.truth["lied"], tol_ss=0.35)
    assert {len(s["staves"]) for pg in sh["pages"] for s in pg["systems"]} == {3}


def test_degraded_scan_finds_the_systems(library, scores):
    sh = show(library.path, "polonaise-scan")
    for pg, src in zip(sh["pages"], scores.files["polonaise-scan"]):
        with Image.open(src) as im:
            assert im.mode == "1" and (pg["width"], pg["height"]) == im.size
        for s in pg["systems"]:
            assert s["skew_deg"] == pytest.approx(-SCAN_ANGLE, abs=0.15)   # turned counter-clockwise: lines rise
    check_against_truth(sh["pages"], scores.truth["polonaise-scan"], tol_ss=0.35, min_iou=0.7)


def _nearest_hop_rate(a, b, to_b) -> float:
    """Share of ``a``'s snippets whose most similar snippet of ``b`` (another rendering of the same
    pages) is within one hop of the snippet of ``b`` printed at the same place."""
    ok = []
    sims = a.emb.astype(np.float32) @ b.emb.astype(np.float32).T
    nn = sims.argmax(axis=1)
    for i in range(len(a.emb)):
        x, _ = to_b(a.page_x[i], a.page_y[i])
        same = np.flatnonzero((b.page == a.page[i]) & (b.system == a.system[i]))
        if len(same) == 0:
            continue
        j = same[np.argmin(np.abs(b.page_x[same] - x))]
        ok.append(abs(int(nn[i]) - int(j)) <= 1)
    return float(np.mean(ok))


def test_snippets_are_placed_on_their_systems_and_renderings_agree(library, scores):
    with Library.open(library.path, check_model=False) as lib:
        ps = {p.info.id: p for p in lib.load_all()}
    for p in ps.values():
        n = p.info.snippets
        assert p.emb.shape == (n, 64) and p.emb.dtype == np.float16
        assert np.allclose(np.linalg.norm(p.emb.astype(np.float32), axis=1), 1.0, atol=2e-3)
        assert len(p.strip_x) == len(p.page) == len(p.system) == len(p.page_x) == len(p.page_y) == n
        assert np.all(np.diff(p.strip_x) == HOP)
        boxes = {(s.page, s.system): s.bbox for s in p.systems}
        for i in range(n):
            x0, y0, x1, y1 = boxes[(int(p.page[i]), int(p.system[i]))]
            ss = next(s.staff_space for s in p.systems if (s.page, s.system) == (p.page[i], p.system[i]))
            assert x0 - 2 * ss <= p.page_x[i] <= x1 + 1 * ss and y0 <= p.page_y[i] <= y1
    # the same music, engraved/printed/scanned: similar strips, and the nearest snippet of the
    # PNG pages is the one printed at the same place (what retrieval needs)
    png = ps["polonaise"]
    for other in ("polonaise-pdf", "polonaise-scan"):
        o = ps[other]
        assert o.info.systems == png.info.systems
        assert o.info.strip_width == pytest.approx(png.info.strip_width, rel=0.05)
        rate = _nearest_hop_rate(o, png, scores.to_png[other])
        assert rate >= 0.8, (other, rate)         # measured 0.87 (PDF, JPEG-compressed) and 0.89 (scan): the rest repeat bars printed elsewhere


def test_overlay_png(library, scores, tmp_path):
    out = tmp_path / "boxes.png"
    p = cli("library", "show", "--library", library.path, "polonaise-scan", "--page", "1", "--out", out)
    assert "5 systems" in p.stdout
    with Image.open(out) as im:
        a = np.asarray(im.convert("RGB"))
    assert a.shape[1::-1] == tuple(scores.sizes["polonaise-scan"][0])
    assert ((a[..., 0] > 180) & (a[..., 1] < 60)).any()


# --------------------------------------------------------------------------- atomicity


def _wait_for(pred, proc: subprocess.Popen, timeout: float = 300.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"the add finished ({proc.returncode}) before {what}: {proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"timeout waiting for {what}")
        time.sleep(0.005)


def _popen_add(lib: Path, pid: str, files) -> subprocess.Popen:
    return subprocess.Popen(EXE + ["-q", "library", "add", "--library", str(lib), "--id", pid, "--no-progress", *map(str, files)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _reader(lib: Path, stop: threading.Event, seen: list, errors: list) -> None:
    """Reads the library in a loop like the engine does; every piece it sees must be whole."""
    try:
        with Library.open(lib, check_model=False) as L:
            while not stop.is_set():
                ids = []
                for p in L.load_all():
                    n = p.info.snippets
                    assert len(p.emb) == n == len(p.strip_x) and n > 0, p.info
                    assert len(p.pages) == p.info.pages and len(p.systems) == p.info.systems, p.info
                    # its files are there, unless it was removed after the snapshot
                    assert all(pg.image.is_file() for pg in p.pages) or p.info.id not in L, p.info
                    ids.append(p.info.id)
                seen.append(tuple(ids))
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


def test_killed_add_leaves_the_library_as_it_was(library, scores, tmp_path):
    lib = copy_library(library.path, tmp_path / "lib")
    before = state(lib)

    # 1. kill -9 while it embeds: the pages are already staged
    proc = _popen_add(lib, "again", scores.files["polonaise"])
    _wait_for(lambda: any((lib / STAGING).glob("*/page002.png")), proc, what="the pages were staged")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL
    assert state(lib) == before
    assert leftovers(lib)                                     # the staged folder is still there, unseen

    # 2. kill -9 after the folder was renamed into pieces/, before the commit (a reader holds
    #    the database's write lock, so the add waits exactly there)
    known = {d.name for d in (lib / "pieces").iterdir()}
    blocker = sqlite3.connect(str(lib / DB_NAME), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        proc = _popen_add(lib, "again", scores.files["polonaise"])
        _wait_for(lambda: any(d.name not in known and (d / "emb.npy").exists() for d in (lib / "pieces").iterdir()
                              if not d.name.endswith(".tmp")), proc, what="the piece folder was renamed")
        time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert state(lib) == before
    with Library.open(lib, check_model=False) as L:
        assert "again" not in L and len(L) == len(before["list"])

    # 3. the next add works (and cleans up), while a reader reads all the time
    stop, seen, errors = threading.Event(), [], []
    reader = threading.Thread(target=_reader, args=(lib, stop, seen, errors))
    reader.start()
    try:
        proc = _popen_add(lib, "again", scores.files["polonaise"])
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        time.sleep(0.3)
    finally:
        stop.set()
        reader.join(60)
    assert not errors, errors
    old = tuple(p["id"] for p in before["list"])
    assert set(seen) == {old, tuple(sorted(old + ("again",)))}, set(seen)   # before, or with the whole piece
    assert len(seen) > 3
    after = state(lib)
    assert after["list"] == sorted(before["list"] + [dict(before["list"][[p["id"] for p in before["list"]].index("polonaise")],
                                                           id="again", title=None, composer=None)], key=lambda p: p["id"])
    assert leftovers(lib) == []
    assert after["show"]["again"]["pages"][0]["systems"] == before["show"]["polonaise"]["pages"][0]["systems"]


def test_remove_is_atomic_and_frees_the_files(library, tmp_path):
    lib = copy_library(library.path, tmp_path / "lib")
    before = state(lib)
    folder = (lib / before["show"]["lied"]["pages"][0]["image"]).parent
    assert folder.is_dir()
    stop, seen, errors = threading.Event(), [], []
    reader = threading.Thread(target=_reader, args=(lib, stop, seen, errors))
    reader.start()
    try:
        out = cli("library", "remove", "--library", lib, "lied")
    finally:
        time.sleep(0.2)
        stop.set()
        reader.join(60)
    assert not errors, errors
    assert out.stdout.strip() == "removed lied"
    assert not folder.exists()
    after = state(lib)
    assert [p["id"] for p in after["list"]] == [p["id"] for p in before["list"] if p["id"] != "lied"]
    assert {k: v for k, v in before["files"].items() if not k.startswith(str(folder.relative_to(lib)))} == after["files"]
    for k in ("pieces", "pages", "systems", "snippets"):
        want = before["stats"][k] - (1 if k == "pieces" else next(p for p in before["list"] if p["id"] == "lied")[k])
        assert after["stats"][k] == want, k
    assert after["stats"]["disk_mb"] < before["stats"]["disk_mb"]
    assert all(ids in {tuple(p["id"] for p in before["list"]), tuple(p["id"] for p in after["list"])} for ids in seen)
    assert_one_line_error(cli("library", "remove", "--library", lib, "lied", check=False), "no piece 'lied'")
    assert state(lib) == after


# --------------------------------------------------------------------------- the model check


def test_library_of_other_weights_is_refused(scores, tmp_path):
    from scorestream.models.embedder import load_embedder

    lib = tmp_path / "lib"
    cli("library", "add", "--library", lib, "--id", "chorale", "--no-progress", *scores.files["chorale"])
    sh = show(lib, "chorale")
    check_against_truth(sh["pages"], scores.truth["chorale"], tol_ss=0.35)
    assert {len(s["staves"]) for s in sh["pages"][0]["systems"]} == {4}
    with Library.open(lib) as L:                                            # the right weights: fine
        assert L.model_name == "bl1_2s+bl2_4s_at"
    with pytest.raises(IncompatibleModelError, match=re.escape(f"rebuild it with 'scorestream library rebuild --library {lib}'")):
        Library.open(lib, embedder=load_embedder("bl1_2s"))                 # other weights

    tampered = copy_library(lib, tmp_path / "tampered")
    with sqlite3.connect(str(tampered / DB_NAME)) as c:
        c.execute("UPDATE meta SET value = 'feedfacefeedface' WHERE key = 'model_fingerprint'")
    err = assert_one_line_error(cli("library", "add", "--library", tampered, "--id", "x", *scores.files["chorale"], check=False),
                                "weights feedfacefeedface", f"scorestream library rebuild --library {tampered}")
    assert "was embedded with model bl1_2s+bl2_4s_at" in err
    assert [p["id"] for p in cli_json("library", "list", "--library", tampered, "--json")] == ["chorale"]  # reading needs no weights
    out = cli("library", "rebuild", "--library", tampered, "--no-progress")
    assert json.loads(out.stdout)["pieces"] == 1
    with Library.open(tampered) as L:                                       # rebuilt with the current weights
        assert L.model_fingerprint == load_embedder("bl1_2s+bl2_4s_at").fingerprint
        assert [p.id for p in L.pieces()] == ["chorale"]
    assert show(tampered, "chorale")["pages"][0]["systems"] == sh["pages"][0]["systems"]

    with sqlite3.connect(str(tampered / DB_NAME)) as c:
        c.execute("UPDATE meta SET value = '99' WHERE key = 'format'")
    assert_one_line_error(cli("library", "add", "--library", tampered, "--id", "y", *scores.files["chorale"], check=False),
                          "library format 99", "library rebuild")


# --------------------------------------------------------------------------- bad input

PAD = bytes.fromhex("28BF4E5E4E758A4164004E56FFFA01082E2E00B6D0683E802F0CA9FE6453697A")


def _rc4(key: bytes, data: bytes) -> bytes:
    s, j = list(range(256)), 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) % 256
        s[i], s[j] = s[j], s[i]
    i = j = 0
    out = bytearray()
    for b in data:
        i = (i + 1) % 256
        j = (j + s[i]) % 256
        s[i], s[j] = s[j], s[i]
        out.append(b ^ s[(s[i] + s[j]) % 256])
    return bytes(out)


def encrypted_pdf(path: Path, user: bytes = b"secret", owner: bytes = b"owner") -> Path:
    """A one-page PDF protected by a user password (standard security handler, RC4 40 bit)."""
    pad = lambda pw: (pw + PAD)[:32]  # noqa: E731
    o = _rc4(hashlib.md5(pad(owner)).digest()[:5], pad(user))
    perms, doc_id = -44, b"0123456789abcdef"
    u = _rc4(hashlib.md5(pad(user) + o + struct.pack("<i", perms) + doc_id).digest()[:5], PAD)
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] >>",
            b"<< /Filter /Standard /V 1 /R 2 /O <" + o.hex().encode() + b"> /U <" + u.hex().encode() + b"> /P %d >>" % perms]
    out, offs = bytearray(b"%PDF-1.4\n"), []
    for k, ob in enumerate(objs, 1):
        offs.append(len(out))
        out += b"%d 0 obj\n" % k + ob + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1) + b"".join(b"%010d 00000 n \n" % x for x in offs)
    out += (b"trailer\n<< /Size %d /Root 1 0 R /Encrypt 4 0 R /ID [<%s> <%s>] >>\nstartxref\n%d\n%%%%EOF\n"
            % (len(objs) + 1, doc_id.hex().encode(), doc_id.hex().encode(), xref))
    path.write_bytes(bytes(out))
    return path


def _pdf(path: Path, sizes_pt: list[tuple[float, float]]) -> Path:
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument.new()
    for w, h in sizes_pt:
        pdf.new_page(w, h)
    pdf.save(str(path))
    pdf.close()
    return path


def bad_inputs(scores: Scores, d: Path) -> dict[str, tuple[list, list[str]]]:
    """case -> (add arguments after --library LIB, substrings of the one-line error)."""
    png = scores.files["polonaise"][0]
    d.mkdir(exist_ok=True)
    (d / "zero.png").write_bytes(b"")
    (d / "zero.pdf").write_bytes(b"")
    (d / "garbage.png").write_bytes(np.random.default_rng(0).bytes(20_000))
    (d / "garbage.pdf").write_bytes(b"%PDF-1.4\n" + np.random.default_rng(1).bytes(20_000))
    data = png.read_bytes()
    (d / "truncated.png").write_bytes(data[: len(data) // 2])
    (d / "notes.txt").write_text("not a score")
    Image.new("1", (20_000, 20_000), 1).save(d / "huge.png")        # ~90 kB on disk, 400 Mpx decoded
    Image.new("L", (400, 300), 255).save(d / "blank.png")
    (d / "empty-folder").mkdir(exist_ok=True)
    return {
        "missing file": (["--id", "x", d / "missing.png"], ["missing.png", "no such file"]),
        "0-byte image": (["--id", "x", d / "zero.png"], ["zero.png", "empty file (0 bytes)"]),
        "0-byte PDF": (["--id", "x", d / "zero.pdf"], ["zero.pdf", "empty file (0 bytes)"]),
        "PDF without pages": (["--id", "x", _pdf(d / "nopages.pdf", [])], ["nopages.pdf", "has no pages"]),
        "encrypted PDF": (["--id", "x", encrypted_pdf(d / "locked.pdf")], ["locked.pdf", "encrypted", "unprotected copy"]),
        "garbage image": (["--id", "x", d / "garbage.png"], ["garbage.png", "not a readable image"]),
        "garbage PDF": (["--id", "x", d / "garbage.pdf"], ["garbage.pdf", "not a readable PDF"]),
        "truncated image": (["--id", "x", d / "truncated.png"], ["truncated.png", "truncated or damaged"]),
        "not a page file": (["--id", "x", d / "notes.txt"], ["notes.txt", "not a PDF or page image"]),
        "folder without pages": (["--id", "x", d / "empty-folder"], ["empty-folder", "no page images"]),
        "20000 x 20000 image": (["--id", "x", d / "huge.png"], ["huge.png", "20000 x 20000 px is too large"]),
        "PDF with 401 pages": (["--id", "x", _pdf(d / "long.pdf", [(595, 842)] * 401)], ["long.pdf", "401 pages", "split"]),
        "PDF page too large": (["--id", "x", _pdf(d / "tall.pdf", [(100, 14_000)])], ["tall.pdf page 1", "too large"]),
        "bad page among good ones": (["--id", "x", png, d / "truncated.png"], ["truncated.png"]),
        "text page, no staves": (["--id", "x", scores.folder / "text.png"], ["no music staves found", "text.png"]),
        "blank page, no staves": (["--id", "x", d / "blank.png"], ["no music staves found", "blank.png"]),
        "duplicate id": (["--id", "polonaise", png], ["'polonaise' is already in"]),
        "bad id (space)": (["--id", "my piece", png], ["invalid id 'my piece'"]),
        "bad id (path)": (["--id", "../x", png], ["invalid id '../x'"]),
        "bad id (empty)": (["--id", "", png], ["invalid id ''"]),
    }


def test_bad_inputs_are_one_line_errors_and_change_nothing(library, scores, tmp_path):
    lib = copy_library(library.path, tmp_path / "lib")
    before = state(lib)
    for case, (args, needles) in bad_inputs(scores, tmp_path / "bad").items():
        p = cli("library", "add", "--library", lib, "--no-progress", *args, check=False)
        try:
            assert_one_line_error(p, *needles)
        except AssertionError as exc:
            raise AssertionError(f"{case}: {exc}") from None
        assert leftovers(lib) == [], case
    assert state(lib) == before
    # a page with no staves next to music pages is skipped with a warning, not fatal
    p = cli("library", "add", "--library", lib, "--id", "with-text", "--no-progress", scores.folder / "text.png",
            *scores.files["lied"])
    assert "text.png: no music staves found; page skipped" in p.stderr
    assert cli_json("library", "show", "--library", lib, "with-text", "--json")["pages"][0]["source"].endswith("s9.png")


def test_bad_library_folders(scores, tmp_path):
    png = scores.files["chorale"][0]
    # a first add that fails leaves no library behind (new folder, or an empty one)
    assert_one_line_error(cli("library", "add", "--library", tmp_path / "new", "--id", "x", tmp_path / "nope.png", check=False),
                          "nope.png")
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli("library", "add", "--library", tmp_path / "empty", "--id", "x", "--no-progress",
                              scores.folder / "text.png", check=False), "no music staves")
    assert list((tmp_path / "empty").iterdir()) == []
    # a folder that is not a library
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"meow")
    assert_one_line_error(cli("library", "add", "--library", other, "--id", "x", png, check=False), "not a library")
    assert [f.name for f in other.iterdir()] == ["cat.jpg"]
    for cmd in (["list"], ["stats"], ["show", "x"], ["remove", "x"]):
        assert_one_line_error(cli("library", cmd[0], "--library", other, *cmd[1:], check=False), "not a scorestream library")
        assert_one_line_error(cli("library", cmd[0], "--library", tmp_path / "absent", *cmd[1:], check=False), "does not exist")
    # a file given as the library
    assert_one_line_error(cli("library", "add", "--library", png, "--id", "x", png, check=False), "is a file")
    # a damaged database
    bad = tmp_path / "damaged"
    bad.mkdir()
    (bad / DB_NAME).write_bytes(b"this is not sqlite" * 100)
    assert_one_line_error(cli("library", "list", "--library", bad, check=False), "damaged library database")


def test_interrupted_create_is_recovered(scores, tmp_path):
    """A create killed before its one transaction leaves a database without tables: reading says
    so in one line, the next add starts the library anew."""
    lib = tmp_path / "lib"
    (lib / "pieces").mkdir(parents=True)
    sqlite3.connect(str(lib / DB_NAME)).close()
    assert_one_line_error(cli("library", "list", "--library", lib, check=False), "creation was interrupted")
    cli("library", "add", "--library", lib, "--id", "chorale", "--no-progress", *scores.files["chorale"])
    assert [p["id"] for p in cli_json("library", "list", "--library", lib, "--json")] == ["chorale"]


# --------------------------------------------------------------------------- the snippet index


def _recall(ids: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a[a >= 0]) & set(b)) / len(b) for a, b in zip(ids, exact)]))


def _fixture_mixture():
    z = np.load(ROOT / "tests" / "fixtures" / "index_realistic.npz")
    k, d = z["means"].shape
    chol = np.zeros((k, d, d), np.float32)
    tri = np.tril_indices(d)
    chol[:, tri[0], tri[1]] = z["chol_tril"].astype(np.float32)
    q = z["queries"].astype(np.float32)
    return z["weights"].astype(np.float64), z["means"].astype(np.float32), chol, q / np.linalg.norm(q, axis=1, keepdims=True)


def _sample(weights, means, chol, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, weights / weights.sum())
    out = np.concatenate([mu + rng.standard_normal((c, len(mu)), dtype=np.float32) @ L.T
                          for mu, L, c in zip(means, chol, counts) if c])
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_index_recall_on_realistic_snippets():
    """A library just above the exact-search limit (where the IVF defaults are weakest):
    snippets drawn from a mixture fitted to a real library's snippets, real audio queries."""
    weights, means, chol, queries = _fixture_mixture()
    emb = _sample(weights, means, chol, 160_000, seed=0).astype(np.float16)       # the library stores float16
    index = SnippetIndex(emb, threads=1)
    assert index.kind == "ivf" and index.nlist == default_nlist(160_000) and index.nprobe == default_nprobe(index.nlist)
    exact = _exact_topk(queries, emb.astype(np.float32), 10)
    scores, ids = index.search(queries, 10)
    assert ids.shape == scores.shape == (len(queries), 10) and ids.dtype == np.int64
    assert np.all(np.diff(scores, axis=1) <= 1e-6)                                  # best first
    recall = _recall(ids, exact[1])
    assert recall >= 0.98, recall
    # same meaning as exact search: the scores are the cosines of the ids returned
    got = np.einsum("bd,bkd->bk", queries, emb.astype(np.float32)[ids])
    assert np.allclose(got, scores, atol=1e-3)
    assert index.memory_bytes > emb.size * 4


def test_index_on_library_embeddings(library):
    """Real embeddings: the clean pages' snippets as the library, the scan's as queries."""
    with Library.open(library.path, check_model=False) as lib:
        ps = {p.info.id: p for p in lib.load_all()}
    db = np.concatenate([ps[i].emb for i in ("polonaise", "polonaise-pdf", "lied")]).astype(np.float32)
    q = ps["polonaise-scan"].emb.astype(np.float32)
    exact = SnippetIndex(db)
    assert exact.kind == "exact"
    s, i = exact.search(q, 10)
    brute = q @ db.T
    assert np.array_equal(i[:, 0], brute.argmax(axis=1)) or np.allclose(s[:, 0], brute.max(axis=1), atol=1e-6)
    assert np.allclose(s, -np.sort(-brute, axis=1)[:, :10], atol=1e-5)
    ivf = SnippetIndex(db, kind="ivf", threads=1)
    assert _recall(ivf.search(q, 10)[1], i) >= 0.98
    # k larger than the library pads with -1
    small = SnippetIndex(db[:5])
    s5, i5 = small.search(q[:3], 8)
    assert (i5[:, 5:] == -1).all() and np.isinf(s5[:, 5:]).all() and (i5[:, :5] >= 0).all()
    with pytest.raises(ValueError, match="dimension"):
        exact.search(np.zeros((1, 3), np.float32))
