"""MQTT publisher: every stream's positions, piece and events for monitoring consumers.

Topics (``prefix`` is ``scorestream`` unless configured):

* ``<prefix>/<stream>/position`` -- QoS 0, every result message the stream's client gets
  (the ``Result.to_json()`` object);
* ``<prefix>/<stream>/piece``    -- QoS 1, **retained**: ``{"stream", "state", "piece", "title", "t"}``
  whenever the identified piece changes, and with ``"state": "ended"`` when the stream ends;
* ``<prefix>/<stream>/event``    -- QoS 1, each event (identified, lost, jump, page_turn).

The websockets never wait for MQTT: :meth:`MqttPublisher.publish` only appends to a
bounded queue (the oldest message is dropped and counted when it is full), and one task
sends it. When the broker is down or goes away mid-run the task reconnects with
exponential backoff (0.5 s doubling to 30 s); on reconnecting it re-publishes every
stream's latest retained piece first, so the broker's retained state is right again.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
from collections import deque
from dataclasses import dataclass

from .metrics import ServerMetrics


@dataclass
class _Msg:
    topic: str
    payload: bytes
    qos: int
    retain: bool


def parse_address(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``HOST``, port 1883; ``[::1]:1883`` for IPv6) -> (host, port)."""
    a = addr.strip()
    if a.startswith("mqtt://"):
        a = a[len("mqtt://"):]
    if a.startswith("["):
        host, _, rest = a[1:].partition("]")
        port = rest.lstrip(":") or "1883"
    elif a.count(":") == 1:
        host, port = a.split(":")
    else:
        host, port = a, "1883"
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"MQTT broker address must be HOST:PORT, got {addr!r}")
    return host, int(port)


class MqttPublisher:
    """Publishes stream results to one broker; never blocks its callers."""

    def __init__(self, host: str, port: int = 1883, *, prefix: str = "scorestream", max_queue: int = 10_000,
                 backoff_s: tuple[float, float] = (0.5, 30.0), keepalive_s: int = 10,
                 metrics: ServerMetrics | None = None, logger: logging.Logger | None = None) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.host, self.port, self.prefix = host, int(port), prefix.strip("/")
        self.max_queue = int(max_queue)
        self.backoff_s = backoff_s
        self.keepalive_s = int(keepalive_s)
        self.metrics = metrics
        self.log = logger or logging.getLogger(__name__)
        self._q: deque[_Msg] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._retained: dict[str, _Msg] = {}     # stream -> latest piece message
        self._closing = False
        self.connected = False
        self.published = 0
        self.dropped = 0
        self.failures = 0
        self._ids = itertools.count()

    # ---- producer side (event loop, never blocks)
    def _put(self, msg: _Msg) -> None:
        if self._closing:
            return
        if len(self._q) >= self.max_queue:
            self._q.popleft()
            self.dropped += 1
            if self.metrics is not None:
                self.metrics.mqtt_dropped_total.inc()
        self._q.append(msg)
        self._wake.set()

    @staticmethod
    def _json(obj) -> bytes:
        return json.dumps(obj, separators=(",", ":"), default=float).encode()

    def position(self, stream: str, result: dict) -> None:
        self._put(_Msg(f"{self.prefix}/{stream}/position", self._json(result), 0, False))

    def event(self, stream: str, event: dict) -> None:
        self._put(_Msg(f"{self.prefix}/{stream}/event", self._json(event), 1, False))

    def piece(self, stream: str, state: dict) -> None:
        msg = _Msg(f"{self.prefix}/{stream}/piece", self._json({"stream": stream, **state}), 1, True)
        self._retained[stream] = msg
        self._put(msg)

    def forget(self, stream: str) -> None:
        """The stream ended: its retained piece message stays on the broker but is not re-sent."""
        self._retained.pop(stream, None)

    # ---- life cycle
    def start(self) -> "MqttPublisher":
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="scorestream-mqtt")
        return self

    async def close(self, *, drain_s: float = 2.0) -> None:
        """Send what is queued (for at most ``drain_s`` while connected), then disconnect. Idempotent."""
        if self._task is None:
            return
        self._closing = True
        if self.connected and self._q:
            try:
                async with asyncio.timeout(drain_s):
                    while self._q and self.connected and not self._task.done():
                        await asyncio.sleep(0.02)
            except TimeoutError:
                pass
        task, self._task = self._task, None
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):  # noqa: BLE001
            pass

    async def _run(self) -> None:
        import aiomqtt

        delay = self.backoff_s[0]
        while True:
            try:
                ident = f"scorestream-{os.getpid()}-{next(self._ids)}"
                async with aiomqtt.Client(self.host, self.port, identifier=ident, keepalive=self.keepalive_s,
                                          timeout=10.0) as client:
                    self._set_connected(True)
                    self.log.info("mqtt: connected to %s:%d", self.host, self.port)
                    delay = self.backoff_s[0]
                    # the broker may have lost its retained messages (restart without persistence)
                    for m in list(self._retained.values()):
                        if m not in self._q:
                            self._q.appendleft(m)
                    await self._send_loop(client)
            except asyncio.CancelledError:
                self._set_connected(False)
                raise
            except Exception as exc:  # noqa: BLE001 - aiomqtt.MqttError, OSError, …: reconnect
                was = self.connected
                self._set_connected(False)
                self.failures += 1
                if self.metrics is not None:
                    self.metrics.mqtt_reconnects_total.inc()
                (self.log.warning if was or self.failures == 1 else self.log.debug)(
                    "mqtt: broker %s:%d unreachable (%s); retrying in %.1f s", self.host, self.port, exc, delay)
            await asyncio.sleep(delay)
            delay = min(self.backoff_s[1], delay * 2)

    async def _send_loop(self, client) -> None:
        # aiomqtt resolves this future when the connection drops; a publish waiting for its
        # confirmation does not notice by itself, so every wait races against it
        lost = getattr(client, "_disconnected", None)
        if not isinstance(lost, asyncio.Future):
            lost = asyncio.get_running_loop().create_future()     # fall back on the publish timeout

        async def race(aw, timeout: float | None) -> None:
            task = asyncio.ensure_future(aw)
            try:
                done, _ = await asyncio.wait({task, lost}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                task.cancel()
                raise
            if task in done:
                task.result()
                return
            task.cancel()
            if lost.done():
                exc = lost.exception() if not lost.cancelled() else None
                raise ConnectionError(f"connection lost ({exc or 'disconnected'})")
            raise TimeoutError(f"no confirmation within {timeout} s")

        while True:
            if not self._q:
                self._wake.clear()
                await race(self._wake.wait(), None)
                continue
            m = self._q[0]
            await race(client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain, timeout=10.0), 10.0)
            # sent: only now leave the queue (a failed publish is retried after reconnecting)
            if self._q and self._q[0] is m:
                self._q.popleft()
            self.published += 1
            if self.metrics is not None:
                self.metrics.mqtt_published_total.inc()

    def _set_connected(self, v: bool) -> None:
        self.connected = v
        if self.metrics is not None:
            self.metrics.mqtt_connected.set(1.0 if v else 0.0)
