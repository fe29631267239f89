"""Shared helpers of tests/test_server.py and tests/test_browser.py: a real mosquitto on a free
port, a real ``scorestream serve`` process on the test library, raw HTTP. No mocks.

Import the fixtures by name (``from conftest_server import server, test_library``)."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import music_fixtures as mf

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


class Mosquitto:
    """A private broker: own port, own config, no persistence."""

    def __init__(self) -> None:
        if not Path(MOSQUITTO).exists():
            pytest.skip("mosquitto is not installed (scripts/setup.sh installs it)")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="mosq-")
        self.conf = os.path.join(self.dir, "mosquitto.conf")
        with open(self.conf, "w") as f:
            f.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "Mosquitto":
        self.proc = subprocess.Popen([MOSQUITTO, "-c", self.conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class ServerProcess:
    """``scorestream serve`` as a child process."""

    def __init__(self, library: Path, *args: str, token: str | None = None) -> None:
        self.port = free_port()
        self.token = token
        cmd = [sys.executable, "-m", "scorestream.cli", "serve", "--library", str(library), "--port", str(self.port), *args]
        if token:
            cmd += ["--token", token]
        self.log = tempfile.NamedTemporaryFile(prefix="serve-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        end = time.monotonic() + 180
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"scorestream serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if self.get("/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"scorestream serve did not come up:\n{self.output()}")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def get(self, path: str, headers: dict | None = None, timeout: float = 30) -> tuple[int, dict, bytes]:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request("GET", path, headers=headers or {})
            r = c.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            c.close()

    def metrics(self) -> dict[str, float]:
        from scorestream.streamer.metrics import parse_exposition

        h = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        status, _, body = self.get("/metrics", h)
        assert status == 200, body
        return parse_exposition(body.decode())

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise
        return self.proc.returncode

    def stop(self) -> None:
        try:
            self.terminate()
        except Exception:  # noqa: BLE001
            pass
        self.log.close()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass


def _need_engine() -> None:
    try:
        import scorestream.engine.engine  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"the engine is not available ({exc})")


@pytest.fixture(scope="session")
def test_library() -> Path:
    why = mf.available()
    if why:
        pytest.skip(why)
    _need_engine()
    return mf.build_library(mf.TEST_SET)


@pytest.fixture(scope="session")
def performance(test_library):
    """``performance(piece_id, **kw)`` -> a cached WAV path of a synthesized performance."""
    def make(piece_id: str, **kw) -> Path:
        return mf.performance(piece_id, lib=test_library, **kw)
    return make


@pytest.fixture(scope="module")
def server(test_library):
    """One server for a test module, on the test library, with short timeouts for the abuse tests."""
    s = ServerProcess(test_library, "--hello-timeout", "3", "--idle-timeout", "5", "--handshake-timeout", "3",
                      "--max-message-bytes", str(1 << 20))
    yield s
    s.stop()


@pytest.fixture
def mosquitto():
    m = Mosquitto().start()
    yield m
    m.close()
