"""Python client of the scorestream server (docs/protocol.md).

    async with Client("ws://127.0.0.1:8765/ws", sample_rate=44100, channels=2, format="float32") as c:
        await c.send(pcm)                  # any size, interleaved
        ...
        summary = await c.finish()         # bye -> final result, summary

    summary = await stream_file("take.flac", "ws://127.0.0.1:8765/ws", realtime=False,
                                on_message=print)

Every server message goes to ``on_message(msg)`` as it arrives (``ready``, ``result``, ``event``,
``error``, ``bye``). A server ``error`` raises :class:`ServerError` from :meth:`Client.finish`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scorestream.streamer.protocol import decode_server_message, hello_message


class ServerError(Exception):
    """The server refused the stream or ended it with an ``error`` message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"server error {code}: {message}")
        self.code = code
        self.message = message


class StreamEnded(Exception):
    """The server ended the stream (``bye`` received, e.g. it is shutting down) while we were sending."""


@dataclass
class Summary:
    """What a stream produced."""

    ready: dict | None = None
    results: list[dict] = field(default_factory=list)       # the result objects (Result.to_json())
    events: list[dict] = field(default_factory=list)
    bye: dict | None = None
    error: dict | None = None
    close_code: int | None = None
    close_reason: str = ""
    sent_seconds: float = 0.0
    send_times: list[tuple[float, float]] = field(default_factory=list)   # (audio seconds sent so far, wall time)
    recv_times: list[float] = field(default_factory=list)                # wall time of each result message

    @property
    def final(self) -> dict | None:
        return self.results[-1] if self.results else None


class Client:
    """One stream over one websocket connection."""

    def __init__(self, url: str, *, sample_rate: float, channels: int = 1, format: str = "float32",
                 mode: str = "identify", piece: str | None = None, encoding: str = "json", stream: str | None = None,
                 live: bool | None = None, results: str | None = None, token: str | None = None,
                 on_message: Callable[[dict], None] | None = None,
                 open_timeout: float = 30.0, max_size: int | None = 16 << 20) -> None:
        self.url = url
        self.hello = hello_message(sample_rate=sample_rate, channels=channels, format=format, mode=mode, piece=piece,
                                   encoding=encoding, stream=stream, realtime=live, results=results)
        self.dtype = np.dtype("<f4") if format == "float32" else np.dtype("<i2")
        self.channels = channels
        self.sample_rate = float(sample_rate)
        self.token = token
        self.on_message = on_message
        self.open_timeout = open_timeout
        self.max_size = max_size
        self.summary = Summary()
        self._ws = None
        self._reader: asyncio.Task | None = None
        self._ready = asyncio.Event()
        self._frames_sent = 0

    async def __aenter__(self) -> "Client":
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def connect(self) -> dict:
        """Open the connection, send the hello and wait for ``ready`` (raises :class:`ServerError`)."""
        import json

        from websockets.asyncio.client import connect

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        self._ws = await connect(self.url, additional_headers=headers, open_timeout=self.open_timeout,
                                 max_size=self.max_size, ping_interval=20, ping_timeout=60, close_timeout=10)
        await self._ws.send(json.dumps(self.hello))
        self._reader = asyncio.create_task(self._read())
        waiter = asyncio.create_task(self._ready.wait())
        await asyncio.wait({waiter, self._reader}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        self._raise_if_error()
        if self.summary.ready is None:
            raise ServerError("closed", f"the server closed the connection before 'ready' "
                                        f"({self.summary.close_code} {self.summary.close_reason})")
        return self.summary.ready

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        ws = self._ws
        try:
            async for payload in ws:
                msg = decode_server_message(payload)
                kind = msg.get("type")
                s = self.summary
                if kind == "ready":
                    s.ready = msg
                    self._ready.set()
                elif kind == "result":
                    s.results.append(msg["result"])
                    s.recv_times.append(time.monotonic())
                elif kind == "event":
                    s.events.append(msg["event"])
                elif kind == "error":
                    s.error = msg
                elif kind == "bye":
                    s.bye = msg
                if self.on_message is not None:
                    self.on_message(msg)
        except ConnectionClosed:
            pass
        finally:
            self.summary.close_code = ws.close_code
            self.summary.close_reason = ws.close_reason or ""
            self._ready.set()

    def _raise_if_error(self) -> None:
        e = self.summary.error
        if e is not None:
            raise ServerError(e.get("code", "?"), e.get("message", ""))

    async def send(self, pcm: np.ndarray) -> None:
        """Send interleaved PCM (1-D, or 2-D ``(n, channels)``) in the declared format."""
        x = np.asarray(pcm)
        if self.dtype.kind == "i" and x.dtype.kind == "f":
            x = np.clip(np.rint(x * 32768.0), -32768, 32767)
        from websockets.exceptions import ConnectionClosed

        x = np.ascontiguousarray(x, dtype=self.dtype)
        self._raise_if_error()
        if self.summary.bye is not None:
            raise StreamEnded(self.summary.bye.get("reason", "bye"))
        if self._reader is not None and self._reader.done():
            raise ServerError("closed", f"connection closed by the server ({self.summary.close_code} {self.summary.close_reason})")
        try:
            await self._ws.send(x.tobytes())
        except ConnectionClosed:
            if self._reader is not None:
                await self._reader
            self._raise_if_error()
            if self.summary.bye is not None:
                raise StreamEnded(self.summary.bye.get("reason", "bye")) from None
            raise ServerError("closed", f"connection closed by the server ({self.summary.close_code} "
                                        f"{self.summary.close_reason})") from None
        self._frames_sent += x.size // self.channels
        self.summary.sent_seconds = self._frames_sent / self.sample_rate
        self.summary.send_times.append((self.summary.sent_seconds, time.monotonic()))

    async def finish(self, timeout: float = 600.0) -> Summary:
        """Send ``bye`` and wait for the final result, the summary and the close."""
        import json

        from websockets.exceptions import ConnectionClosed

        try:
            await self._ws.send(json.dumps({"type": "bye"}))
        except ConnectionClosed:
            pass
        if self._reader is not None:
            async with asyncio.timeout(timeout):
                await self._reader
        self._raise_if_error()
        return self.summary

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            try:
                await self._reader
            except Exception:  # noqa: BLE001
                pass


# ----------------------------------------------------------------------------- audio sources

def file_info(path: str | Path) -> tuple[int, int, float]:
    """(sample rate, channels, seconds) of an audio file."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as exc:  # noqa: BLE001 - soundfile raises its own RuntimeError types
        raise ValueError(f"cannot read {path} as audio: {exc}") from None
    return int(info.samplerate), int(info.channels), float(info.duration)


def file_chunks(path: str | Path, chunk_s: float = 0.1) -> Iterator[np.ndarray]:
    """Interleaved float32 chunks of ``chunk_s`` seconds of an audio file (any format soundfile reads)."""
    import soundfile as sf

    sr, ch, _ = file_info(path)
    n = max(1, int(round(sr * chunk_s)))
    with sf.SoundFile(str(path)) as f:
        while True:
            block = f.read(n, dtype="float32", always_2d=True)
            if not len(block):
                return
            yield block.reshape(-1)


def array_chunks(audio: np.ndarray, sample_rate: float, chunk_s: float = 0.1) -> Iterator[np.ndarray]:
    """Chunks of a mono or ``(n, channels)`` array, interleaved."""
    x = np.asarray(audio, np.float32)
    n = max(1, int(round(sample_rate * chunk_s)))
    for i in range(0, len(x), n):
        yield x[i:i + n].reshape(-1)


class Microphone:
    """The default input device through pyaudio (optional extra ``mic``), as an async chunk source."""

    def __init__(self, sample_rate: int = 44100, channels: int = 1, chunk_s: float = 0.1) -> None:
        try:
            import pyaudio  # noqa: F401
        except ImportError:
            raise RuntimeError("microphone input needs pyaudio: pip install 'scorestream[mic]' "
                               "(on Debian first: apt-get install portaudio19-dev)") from None
        self.sample_rate, self.channels, self.chunk_s = sample_rate, channels, chunk_s

    async def chunks(self) -> AsyncIterator[np.ndarray]:
        import pyaudio

        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue(maxsize=100)

        def cb(data, frames, info, status):
            x = np.frombuffer(data, np.float32).copy()
            loop.call_soon_threadsafe(lambda: q.full() or q.put_nowait(x))
            return (None, pyaudio.paContinue)

        pa = pyaudio.PyAudio()
        try:
            st = pa.open(format=pyaudio.paFloat32, channels=self.channels, rate=self.sample_rate, input=True,
                         frames_per_buffer=int(self.sample_rate * self.chunk_s), stream_callback=cb)
        except OSError as exc:
            pa.terminate()
            raise RuntimeError(f"cannot open the microphone: {exc}") from None
        try:
            while True:
                yield await q.get()
        finally:
            st.stop_stream()
            st.close()
            pa.terminate()


async def _aiter(chunks) -> AsyncIterator[np.ndarray]:
    if hasattr(chunks, "__aiter__"):
        async for c in chunks:
            yield c
    else:
        for c in chunks:
            yield c


async def stream_chunks(url: str, chunks: Iterable[np.ndarray] | AsyncIterator[np.ndarray], *, sample_rate: float,
                        channels: int = 1, realtime: bool = False, speed: float | None = None, format: str = "float32",
                        **kw) -> Summary:
    """Stream chunks (interleaved PCM) as one stream; with ``realtime`` paced by the wall clock
    (``speed``: that many seconds of audio per second; ``realtime`` is speed 1). ``live=True``
    for a source that is live by itself (a microphone)."""
    if realtime and speed is None:
        speed = 1.0
    if speed is not None and not speed > 0:
        raise ValueError(f"speed must be > 0, got {speed}")
    # tell the server what kind of source this is: paced at real time (or slower) is live, the rest a file
    kw.setdefault("live", bool(speed is not None and speed <= 1.0))
    client = Client(url, sample_rate=sample_rate, channels=channels, format=format, **kw)
    await client.connect()
    try:
        t0 = time.monotonic()
        try:
            async for c in _aiter(chunks):
                await client.send(c)
                if speed is not None:
                    wait = t0 + client.summary.sent_seconds / speed - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                        continue
                await asyncio.sleep(0)     # a send into a free socket buffer never yields: let other streams run
        except StreamEnded:
            pass                  # the server ended the stream (shutdown): its final result is in the summary
        return await client.finish()
    except BaseException:
        await client.close()
        raise


async def stream_file(path: str | Path, url: str, *, realtime: bool = False, speed: float | None = None,
                      chunk_s: float = 0.1, **kw) -> Summary:
    """Stream an audio file (as fast as the server takes it, in real time, or at ``speed`` x real time)."""
    sr, ch, _ = file_info(path)
    return await stream_chunks(url, file_chunks(path, chunk_s), sample_rate=sr, channels=ch, realtime=realtime,
                               speed=speed, **kw)


# ----------------------------------------------------------------------------- the terminal line

def status_line(r: dict, width: int = 100, bar: int = 20) -> str:
    """One line: state, piece, page/system, confidence, a progress bar through the piece."""
    state = r.get("state", "?")
    t = r.get("t") or 0.0
    if state != "tracking" or not r.get("piece"):
        s = f"{t:7.1f}s  {state:<9}"
        if state == "searching" and r.get("candidates"):
            c = r["candidates"][0]
            s += f"  best guess {c.get('piece')} ({float(c.get('score') or 0):.2f})"
        return s[:width]
    prog = r.get("progress")
    filled = int(round((prog or 0.0) * bar))
    pbar = "[" + "#" * filled + "-" * (bar - filled) + "]" + (f" {100 * prog:3.0f}%" if prog is not None else "")
    name = r.get("title") or r.get("piece")
    s = (f"{t:7.1f}s  {name[:32]:<32}  page {r.get('page') or '?':>2} system {r.get('system') or '?':>2}  "
         f"conf {float(r.get('confidence') or 0):.2f}  {pbar}")
    if r.get("dropped_windows"):
        s += f"  dropped {r['dropped_windows']}"
    return s[:width]


def _where(page, system) -> str:
    if page is None:
        return ""
    return f"page {page}" + (f", system {system}" if system is not None else "")


def event_line(e: dict) -> str:
    """One line for an event (docs/results.md: identified, lost, jump, page_turn)."""
    kind = e.get("kind")
    t = e.get("t") or 0.0
    where = _where(e.get("page"), e.get("system"))
    if kind == "identified":
        return f"{t:7.1f}s  identified {e.get('piece')}" + (f" ({where})" if where else "")
    if kind == "lost":
        return f"{t:7.1f}s  lost {e.get('piece') or ''}".rstrip()
    if kind == "jump":
        d = e.get("data") or {}
        frm = _where(d.get("from_page"), d.get("from_system"))
        s = f"{t:7.1f}s  jump" + (f" from {frm}" if frm else "") + (f" to {where}" if where else "")
        if d.get("from_progress") is not None and d.get("to_progress") is not None:
            s += f" ({100 * float(d['from_progress']):.0f}% -> {100 * float(d['to_progress']):.0f}% of the piece)"
        return s
    if kind == "page_turn":
        return f"{t:7.1f}s  page turn -> page {e.get('page')}"
    return f"{t:7.1f}s  {kind}"
