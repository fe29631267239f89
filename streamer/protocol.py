"""The scorestream streaming protocol, sans-I/O (see docs/protocol.md).

This module knows nothing about sockets, asyncio or the engine. The adapter
(:mod:`scorestream.streamer.server`) feeds it what arrived (``on_text``,
``on_binary``), what the engine produced (``on_result``, ``on_end``) and the
clock (``on_tick``, every time value is passed in, never read here), and carries
out the :class:`Action` objects it returns: send a message, start the stream,
hand PCM to the front end, end the stream, close the connection.

One connection carries one stream::

    client                                   server
    {"type":"hello", ...}       (text)  -->
                                        <--  {"type":"ready", ...}
    PCM                       (binary)  -->
    PCM ...                             <--  {"type":"result", ...} (<= 10/s, coalesced; or all)
                                        <--  {"type":"event", ...}  (identified, lost, jump, page_turn)
    {"type":"bye"}              (text)  -->
                                        <--  final {"type":"result"}, {"type":"bye", ...}, close 1000

Any violation -> ``{"type":"error","code":…,"message":…}`` and a clean close.
Client messages are JSON text frames; PCM is binary frames; the server's messages
are JSON text frames or msgpack binary frames, as the hello asked.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PROTOCOL_VERSION = 1
MODES = ("identify", "follow")
FORMATS = {"int16": np.dtype("<i2"), "float32": np.dtype("<f4")}
ENCODINGS = ("json", "msgpack")
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 192000
MAX_CHANNELS = 8
STREAM_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PIECE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HELLO_KEYS = {"type", "version", "sample_rate", "channels", "format", "mode", "piece", "encoding", "stream", "realtime",
               "results"}
RESULTS = ("coalesced", "all")

# error codes (docs/protocol.md lists them with their meaning)
BAD_JSON = "bad_json"                 # a text frame that is not a JSON object
BAD_MESSAGE = "bad_message"           # unknown type, or a message that is not allowed now
BAD_HELLO = "bad_hello"               # hello with a missing, wrong or out-of-range field
UNSUPPORTED_VERSION = "unsupported_version"
NO_HELLO = "no_hello"                 # PCM or bye before the hello
BAD_AUDIO = "bad_audio"               # PCM frame that is not whole samples, or NaN/inf floats
HELLO_TIMEOUT = "hello_timeout"       # no hello within limits.hello_timeout_s (e.g. slowloris)
IDLE_TIMEOUT = "idle_timeout"         # nothing received for limits.idle_timeout_s
BUSY = "busy"                         # the server runs its maximum number of streams
UNKNOWN_PIECE = "unknown_piece"       # follow mode with a piece id the library does not hold
INTERNAL = "internal"                 # a bug on the server side (logged there)
ERROR_CODES = (BAD_JSON, BAD_MESSAGE, BAD_HELLO, UNSUPPORTED_VERSION, NO_HELLO, BAD_AUDIO, HELLO_TIMEOUT,
               IDLE_TIMEOUT, BUSY, UNKNOWN_PIECE, INTERNAL)

# websocket close codes
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001       # server shutting down
CLOSE_PROTOCOL = 1008         # policy violation: after an ``error`` message
CLOSE_INTERNAL = 1011


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Per-connection limits. ``None`` disables a limit."""

    max_message_bytes: int | None = 1 << 20        # bytes per websocket message (PCM or text)
    max_text_bytes: int = 64 << 10                 # bytes per text (JSON) message
    max_bytes_per_second: float | None = 8e6       # sustained PCM bytes/s per connection (burst: 2 s of it); excess is throttled
    hello_timeout_s: float | None = 10.0           # seconds from connect to hello
    idle_timeout_s: float | None = 30.0            # seconds without any message once streaming
    max_streams: int | None = 256                  # simultaneous streams per server
    results_per_second: float = 10.0               # result messages per second per stream (coalesced above)

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_bytes_per_second", "hello_timeout_s", "idle_timeout_s", "max_streams"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0):
                raise ValueError(f"Limits.{name} must be a positive number or None, got {v!r}")
        if not 0 < self.results_per_second <= 100:
            raise ValueError(f"Limits.results_per_second must be in (0, 100], got {self.results_per_second!r}")
        if self.max_text_bytes < 256:
            raise ValueError(f"Limits.max_text_bytes must be at least 256, got {self.max_text_bytes!r}")


@dataclass(frozen=True)
class Hello:
    """A validated hello."""

    sample_rate: float
    channels: int
    format: str                    # "int16" | "float32"
    mode: str                      # "identify" | "follow"
    piece: str | None
    encoding: str                  # "json" | "msgpack"
    stream: str | None             # the client's stream name (MQTT topics), None: the server names it
    version: int = PROTOCOL_VERSION
    realtime: bool | None = None   # True: a live source (drop windows when behind); False: a file (backpressure); None: auto
    results: str = "coalesced"     # "coalesced": at most results_per_second result messages; "all": one per window

    @property
    def dtype(self) -> np.dtype:
        return FORMATS[self.format]

    @property
    def frame_bytes(self) -> int:
        """Bytes of one sample frame (all channels)."""
        return self.dtype.itemsize * self.channels


class ProtocolError(Exception):
    """A client mistake: ``code`` is one of ERROR_CODES, ``message`` says what to do."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# ----------------------------------------------------------------------------- actions

@dataclass
class Action:
    pass


@dataclass
class Send(Action):
    """Send this message (a dict) to the client, encoded as :meth:`ServerProtocol.encode` does."""

    message: dict


@dataclass
class Start(Action):
    """The hello is valid: create the stream (front end + tracker), then call :meth:`ServerProtocol.started`."""

    hello: Hello


@dataclass
class Audio(Action):
    """PCM for the front end: 1-D interleaved, the declared dtype (a private copy)."""

    pcm: np.ndarray


@dataclass
class Throttle(Action):
    """Read nothing more for ``seconds`` (the connection is over its byte rate)."""

    seconds: float


@dataclass
class EndStream(Action):
    """Flush the stream (front end and pending windows) and call :meth:`ServerProtocol.on_end`."""

    reason: str = "bye"


@dataclass
class Close(Action):
    """Close the websocket with this code and reason."""

    code: int
    reason: str = ""


# ----------------------------------------------------------------------------- parsing

def _np_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"cannot encode {type(o).__name__}")


def encode(message: dict, encoding: str) -> str | bytes:
    """A server message as a websocket payload: JSON text or msgpack bytes."""
    if encoding == "msgpack":
        import msgpack

        return msgpack.packb(message, use_bin_type=True, default=_np_default)
    return json.dumps(message, separators=(",", ":"), default=_np_default, allow_nan=False)


def decode_server_message(payload: str | bytes) -> dict:
    """Client side: a server payload (text JSON or binary msgpack) as a dict."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        import msgpack

        return msgpack.unpackb(bytes(payload), raw=False)
    return json.loads(payload)


def _number(d: dict, key: str, lo: float, hi: float, what: str) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ProtocolError(BAD_HELLO, f"hello needs {key!r}: {what}, got {v!r}")
    if not lo <= v <= hi:
        raise ProtocolError(BAD_HELLO, f"hello {key!r} = {v!r} is outside {lo:g}..{hi:g} ({what})")
    return v


def parse_hello(d: dict) -> Hello:
    """Validate a hello object (already decoded from JSON); raises :class:`ProtocolError`."""
    version = d.get("version", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(UNSUPPORTED_VERSION, f"protocol version {version!r} is not supported; this server speaks version "
                                                 f"{PROTOCOL_VERSION}")
    unknown = sorted(set(d) - _HELLO_KEYS)
    if unknown:
        raise ProtocolError(BAD_HELLO, f"unknown hello field(s) {', '.join(map(repr, unknown))}; allowed: "
                                       f"{', '.join(sorted(_HELLO_KEYS))}")
    rate = _number(d, "sample_rate", MIN_SAMPLE_RATE, MAX_SAMPLE_RATE, "samples per second per channel")
    channels = d.get("channels", 1)
    if isinstance(channels, bool) or not isinstance(channels, int) or not 1 <= channels <= MAX_CHANNELS:
        raise ProtocolError(BAD_HELLO, f"hello 'channels' must be an integer 1..{MAX_CHANNELS}, got {channels!r}")
    fmt = d.get("format", "int16")
    if fmt not in FORMATS:
        raise ProtocolError(BAD_HELLO, f"hello 'format' must be one of {', '.join(FORMATS)}, got {fmt!r}")
    mode = d.get("mode", "identify")
    if mode not in MODES:
        raise ProtocolError(BAD_HELLO, f"hello 'mode' must be one of {', '.join(MODES)}, got {mode!r}")
    piece = d.get("piece")
    if piece is not None and (not isinstance(piece, str) or not PIECE_ID_RE.match(piece)):
        raise ProtocolError(BAD_HELLO, f"hello 'piece' must be a library piece id, got {piece!r}")
    if mode == "follow" and piece is None:
        raise ProtocolError(BAD_HELLO, "mode 'follow' needs 'piece' (the library id of the piece being played)")
    enc = d.get("encoding", "json")
    if enc not in ENCODINGS:
        raise ProtocolError(BAD_HELLO, f"hello 'encoding' must be one of {', '.join(ENCODINGS)}, got {enc!r}")
    stream = d.get("stream")
    if stream is not None and (not isinstance(stream, str) or not STREAM_NAME_RE.match(stream)):
        raise ProtocolError(BAD_HELLO, f"hello 'stream' must be 1-64 letters, digits, '.', '_' or '-' (starting with a letter "
                                       f"or digit), got {stream!r}")
    realtime = d.get("realtime")
    if realtime is not None and not isinstance(realtime, bool):
        raise ProtocolError(BAD_HELLO, f"hello 'realtime' must be true, false or absent, got {realtime!r}")
    results = d.get("results", "coalesced")
    if results not in RESULTS:
        raise ProtocolError(BAD_HELLO, f"hello 'results' must be one of {', '.join(RESULTS)}, got {results!r}")
    return Hello(float(rate), int(channels), fmt, mode, piece, enc, stream, int(version), realtime, results)


def hello_message(*, sample_rate: float, channels: int = 1, format: str = "int16", mode: str = "identify",
                  piece: str | None = None, encoding: str = "json", stream: str | None = None,
                  realtime: bool | None = None, results: str | None = None) -> dict:
    """Client side: the hello object (validated the way the server will)."""
    d = {"type": "hello", "version": PROTOCOL_VERSION, "sample_rate": sample_rate, "channels": channels, "format": format,
         "mode": mode, "encoding": encoding}
    if piece is not None:
        d["piece"] = piece
    if stream is not None:
        d["stream"] = stream
    if realtime is not None:
        d["realtime"] = realtime
    if results is not None and results != "coalesced":
        d["results"] = results
    parse_hello(d)
    return d


# ----------------------------------------------------------------------------- the state machine

AWAIT_HELLO = "await_hello"
STARTING = "starting"           # hello accepted, waiting for the adapter to create the stream
STREAMING = "streaming"
ENDING = "ending"               # bye (or shutdown) seen, the adapter is flushing
CLOSED = "closed"


@dataclass
class _Coalescer:
    interval: float
    last_sent: float = -math.inf
    pending: dict | None = None
    pending_events: list = field(default_factory=list)


class ServerProtocol:
    """The server side of one connection. Every method returns the actions to carry out, in order."""

    def __init__(self, *, limits: Limits = Limits(), now: float, server_info: dict | None = None) -> None:
        self.limits = limits
        self.state = AWAIT_HELLO
        self.hello: Hello | None = None
        self.encoding = "json"
        self.server_info = dict(server_info or {})
        self.connected_at = now
        self.last_message = now
        self.bytes_in = 0
        self.messages_in = 0
        self.results_sent = 0
        self.results_coalesced = 0
        self.error: tuple[str, str] | None = None   # the error sent, if any
        self._busy = False        # a message is being processed: the client is not idle
        self._co = _Coalescer(1.0 / limits.results_per_second)
        # token bucket for the byte rate: capacity 2 s worth
        self._tokens = float(limits.max_bytes_per_second or 0) * 2.0
        self._tokens_at = now

    # ---- helpers
    def encode(self, message: dict) -> str | bytes:
        return encode(message, self.encoding)

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    def fail(self, code: str, message: str) -> list[Action]:
        """Send an ``error`` and close (idempotent: nothing after the connection is closed)."""
        if self.state == CLOSED:
            return []
        self.state = CLOSED
        self.error = (code, message)
        return [Send({"type": "error", "code": code, "message": message}),
                Close(CLOSE_INTERNAL if code == INTERNAL else CLOSE_PROTOCOL, code)]

    def deadline(self) -> float | None:
        """The next time :meth:`on_tick` has something to do (timeouts, a coalesced result)."""
        ts = []
        if self.state == AWAIT_HELLO and self.limits.hello_timeout_s is not None:
            ts.append(self.connected_at + self.limits.hello_timeout_s)
        if self.state in (STARTING, STREAMING) and self.limits.idle_timeout_s is not None and not self._busy:
            ts.append(self.last_message + self.limits.idle_timeout_s)
        if self._co.pending is not None and self.state != CLOSED:
            ts.append(self._co.last_sent + self._co.interval)
        return min(ts) if ts else None

    def reading(self, now: float) -> None:
        """The adapter is ready to read again (it had stopped while it processed a message or waited
        for the batcher): idle time counts from here, so backpressure is never taken for silence."""
        self._busy = False
        self.last_message = max(self.last_message, now)

    # ---- input from the client
    def on_text(self, text: str, now: float) -> list[Action]:
        if self.state == CLOSED:
            return []
        self.last_message = now
        self._busy = True
        self.messages_in += 1
        if len(text) > self.limits.max_text_bytes:
            return self.fail(BAD_MESSAGE, f"text message of {len(text)} characters; control messages are at most "
                                          f"{self.limits.max_text_bytes} (PCM goes in binary frames)")
        try:
            d = json.loads(text)
        except (ValueError, RecursionError):
            return self.fail(BAD_JSON, "text frames must be JSON objects (PCM goes in binary frames); "
                                       f"got {text[:40]!r}{'…' if len(text) > 40 else ''}")
        if not isinstance(d, dict):
            return self.fail(BAD_JSON, f"text frames must be JSON objects with a 'type', got {type(d).__name__}")
        kind = d.get("type")
        if self.state == AWAIT_HELLO:
            if kind != "hello":
                return self.fail(NO_HELLO, f"the first message must be {{\"type\": \"hello\", …}}, got type {kind!r}")
            try:
                self.hello = parse_hello(d)
            except ProtocolError as exc:
                return self.fail(exc.code, exc.message)
            self.encoding = self.hello.encoding
            if self.hello.results == "all":
                self._co.interval = 0.0      # every result goes out (paced by the window rate and by backpressure)
            self.state = STARTING
            return [Start(self.hello)]
        if kind == "bye":
            if self.state in (STARTING, STREAMING):
                self.state = ENDING
                return [EndStream("bye")]
            return []
        if kind == "hello":
            return self.fail(BAD_MESSAGE, "a second hello on the same connection; one connection carries one stream")
        if kind == "ping":
            return [Send({"type": "pong", "t": d.get("t")})] if isinstance(d.get("t"), (int, float, str, type(None))) else []
        return self.fail(BAD_MESSAGE, f"unknown message type {kind!r}; clients send 'hello', binary PCM, 'ping' and 'bye'")

    def on_binary(self, data: bytes, now: float) -> list[Action]:
        if self.state == CLOSED:
            return []
        self.last_message = now
        self._busy = True
        self.messages_in += 1
        if self.state == AWAIT_HELLO:
            return self.fail(NO_HELLO, "binary PCM before the hello; send {\"type\": \"hello\", \"sample_rate\": …} first")
        if self.state == ENDING:
            return self.fail(BAD_MESSAGE, "PCM after 'bye'")
        assert self.hello is not None
        n = len(data)
        self.bytes_in += n
        fb = self.hello.frame_bytes
        if n % fb:
            return self.fail(BAD_AUDIO, f"PCM frame of {n} bytes is not a whole number of {self.hello.format} sample "
                                        f"frames ({fb} bytes for {self.hello.channels} channel(s))")
        actions: list[Action] = []
        if self.limits.max_bytes_per_second is not None:
            rate = float(self.limits.max_bytes_per_second)
            self._tokens = min(2.0 * rate, self._tokens + (now - self._tokens_at) * rate)
            self._tokens_at = now
            self._tokens -= n
            if self._tokens < 0:
                actions.append(Throttle(-self._tokens / rate))
        if n == 0:
            return actions
        pcm = np.frombuffer(data, dtype=self.hello.dtype).copy()
        if self.hello.format == "float32" and not np.isfinite(pcm).all():
            return self.fail(BAD_AUDIO, "float32 PCM contains NaN or infinite values")
        pcm = pcm.astype(pcm.dtype.newbyteorder("="), copy=False)
        actions.insert(0, Audio(pcm))
        return actions

    def on_tick(self, now: float) -> list[Action]:
        """Timeouts and due coalesced results."""
        if self.state == CLOSED:
            return []
        if self.state == AWAIT_HELLO and self.limits.hello_timeout_s is not None \
                and now >= self.connected_at + self.limits.hello_timeout_s:
            return self.fail(HELLO_TIMEOUT, f"no hello within {self.limits.hello_timeout_s:g} s of connecting")
        if self.state in (STARTING, STREAMING) and self.limits.idle_timeout_s is not None and not self._busy \
                and now >= self.last_message + self.limits.idle_timeout_s:
            return self.fail(IDLE_TIMEOUT, f"nothing received for {self.limits.idle_timeout_s:g} s; send PCM continuously "
                                           "and 'bye' at the end")
        if self._co.pending is not None and now >= self._co.last_sent + self._co.interval:
            return self._send_pending(now)
        return []

    # ---- input from the adapter / engine
    def started(self, *, stream: str, info: dict | None = None) -> list[Action]:
        """The adapter created the stream: send ``ready``."""
        if self.state != STARTING:
            return []
        self.state = STREAMING
        self.stream = stream
        assert self.hello is not None
        msg = {"type": "ready", "version": PROTOCOL_VERSION, "stream": stream, "mode": self.hello.mode,
               "piece": self.hello.piece, "encoding": self.encoding,
               "results_per_second": None if self.hello.results == "all" else self.limits.results_per_second,
               "results": self.hello.results,
               "max_message_bytes": self.limits.max_message_bytes, **self.server_info, **(info or {})}
        return [Send(msg)]

    def on_result(self, result: dict, now: float) -> list[Action]:
        """A result from the tracker (``Result.to_json()``): its events go out at once, the result
        itself at most ``results_per_second`` times a second (the latest one wins)."""
        if self.state not in (STREAMING, ENDING):
            return []
        actions: list[Action] = [Send({"type": "event", "stream": self.stream, "event": e}) for e in result.get("events") or []]
        co = self._co
        if co.pending is not None:
            self.results_coalesced += 1
            co.pending_events.extend(co.pending.get("events") or [])
        co.pending = result
        if now >= co.last_sent + co.interval:
            actions += self._send_pending(now)
        return actions

    def _send_pending(self, now: float) -> list[Action]:
        co = self._co
        if co.pending is None:
            return []
        r = co.pending
        if co.pending_events:
            r = {**r, "events": co.pending_events + list(r.get("events") or [])}
        co.pending, co.pending_events = None, []
        co.last_sent = now
        self.results_sent += 1
        return [Send({"type": "result", "stream": self.stream, "result": r})]

    def shutdown(self, reason: str = "server shutting down") -> list[Action]:
        """The server is going away: end the stream like a bye (final result, then close 1001)."""
        if self.state in (STARTING, STREAMING):
            self.state = ENDING
            self._end_code = CLOSE_GOING_AWAY
            self._end_reason = reason
            return [EndStream("shutdown")]
        if self.state == AWAIT_HELLO:
            self.state = CLOSED
            return [Close(CLOSE_GOING_AWAY, reason)]
        return []

    def on_end(self, last: dict | None, summary: dict, now: float) -> list[Action]:
        """The stream is flushed: the final result (always sent, marked ``"final": true``; ``last`` is
        the latest result already given to :meth:`on_result`, or None when the stream produced none),
        the ``bye`` summary and the close."""
        if self.state != ENDING:
            return []
        co = self._co
        if co.pending is None:
            co.pending = {**last, "events": []} if last is not None else None
        actions = self._send_pending(now)
        if actions:
            actions[-1].message["final"] = True
        code = getattr(self, "_end_code", CLOSE_NORMAL)
        reason = getattr(self, "_end_reason", "bye")
        actions.append(Send({"type": "bye", "stream": self.stream, "reason": reason, **summary}))
        actions.append(Close(code, reason[:120]))
        self.state = CLOSED
        return actions

    def on_connection_lost(self) -> None:
        self.state = CLOSED
