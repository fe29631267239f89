"""``scorestream follow AUDIO --library DIR``: identify and follow an audio file offline (the
reference path of the engine; the JSONL is what the server sends, docs/results.md)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from scorestream.core.errors import InputError


def _positive(v: str) -> float:
    try:
        f = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {v!r}") from None
    if f <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return f


def _follow(a: argparse.Namespace) -> int:
    from scorestream.clients.client import event_line, status_line
    from scorestream.core.audio import decode_audio_file
    from scorestream.engine.engine import Engine, load_tracker_config
    from scorestream.engine.follow import follow_audio
    from scorestream.engine.library import Library

    try:
        frames, sr = decode_audio_file(a.audio)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    cfg = load_tracker_config(a.config, stride_s=a.stride, page_turn_lead_s=a.page_turn_lead)
    lib = Library.open(a.library)
    engine = Engine(lib, tracker_config=cfg)
    if a.piece is not None and a.piece not in engine.by_id:
        raise InputError(f"piece {a.piece!r} is not in {a.library}; 'scorestream library list --library {a.library}' shows the ids")
    out = open(a.jsonl, "w") if a.jsonl else None
    tty = sys.stderr.isatty() and not a.quiet
    state = {"last_plain": -1e9, "width": 0}
    t0 = time.monotonic()

    def show(r) -> None:
        d = r.to_json()
        if out is not None:
            out.write(json.dumps(d, separators=(",", ":")) + "\n")
        if a.quiet:
            return
        for e in d["events"]:
            if tty:
                sys.stderr.write("\r" + " " * state["width"] + "\r")
            print(event_line(e), file=sys.stderr)
        line = status_line(d)
        if tty:
            sys.stderr.write("\r" + line.ljust(state["width"]))
            state["width"] = len(line)
            sys.stderr.flush()
        elif d["t"] - state["last_plain"] >= 5.0:
            state["last_plain"] = d["t"]
            print(line, file=sys.stderr)

    try:
        results = follow_audio(engine, frames, sr, piece=a.piece, realtime=a.realtime, on_result=show)
    finally:
        if out is not None:
            out.close()
    if tty:
        sys.stderr.write("\n")
    took = time.monotonic() - t0
    dur = len(frames) / sr
    tracked = [r for r in results if r.state == "tracking"]
    pieces = sorted({r.piece for r in tracked})
    if not a.quiet:
        print(f"{dur:.1f} s of audio in {took:.1f} s ({dur / max(took, 1e-9):.1f}x real time): {len(results)} results, "
              f"tracking {100 * len(tracked) / max(len(results), 1):.0f} % of them"
              + (f" ({', '.join(pieces)})" if pieces else ""), file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("follow", help="identify and follow an audio file against a score library (offline)",
                       description="Streams AUDIO causally through the engine (identification + score following) "
                                   "and prints a live line; --jsonl writes one result object per audio window "
                                   "(the format the server sends; docs/results.md).")
    p.add_argument("audio", metavar="AUDIO", help="audio file (WAV, FLAC, OGG, MP3; any rate and channel count)")
    p.add_argument("--library", required=True, metavar="DIR", help="score library folder (scorestream library add)")
    p.add_argument("--piece", default=None, metavar="ID", help="follow this piece (skips identification)")
    p.add_argument("--jsonl", default=None, metavar="OUT", help="write one JSON result per line here")
    p.add_argument("--realtime", action="store_true", help="pace the audio by the wall clock (as a live source)")
    p.add_argument("--stride", type=_positive, default=None, metavar="S",
                   help="seconds between results (default from configs/tracker.toml: 0.2)")
    p.add_argument("--page-turn-lead", type=_positive, default=None, metavar="S",
                   help="raise page_turn this many seconds before a page's last system ends (default 2)")
    p.add_argument("--config", default=None, metavar="TOML", help="tracker settings on top of the shipped configs/tracker.toml "
                   "(e.g. configs/tracker_scans.toml for a library of scanned pages)")
    p.add_argument("--quiet", action="store_true", help="no live line")
    p.set_defaults(func=_follow)
