"""``scorestream stream``: send a file or the microphone to a running ``scorestream serve``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scorestream.core.errors import InputError


class _Display:
    """The live terminal line (stderr; rewritten in place on a terminal) and the JSONL output."""

    def __init__(self, jsonl: str | None, quiet: bool, out=sys.stderr) -> None:
        from scorestream.clients.client import event_line, status_line

        self._status, self._event = status_line, event_line
        self.out = out
        self.tty = out.isatty()
        self.quiet = quiet
        self.f = open(jsonl, "w") if jsonl else None
        self._last_len = 0
        self._last_plain = 0.0
        self._last_window: int | None = None

    def __call__(self, msg: dict) -> None:
        kind = msg.get("type")
        if kind == "result":
            r = msg["result"]
            # the final result repeats the latest one when that was sent already: one line per window
            repeat = msg.get("final") and r.get("window") is not None and r.get("window") == self._last_window
            self._last_window = r.get("window")
            if self.f is not None and not repeat:
                self.f.write(json.dumps(r, separators=(",", ":")) + "\n")
            if self.quiet:
                return
            line = self._status(r)
            if self.tty:
                self.out.write("\r" + line.ljust(self._last_len))
                self._last_len = len(line)
            elif msg.get("final") or (r.get("t") or 0) - self._last_plain >= 5.0:
                self._last_plain = r.get("t") or 0
                self.out.write(line + "\n")
            self.out.flush()
        elif kind == "event" and not self.quiet:
            self._line(self._event(msg["event"]))
        elif kind == "error":
            self._line(f"server error {msg.get('code')}: {msg.get('message')}")

    def _line(self, s: str) -> None:
        if self.tty and self._last_len:
            self.out.write("\r" + " " * self._last_len + "\r")
            self._last_len = 0
        self.out.write(s + "\n")
        self.out.flush()

    def close(self) -> None:
        if self.tty and self._last_len:
            self.out.write("\n")
        if self.f is not None:
            self.f.close()


def _stream(a: argparse.Namespace) -> int:
    import asyncio

    from scorestream.clients.client import Microphone, ServerError, file_info, stream_chunks, stream_file

    if a.speed is not None and not a.speed > 0:
        raise InputError(f"--speed must be > 0, got {a.speed}")
    if bool(a.file) == bool(a.mic):
        raise InputError("give an audio FILE or --mic (not both)")
    if a.mode == "follow" and not a.piece:
        raise InputError("--mode follow needs --piece ID")
    url = a.server
    if not url.startswith(("ws://", "wss://")):
        raise InputError(f"--server must be a websocket URL such as ws://127.0.0.1:8765/ws, got {url!r}")
    if url.rstrip("/").count("/") == 2:
        url = url.rstrip("/") + "/ws"
    # the JSONL holds every result (one per window, like `scorestream follow`); the live line alone
    # needs no more than the server's coalesced 10 per second
    results = a.results or ("all" if a.jsonl else "coalesced")
    kw = dict(mode=a.mode, piece=a.piece, encoding=a.encoding, stream=a.name, token=a.token, results=results)
    disp = _Display(a.jsonl, a.quiet)
    kw["on_message"] = disp
    try:
        if a.file:
            if not Path(a.file).is_file():
                raise FileNotFoundError(2, "No such file", a.file)
            file_info(a.file)
            summary = asyncio.run(stream_file(a.file, url, realtime=a.realtime, speed=a.speed, chunk_s=a.chunk_ms / 1000, **kw))
        else:
            mic = Microphone(sample_rate=a.rate, channels=1, chunk_s=a.chunk_ms / 1000)
            try:
                summary = asyncio.run(stream_chunks(url, mic.chunks(), sample_rate=a.rate, channels=1, live=True, **kw))
            except KeyboardInterrupt:
                return 0
    except ServerError as exc:
        raise InputError(f"the server refused the stream: {exc.code}: {exc.message}") from None
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise InputError(f"cannot reach the server at {url}: {exc}") from None
    finally:
        disp.close()
    bye = summary.bye or {}
    final = summary.final or {}
    ident = next((e for e in summary.events if e.get("kind") == "identified"), None)
    parts = [f"{bye.get('audio_seconds', summary.sent_seconds):.1f} s streamed", f"{bye.get('windows', '?')} windows",
             f"{bye.get('dropped_windows', 0)} dropped"]
    if ident:
        parts.append(f"identified {ident.get('piece')} at {ident.get('t'):.1f} s")
    if final.get("state") == "tracking":
        parts.append(f"ended in {final.get('piece')} page {final.get('page')} system {final.get('system')}")
    if not a.quiet:
        print("; ".join(parts), file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stream", help="stream an audio file or the microphone to a scorestream server",
                       description="Stream audio to 'scorestream serve' and show live which piece is playing and where. "
                                   "Writes the same JSONL as 'scorestream follow' with --jsonl.")
    p.add_argument("file", nargs="?", metavar="FILE", help="audio file (WAV, FLAC, OGG, MP3, … anything soundfile reads)")
    p.add_argument("--mic", action="store_true", help="stream the default microphone (needs the 'mic' extra: pyaudio)")
    p.add_argument("--server", default="ws://127.0.0.1:8765/ws", help="websocket URL (default ws://127.0.0.1:8765/ws)")
    p.add_argument("--realtime", action="store_true", help="send a file at real-time pace (default: as fast as possible)")
    p.add_argument("--speed", type=float, default=None, metavar="X",
                   help="send a file at X times real time (e.g. 2); --realtime is --speed 1")
    p.add_argument("--jsonl", metavar="OUT", help="write every result object as one JSON line (the JSONL of 'scorestream follow')")
    p.add_argument("--results", choices=("coalesced", "all"), default=None,
                   help="all: the server sends one result per audio window; coalesced: at most 10 per second "
                        "(default: all with --jsonl, else coalesced)")
    p.add_argument("--mode", choices=("identify", "follow"), default="identify",
                   help="identify: search the library (default); follow: the piece is known (--piece)")
    p.add_argument("--piece", help="library id of the piece (with --mode follow)")
    p.add_argument("--name", help="stream name (MQTT topics scorestream/NAME/…)")
    p.add_argument("--token", help="the server's shared secret")
    p.add_argument("--encoding", choices=("json", "msgpack"), default="json", help="server message encoding")
    p.add_argument("--chunk-ms", type=float, default=100.0, help="milliseconds of audio per message (default 100)")
    p.add_argument("--rate", type=int, default=44100, help="microphone sample rate (default 44100)")
    p.add_argument("--quiet", action="store_true", help="no live line, only the JSONL")
    p.set_defaults(func=_stream)
