"""The result objects the engine produces: one JSON object per result (the JSONL of
``scorestream follow`` and the ``result`` messages of the server), see docs/results.md.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

RESULT_FORMAT = 1          # bump when a field changes meaning
STATES = ("unknown", "searching", "tracking")
EVENT_KINDS = ("identified", "lost", "jump", "page_turn")


@dataclass
class Event:
    """Something that happened at time ``t``: a piece identified or lost, a jump, a page turn due."""

    kind: str                   # one of EVENT_KINDS
    t: float                    # seconds of stream audio
    piece: str | None = None
    page: int | None = None     # page_turn: the page to show next (1-based); jump: the page jumped to
    system: int | None = None
    data: dict[str, Any] = field(default_factory=dict)   # kind-specific details (jump: from/to seconds of score)

    def to_json(self) -> dict:
        d = {"kind": self.kind, "t": round(self.t, 3), "piece": self.piece, "page": self.page, "system": self.system}
        if self.data:
            d["data"] = self.data
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Event":
        return cls(d["kind"], float(d["t"]), d.get("piece"), d.get("page"), d.get("system"), dict(d.get("data") or {}))


@dataclass
class Result:
    """Where the music is at audio time ``t`` (causal: computed from audio up to ``t`` only)."""

    t: float                          # seconds of stream audio consumed
    state: str                        # "unknown" | "searching" | "tracking"
    piece: str | None = None          # library id, None unless tracking
    title: str | None = None
    page: int | None = None           # 1-based
    system: int | None = None         # 1-based within the page
    x: float | None = None            # page pixels (of the page image the library serves)
    y: float | None = None            # page pixels: vertical centre of the system
    bbox: list[float] | None = None   # the system's [x0, y0, x1, y1], page pixels
    page_size: list[int] | None = None  # [width, height] of the page image
    progress: float | None = None     # 0..1 through the piece (performed order)
    tempo: float | None = None        # estimated tempo, relative to the model's nominal strip speed (1.0 = nominal)
    confidence: float = 0.0           # 0..1: posterior probability that piece and system are right
    candidates: list[dict] = field(default_factory=list)   # [{"piece", "score"}], best first
    events: list[Event] = field(default_factory=list)
    window: int = -1                  # index of the audio window this result is based on
    dropped_windows: int = 0          # windows skipped so far because the server fell behind

    def to_json(self) -> dict:
        d = asdict(self)
        d["events"] = [e.to_json() for e in self.events]
        d["t"] = round(self.t, 3)
        for k in ("x", "y"):
            if d[k] is not None:
                d[k] = round(float(d[k]), 1)
        if d["bbox"] is not None:
            d["bbox"] = [round(float(v), 1) for v in d["bbox"]]
        for k in ("progress", "tempo"):
            if d[k] is not None:
                d[k] = round(float(d[k]), 4)
        d["confidence"] = round(float(self.confidence), 4)
        d["format"] = RESULT_FORMAT
        return d

    def to_line(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"))

    @classmethod
    def from_json(cls, d: dict) -> "Result":
        kw = {k: d.get(k) for k in ("t", "state", "piece", "title", "page", "system", "x", "y", "bbox", "page_size",
                                    "progress", "tempo")}
        return cls(**kw, confidence=float(d.get("confidence", 0.0)), candidates=list(d.get("candidates") or []),
                   events=[Event.from_json(e) for e in d.get("events") or []], window=int(d.get("window", -1)),
                   dropped_windows=int(d.get("dropped_windows", 0)))
