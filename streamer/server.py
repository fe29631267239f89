"""The asyncio adapter: websockets + HTTP + MQTT around the sans-I/O protocol and the engine.

    engine = Engine(Library.open("lib/"))
    server = ScoreServer(engine, ServerConfig(port=8765), logger=log)
    await server.start()
    await server.wait_closed()         # until server.shutdown() (SIGTERM/SIGINT with run_server)

Per connection: a :class:`~scorestream.streamer.protocol.ServerProtocol` decides, this module
does the I/O. Per stream: a :class:`~scorestream.streamer.frontend.StreamFrontEnd` (PCM ->
windows), a queue in the engine-wide :class:`~scorestream.streamer.batcher.Batcher`, and the
engine's tracker (windows + embeddings -> results), updated in window order by one consumer
task. The event loop never runs the networks.

Load: a stream whose audio arrives faster than real time (a file) is slowed by backpressure
(its reader waits for room in the batcher, TCP does the rest) and loses nothing; a real-time
stream whose windows cannot be embedded in time drops its oldest queued windows
(``tracker.skipped(n)``, ``dropped_windows`` in its results, ``scorestream_dropped_windows_total``).
"""

from __future__ import annotations

import asyncio
import http
import itertools
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from scorestream import __version__
from scorestream.engine.results import Result

from . import protocol as P
from .batcher import Batcher, BatchStream
from .frontend import AudioWindow, StreamFrontEnd
from .http import Gate, Reply, Router
from .metrics import ServerMetrics
from .mqtt import MqttPublisher, parse_address


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Everything ``scorestream serve`` can set. Times in seconds; ``None`` disables a limit."""

    host: str = "127.0.0.1"                 # loopback unless told otherwise
    port: int = 8765                        # 0: any free port (see ScoreServer.port)
    token: str | None = None                # shared secret (Authorization: Bearer, or ?token=)
    origins: tuple[str, ...] = ()           # browser origins allowed besides the server's own; "*": any
    limits: P.Limits = field(default_factory=P.Limits)
    max_connections: int | None = 1024      # websocket + HTTP connections open at once
    handshake_timeout_s: float | None = 10.0  # TCP connect -> complete HTTP request/handshake
    max_batch: int = 8                      # windows per embedding batch (on CPU larger batches cost more per window)
    batch_delay_s: float = 0.02             # flush a partial batch this long after its oldest window
    workers: int = 2                        # embedding threads (onnxruntime sessions run concurrently)
    max_queued_windows: int = 16            # per stream: windows waiting for the batcher (drop beyond, live)
    realtime_slack_s: float = 2.0           # audio ahead of the wall clock by more than this: a file (backpressure)
    max_lag_s: float | None = 1.0           # live streams: a window this far behind the stream's own pace is skipped
    lag_creep: float = 0.002                # s/s the lag reference may creep (a source clock slower than ours)
    mqtt: str | None = None                 # "HOST:PORT" of a broker
    mqtt_prefix: str = "scorestream"
    mqtt_queue: int = 10_000                # messages held while the broker is unreachable (drop oldest)
    drain_timeout_s: float = 15.0           # shutdown: time the streams get to flush

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if self.max_batch < 1 or self.workers < 1 or self.max_queued_windows < 1:
            raise ValueError("max_batch, workers and max_queued_windows must be >= 1")
        if self.max_lag_s is not None and not self.max_lag_s > 0:
            raise ValueError(f"max_lag_s must be > 0 or None, got {self.max_lag_s!r}")
        if self.mqtt is not None:
            parse_address(self.mqtt)


_END = object()


def _libc_malloc_trim():
    try:
        import ctypes

        f = ctypes.CDLL("libc.so.6").malloc_trim
        f.argtypes = [ctypes.c_size_t]
        return f
    except (OSError, AttributeError):
        return None


_malloc_trim = _libc_malloc_trim()


class _Stream:
    """The engine side of one stream: front end, batcher queue, tracker, consumer task."""

    def __init__(self, name: str, hello: P.Hello, fe: StreamFrontEnd, tracker, bs: BatchStream, now: float) -> None:
        self.name, self.hello, self.fe, self.tracker, self.bs = name, hello, fe, tracker, bs
        self.t_start = now
        # windows between the front end and the tracker (each holds its spectrogram, ~31 kB): bounded,
        # so a stream whose results are not read stops being read itself
        self.order: asyncio.Queue = asyncio.Queue(maxsize=2 * bs.max_queued + 8)
        self.consumer: asyncio.Task | None = None
        self.windows = 0
        self.results = 0
        self.dropped = 0
        self.last: dict | None = None
        self.piece_key: tuple | None = None
        self.file = hello.realtime is False      # faster than real time: backpressure instead of dropping
        # live pace: min over windows of (wall time read - audio time), creeping up slowly; a window whose
        # (now - audio time) exceeds it by more than max_lag_s is late, wherever it waited (TCP buffers,
        # the reader, the batcher, the tracker queue)
        self.offset: float | None = None
        self.offset_at = now

    def note_pace(self, windows, now: float, creep: float) -> None:
        if not windows:
            return
        if self.offset is not None:
            self.offset += creep * max(0.0, now - self.offset_at)
        self.offset_at = now
        o = now - max(w.t for w in windows)
        if self.offset is None or o < self.offset:
            self.offset = o

    def lag(self, w, now: float) -> float:
        return 0.0 if self.offset is None else (now - w.t) - self.offset


class _Session:
    """One websocket connection."""

    def __init__(self, server: "ScoreServer", ws: ServerConnection) -> None:
        self.server = server
        self.ws = ws
        self.loop = asyncio.get_running_loop()
        self.log = server.log
        info = {"server": f"scorestream {__version__}", "model": server.model_name,
                "window_s": server.window_s, "hop_s": server.hop_s}
        self.proto = P.ServerProtocol(limits=server.config.limits, now=self.loop.time(), server_info=info)
        self.stream: _Stream | None = None
        self.stop = asyncio.Event()
        self.kick = asyncio.Event()
        self.closed = asyncio.Event()
        self.peer = "%s:%s" % tuple(ws.remote_address[:2]) if ws.remote_address else "?"

    # ---- main loop
    async def run(self) -> None:
        timer = asyncio.create_task(self._timer())
        recv: asyncio.Task | None = None
        stop_wait = asyncio.create_task(self.stop.wait())
        try:
            while not self.proto.closed:
                if recv is None:
                    recv = asyncio.create_task(self.ws.recv())
                done, _ = await asyncio.wait({recv, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                if recv in done:
                    try:
                        msg = recv.result()
                    except ConnectionClosed:
                        break
                    finally:
                        recv = None
                    now = self.loop.time()
                    if isinstance(msg, str):
                        actions = self.proto.on_text(msg, now)
                    else:
                        actions = self.proto.on_binary(msg, now)
                else:
                    actions = self.proto.shutdown()
                    stop_wait = asyncio.create_task(asyncio.Event().wait())   # fire once
                await self._do(actions)
                self.proto.reading(self.loop.time())
                self.kick.set()
        except ConnectionClosed:
            pass
        except Exception as exc:  # noqa: BLE001 - a bug: tell the client, keep the server
            self.log.exception("stream %s: internal error", self.stream.name if self.stream else self.peer)
            try:
                await self._do(self.proto.fail(P.INTERNAL, f"internal server error ({type(exc).__name__}); see the server log"))
            except Exception:  # noqa: BLE001
                pass
        finally:
            for t in (recv, stop_wait, timer):
                if t is not None:
                    t.cancel()
            self.proto.on_connection_lost()
            await self._cleanup()
            self.closed.set()

    async def _timer(self) -> None:
        """Timeouts and coalesced results: wakes at the protocol's deadline."""
        while not self.proto.closed:
            d = self.proto.deadline()
            self.kick.clear()
            try:
                if d is None:
                    await self.kick.wait()
                else:
                    async with asyncio.timeout(max(0.0, d - self.loop.time())):
                        await self.kick.wait()
                continue
            except TimeoutError:
                pass
            try:
                await self._do(self.proto.on_tick(self.loop.time()))
            except ConnectionClosed:
                return
            if self.proto.closed:
                self.stop.set()

    # ---- actions
    async def _do(self, actions: list[P.Action]) -> None:
        for a in actions:
            if isinstance(a, P.Send):
                await self._send(a.message)
            elif isinstance(a, P.Audio):
                await self._audio(a.pcm)
            elif isinstance(a, P.Start):
                await self._do(self._start(a.hello))
            elif isinstance(a, P.Throttle):
                self.server.metrics.throttled_seconds_total.inc(a.seconds)
                await asyncio.sleep(a.seconds)
            elif isinstance(a, P.EndStream):
                await self._end()
            elif isinstance(a, P.Close):
                if a.code not in (P.CLOSE_NORMAL, P.CLOSE_GOING_AWAY):
                    self.log.info("connection %s closed: %s", self.peer, self.proto.error[1] if self.proto.error else a.reason)
                await self.ws.close(a.code, a.reason)
                self.stop.set()

    async def _send(self, msg: dict) -> None:
        kind = msg.get("type")
        m = self.server.metrics
        if kind == "error":
            m.errors_total.inc(1, msg.get("code", "?"))
        s = self.stream
        if s is not None and kind in ("result", "event"):
            self.server.publish(s, msg)
            if kind == "result":
                m.results_sent_total.inc()
        await self.ws.send(self.proto.encode(msg))

    def _start(self, hello: P.Hello) -> list[P.Action]:
        srv = self.server
        lim = srv.config.limits
        if srv.shutting_down:
            return self.proto.fail(P.BUSY, "the server is shutting down; connect again later")
        if lim.max_streams is not None and len(srv.streams) >= lim.max_streams:
            return self.proto.fail(P.BUSY, f"the server runs its maximum of {lim.max_streams} streams; try again later")
        if hello.mode == "identify" and hello.piece is not None:
            return self.proto.fail(P.BAD_HELLO, "'piece' is only used with mode 'follow' (identify searches the whole library)")
        name = hello.stream or f"s{next(srv._stream_ids)}"
        if name in srv.streams:
            return self.proto.fail(P.BAD_HELLO, f"stream name {name!r} is in use by another connection; choose another")
        try:
            tracker = srv.engine.new_tracker(piece=hello.piece if hello.mode == "follow" else None)
        except (KeyError, LookupError, ValueError) as exc:
            msg = exc.args[0] if exc.args else str(exc)
            return self.proto.fail(P.UNKNOWN_PIECE, f"piece {hello.piece!r}: {msg}")
        fe = StreamFrontEnd(hello.sample_rate, hello.channels, audio_frames=srv.audio_frames, stride_frames=srv.stride_frames)
        bs = srv.batcher.stream(max_queued=srv.config.max_queued_windows, name=name)
        s = _Stream(name, hello, fe, tracker, bs, self.loop.time())
        srv.streams[name] = s
        self.stream = s
        srv.metrics.streams.set(len(srv.streams))
        srv.metrics.streams_total.inc()
        s.consumer = asyncio.create_task(self._consume(s), name=f"scorestream-{name}")
        self.log.info("stream %s started (%s, %g Hz x %d %s, from %s)", name, hello.mode + (f" {hello.piece}" if hello.piece else ""),
                      hello.sample_rate, hello.channels, hello.format, self.peer)
        return self.proto.started(stream=name)

    async def _audio(self, pcm: np.ndarray) -> None:
        s = self.stream
        if s is None:
            return
        arrival = self.loop.time()
        if pcm.nbytes > (256 << 10):       # a big chunk: its spectrogram would hold up the loop
            windows = await asyncio.to_thread(s.fe.process, pcm)
        else:
            windows = s.fe.process(pcm)
        m = self.server.metrics
        m.bytes_total.inc(pcm.nbytes)
        m.audio_seconds_total.inc(pcm.size / s.hello.channels / s.hello.sample_rate)
        if s.hello.realtime is None and not s.file and s.fe.t - (arrival - s.t_start) > self.server.config.realtime_slack_s:
            s.file = True        # ahead of the wall clock: not a live source; stays so for the rest of the stream
        s.note_pace(windows, arrival, self.server.config.lag_creep)
        await self._submit(s, windows, arrival, live=not s.file)

    def _late(self, s: _Stream, w: AudioWindow, now: float) -> bool:
        """A live stream's window more than max_lag_s behind the stream's pace: skip it (bounded latency)."""
        lim = self.server.config.max_lag_s
        return lim is not None and not s.file and s.lag(w, now) > lim

    async def _submit(self, s: _Stream, windows: list[AudioWindow], arrival: float | None, *, live: bool) -> None:
        if not windows:
            return
        if live:
            now = self.loop.time()
            late = [self._late(s, w, now) for w in windows]
            futs = iter(s.bs.submit([w.spec for w, x in zip(windows, late) if not x], on_full="drop"))
            pairs = [(w, None if x else next(futs)) for w, x in zip(windows, late)]
        else:
            pairs = []
            i = 0
            while i < len(windows):
                await s.bs.wait_room(len(windows) - i)
                if s.bs.closed:
                    return
                k = min(s.bs.room, len(windows) - i)
                futs = s.bs.submit([w.spec for w in windows[i:i + k]], on_full="error")
                pairs += zip(windows[i:i + k], futs)
                i += k
        for w, f in pairs:
            await s.order.put((w, f, arrival))

    async def _consume(self, s: _Stream) -> None:
        skipped = 0
        m = self.server.metrics
        while True:
            item = await s.order.get()
            if item is _END:
                break
            w, fut, arrival = item
            if fut is not None and arrival is not None and not fut.done() and self._late(s, w, self.loop.time()):
                fut.cancel()                 # the batcher skips it if not yet embedded
                fut = None
            if fut is None:                  # late: skipped before the batcher or before the tracker
                m.dropped_windows_total.inc()
                emb = None
            else:
                emb = await fut
            if emb is None:
                skipped += 1
                s.dropped += 1
                continue
            if skipped:
                s.tracker.skipped(skipped)
                skipped = 0
            res: Result = s.tracker.update(w, emb)
            s.windows += 1
            s.results += 1
            now = self.loop.time()
            m.results_total.inc()
            if arrival is not None:          # None: the end-of-stream flush (not a live latency)
                m.latency.observe(now - arrival)
            s.last = res.to_json()
            self._piece_state(s, s.last)
            await self._do(self.proto.on_result(s.last, now))
            self.kick.set()
        if skipped:
            s.tracker.skipped(skipped)

    def _piece_state(self, s: _Stream, r: dict) -> None:
        key = (r.get("state") == "tracking", r.get("piece"))
        if key != s.piece_key:
            s.piece_key = key
            self.server.publish_piece(s, {"state": r.get("state"), "piece": r.get("piece"), "title": r.get("title"),
                                          "t": r.get("t"), "confidence": r.get("confidence")})

    async def _end(self) -> None:
        """Flush the stream (front end tail, queued windows), then the final result, bye and close."""
        s = self.stream
        if s is None:
            await self._do(self.proto.on_end(None, {}, self.loop.time()))
            return
        windows = s.fe.flush()
        await self._submit(s, windows, None, live=False)
        await s.order.put(_END)
        if s.consumer is not None:
            await s.consumer
        last = s.last
        if last is None:
            last = Result(t=s.fe.t, state="unknown", dropped_windows=s.dropped).to_json()
        summary = {"windows": s.windows, "dropped_windows": s.dropped, "audio_seconds": round(s.fe.t, 3),
                   "results": self.proto.results_sent + 1}
        self.log.info("stream %s ended (%s): %.1f s of audio, %d windows, %d dropped", s.name, self.proto.__dict__.get(
            "_end_reason", "bye"), s.fe.t, s.windows, s.dropped)
        await self._do(self.proto.on_end(last, summary, self.loop.time()))

    async def _cleanup(self) -> None:
        s = self.stream
        if s is None:
            return
        self.stream = None
        s.bs.close()
        if s.consumer is not None and not s.consumer.done():
            s.consumer.cancel()
            try:
                await s.consumer
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        srv = self.server
        srv.streams.pop(s.name, None)
        srv.metrics.streams.set(len(srv.streams))
        srv.trim_memory()
        srv.publish_piece(s, {"state": "ended", "piece": s.last.get("piece") if s.last else None,
                              "title": s.last.get("title") if s.last else None, "t": round(s.fe.t, 3)}, final=True)


class ScoreServer:
    """The streaming service. ``engine``: a :class:`scorestream.engine.engine.Engine` (or anything with
    ``audio_frames``, ``stride_frames``, ``embedder``, ``new_tracker(piece=)``, ``page_image(piece, page)``)."""

    def __init__(self, engine: Any, config: ServerConfig = ServerConfig(), *, logger: logging.Logger | None = None,
                 embed=None) -> None:
        self.engine = engine
        self.config = config
        self.log = logger or logging.getLogger("scorestream.serve")
        self.metrics = ServerMetrics()
        self.audio_frames = int(engine.audio_frames)
        self.stride_frames = int(engine.stride_frames)
        self.window_s = self.audio_frames / 20.0
        self.hop_s = self.stride_frames / 20.0
        emb = getattr(engine, "embedder", None)
        self.model_name = getattr(emb, "name", None)
        self._embed = embed or emb.embed_audio
        self.batcher = Batcher(self._embed, max_batch=config.max_batch, max_delay_s=config.batch_delay_s,
                               workers=config.workers, metrics=self.metrics, logger=self.log)
        self.mqtt: MqttPublisher | None = None
        if config.mqtt:
            host, port = parse_address(config.mqtt)
            self.mqtt = MqttPublisher(host, port, prefix=config.mqtt_prefix, max_queue=config.mqtt_queue,
                                      metrics=self.metrics, logger=self.log)
        lib = getattr(engine, "library", None)
        self.router = Router(gate=Gate(token=config.token, origins=tuple(config.origins)),
                             metrics_text=self.metrics.render, health=self._health, pieces=self._pieces,
                             page_image=engine.page_image, library_root=getattr(lib, "path", None))
        self.streams: dict[str, _Stream] = {}
        self.sessions: set[_Session] = set()
        self._stream_ids = itertools.count(1)
        self._ws = None
        self._shutdown_task: asyncio.Task | None = None
        self._done = asyncio.Event()
        self.shutting_down = False
        self._trim_handle: asyncio.TimerHandle | None = None

    # ---- information
    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        if self._ws is None:
            return self.config.port
        return self._ws.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"ws://{self.config.host}:{self.port}/ws"

    def _pieces(self) -> list[dict]:
        lib = getattr(self.engine, "library", None)
        if lib is None:
            return []
        return [p.to_json() for p in lib.pieces()]

    def _health(self) -> dict:
        return {"status": "shutting_down" if self.shutting_down else "ok", "version": __version__,
                "streams": len(self.streams), "model": self.model_name,
                "mqtt": None if self.mqtt is None else ("connected" if self.mqtt.connected else "reconnecting")}

    def trim_memory(self) -> None:
        """Give freed heap back to the OS (glibc keeps it otherwise) a few seconds after streams end,
        so the resident size follows the open streams (onnxruntime's arena keeps what the largest
        batch needed: that is bounded by max_batch x workers)."""
        if _malloc_trim is None or self._trim_handle is not None:
            return
        loop = asyncio.get_running_loop()

        def trim() -> None:
            self._trim_handle = None
            loop.run_in_executor(None, _malloc_trim, 0)

        self._trim_handle = loop.call_later(5.0, trim)

    # ---- MQTT hooks
    def publish(self, s: _Stream, msg: dict) -> None:
        if self.mqtt is None:
            return
        if msg.get("type") == "result":
            self.mqtt.position(s.name, msg["result"])
        elif msg.get("type") == "event":
            self.mqtt.event(s.name, msg["event"])

    def publish_piece(self, s: _Stream, state: dict, *, final: bool = False) -> None:
        if self.mqtt is None:
            return
        self.mqtt.piece(s.name, state)
        if final:
            self.mqtt.forget(s.name)

    # ---- HTTP
    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        upgrade = "websocket" in (request.headers.get("Upgrade") or "").lower()
        lim = self.config.max_connections
        if lim is not None and self._ws is not None and len(self._ws.connections) >= lim:
            return self._response(Reply.text(503, f"too many connections (limit {lim}); try again later", route="refused"))
        if upgrade and self.shutting_down:
            return self._response(Reply.text(503, "the server is shutting down", route="ws"))
        reply = self.router.route("GET", request.path, request.headers, upgrade=upgrade)
        if reply is None:
            return None
        if reply.file is not None:
            try:
                reply.body = await asyncio.to_thread(reply.file.read_bytes)
            except OSError as exc:
                self.log.warning("cannot read %s: %s", reply.file, exc)
                reply = Reply.text(404, "not found", route=reply.route)
        self.metrics.http_requests_total.inc(1, reply.route, str(reply.status))
        return self._response(reply)

    @staticmethod
    def _response(reply: Reply) -> Response:
        headers = Headers(reply.all_headers())
        headers["Content-Length"] = str(len(reply.body))
        headers["Connection"] = "close"
        try:
            reason = http.HTTPStatus(reply.status).phrase
        except ValueError:
            reason = ""
        return Response(reply.status, reason, headers, reply.body)

    # ---- websocket
    async def _handler(self, ws: ServerConnection) -> None:
        self.metrics.connections_total.inc()
        self.metrics.connections.inc()
        sess = _Session(self, ws)
        self.sessions.add(sess)
        try:
            await sess.run()
        finally:
            self.sessions.discard(sess)
            self.metrics.connections.dec()

    # ---- life cycle
    def _warm_up(self) -> None:
        """Run every batch size once (onnxruntime allocates per input shape on first use) and the
        front end (numba compiles on first call), so the first streams do not pay for it."""
        spec_bins = int(getattr(getattr(self.engine, "embedder", None), "spec_bins", 92))
        for b in range(1, self.config.max_batch + 1):
            self._embed(np.zeros((b, spec_bins, self.audio_frames), np.float32))
        fe = StreamFrontEnd(44100, 1, audio_frames=self.audio_frames, stride_frames=self.stride_frames)
        fe.process(np.zeros(44100 * 3, np.int16))
        fe.flush()

    async def start(self) -> "ScoreServer":
        t0 = time.monotonic()
        await asyncio.to_thread(self._warm_up)
        self.log.debug("warmed up in %.1f s", time.monotonic() - t0)
        self.batcher.start()
        if self.mqtt is not None:
            self.mqtt.start()
        lim = self.config.limits
        ws_log = self.log.getChild("ws")
        if not ws_log.isEnabledFor(logging.DEBUG):
            ws_log.setLevel(logging.WARNING)       # "connection open/closed" for every client is noise
        # no permessage-deflate: PCM hardly compresses, and inflating every audio message (and deflating it in
        # every client) costs more CPU per stream than the rest of the websocket layer
        self._ws = await serve(self._handler, self.config.host, self.config.port, process_request=self._process_request,
                               compression=None,
                               max_size=lim.max_message_bytes, max_queue=4, open_timeout=self.config.handshake_timeout_s,
                               ping_interval=20, ping_timeout=20, close_timeout=5, logger=ws_log,
                               server_header=f"scorestream/{__version__}")
        self.log.info("scorestream serving on http://%s:%d (websocket %s)", self.config.host, self.port, self.url)
        return self

    async def wait_closed(self) -> None:
        await self._done.wait()

    def shutdown(self) -> asyncio.Task:
        """Graceful stop (idempotent): no new connections, every stream flushes and gets its final
        result and a close frame (1001), then the batcher and the MQTT publisher stop."""
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.get_running_loop().create_task(self._shutdown())
        return self._shutdown_task

    async def _shutdown(self) -> None:
        self.shutting_down = True
        if self._trim_handle is not None:
            self._trim_handle.cancel()
        self.log.info("shutting down: %d stream(s) finishing", len(self.streams))
        if self._ws is not None:
            self._ws.close(close_connections=False)
        sessions = list(self.sessions)
        for s in sessions:
            s.stop.set()
        if sessions:
            done, pending = await asyncio.wait([asyncio.create_task(s.closed.wait()) for s in sessions],
                                               timeout=self.config.drain_timeout_s)
            for t in pending:
                t.cancel()
            if pending:
                self.log.warning("%d stream(s) did not finish within %.0f s; closing them", len(pending),
                                 self.config.drain_timeout_s)
        if self._ws is not None:
            self._ws.close(close_connections=True)
            try:
                async with asyncio.timeout(10):
                    await self._ws.wait_closed()
            except TimeoutError:
                pass
        await self.batcher.close()
        if self.mqtt is not None:
            await self.mqtt.close()
        self.log.info("server stopped")
        self._done.set()


async def run_server(engine: Any, config: ServerConfig, *, logger: logging.Logger | None = None,
                     on_ready=None) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    server = ScoreServer(engine, config, logger=logger)
    await server.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, server.shutdown)
        except (NotImplementedError, RuntimeError):
            pass
    if on_ready is not None:
        on_ready(server)
    await server.wait_closed()
