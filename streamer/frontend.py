"""Per-stream front end: PCM chunks → resampled mono → spectrogram frames → audio windows.

Sans-I/O and the same offline and live: ``process(chunk)`` returns the model
windows that became complete, in order; ``flush()`` ends the stream.  The
windows do not depend on how the audio was chunked (a 100 ms websocket frame or
a whole file give the same windows), and each carries the time ``t`` at which
it became available: the end of the last sample it needs, ``(centre of its last
frame + frame_size / 2) / sample_rate``.  That is when a live system can first
compute it, so a result built on it is causal, and it does not depend on the
chunking either.

Windows are centred on frames ``0, S, 2S, …`` (stride ``S`` frames); window ``k``
covers frames ``kS - F//2 … kS - F//2 + F - 1`` (zeros before the start and, at
the end of the stream, after the last frame), exactly as the models were
trained (:func:`scorestream.core.geometry.audio_windows`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scorestream.core.audio import StreamingResampler
from scorestream.core.frontend import FrontEndConfig, StreamingSpectrogram

from .ringbuffer import FrameRing


@dataclass
class AudioWindow:
    """One model input window of a stream."""

    index: int              # k: window number in the stream
    centre_frame: int       # frame the window is centred on (k * stride)
    t: float                # seconds: audio time at which the window became available
    spec: np.ndarray        # (bins, F) float32, the model's input layout
    fps: int = 20

    @property
    def centre_time(self) -> float:
        """Seconds of the window centre (what the embedding describes)."""
        return self.centre_frame / self.fps


class WindowCutter:
    """Frames in, complete centred windows out; bounded memory (a ring of ~F frames)."""

    def __init__(self, audio_frames: int, stride_frames: int, *, cfg: FrontEndConfig = FrontEndConfig()) -> None:
        if audio_frames < 1 or stride_frames < 1:
            raise ValueError(f"audio_frames and stride_frames must be >= 1, got {audio_frames}, {stride_frames}")
        self.F = int(audio_frames)
        self.S = int(stride_frames)
        self.cfg = cfg
        self._ring = FrameRing(self.F + self.S + 2, cfg.n_bins)
        self.reset()

    def reset(self) -> None:
        self._ring.reset()
        self._next = 0          # next window index
        self._done = False

    @property
    def _after(self) -> int:
        """Frames a window needs from its centre on (inclusive): F - F//2."""
        return self.F - self.F // 2

    def _make(self, k: int) -> AudioWindow:
        c = k * self.S
        start = c - self.F // 2
        spec = self._ring.window(start, self.F).T.copy()
        last = min(start + self.F, self._ring.total) - 1
        t = ((last * self.cfg.sample_rate) // self.cfg.fps + self.cfg.frame_size // 2) / self.cfg.sample_rate
        return AudioWindow(k, c, float(t), spec, self.cfg.fps)

    def push(self, frames: np.ndarray) -> list[AudioWindow]:
        if self._done:
            raise RuntimeError("WindowCutter.push() after flush(); call reset() first")
        out = []
        f = np.asarray(frames, np.float32)
        # feed in slices no longer than the stride so no frame a pending window needs is overwritten
        for s in range(0, len(f), self.S):
            self._ring.push(f[s: s + self.S])
            while self._next * self.S + self._after <= self._ring.total:
                out.append(self._make(self._next))
                self._next += 1
        return out

    def flush(self) -> list[AudioWindow]:
        """End of stream: the windows centred on the remaining frames (zero-padded at the end)."""
        if self._done:
            return []
        self._done = True
        out = []
        while self._next * self.S < self._ring.total:
            out.append(self._make(self._next))
            self._next += 1
        return out


class StreamFrontEnd:
    """Resampler + incremental spectrogram + window cutter for one stream."""

    def __init__(self, sample_rate: float, channels: int = 1, *, audio_frames: int, stride_frames: int = 4,
                 cfg: FrontEndConfig = FrontEndConfig()) -> None:
        self.cfg = cfg
        self.resampler = StreamingResampler(sample_rate, channels, target_rate=cfg.sample_rate)
        self.spectrogram = StreamingSpectrogram(cfg)
        self.cutter = WindowCutter(audio_frames, stride_frames, cfg=cfg)
        self.input_rate = float(sample_rate)
        self.samples_in = 0     # input frames (per channel) received
        self.channels = int(channels)

    @property
    def t(self) -> float:
        """Seconds of audio received so far."""
        return self.samples_in / self.input_rate

    def process(self, pcm: np.ndarray) -> list[AudioWindow]:
        """One chunk of interleaved PCM (int16 or float32, as the stream declared) → new windows."""
        x = self.resampler.process(pcm)
        n = np.asarray(pcm).size // max(1, self.channels) if np.asarray(pcm).ndim == 1 else len(pcm)
        self.samples_in += n
        return self.cutter.push(self.spectrogram.process(x))

    def flush(self) -> list[AudioWindow]:
        frames = self.spectrogram.process(self.resampler.flush())
        out = self.cutter.push(frames)
        out += self.cutter.push(self.spectrogram.flush())
        return out + self.cutter.flush()

    def reset(self) -> None:
        self.resampler.reset()
        self.spectrogram.reset()
        self.cutter.reset()
        self.samples_in = 0
