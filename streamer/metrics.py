"""Server metrics in the Prometheus text exposition format (version 0.0.4), written by hand.

Counters, gauges and histograms with optional label values; thread-safe (the
batcher's worker threads and the event loop both update them). ``render()``
gives the ``/metrics`` body.
"""

from __future__ import annotations

import math
import threading
import time

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _fmt(v: float) -> str:
    if v != v:
        return "NaN"
    if v == math.inf:
        return "+Inf"
    if v == -math.inf:
        return "-Inf"
    if isinstance(v, int) or float(v).is_integer():
        return str(int(v))
    return repr(float(v))


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_esc(str(v))}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        super().__init__(name, help, labels)
        self._v: dict[tuple, float] = {} if labels else {(): 0.0}

    def inc(self, n: float = 1.0, *labels: str) -> None:
        if n < 0:
            raise ValueError("a counter only goes up")
        with self._lock:
            self._v[labels] = self._v.get(labels, 0.0) + n

    def value(self, *labels: str) -> float:
        return self._v.get(labels, 0.0)

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted(self._v.items())
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {_fmt(v)}" for k, v in items]


class Gauge(_Metric):
    kind = "gauge"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = (), fn=None) -> None:
        super().__init__(name, help, labels)
        self._v: dict[tuple, float] = {} if labels else {(): 0.0}
        self._fn = fn

    def set(self, v: float, *labels: str) -> None:
        with self._lock:
            self._v[labels] = float(v)

    def inc(self, n: float = 1.0, *labels: str) -> None:
        with self._lock:
            self._v[labels] = self._v.get(labels, 0.0) + n

    def dec(self, n: float = 1.0, *labels: str) -> None:
        self.inc(-n, *labels)

    def value(self, *labels: str) -> float:
        if self._fn is not None and not labels:
            return float(self._fn())
        return self._v.get(labels, 0.0)

    def lines(self) -> list[str]:
        if self._fn is not None:
            return self.header() + [f"{self.name} {_fmt(float(self._fn()))}"]
        with self._lock:
            items = sorted(self._v.items())
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {_fmt(v)}" for k, v in items]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: tuple[float, ...]) -> None:
        super().__init__(name, help)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._counts = [0] * len(self.buckets)
        self._sum = 0.0
        self._n = 0

    def observe(self, v: float) -> None:
        with self._lock:
            for i, b in enumerate(self.buckets):
                if v <= b:
                    self._counts[i] += 1
                    break
            self._sum += v
            self._n += 1

    @property
    def count(self) -> int:
        return self._n

    def quantile(self, q: float) -> float:
        """Upper bucket bound below which a fraction ``q`` of the observations fall (coarse)."""
        with self._lock:
            if not self._n:
                return math.nan
            want, acc = q * self._n, 0
            for b, c in zip(self.buckets, self._counts):
                acc += c
                if acc >= want:
                    return b
        return math.inf

    def lines(self) -> list[str]:
        with self._lock:
            counts, s, n = list(self._counts), self._sum, self._n
        out, acc = self.header(), 0
        for b, c in zip(self.buckets, counts):
            acc += c
            out.append(f'{self.name}_bucket{{le="{_fmt(b)}"}} {acc}')
        out += [f"{self.name}_sum {_fmt(s)}", f"{self.name}_count {n}"]
        return out


_LATENCY = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128)


class ServerMetrics:
    """Every metric the server exposes."""

    def __init__(self) -> None:
        self.started = time.time()
        self.streams = Gauge("scorestream_streams", "streams open now")
        self.connections = Gauge("scorestream_connections", "websocket connections open now")
        self.streams_total = Counter("scorestream_streams_total", "streams started")
        self.connections_total = Counter("scorestream_connections_total", "websocket connections accepted")
        self.errors_total = Counter("scorestream_errors_total", "error messages sent, by code", ("code",))
        self.http_requests_total = Counter("scorestream_http_requests_total", "plain HTTP requests, by route and status",
                                           ("route", "status"))
        self.audio_seconds_total = Counter("scorestream_audio_seconds_total", "seconds of audio received")
        self.bytes_total = Counter("scorestream_pcm_bytes_total", "PCM bytes received")
        self.windows_total = Counter("scorestream_windows_total", "audio windows embedded")
        self.dropped_windows_total = Counter("scorestream_dropped_windows_total",
                                             "audio windows skipped because the batcher fell behind")
        self.results_total = Counter("scorestream_results_total", "results computed by the trackers")
        self.results_sent_total = Counter("scorestream_results_sent_total", "result messages sent (after coalescing)")
        self.throttled_seconds_total = Counter("scorestream_throttled_seconds_total",
                                               "seconds connections were paused for exceeding their byte rate")
        self.batches_total = Counter("scorestream_batches_total", "embedding batches run")
        self.batch_size = Histogram("scorestream_batch_size", "windows per embedding batch", _BATCH)
        self.batch_seconds = Histogram("scorestream_batch_seconds", "seconds per embedding batch", _LATENCY)
        self.queue_delay = Histogram("scorestream_queue_delay_seconds",
                                     "seconds a window waited in the batcher before its batch started", _LATENCY)
        self.latency = Histogram("scorestream_result_latency_seconds",
                                 "seconds from the PCM message that completed a window to its result", _LATENCY)
        self.queued_windows = Gauge("scorestream_queued_windows", "windows waiting in the batcher now")
        self.mqtt_connected = Gauge("scorestream_mqtt_connected", "1 while the MQTT publisher is connected")
        self.mqtt_published_total = Counter("scorestream_mqtt_published_total", "MQTT messages published")
        self.mqtt_dropped_total = Counter("scorestream_mqtt_dropped_total",
                                          "MQTT messages dropped (queue full while the broker was unreachable)")
        self.mqtt_reconnects_total = Counter("scorestream_mqtt_reconnects_total", "MQTT connection attempts that failed")
        self._uptime = Gauge("scorestream_uptime_seconds", "seconds since the server started",
                             fn=lambda: time.time() - self.started)
        self._rss = Gauge("scorestream_resident_memory_bytes", "resident memory of the server process", fn=_rss_bytes)

    def all(self) -> list[_Metric]:
        return [v for v in vars(self).values() if isinstance(v, _Metric)]

    def render(self) -> str:
        lines: list[str] = []
        for m in self.all():
            lines += m.lines()
        return "\n".join(lines) + "\n"


def _rss_bytes() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return math.nan


def parse_exposition(text: str) -> dict[str, float]:
    """``{"name{labels}": value}`` from an exposition text (for tests and the benchmark)."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, v = line.rpartition(" ")
        out[key] = float(v.replace("+Inf", "inf"))
    return out
