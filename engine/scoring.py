"""Scoring a stream's results against the truth (pure functions, used by ``scorestream eval``,
the benchmarks and the tests).

Truth of a performance: its onsets in performed order, each ``[t, page, system, x]`` (seconds
of audio; the page (1-based), system (1-based within the page) and page x of the printed
notehead).  A result's position (page, system, x) is turned into a time: among the printed
onsets of that system, the ones with x nearest the reported x; of their performed
occurrences, the one closest to the result's ``t``.  The error is that time minus ``t``.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

FOLLOW_THRESHOLDS_S = (0.5, 1.0, 2.0)
SAME_X_PX = 4.0          # printed onsets this close in x count as the same column


def truth_index(events: list) -> dict:
    """(page, system) -> (x array, t array) of the printed onsets (all occurrences)."""
    by = defaultdict(list)
    for t, page, system, x in events:
        by[(int(page), int(system))].append((float(x), float(t)))
    return {k: (np.array([a for a, _ in v]), np.array([b for _, b in v])) for k, v in by.items()}


def position_time(index: dict, page: int, system: int, x: float, t: float) -> float | None:
    """The performed time of the printed onset nearest (page, system, x), closest to ``t``."""
    xs_ts = index.get((int(page), int(system)))
    if xs_ts is None:
        return None
    xs, ts = xs_ts
    d = np.abs(xs - float(x))
    near = d <= d.min() + SAME_X_PX
    cand = ts[near]
    return float(cand[np.argmin(np.abs(cand - t))])


def follow_errors(results: list[dict], events: list, *, piece: str, start: float = 0.0, end: float | None = None) -> np.ndarray:
    """Signed time errors (s) of the results in [start, end) that track ``piece``; results that
    track another piece or nothing (after the first onset) count as infinitely wrong."""
    idx = truth_index(events)
    first = min((e[0] for e in events), default=0.0)
    last = max((e[0] for e in events), default=0.0)
    out = []
    for r in results:
        t = float(r["t"])
        if t < start or (end is not None and t >= end) or t < first or t > last + 1.0:
            continue
        if r.get("state") != "tracking" or r.get("piece") != piece:
            out.append(np.inf)
            continue
        pt = position_time(idx, r["page"], r["system"], r["x"], t)
        out.append(np.inf if pt is None else pt - t)
    return np.asarray(out, np.float64)


def follow_summary(errors: np.ndarray) -> dict:
    a = np.abs(np.asarray(errors, np.float64))
    n = len(a)
    d = {"results": n}
    for th in FOLLOW_THRESHOLDS_S:
        d[f"within_{th:g}s"] = float((a <= th).mean()) if n else 0.0
    fin = a[np.isfinite(a)]
    d["median_abs_error_s"] = float(np.median(fin)) if len(fin) else None
    return d


def tracked_to_end(errors: np.ndarray, tail: float = 0.1, within_s: float = 2.0, share: float = 0.9) -> bool:
    """≥ ``share`` of the last ``tail`` of the results within ``within_s``."""
    a = np.abs(np.asarray(errors, np.float64))
    if len(a) == 0:
        return False
    k = max(1, int(round(len(a) * tail)))
    return bool((a[-k:] <= within_s).mean() >= share)


def identification(results: list[dict], piece: str | None, *, start: float = 0.0, checkpoints=(5.0, 10.0, 30.0),
                   end: float | None = None) -> dict:
    """Top-1 (the reported piece), top-5 and reciprocal rank (from ``candidates``) at each
    checkpoint (seconds after ``start``) and the time from which the right piece is reported and stays.
    ``end``: only results up to this time count for "stays" (the music's last onset: a piece let go
    after its music has stopped, or on the zero-padded windows that end a stream, was identified)."""
    rs = sorted((r for r in results if r["t"] >= start and (end is None or r["t"] <= end)), key=lambda r: r["t"])
    out: dict = {}
    for c in checkpoints:
        upto = [r for r in rs if r["t"] <= start + c]
        if not upto:
            out[f"{c:g}s"] = None
            continue
        r = upto[-1]
        names = [d["piece"] for d in r.get("candidates") or []]
        rank = names.index(piece) + 1 if piece in names else None
        top1 = r.get("state") == "tracking" and r.get("piece") == piece
        out[f"{c:g}s"] = {"top1": bool(top1), "top5": bool(top1 or (rank is not None and rank <= 5)),
                          "rr": 1.0 if top1 else (1.0 / rank if rank else 0.0)}
    stay = None
    for r in reversed(rs):
        if r.get("state") == "tracking" and r.get("piece") == piece:
            stay = r["t"] - start
        else:
            break
    out["time_to_identify_s"] = stay
    return out


PAGE_TURN_EARLY_S = 3.0     # a turn raised up to this long before the first note of the new page is on time
PAGE_TURN_MATCH_S = (8.0, 4.0)  # a turn to the right page from 8 s before to 4 s after the change belongs to it


def page_changes(events: list) -> list[tuple[float, int]]:
    """(time of the first performed note on the new page, new page) for every change of page in
    performed order (repeats that go back a page included)."""
    ev = sorted(events, key=lambda e: e[0])
    return [(float(b[0]), int(b[1])) for a, b in zip(ev, ev[1:]) if int(b[1]) != int(a[1])]


def page_turns(results: list[dict], events: list, *, piece: str) -> dict:
    """The page turner's view: for each true change of page, the ``page_turn`` event to that page
    nearest before it (else the first after it) within PAGE_TURN_MATCH_S; its lead = change time -
    event time (> 0: raised before the first note of the new page).  On time: 0 <= lead <=
    PAGE_TURN_EARLY_S; early: raised sooner (the last system is hidden while still played);
    late: after the first note; missed: none.  Spurious: page_turn events of the piece that
    belong to no change (a page shown that the music is not on)."""
    turns = [(float(e["t"]), int(e["page"])) for r in results for e in (r.get("events") or [])
             if e.get("kind") == "page_turn" and e.get("piece") == piece and e.get("page") is not None]
    used = set()
    leads = []
    for T, page in page_changes(events):
        cand = [(i, T - t) for i, (t, p) in enumerate(turns)
                if p == page and i not in used and -PAGE_TURN_MATCH_S[1] <= T - t <= PAGE_TURN_MATCH_S[0]]
        if not cand:
            leads.append(None)
            continue
        before = [c for c in cand if c[1] >= 0]
        i, lead = min(before, key=lambda c: c[1]) if before else max(cand, key=lambda c: c[1])
        used.add(i)
        leads.append(lead)
    got = [x for x in leads if x is not None]
    return {"changes": len(leads), "on_time": sum(0.0 <= x <= PAGE_TURN_EARLY_S for x in got),
            "early": sum(x > PAGE_TURN_EARLY_S for x in got), "late": sum(x < 0.0 for x in got),
            "missed": sum(x is None for x in leads), "spurious": len(turns) - len(used),
            "leads_s": [round(x, 3) for x in got]}


def page_turn_summary(per_take: list[dict]) -> dict:
    """Pooled page-turn counts and shares over takes (``page_turns`` results)."""
    n = sum(d["changes"] for d in per_take)
    leads = [x for d in per_take for x in d["leads_s"]]
    out = {"changes": n, "takes": len(per_take)}
    for k in ("on_time", "early", "late", "missed"):
        out[k] = sum(d[k] for d in per_take) / max(n, 1)
    out["spurious_per_take"] = sum(d["spurious"] for d in per_take) / max(len(per_take), 1)
    out["lead_median_s"] = float(np.median(leads)) if leads else None
    return out
