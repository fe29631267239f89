"""Reading a built corpus: pieces, performances and the audio–sheet pairs.

A *pair* is one distinct onset frame of a performance matched with the place
on the sheet where the notes sounding at that frame are written: the mean
notehead position on the page and in the unrolled strip.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from .engrave import PageLayout
from .perform import ScoreTiming
from scorestream.core.strip import STRIP_HEIGHT, Segment, Strip

FPS = 20


@dataclass
class Pairs:
    frame: np.ndarray  # (N,) spectrogram frame of the onset
    time: np.ndarray  # (N,) seconds
    strip_x: np.ndarray
    strip_y: np.ndarray
    page: np.ndarray  # 0-based page index
    system: np.ndarray
    page_x: np.ndarray
    page_y: np.ndarray

    def __len__(self) -> int:
        return len(self.frame)


class Piece:
    """One built piece folder."""

    def __init__(self, folder: str | Path):
        self.dir = Path(folder)
        pj = self.dir / "piece.json"
        if not pj.is_file():
            raise FileNotFoundError(f"{self.dir} is not a built piece (no piece.json)")
        self.meta = json.loads(pj.read_text())

    @property
    def id(self) -> str:
        return self.meta["id"]

    @property
    def split(self) -> str:
        return self.meta["split"]

    @cached_property
    def timing(self) -> ScoreTiming:
        return ScoreTiming.from_json(json.loads((self.dir / "timing.json").read_text()))

    def layout(self, e: int = 0) -> list[PageLayout]:
        d = json.loads((self.dir / f"e{e}_layout.json").read_text())
        return [PageLayout.from_json(p) for p in d["pages"]]

    def page_image(self, page: int, e: int = 0) -> np.ndarray:
        return np.asarray(Image.open(self.dir / f"e{e}_page{page + 1:03d}.png").convert("L"))

    def strip(self, e: int = 0) -> Strip:
        img = np.asarray(Image.open(self.dir / f"e{e}_strip.png").convert("L"))
        d = json.loads((self.dir / f"e{e}_strip.json").read_text())
        return Strip(img, Strip.segments_from_json(d), d.get("staff_space", 7.2))

    def performance(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """(spectrogram float32 (T, 92), event onset times in seconds)."""
        z = np.load(self.dir / f"p{j}.npz")
        return z["spec"].astype(np.float32), z["onsets"].astype(np.float64)

    def alignment(self, j: int, e: int = 0) -> list[dict]:
        """Every performed notehead onset of performance ``j`` on engraving ``e``:
        note id, page (1-based), notehead box (page px), onset time and frame,
        and the notehead centre in the unrolled strip.  Repeated passages list
        the same notehead once per performed pass."""
        _, onsets = self.performance(j)
        segs = {(s.page, s.system): s for s in self.strip(e).segments}
        where = {}
        for p, lay in enumerate(self.layout(e)):
            for nid, (k, x0, y0, x1, y1) in lay.notes.items():
                where[nid] = (p, k, x0, y0, x1, y1)
        rows = []
        for ev, ids in enumerate(self.timing.event_ids):
            for nid in ids:
                if nid not in where:
                    continue
                p, k, x0, y0, x1, y1 = where[nid]
                sx, sy = segs[(p, k)].page_to_strip((x0 + x1) / 2, (y0 + y1) / 2)
                rows.append({"note": nid, "page": p + 1, "system": k + 1, "x0": round(x0, 1), "y0": round(y0, 1), "x1": round(x1, 1),
                             "y1": round(y1, 1), "onset_s": round(float(onsets[ev]), 4), "frame": int(round(onsets[ev] * FPS)),
                             "strip_x": round(sx, 1), "strip_y": round(sy, 1)})
        return rows

    def pairs(self, j: int, e: int = 0) -> Pairs:
        """Aligned pairs for performance ``j`` on engraving ``e``, one per distinct onset frame."""
        _, onsets = self.performance(j)
        layouts = self.layout(e)
        segs = {(s.page, s.system): s for s in self.strip(e).segments}
        where = {}
        for p, lay in enumerate(layouts):
            for nid, (k, x0, y0, x1, y1) in lay.notes.items():
                where[nid] = (p, k, (x0 + x1) / 2, (y0 + y1) / 2)
        acc: dict[int, list] = {}
        for ev, ids in enumerate(self.timing.event_ids):
            pos = [where[i] for i in ids if i in where]
            if not pos:
                continue
            f = int(round(onsets[ev] * FPS))
            acc.setdefault(f, []).extend((ev, *q) for q in pos)
        frames = sorted(acc)
        out = {k: [] for k in ("frame", "time", "strip_x", "strip_y", "page", "system", "page_x", "page_y")}
        for f in frames:
            items = acc[f]
            # the notes of one onset frame may straddle a system/page break (rare): keep the first system's
            p0, k0 = items[0][1], items[0][2]
            items = [it for it in items if it[1] == p0 and it[2] == k0]
            px = float(np.mean([it[3] for it in items]))
            py = float(np.mean([it[4] for it in items]))
            seg: Segment = segs[(p0, k0)]
            sx, sy = seg.page_to_strip(px, py)
            out["frame"].append(f)
            out["time"].append(float(onsets[items[0][0]]))
            out["strip_x"].append(sx)
            out["strip_y"].append(min(max(sy, 0.0), STRIP_HEIGHT - 1.0))
            out["page"].append(p0)
            out["system"].append(k0)
            out["page_x"].append(px)
            out["page_y"].append(py)
        return Pairs(
            np.asarray(out["frame"], np.int64), np.asarray(out["time"]), np.asarray(out["strip_x"]), np.asarray(out["strip_y"]),
            np.asarray(out["page"], np.int64), np.asarray(out["system"], np.int64), np.asarray(out["page_x"]), np.asarray(out["page_y"]),
        )


class Corpus:
    """A built corpus folder."""

    def __init__(self, folder: str | Path):
        self.dir = Path(folder)
        if not (self.dir / "pieces").is_dir():
            raise FileNotFoundError(f"{self.dir} is not a corpus folder (no pieces/); build one with 'scorestream corpus build'")

    def piece_ids(self, split: str | None = None) -> list[str]:
        ids = sorted(p.parent.name for p in (self.dir / "pieces").glob("*/piece.json"))
        if split is None:
            return ids
        return [i for i in ids if self.piece(i).split == split]

    def piece(self, pid: str) -> Piece:
        d = self.dir / "pieces" / pid
        if not d.is_dir():
            matches = [p for p in self.piece_ids() if pid in p]
            if len(matches) == 1:
                d = self.dir / "pieces" / matches[0]
            elif matches:
                raise KeyError(f"{pid!r} is ambiguous: {', '.join(matches[:5])}{' …' if len(matches) > 5 else ''}")
            else:
                raise KeyError(f"no piece {pid!r} in {self.dir}")
        return Piece(d)
