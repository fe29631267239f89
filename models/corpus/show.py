"""``scorestream corpus show``: draw the alignment so a person can check it.

Draws every notehead box of a page (thin grey) and, in colour, the noteheads
whose onsets fall in the chosen second of a performance, with their onset
times.  If the picture shows the coloured boxes walking through the music in
order, the audio and the sheet are aligned.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .reader import Piece


def overlay(piece: Piece, second: float | None = None, perf: int = 0, engraving: int = 0, window: float = 1.0) -> tuple[Image.Image, dict]:
    """Overlay image of the page that is playing at ``second`` (default: first page)."""
    _, onsets = piece.performance(perf)
    layouts = piece.layout(engraving)
    where = {}
    for p, lay in enumerate(layouts):
        for nid, box in lay.notes.items():
            where[nid] = (p, box)
    if second is None:
        second = float(onsets[0])
    sel = [ev for ev, t in enumerate(onsets) if second <= t < second + window]
    pages = [where[i][0] for ev in sel for i in piece.timing.event_ids[ev] if i in where]
    page = int(np.bincount(pages).argmax()) if pages else 0
    img = Image.fromarray(piece.page_image(page, engraving)).convert("RGB")
    draw = ImageDraw.Draw(img)
    for s in layouts[page].systems:
        draw.rectangle([s.x0, s.y0, s.x1, s.y1], outline=(80, 120, 255))
    for nid, (k, x0, y0, x1, y1) in layouts[page].notes.items():
        draw.rectangle([x0, y0, x1, y1], outline=(190, 190, 190))
    n_drawn = 0
    for rank, ev in enumerate(sel):
        hue = rank / max(1, len(sel) - 1)
        colour = (int(255 * (1 - hue)), int(160 * hue), int(255 * hue))
        for nid in piece.timing.event_ids[ev]:
            if nid in where and where[nid][0] == page:
                _, (k, x0, y0, x1, y1) = where[nid]
                draw.rectangle([x0 - 1, y0 - 1, x1 + 1, y1 + 1], outline=colour, width=2)
                n_drawn += 1
        ids_here = [i for i in piece.timing.event_ids[ev] if i in where and where[i][0] == page]
        if ids_here:
            _, (k, x0, y0, x1, y1) = where[ids_here[0]]
            draw.text((x0, y1 + 2), f"{onsets[ev]:.2f}", fill=colour)
    draw.text((8, 8), f"{piece.id}  perf p{perf}  {second:.2f}-{second + window:.2f} s  page {page + 1}", fill=(200, 0, 0))
    return img, {"page": page + 1, "events": len(sel), "noteheads": n_drawn, "second": second}


def save_overlay(piece: Piece, out: str | Path, **kw) -> dict:
    img, info = overlay(piece, **kw)
    img.save(out)
    return info
