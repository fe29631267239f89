"""Offline reference path: an audio file streamed causally through the engine.

``follow_audio`` chops the audio into chunks (as a live source would deliver them), runs the
per-stream front end, embeds the windows in small batches and feeds the tracker; every
result depends only on audio up to its ``t``.  ``realtime=True`` paces the chunks by the
wall clock (and embeds each window as soon as it is complete), as a microphone would.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np

from scorestream.streamer.frontend import StreamFrontEnd

from .results import Result

CHUNK_S = 0.1          # audio per chunk fed to the front end
BATCH_WINDOWS = 16     # windows embedded together (offline, as fast as possible)


def _chunks(frames: np.ndarray, sr: int, chunk_s: float) -> Iterator[np.ndarray]:
    n = max(1, int(round(chunk_s * sr)))
    for i in range(0, len(frames), n):
        yield frames[i:i + n]


def follow_audio(engine, frames: np.ndarray, sample_rate: int, *, piece: str | None = None, realtime: bool = False,
                 chunk_s: float = CHUNK_S, batch: int = BATCH_WINDOWS, tracker=None,
                 on_result: Callable[[Result], None] | None = None) -> list[Result]:
    """Results for ``frames`` (float32 (n, channels) or (n,)) at ``sample_rate``."""
    frames = np.asarray(frames, np.float32)
    if frames.ndim == 1:
        frames = frames[:, None]
    ch = int(frames.shape[1])
    fe = StreamFrontEnd(sample_rate, ch, audio_frames=engine.audio_frames, stride_frames=engine.stride_frames)
    tr = tracker or engine.new_tracker(piece)
    out: list[Result] = []
    pending: list = []

    def run(ws) -> None:
        if not ws:
            return
        for w, e in zip(ws, engine.embed(ws)):
            r = tr.update(w, e)
            out.append(r)
            if on_result is not None:
                on_result(r)

    start = time.monotonic()
    sent = 0
    for chunk in _chunks(frames, sample_rate, chunk_s):
        if realtime:
            due = start + sent / sample_rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        sent += len(chunk)
        pending += fe.process(chunk.reshape(-1) if ch > 1 else chunk[:, 0])
        if realtime or len(pending) >= batch:
            run(pending)
            pending = []
    pending += fe.flush()
    for i in range(0, len(pending), batch):
        run(pending[i:i + batch])
    return out
