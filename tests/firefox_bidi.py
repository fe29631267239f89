"""Drive Debian's Firefox ESR headless over WebDriver BiDi (built into Firefox; no geckodriver, no
playwright download): a fresh profile, ``--remote-debugging-port 0``, one websocket to
``ws://127.0.0.1:PORT/session``.  Only what the browser tests need: navigate, evaluate a script
(its value comes back through ``JSON.stringify``), a screenshot of the viewport.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

FIREFOX = shutil.which("firefox-esr") or shutil.which("firefox") or "/usr/bin/firefox-esr"
PULSEAUDIO = shutil.which("pulseaudio") or "/usr/bin/pulseaudio"

# Fake microphone (a tone), no permission prompt, autoplay allowed, nothing phoning home.
PREFS = {
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    "media.autoplay.default": 0,
    "media.autoplay.blocking_policy": 0,
    "media.autoplay.block-webaudio": False,
    "browser.shell.checkDefaultBrowser": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "app.update.disabledForTesting": True,
    "browser.startup.homepage_override.mstone": "ignore",
    "network.proxy.type": 0,
}


class BiDiError(RuntimeError):
    pass


def _stop(proc: subprocess.Popen | None) -> None:
    """Terminate a child process (kill it if it does not exit within 10 s)."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class PulseAudio:
    """A private PulseAudio daemon with a null sink (a sound card that plays to nowhere), on its own
    socket.  Firefox's Web Audio runs only when it can open an output device: without one an
    AudioContext stays ``suspended`` and ``resume()`` never settles, so the browser tests give it
    this one (``env`` for the browser).  ``close()`` is idempotent."""

    def __init__(self, timeout: float = 20.0):
        self.dir = Path(tempfile.mkdtemp(prefix="scorestream-pulse-"))
        self.socket = self.dir / "native"
        (self.dir / "default.pa").write_text(
            f"load-module module-native-protocol-unix socket={self.socket} auth-anonymous=1\n"
            "load-module module-null-sink sink_name=scorestream_null\n"
            "set-default-sink scorestream_null\n")
        env = dict(os.environ, HOME=str(self.dir), XDG_RUNTIME_DIR=str(self.dir), XDG_CONFIG_HOME=str(self.dir))
        self.log = open(self.dir / "pulse.log", "w")
        self.proc = subprocess.Popen([PULSEAUDIO, "-n", "--daemonize=no", "--exit-idle-time=-1", "--use-pid-file=no",
                                      "--disallow-exit", "--log-target=stderr", "-F", str(self.dir / "default.pa")],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        end = time.monotonic() + timeout
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > end:
                out = (self.dir / "pulse.log").read_text()[-1500:]
                self.close()
                raise RuntimeError(f"pulseaudio did not start: {out}")
            time.sleep(0.1)

    @property
    def env(self) -> dict[str, str]:
        return {"PULSE_SERVER": f"unix:{self.socket}"}

    def close(self) -> None:
        _stop(self.proc)
        if not self.log.closed:
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Firefox:
    """One headless Firefox with one tab.  ``close()`` is idempotent."""

    def __init__(self, *, width: int = 1100, height: int = 900, start_timeout: float = 60.0,
                 env: dict[str, str] | None = None):
        from websockets.sync.client import connect

        self.profile = Path(tempfile.mkdtemp(prefix="scorestream-ff-"))
        (self.profile / "user.js").write_text("".join(f'user_pref("{k}", {json.dumps(v)});\n' for k, v in PREFS.items()))
        env = dict(os.environ, MOZ_HEADLESS_WIDTH=str(width), MOZ_HEADLESS_HEIGHT=str(height), **(env or {}))
        self.log = open(self.profile / "firefox.log", "w+")
        self.proc = subprocess.Popen([FIREFOX, "--headless", "--no-remote", "--profile", str(self.profile),
                                      "--remote-debugging-port", "0", "about:blank"],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self._id = 0
        self.ws = None
        try:
            url = self._wait_for_url(start_timeout)
            self._conn = connect(url + "/session", max_size=64 << 20, open_timeout=start_timeout)
            self.ws = self._conn.__enter__()
            self.cmd("session.new", capabilities={})
            tree = self.cmd("browsingContext.getTree")
            self.context = tree["contexts"][0]["context"]
            self.cmd("browsingContext.setViewport", context=self.context, viewport={"width": width, "height": height})
        except Exception:
            self.close()
            raise

    def _wait_for_url(self, timeout: float) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.log.flush()
            m = re.search(r"WebDriver BiDi listening on (ws://\S+)", (self.profile / "firefox.log").read_text())
            if m:
                return m.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise BiDiError(f"firefox did not start its WebDriver BiDi server: {(self.profile / 'firefox.log').read_text()[-2000:]}")

    def cmd(self, method: str, timeout: float = 60.0, **params):
        self._id += 1
        my = self._id
        self.ws.send(json.dumps({"id": my, "method": method, "params": params}))
        end = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, end - time.monotonic())))
            if msg.get("id") != my:
                continue                                   # an event, or an answer to nobody
            if msg.get("type") == "error":
                raise BiDiError(f"{method}: {msg.get('error')}: {msg.get('message')}")
            return msg["result"]

    def goto(self, url: str) -> None:
        self.cmd("browsingContext.navigate", context=self.context, url=url, wait="complete")

    def evaluate(self, expression: str):
        """Evaluate a JS expression (awaited if a promise); returns its JSON value."""
        r = self.cmd("script.evaluate", expression=f"(async () => JSON.stringify(await ({expression})))()",
                     target={"context": self.context}, awaitPromise=True, resultOwnership="none")
        if r.get("type") == "exception":
            d = r.get("exceptionDetails", {})
            raise BiDiError(f"script error: {d.get('text')}")
        v = r["result"]
        return None if v.get("type") == "undefined" else json.loads(v["value"])

    def screenshot(self) -> bytes:
        r = self.cmd("browsingContext.captureScreenshot", context=self.context)
        return base64.b64decode(r["data"])

    def close(self) -> None:
        if self.ws is not None:
            try:
                self.cmd("session.end", timeout=5)
            except Exception:
                pass
            try:
                self._conn.__exit__(None, None, None)
            except Exception:
                pass
            self.ws = None
        _stop(self.proc)
        if self.log and not self.log.closed:
            self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
