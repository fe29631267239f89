"""The browser client in headless Chromium (Debian's /usr/bin/chromium driven by playwright; never
``playwright install``): the fake microphone plays a synthesized performance, the page shows the
piece, the cursor moves and pages turn by themselves (screenshots compared); a played file is
streamed in sync; speech is shown as not a piece. Real server, real engine, no mocks."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from conftest_server import performance, server, test_library  # noqa: F401

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium is not installed (scripts/setup.sh)")


def _browser(p, fake_audio: Path | None = None):
    args = list(FLAGS)
    if fake_audio is not None:
        args += ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-audio-capture={fake_audio}", "--autoplay-policy=no-user-gesture-required"]
    return p.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)


def _state(page) -> dict:
    return page.evaluate("""() => ({results: scorestream.results, pageTurns: scorestream.pageTurns,
        shown: scorestream.shown, cursor: document.body.dataset.cursor || '', state: document.body.dataset.state,
        error: scorestream.error, last: scorestream.last, title: document.getElementById('title').textContent,
        img: document.getElementById('page').complete && document.getElementById('page').naturalWidth})""")


def _wait(page, cond, timeout: float, what: str) -> dict:
    end = time.monotonic() + timeout
    st = _state(page)
    while time.monotonic() < end:
        st = _state(page)
        if st["error"]:
            raise AssertionError(f"server error: {st['error']}")
        if cond(st):
            return st
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; last state {st}")


def _sheet_png(page) -> np.ndarray:
    from io import BytesIO

    from PIL import Image

    return np.asarray(Image.open(BytesIO(page.locator("#sheet").screenshot())).convert("L"), np.float32)


def _differs(a: np.ndarray, b: np.ndarray) -> float:
    h, w = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    return float(np.mean(np.abs(a[:h, :w] - b[:h, :w]) > 30))


def test_microphone_cursor_moves_and_pages_turn(server, performance, tmp_path):
    from playwright.sync_api import sync_playwright

    wav = performance("mozart-k545-1")          # engraved one system per page: a page turn every few seconds
    with sync_playwright() as p:
        b = _browser(p, wav)
        try:
            page = b.new_page(viewport={"width": 1100, "height": 900})
            page.goto(server.http + "/")
            page.click("#mic")
            st = _wait(page, lambda s: s["state"] == "tracking" and s["cursor"] and s["img"], 180, "tracking with a cursor")
            assert st["shown"]["piece"] == "mozart-k545-1", st
            first_page, first_cursor = st["shown"]["page"], st["cursor"]
            shot1 = _sheet_png(page)
            page.screenshot(path=str(tmp_path / "tracking.png"))
            # the cursor moves along the system
            st = _wait(page, lambda s: s["cursor"] and s["cursor"] != first_cursor, 120, "the cursor to move")
            # a page turn happens by itself and shows another page image
            st = _wait(page, lambda s: s["shown"]["page"] != first_page and s["img"] and s["pageTurns"] >= 1, 180,
                       "a page turn")
            page.wait_for_timeout(500)
            shot2 = _sheet_png(page)
            page.screenshot(path=str(tmp_path / "turned.png"))
            assert _differs(shot1, shot2) > 0.005, "the sheet looks the same after the page turn"
            assert st["shown"]["piece"] == "mozart-k545-1"
        finally:
            b.close()


def test_file_is_played_and_streamed(server, performance):
    from playwright.sync_api import sync_playwright

    wav = performance("mozart-k545-1")       # piano music (a 4-part chorale is outside what the model reads)
    with sync_playwright() as p:
        b = _browser(p)
        try:
            page = b.new_page()
            page.goto(server.http + "/")
            page.set_input_files("#file", str(wav))
            page.click("#play")
            st = _wait(page, lambda s: s["state"] == "tracking" and s["shown"]["piece"], 180, "tracking")
            assert st["shown"]["piece"] == "mozart-k545-1"
            assert "K. 545" in st["title"]
            # the file ends by itself: the client says bye and the stream closes cleanly
            _wait(page, lambda s: "stream ended" in page.text_content("#message"), 180, "the end of the file")
        finally:
            b.close()


def test_speech_is_not_a_piece(server, tmp_path):
    import music_fixtures as mf
    from playwright.sync_api import sync_playwright

    wav = mf.write_wav(tmp_path / "speech.wav", mf.speech(12.0))
    with sync_playwright() as p:
        b = _browser(p, wav)
        try:
            page = b.new_page()
            page.goto(server.http + "/")
            page.click("#mic")
            _wait(page, lambda s: s["results"] >= 40, 180, "40 results")
            st = _state(page)
            assert st["state"] in ("unknown", "searching"), st
            assert "unknown" in st["title"] or "searching" in st["title"]
            assert page.locator("#cursor").is_hidden()
        finally:
            b.close()
