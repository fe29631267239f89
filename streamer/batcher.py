"""One engine-wide micro-batcher: the audio windows of all streams embedded together.

Streams submit windows from the event loop (:meth:`BatchStream.submit`, never
blocks) and get one :class:`asyncio.Future` per window, resolved with the
window's embedding (a ``(D,)`` float32 row) or with ``None`` when the window
was dropped.  Worker threads collect windows round-robin across streams into a
batch -- as soon as ``max_batch`` windows wait, or ``max_delay_s`` after the
oldest one arrived -- and run the embedder on it (onnxruntime releases the GIL,
so the event loop keeps running).  Results come back to the loop with
``call_soon_threadsafe``.

Load safety: each stream's queue holds at most ``max_queued`` windows.  A stream
that submits into a full queue either drops its oldest queued windows
(``on_full="drop"``: live streams, whose latency must stay bounded; the caller
tells its tracker ``skipped(n)``) or first awaits :meth:`BatchStream.wait_room`
(files streamed faster than real time: backpressure, nothing is lost).  Memory
is bounded either way: ``max_queued`` windows per stream plus
``workers * max_batch`` in flight.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .metrics import ServerMetrics


@dataclass(eq=False)
class _Item:
    spec: np.ndarray
    future: asyncio.Future
    t_submit: float
    stream: "BatchStream"


class BatchStream:
    """One stream's queue in the batcher. Create with :meth:`Batcher.stream`; use from the event loop only."""

    def __init__(self, batcher: "Batcher", max_queued: int, name: str) -> None:
        if max_queued < 1:
            raise ValueError(f"max_queued must be >= 1, got {max_queued}")
        self.batcher = batcher
        self.max_queued = int(max_queued)
        self.name = name
        self._q: deque[_Item] = deque()       # guarded by batcher._cv
        self._room = asyncio.Event()
        self.submitted = 0
        self.dropped = 0
        self.closed = False

    @property
    def queued(self) -> int:
        return len(self._q)

    @property
    def room(self) -> int:
        return self.max_queued - len(self._q)

    def submit(self, specs: Sequence[np.ndarray], *, on_full: str = "drop") -> list[asyncio.Future]:
        """Queue windows (each ``(bins, F)`` float32); one future per window, in order.

        When the queue is full, ``on_full="drop"`` resolves the oldest queued windows' futures with
        ``None`` (counted in :attr:`dropped`) to make room; ``on_full="error"`` raises ``OverflowError``
        (call :meth:`wait_room` first)."""
        if self.closed:
            raise RuntimeError(f"stream {self.name} is closed")
        if on_full not in ("drop", "error"):
            raise ValueError(f"on_full must be 'drop' or 'error', got {on_full!r}")
        b = self.batcher
        loop = b._loop
        if loop is None:
            raise RuntimeError("Batcher.start() was not called")
        now = time.monotonic()
        futs, dropped = [], []
        with b._cv:
            if on_full == "error" and len(specs) > self.max_queued - len(self._q):
                raise OverflowError(f"stream {self.name}: {len(specs)} windows do not fit into the batcher queue "
                                    f"({len(self._q)} of {self.max_queued} taken); await wait_room() first")
            for spec in specs:
                if len(self._q) >= self.max_queued:
                    dropped.append(self._q.popleft())
                fut = loop.create_future()
                self._q.append(_Item(spec, fut, now, self))
                futs.append(fut)
            b._queued += len(futs) - len(dropped)
            if futs:
                b._cv.notify()
        self.submitted += len(futs)
        dropped = [it for it in dropped if not it.future.done()]      # (a cancelled one was counted by its stream)
        for it in dropped:
            it.future.set_result(None)
        if dropped:
            self.dropped += len(dropped)
            if b.metrics is not None:
                b.metrics.dropped_windows_total.inc(len(dropped))
        if b.metrics is not None:
            b.metrics.queued_windows.set(b._queued)
        return futs

    async def wait_room(self, n: int = 1) -> None:
        """Wait until ``min(n, max_queued)`` windows fit into the queue."""
        n = min(max(1, n), self.max_queued)
        while not self.closed and self.room < n:
            self._room.clear()
            await self._room.wait()

    def close(self) -> None:
        """Forget this stream: its queued windows are resolved with ``None``; in-flight ones finish."""
        if self.closed:
            return
        self.closed = True
        b = self.batcher
        with b._cv:
            items = list(self._q)
            self._q.clear()
            b._queued -= len(items)
            b._streams.pop(id(self), None)
        for it in items:
            if not it.future.done():
                it.future.set_result(None)
        self._room.set()
        if b.metrics is not None:
            b.metrics.queued_windows.set(b._queued)


class Batcher:
    """Micro-batching embedding service shared by every stream of a server.

    ``embed`` maps a ``(B, bins, F)`` float32 array to ``(B, D)`` embeddings and must be thread-safe
    when ``workers > 1`` (an onnxruntime session is)."""

    def __init__(self, embed: Callable[[np.ndarray], np.ndarray], *, max_batch: int = 16, max_delay_s: float = 0.02,
                 workers: int = 1, metrics: ServerMetrics | None = None, logger: logging.Logger | None = None) -> None:
        if max_batch < 1 or workers < 1 or max_delay_s < 0:
            raise ValueError(f"need max_batch >= 1, workers >= 1, max_delay_s >= 0; got {max_batch}, {workers}, {max_delay_s}")
        self.embed = embed
        self.max_batch = int(max_batch)
        self.max_delay_s = float(max_delay_s)
        self.workers = int(workers)
        self.metrics = metrics
        self.log = logger or logging.getLogger(__name__)
        self._cv = threading.Condition()
        self._streams: dict[int, BatchStream] = {}
        self._queued = 0
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._names = itertools.count()
        self._rr = 0
        self.batches = 0
        self.windows = 0

    # ---- life cycle
    def start(self) -> "Batcher":
        """Start the worker threads; results are delivered to the running event loop."""
        if self._threads:
            return self
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        for i in range(self.workers):
            t = threading.Thread(target=self._work, name=f"scorestream-batcher-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    async def close(self) -> None:
        """Stop the workers after the batches in flight (idempotent). Queued windows resolve to ``None``."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        threads, self._threads = self._threads, []
        for t in threads:
            await asyncio.to_thread(t.join)
        for s in list(self._streams.values()):
            s.close()

    def stream(self, *, max_queued: int = 32, name: str | None = None) -> BatchStream:
        s = BatchStream(self, max_queued, name or f"s{next(self._names)}")
        with self._cv:
            self._streams[id(s)] = s
        return s

    @property
    def queued(self) -> int:
        return self._queued

    # ---- worker side
    def _take(self) -> tuple[list[_Item], set]:
        """Up to max_batch items, round-robin over the streams (caller holds the lock), and the
        streams that got room."""
        streams = [s for s in self._streams.values() if s._q]
        if not streams:
            return [], set()
        k = self._rr % len(streams)
        streams = streams[k:] + streams[:k]
        self._rr += 1
        out: list[_Item] = []
        touched: set = set()
        taken = 0
        while len(out) < self.max_batch:
            progressed = False
            for s in streams:
                if s._q and len(out) < self.max_batch:
                    it = s._q.popleft()
                    taken += 1
                    touched.add(s)
                    progressed = True
                    if not it.future.cancelled():     # cancelled by its stream (too late to matter): not embedded
                        out.append(it)
            if not progressed:
                break
        self._queued -= taken
        return out, touched

    def _oldest(self) -> float:
        return min((s._q[0].t_submit for s in self._streams.values() if s._q), default=time.monotonic())

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and self._queued == 0:
                    self._cv.wait()
                if self._stopping:
                    return
                # micro-batch: wait for company, at most max_delay_s after the oldest window arrived
                while not self._stopping and self._queued < self.max_batch:
                    left = self._oldest() + self.max_delay_s - time.monotonic()
                    if left <= 0 or self._queued == 0:
                        break
                    self._cv.wait(left)
                if self._stopping:
                    return
                items, touched = self._take()
            loop = self._loop
            assert loop is not None
            if touched:
                try:
                    loop.call_soon_threadsafe(self._rooms_freed, touched)
                except RuntimeError:       # loop closed: nobody waits any more
                    return
            if not items:
                continue
            t0 = time.monotonic()
            try:
                x = np.stack([it.spec for it in items]).astype(np.float32, copy=False)
                emb = np.asarray(self.embed(x), np.float32)
                if emb.shape[0] != len(items):
                    raise RuntimeError(f"embedder returned {emb.shape[0]} rows for {len(items)} windows")
                err = None
            except Exception as exc:   # noqa: BLE001 - delivered to the streams, logged there
                emb, err = None, exc
            t1 = time.monotonic()
            try:
                loop.call_soon_threadsafe(self._deliver, items, emb, err, t0, t1)
            except RuntimeError:       # loop closed: nobody waits any more
                return

    # ---- loop side
    def _rooms_freed(self, streams: set[BatchStream]) -> None:
        for s in streams:
            s._room.set()
        if self.metrics is not None:
            self.metrics.queued_windows.set(self._queued)

    def _deliver(self, items: list[_Item], emb: np.ndarray | None, err: BaseException | None, t0: float, t1: float) -> None:
        self.batches += 1
        self.windows += len(items)
        m = self.metrics
        if m is not None:
            m.batches_total.inc()
            m.batch_size.observe(len(items))
            m.batch_seconds.observe(t1 - t0)
            m.windows_total.inc(len(items))
            for it in items:
                m.queue_delay.observe(t0 - it.t_submit)
        if err is not None:
            self.log.error("embedding a batch of %d windows failed: %s", len(items), err, exc_info=err)
        for i, it in enumerate(items):
            if it.future.done():
                continue
            if err is not None:
                it.future.set_exception(RuntimeError(f"embedding failed: {err}"))
            else:
                it.future.set_result(emb[i])
