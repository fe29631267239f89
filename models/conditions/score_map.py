"""Engrave a MusicXML score and map externally aligned score notes onto its noteheads.

An alignment such as a ``.match`` file names score notes by their MusicXML ids and
gives each a score position (bar, onset in beats) and a pitch.  Verovio keeps
MusicXML note ids, so most notes map by id; as a safety net (a re-encoded score,
ids that verovio had to change) a note without an id hit is mapped by
``(onset in quarter notes, pitch)`` against verovio's timemap, after estimating the
constant offset between the two score clocks (a pickup bar) from the id hits.
Every mapped note is checked: its verovio MIDI pitch must equal the aligned pitch.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from scorestream.core.strip import Strip, unroll

from ..corpus.engrave import EngravingStyle, PageLayout, load_score, new_toolkit, parse_svg_layout, rasterize
from ..corpus.scorefile import load_for_engraving


@dataclass
class EngravedScore:
    """One engraving: page images, layouts, the unrolled strip and every note's score position and pitch."""

    pages: list[np.ndarray]
    layouts: list[PageLayout]
    strip: Strip
    qstamp: dict[str, float]     # verovio note id -> onset in quarter notes (performed order, first pass)
    pitch: dict[str, int]        # verovio note id -> MIDI pitch (as verovio plays it)
    where: dict[str, tuple[int, int, float, float]] = field(default_factory=dict)  # id -> (page, system, x, y) page px

    def __post_init__(self) -> None:
        if not self.where:
            for p, lay in enumerate(self.layouts):
                for nid, (k, x0, y0, x1, y1) in lay.notes.items():
                    self.where[nid] = (p, k, (x0 + x1) / 2, (y0 + y1) / 2)

    def strip_xy(self, nid: str) -> tuple[float, float, int, int]:
        """(strip x, strip y, page, system) of a notehead centre."""
        p, k, x, y = self.where[nid]
        seg = next(s for s in self.strip.segments if s.page == p and s.system == k)
        sx, sy = seg.page_to_strip(x, y)
        return sx, sy, p, k


def engrave(path_or_text: str, style: EngravingStyle | None = None, tk=None, is_text: bool = False) -> EngravedScore:
    """Engrave a score file (or its text) with verovio in ``style`` (default: the corpus's test house style)."""
    tk = tk or new_toolkit()
    text = path_or_text if is_text else load_for_engraving(path_or_text)
    n = load_score(tk, text, style or EngravingStyle())
    pages, layouts = [], []
    for p in range(1, n + 1):
        svg = tk.renderToSVG(p)
        layouts.append(parse_svg_layout(svg))
        pages.append(rasterize(svg))
    strip = unroll(pages, [[(s.x0, s.y0, s.x1, s.y1, s.staff_space) for s in lay.systems] for lay in layouts])
    qstamp: dict[str, float] = {}
    for entry in tk.renderToTimemap({"includeMeasures": False, "includeRests": False}):
        for nid in entry.get("on", []):
            qstamp.setdefault(nid, float(entry.get("qstamp", 0.0)))
    known = {nid for lay in layouts for nid in lay.notes}
    pitch = {nid: int(tk.getMIDIValuesForElement(nid).get("pitch", -1)) for nid in known}
    return EngravedScore(pages, layouts, strip, qstamp, pitch)


@dataclass
class NoteMapping:
    ids: dict[str, str]          # aligned score note id -> engraved note id
    by_id: int
    by_position: int
    unmapped: list[str]
    pitch_mismatch: list[str]
    offset_quarters: float

    @property
    def rate(self) -> float:
        n = len(self.ids) + len(self.unmapped)
        return len(self.ids) / n if n else 1.0


def map_notes(notes: list[tuple[str, float, int]], score: EngravedScore, tol_quarters: float = 1e-3) -> NoteMapping:
    """Map aligned score notes ``(id, onset in quarter notes, MIDI pitch)`` onto engraved note ids.

    1. id hit whose engraved pitch equals the aligned pitch;
    2. otherwise the engraved note with the same pitch whose timemap onset equals the
       aligned onset plus the clock offset (the most common ``qstamp - onset`` of the id
       hits), each engraved note used once — unless a unison of two voices shares one
       notehead (then both map onto it).
    """
    ids: dict[str, str] = {}
    mismatch: list[str] = []
    diffs: list[float] = []
    rest: list[tuple[str, float, int]] = []
    for nid, q, p in notes:
        if nid in score.where:
            if score.pitch.get(nid) == p:
                ids[nid] = nid
                if nid in score.qstamp:
                    diffs.append(round(score.qstamp[nid] - q, 4))
                continue
            mismatch.append(nid)
        rest.append((nid, q, p))
    offset = Counter(diffs).most_common(1)[0][0] if diffs else 0.0
    used = set(ids.values())
    index: dict[int, list[tuple[float, str]]] = {}
    for vid, q in score.qstamp.items():
        if vid in score.where and vid not in used:
            index.setdefault(score.pitch.get(vid, -1), []).append((q, vid))
    by_pos, unmapped = 0, []
    for nid, q, p in rest:
        best = None
        for vq, vid in index.get(p, []):
            if vid not in used and abs(vq - (q + offset)) <= tol_quarters and (best is None or abs(vq - q - offset) < best[0]):
                best = (abs(vq - q - offset), vid)
        if best is None:
            # a unison of two voices is often engraved as one shared notehead
            for vq, vid in index.get(p, []) + [(score.qstamp.get(v, -1e9), v) for v in ids.values() if score.pitch.get(v) == p]:
                if abs(vq - (q + offset)) <= tol_quarters:
                    best = (0.0, vid)
                    break
        if best is None:
            unmapped.append(nid)
            continue
        ids[nid] = best[1]
        used.add(best[1])
        by_pos += 1
    return NoteMapping(ids, len(ids) - by_pos, by_pos, unmapped, mismatch, float(offset))


def frame_pairs(onsets: np.ndarray, note_ids: list[str], score: EngravedScore, fps: int = 20) -> dict[str, np.ndarray]:
    """Audio–sheet pairs, one per distinct onset frame, as in the corpus (``models.corpus.reader.Piece.pairs``):
    the mean notehead position of the notes starting in that frame (those in the first system
    of the frame's notes when a frame straddles a system break)."""
    from scorestream.core.strip import STRIP_HEIGHT

    acc: dict[int, list[tuple[float, int, int, float, float]]] = {}
    order = np.argsort(onsets, kind="stable")
    for i in order:
        nid = note_ids[i]
        if nid not in score.where:
            continue
        p, k, x, y = score.where[nid]
        acc.setdefault(int(round(float(onsets[i]) * fps)), []).append((float(onsets[i]), p, k, x, y))
    out = {k: [] for k in ("frame", "time", "strip_x", "strip_y", "page", "system")}
    segs = {(s.page, s.system): s for s in score.strip.segments}
    for f in sorted(acc):
        items = acc[f]
        p0, k0 = items[0][1], items[0][2]
        items = [it for it in items if it[1] == p0 and it[2] == k0]
        px, py = float(np.mean([it[3] for it in items])), float(np.mean([it[4] for it in items]))
        sx, sy = segs[(p0, k0)].page_to_strip(px, py)
        out["frame"].append(f)
        out["time"].append(items[0][0])
        out["strip_x"].append(sx)
        out["strip_y"].append(min(max(sy, 0.0), STRIP_HEIGHT - 1.0))
        out["page"].append(p0)
        out["system"].append(k0)
    return {k: np.asarray(v, np.int64 if k in ("frame", "page", "system") else np.float64) for k, v in out.items()}
