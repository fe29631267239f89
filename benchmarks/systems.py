"""Staff-system detection (``scorestream.engine.systems``): accuracy and speed.

Three parts:

* **engraved**: random scores of the training corpora (``shared/data/piano`` and
  ``shared/data/lieder``, piano part only) engraved with verovio in random
  ``EngravingStyle``s; every page against the engraver's exact layout.  Recall = share
  of truth systems matched by a detection with IoU >= 0.8 (one-to-one), false systems =
  detections matching no truth system with IoU >= 0.5, per page; staff-space error.
  Targets: recall >= 99 %, <= 0.01 false systems per page.
* **joplin**: the 47 kern <-> scan pairs of ``shared/data/joplin`` (1-bit scans,
  rendered at the PDF's 300 dpi).  The kern files keep the scan's line breaks
  (``!!LO:LB`` / ``!!LO:PB`` records), which gives the number of systems of each piece;
  page breaks are encoded in 2 files only, so per-page counts come from
  ``JOPLIN_PAGE_COUNTS`` below (a hand count of every page, checked against the kern total
  of each piece).  Target: >= 95 % of pages with the right count.
* **vienna**: the 5 Vienna 4x22 scan pages against ``tests/fixtures/vienna_scan_systems.json``
  (hand count), rendered at 300 dpi and at the scans' native resolution (309-1200 dpi).

Seconds per page are detection only (one process, one core), not rendering.

Prints a Markdown table; writes ``benchmarks/results/systems.json``, ``systems.md`` and
``systems_joplin_example.png`` (a scan page with the detected systems drawn).

Usage: ``.venv/bin/python benchmarks/systems.py [--scores 100] [--seed 0] [--workers 2]
[--parts engraved,joplin,vienna] [--data /work/shared/data]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scorestream.engine.systems import NoStavesError, detect_systems, draw_systems  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
FIXTURE = REPO / "tests" / "fixtures" / "vienna_scan_systems.json"
TARGETS = {"engraved_recall": 0.99, "engraved_false_per_page": 0.01, "joplin_page_accuracy": 0.95}

# Systems on every page of the Joplin scans, counted by hand on page thumbnails (2026-12-03),
# pages in PDF order.
# Not blind: the detector's per-page counts had been printed before the count; every page
# was looked at and counted, and each count agreed with the detector. Each piece's sum equals
# the kern file's line-break count (newrag has no breaks encoded).
JOPLIN_PAGE_COUNTS: dict[str, list[int]] = {
    "antoinette": [4, 4, 5, 5],
    "augustan": [5, 5, 5, 5],
    "bethena": [4, 5, 5, 5, 5, 5],
    "binks": [4, 5, 5, 5, 4, 4],
    "breeze": [5, 5, 5, 5],
    "cascades": [5, 5, 5, 5],
    "chrysanthemum": [5, 5, 5, 5],
    "cleopha": [4, 5, 5, 5],
    "combination": [5, 5, 5],
    "countryclub": [4, 5, 5, 5],
    "crush": [5, 5, 5, 5],
    "easywinners": [4, 5, 6, 6],
    "elite": [5, 5, 5, 5],
    "entertainer": [4, 5, 6, 6],
    "eugenia": [5, 6, 6, 6],
    "favorite": [5, 5, 5],
    "felicity": [4, 5, 5, 5],
    "figleaf": [4, 5, 5, 5],
    "gladiolus": [5, 5, 6, 6],
    "harmony": [5, 5, 6, 6],
    "heliotrope": [4, 5, 5, 5],
    "leola": [4, 5, 6, 6],
    "lilyqueen": [4, 5, 5, 5],
    "magnetic": [6, 5, 6, 6, 7],
    "majestic": [4, 5, 5, 5],
    "mapleleaf": [4, 6, 6],
    "newrag": [5, 6, 6, 6],
    "nonpareil": [4, 5, 5, 5],
    "original": [5, 6, 6, 6],
    "palmleaf": [5, 6, 6],
    "paragon": [5, 5, 5, 5, 5],
    "peacherine": [4, 5, 5, 5],
    "pineapple": [4, 5, 5, 5],
    "pleasant": [4, 5, 5, 5],
    "reflection": [7, 7],
    "rosebud": [5, 6, 6],
    "roseleaf": [4, 5, 5, 5],
    "school": [2, 3, 3],
    "searchlight": [5, 5, 6, 6],
    "solace": [4, 5, 6, 6],
    "something": [5, 5, 6, 6],
    "stoptime": [5, 5, 5, 5],
    "sugarcane": [4, 5, 5, 5],
    "sunflower": [4, 5, 6, 6],
    "swipesy": [4, 5, 6, 6],
    "wallstreet": [5, 5, 5],
    "weepingwillow": [5, 5, 5, 5],
}


# --------------------------------------------------------------------------- matching


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / ua if ua > 0 else 0.0


def match(truth: list, det: list, thr: float) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching by IoU (highest first) above ``thr``."""
    pairs = sorted(((iou(t, d), i, j) for i, t in enumerate(truth) for j, d in enumerate(det)), reverse=True)
    used_t, used_d, out = set(), set(), []
    for v, i, j in pairs:
        if v < thr:
            break
        if i in used_t or j in used_d:
            continue
        used_t.add(i)
        used_d.add(j)
        out.append((i, j, v))
    return out


# --------------------------------------------------------------------------- engraved


def degrade(img: np.ndarray, rng: np.random.Generator, angle: float):
    """A 1-bit "scan" of a 300-dpi page (the tests' degradation): rotated by ``angle``
    degrees counter-clockwise, blurred, noisy, speckled, binarised, grey scanner margins.
    Returns (page, point transform of the rotation)."""
    import math

    from PIL import Image
    from scipy import ndimage

    H, W = img.shape
    cx, cy = W / 2.0, H / 2.0
    a = np.asarray(Image.fromarray(img).rotate(angle, resample=Image.BICUBIC, center=(cx, cy), fillcolor=255))
    a = ndimage.gaussian_filter(a.astype(np.float32), rng.uniform(0.6, 1.5))
    a += rng.normal(0, rng.uniform(10, 30), a.shape).astype(np.float32)
    a = np.where(a < rng.uniform(130, 190), 0, 255).astype(np.uint8)
    n = int(a.size * rng.uniform(0.0005, 0.003))
    ys, xs = rng.integers(0, H - 3, n), rng.integers(0, W - 3, n)
    for k, v in ((0, 0), (1, 255)):
        sel = slice(k * n // 2, (k + 1) * n // 2)
        for dy in range(2):
            for dx in range(2):
                a[ys[sel] + dy, xs[sel] + dx] = v
    # the scanner bed around the paper: grey margins left and below
    ml, mb = int(rng.integers(0, 100)), int(rng.integers(0, 60))
    if ml or mb:
        bed = np.full((H + mb, W + ml), int(rng.integers(60, 180)), np.uint8)
        bed[:H, ml:] = a
        a = bed
    t = math.radians(angle)

    def rot(p):
        dx, dy = p[:, 0] - cx, p[:, 1] - cy
        return np.stack([ml + cx + dx * math.cos(t) + dy * math.sin(t), cy - dx * math.sin(t) + dy * math.cos(t)], axis=1)

    return a, rot


def _compare(truth_layout, det, min_iou: float, rot=None) -> dict:
    truth, ss_t, n_st = [], [], []
    for s in truth_layout.systems:
        pts = np.array([[s.x0, s.y0], [s.x1, s.y0], [s.x0, s.y1], [s.x1, s.y1]], float)
        if rot is not None:
            pts = rot(pts)
        truth.append([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()])
        ss_t.append(s.staff_space)
        n_st.append(len(s.staves))
    m = match(truth, [d.bbox for d in det], 0.5)
    hits = [(i, j) for i, j, v in m if v >= min_iou]
    ss_err = [abs(det[j].staff_space - ss_t[i]) / ss_t[i] for i, j in hits]
    return {"truth": len(truth), "detected": len(det), "found": len(hits),
            "staves_ok": sum(1 for i, j in hits if det[j].n_staves == n_st[i]),
            "false": len(det) - len(m), "ss_err_max": max(ss_err) if ss_err else None,
            "truth_staves": n_st, "det_staves": [d.n_staves for d in det]}


def _engrave_worker(job):
    """Engrave one score in one style; detect on each page; compare with the layout."""
    path, seed, max_pages, scan_pages = job
    from scorestream.models.corpus.engrave import EngravingStyle, load_score, new_toolkit, parse_svg_layout, rasterize
    from scorestream.models.corpus.scorefile import load_for_engraving

    global _TK
    try:
        _TK
    except NameError:
        _TK = new_toolkit()
    style = EngravingStyle.random(random.Random(seed))
    out = []
    try:
        text = load_for_engraving(path, keyboard=True)
        n = load_score(_TK, text, style)
    except Exception as e:  # noqa: BLE001 - a score that does not engrave is skipped, and counted
        return [{"file": path, "error": f"engrave: {e}"}]
    rng = np.random.default_rng(seed)
    for p in range(1, min(n, max_pages) + 1):
        try:
            svg = _TK.renderToSVG(p)
            lay = parse_svg_layout(svg)
            img = rasterize(svg)
        except Exception as e:  # noqa: BLE001
            out.append({"file": path, "page": p, "error": f"render: {e}"})
            continue
        rel = os.path.relpath(path, os.path.dirname(os.path.dirname(path)))
        det, dt = _detect_page(img)
        out.append({"set": "engraved", "file": rel, "page": p, "seed": seed, "style": style.__dict__,
                    "shape": list(img.shape), "seconds": dt, **_compare(lay, det, 0.8)})
        if p <= scan_pages:  # the same page as a degraded 300-dpi 1-bit scan
            lay3 = parse_svg_layout(svg, 2480)
            angle = float(rng.uniform(-2.0, 2.0))
            scan, rot = degrade(rasterize(svg, 2480), rng, angle)
            det, dt = _detect_page(scan)
            out.append({"set": "scan", "file": rel, "page": p, "seed": seed, "angle": angle,
                        "shape": list(scan.shape), "seconds": dt, **_compare(lay3, det, 0.7, rot),
                        "skew_err": max((abs(d.skew_deg + angle) for d in det), default=None)})
    return out


def _summary(good: list[dict], n_scores: int) -> dict:
    truth = sum(p["truth"] for p in good)
    found = sum(p["found"] for p in good)
    false = sum(p["false"] for p in good)
    ss = [p["ss_err_max"] for p in good if p["ss_err_max"] is not None]
    secs = [p["seconds"] for p in good]
    return {
        "scores": n_scores, "pages": len(good),
        "truth_systems": truth, "found": found, "recall": found / max(1, truth),
        "staff_count_ok": sum(p["staves_ok"] for p in good) / max(1, found),
        "false_systems": false, "false_per_page": false / max(1, len(good)),
        "staff_space_err_p99": float(np.percentile(ss, 99)) if ss else None,
        "staff_space_err_max": float(max(ss)) if ss else None,
        "seconds_per_page_mean": float(np.mean(secs)) if secs else None,
        "seconds_per_page_max": float(np.max(secs)) if secs else None,
        "width_px": sorted({p["shape"][1] for p in good}),
        "failures": [p for p in good if p["found"] < p["truth"] or p["false"]],
    }


def run_engraved(data: Path, n_scores: int, seed: int, workers: int, max_pages: int, scan_pages: int) -> dict:
    rng = random.Random(seed)
    piano = sorted(str(p) for p in (data / "piano").rglob("*.mxl"))
    lieder = sorted(str(p) for p in (data / "lieder" / "scores").glob("*.mxl"))
    files = rng.sample(piano, n_scores // 2) + rng.sample(lieder, n_scores - n_scores // 2)
    jobs = [(f, rng.randrange(1 << 30), max_pages, scan_pages) for f in files]
    t0 = time.time()
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:  # verovio + fork pools misbehave
            res = pool.map(_engrave_worker, jobs, chunksize=1)
    else:
        res = [_engrave_worker(j) for j in jobs]
    pages = [r for rr in res for r in rr]
    out = {"errors": [p for p in pages if "error" in p], "wall_s": time.time() - t0}
    out["engraved"] = _summary([p for p in pages if p.get("set") == "engraved"], n_scores)
    scans = [p for p in pages if p.get("set") == "scan"]
    if scans:
        out["scan"] = _summary(scans, n_scores)
        sk = [p["skew_err"] for p in scans if p["skew_err"] is not None]
        out["scan"]["skew_err_max_deg"] = float(max(sk)) if sk else None
    return out


# --------------------------------------------------------------------------- scans


def render_pdf(path: Path, dpi: float | None = 300.0):
    """Grey page images of a PDF (``dpi=None``: the resolution of the page's largest image)."""
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(str(path))
    for i in range(len(doc)):
        pg = doc[i]
        if dpi is None:
            wpt = pg.get_size()[0]
            px = max((o.get_px_size()[0] for o in pg.get_objects() if o.type == 3), default=int(wpt * 300 / 72))
            scale = px / wpt
        else:
            scale = dpi / 72.0
        yield np.asarray(pg.render(scale=scale, grayscale=True).to_pil().convert("L"))


def _detect_page(img):
    t0 = time.perf_counter()
    try:
        det = detect_systems(img)
    except NoStavesError:
        det = []
    return det, time.perf_counter() - t0


def kern_system_count(path: Path) -> int | None:
    """Systems of a kern encoding with original breaks: line/page-break records + 1."""
    n = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("!!LO:LB") or line.startswith("!!LO:PB"):
            n += 1
    return n + 1 if n else None


def run_joplin(data: Path, example_out: Path | None) -> dict:
    root = data / "joplin"
    rows = [line.split("\t") for line in (root / "pairs.tsv").read_text().splitlines()[1:]]
    rows = [r for r in rows if r[0].endswith(".krn")]
    pieces, pages, secs = [], [], []
    example_done = False
    for r in rows:
        name = Path(r[0]).stem
        kern = kern_system_count(root / r[0])
        hand = JOPLIN_PAGE_COUNTS.get(name)
        counts, staves = [], []
        for i, img in enumerate(render_pdf(root / r[1])):
            det, dt = _detect_page(img)
            secs.append(dt)
            counts.append(len(det))
            staves.append([d.n_staves for d in det])
            truth = hand[i] if hand and i < len(hand) else None
            pages.append({"piece": name, "page": i + 1, "shape": list(img.shape), "detected": len(det),
                          "truth": truth, "ok": truth == len(det) if truth is not None else None,
                          "staves": staves[-1], "seconds": dt})
            if example_out is not None and not example_done and name == "mapleleaf" and i == 1:
                draw_systems(img, det).save(example_out)
                example_done = True
        pieces.append({"piece": name, "kern_systems": kern, "detected": sum(counts), "per_page": counts,
                       "hand": hand, "ok": kern == sum(counts) if kern else None, "staves": staves})
    judged = [p for p in pages if p["ok"] is not None]
    with_kern = [p for p in pieces if p["ok"] is not None]
    return {
        "pairs": len(rows), "pages": len(pages),
        "pages_judged": len(judged), "page_accuracy": sum(p["ok"] for p in judged) / max(1, len(judged)),
        "pieces_with_kern_breaks": len(with_kern),
        "piece_accuracy": sum(p["ok"] for p in with_kern) / max(1, len(with_kern)),
        "hand_matches_kern": [p["piece"] for p in pieces if p["hand"] and p["kern_systems"] and sum(p["hand"]) != p["kern_systems"]],
        "seconds_per_page_mean": float(np.mean(secs)), "seconds_per_page_max": float(np.max(secs)),
        "width_px": [int(min(p["shape"][1] for p in pages)), int(max(p["shape"][1] for p in pages))],
        "failed_pages": [p for p in judged if not p["ok"]],
        "failed_pieces": [p for p in with_kern if not p["ok"]],
        "pieces": pieces,
    }


def run_vienna(data: Path) -> dict:
    fx = json.loads(FIXTURE.read_text())["pages"]
    out = {}
    for dpi_name, dpi in (("300dpi", 300.0), ("native", None)):
        pages, secs = [], []
        for pdf in sorted({p["pdf"] for p in fx}):
            truth = {p["page"]: p for p in fx if p["pdf"] == pdf}
            for i, img in enumerate(render_pdf(data / "vienna4x22" / "pdf" / pdf, dpi)):
                det, dt = _detect_page(img)
                t = truth[i + 1]
                secs.append(dt)
                pages.append({"pdf": pdf, "page": i + 1, "shape": list(img.shape), "truth": t["systems"],
                              "detected": len(det), "ok": len(det) == t["systems"],
                              "staves": [d.n_staves for d in det], "truth_staves": t["staves_per_system"],
                              "staves_ok": len(det) == t["systems"] and all(d.n_staves == t["staves_per_system"] for d in det),
                              "seconds": dt})
        out[dpi_name] = {"pages": len(pages), "accuracy": sum(p["ok"] for p in pages) / len(pages),
                         "staves_ok": sum(p["staves_ok"] for p in pages) / len(pages),
                         "seconds_per_page_mean": float(np.mean(secs)), "seconds_per_page_max": float(np.max(secs)),
                         "detail": pages}
    return out


# --------------------------------------------------------------------------- report


def markdown(res: dict) -> str:
    L = ["| set | pages | metric | value | target | s/page (mean / max) |", "|---|---|---|---|---|---|"]
    e = res.get("engraved")
    if e:
        L.append(f"| engraved (piano+lieder, {e['scores']} scores, random styles, 835 px) | {e['pages']} | systems found IoU>=0.8 "
                 f"| {e['found']}/{e['truth_systems']} = {100 * e['recall']:.2f} % | >= 99 % "
                 f"| {e['seconds_per_page_mean']:.3f} / {e['seconds_per_page_max']:.3f} |")
        L.append(f"| | | false systems / page | {e['false_per_page']:.4f} ({e['false_systems']}) | <= 0.01 | |")
        L.append(f"| | | right staff count (of found) | {100 * e['staff_count_ok']:.2f} % | | |")
        L.append(f"| | | staff space error (p99 / max) | {100 * e['staff_space_err_p99']:.2f} % / {100 * e['staff_space_err_max']:.2f} % | | |")
    e = res.get("engraved_scan")
    if e:
        L.append(f"| same pages as degraded 1-bit 300-dpi scans (2480 px, skew +-2 deg) | {e['pages']} | systems found IoU>=0.7 "
                 f"| {e['found']}/{e['truth_systems']} = {100 * e['recall']:.2f} % | | "
                 f"{e['seconds_per_page_mean']:.3f} / {e['seconds_per_page_max']:.3f} |")
        L.append(f"| | | false systems / page | {e['false_per_page']:.4f} ({e['false_systems']}) | | |")
        L.append(f"| | | right staff count (of found); skew error max | {100 * e['staff_count_ok']:.2f} %; {e['skew_err_max_deg']:.2f} deg | | |")
    j = res.get("joplin")
    if j:
        L.append(f"| Joplin scans (1-bit, 300 dpi) | {j['pages']} | pages with the right count | "
                 f"{100 * j['page_accuracy']:.1f} % ({j['pages_judged']} pages) | >= 95 % "
                 f"| {j['seconds_per_page_mean']:.3f} / {j['seconds_per_page_max']:.3f} |")
        L.append(f"| | | pieces whose total = kern's systems | {100 * j['piece_accuracy']:.1f} % "
                 f"({j['pieces_with_kern_breaks']} pieces) | | |")
    v = res.get("vienna")
    if v:
        for k, x in v.items():
            L.append(f"| Vienna 4x22 scans ({k}) | {x['pages']} | pages with the right count (staves) "
                     f"| {100 * x['accuracy']:.0f} % ({100 * x['staves_ok']:.0f} %) | | "
                     f"{x['seconds_per_page_mean']:.3f} / {x['seconds_per_page_max']:.3f} |")
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("SCORESTREAM_DATA", REPO.parent / "shared" / "data")))
    ap.add_argument("--scores", type=int, default=100)
    ap.add_argument("--max-pages", type=int, default=4, help="pages per engraved score")
    ap.add_argument("--scan-pages", type=int, default=2, help="pages per score also tested as degraded 300-dpi scans")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--parts", default="engraved,joplin,vienna")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    parts = set(a.parts.split(","))
    a.out.mkdir(parents=True, exist_ok=True)
    res: dict = {}
    old = a.out / "systems.json"
    if old.is_file() and parts != {"engraved", "joplin", "vienna"}:
        res = json.loads(old.read_text())          # a partial rerun keeps the other parts' results
    res.update({"machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                            "cores_used": 1}, "targets": TARGETS})
    if "engraved" in parts:
        r = run_engraved(a.data, a.scores, a.seed, a.workers, a.max_pages, a.scan_pages)
        res["engrave_errors"] = r["errors"]
        res["engraved"] = r["engraved"]
        if "scan" in r:
            res["engraved_scan"] = r["scan"]
        print(f"engraved: {res['engraved']['recall']:.4f} recall, {res['engraved']['false_per_page']:.4f} false/page", flush=True)
    if "joplin" in parts:
        res["joplin"] = run_joplin(a.data, a.out / "systems_joplin_example.png")
        print(f"joplin: {res['joplin']['page_accuracy']:.3f} pages, {res['joplin']['piece_accuracy']:.3f} pieces", flush=True)
    if "vienna" in parts:
        res["vienna"] = run_vienna(a.data)
    md = markdown(res)
    print(md)
    (a.out / "systems.json").write_text(json.dumps(res, indent=1, default=float))
    (a.out / "systems.md").write_text(
        "# Staff-system detection benchmark\n\n"
        f"`{' '.join(['.venv/bin/python', 'benchmarks/systems.py'] + (argv if argv is not None else sys.argv[1:]))}`\n\n" + md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
