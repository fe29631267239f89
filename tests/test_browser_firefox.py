"""The browser client in headless Firefox (Debian's firefox-esr, driven over WebDriver BiDi by
tests/firefox_bidi.py; no download): a chosen file is played and streamed in sync, the page
shows the piece, the cursor moves and a page turns by itself (screenshots compared), the file
ends with a clean close; the microphone path (Firefox's fake device, a tone) streams and is not
shown as a piece. Real server, real engine, no mocks."""

from __future__ import annotations

import base64
import os
import time
from io import BytesIO

import numpy as np
import pytest

from conftest_server import performance, server, test_library  # noqa: F401
from firefox_bidi import FIREFOX, PULSEAUDIO, Firefox, PulseAudio

pytestmark = pytest.mark.skipif(not (os.path.exists(FIREFOX) and os.path.exists(PULSEAUDIO)),
                                reason="firefox-esr or pulseaudio is not installed (scripts/setup.sh)")


@pytest.fixture(scope="module")
def sound():
    """A sound server with a null sink: Firefox plays Web Audio only to an output device."""
    pa = PulseAudio()
    yield pa
    pa.close()

STATE = """({results: scorestream.results, pageTurns: scorestream.pageTurns, shown: scorestream.shown,
    cursor: document.body.dataset.cursor || '', state: document.body.dataset.state, error: scorestream.error,
    title: document.getElementById('title').textContent, message: document.getElementById('message').textContent,
    img: document.getElementById('page').complete && document.getElementById('page').naturalWidth,
    cursorHidden: getComputedStyle(document.getElementById('cursor')).display === 'none'
                  || document.getElementById('cursor').hidden})"""


def _wait(ff: Firefox, cond, timeout: float, what: str) -> dict:
    end = time.monotonic() + timeout
    st = ff.evaluate(STATE)
    while time.monotonic() < end:
        st = ff.evaluate(STATE)
        if st["error"]:
            raise AssertionError(f"server error: {st['error']}")
        if cond(st):
            return st
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; last state {st}")


def _gray(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(BytesIO(png)).convert("L"), np.float32)


def _differs(a: np.ndarray, b: np.ndarray) -> float:
    h, w = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    return float(np.mean(np.abs(a[:h, :w] - b[:h, :w]) > 30))


def _choose_file(ff: Firefox, data: bytes, name: str) -> None:
    """What a user's file dialog does: put a file into #file and fire 'change'."""
    ff.evaluate(f"""(() => {{
        const bytes = Uint8Array.from(atob("{base64.b64encode(data).decode()}"), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], "{name}", {{type: "audio/wav"}}));
        const input = document.getElementById("file");
        input.files = dt.files;
        input.dispatchEvent(new Event("change"));
        return input.files.length;
    }})()""")


def test_firefox_file_is_streamed_cursor_moves_and_pages_turn(server, performance, sound):
    wav = performance("mozart-k545-1")          # engraved one system per page: a page turn every few seconds
    with Firefox(env=sound.env) as ff:
        ff.goto(server.http + "/")
        _choose_file(ff, wav.read_bytes(), wav.name)
        ff.evaluate("document.getElementById('play').click()")
        st = _wait(ff, lambda s: s["state"] == "tracking" and s["cursor"] and s["img"], 180, "tracking with a cursor")
        assert st["shown"]["piece"] == "mozart-k545-1", st
        assert "K. 545" in st["title"]
        first_page, first_cursor = st["shown"]["page"], st["cursor"]
        shot1 = _gray(ff.screenshot())
        _wait(ff, lambda s: s["cursor"] and s["cursor"] != first_cursor, 120, "the cursor to move")
        st = _wait(ff, lambda s: s["shown"]["page"] != first_page and s["img"] and s["pageTurns"] >= 1, 180,
                   "a page turn")
        time.sleep(0.5)
        shot2 = _gray(ff.screenshot())
        assert _differs(shot1, shot2) > 0.005, "the page looks the same after the page turn"
        assert st["shown"]["piece"] == "mozart-k545-1"
        # the file ends by itself: the client says bye and the stream closes cleanly
        _wait(ff, lambda s: "stream ended" in s["message"], 240, "the end of the file")


def test_firefox_microphone_tone_is_not_a_piece(server, sound):
    with Firefox(env=sound.env) as ff:
        ff.goto(server.http + "/")
        ff.evaluate("document.getElementById('mic').click()")
        _wait(ff, lambda s: s["results"] >= 40, 180, "40 results")   # ~4 s of microphone audio reached the tracker
        st = ff.evaluate(STATE)
        assert st["state"] in ("unknown", "searching"), st
        assert "unknown" in st["title"] or "searching" in st["title"]
        assert st["cursorHidden"], st


def test_firefox_without_an_audio_device_says_so(server, performance):
    """No sound server: Firefox never starts Web Audio; the page says why instead of hanging."""
    wav = performance("mozart-k545-1")
    with Firefox(env={"PULSE_SERVER": "unix:/nonexistent/scorestream-no-sound"}) as ff:
        ff.goto(server.http + "/")
        _choose_file(ff, wav.read_bytes(), wav.name)
        ff.evaluate("document.getElementById('play').click()")
        st = _wait(ff, lambda s: "audio has not started" in s["message"], 60, "the no-audio message")
        assert st["state"] != "tracking", st
