"""A fixed-capacity ring buffer of spectrogram frames (sans-I/O, numpy).

Memory per stream is bounded by construction: the buffer holds the last
``capacity`` frames and nothing else; older frames are overwritten.
"""

from __future__ import annotations

import numpy as np


class FrameRing:
    """The last ``capacity`` frames of a stream, addressed by absolute frame index."""

    def __init__(self, capacity: int, bins: int) -> None:
        if capacity < 1 or bins < 1:
            raise ValueError(f"FrameRing needs capacity >= 1 and bins >= 1, got {capacity}, {bins}")
        self.capacity = int(capacity)
        self.bins = int(bins)
        self._buf = np.zeros((self.capacity, self.bins), np.float32)
        self.reset()

    def reset(self) -> None:
        self._buf[:] = 0.0
        self.total = 0          # frames pushed since the start of the stream

    @property
    def oldest(self) -> int:
        """Absolute index of the oldest frame still held."""
        return max(0, self.total - self.capacity)

    def push(self, frames: np.ndarray) -> None:
        f = np.asarray(frames, np.float32)
        if f.ndim != 2 or f.shape[1] != self.bins:
            raise ValueError(f"frames must be (n, {self.bins}), got {f.shape}")
        if len(f) > self.capacity:
            self.total += len(f) - self.capacity
            f = f[-self.capacity:]
        i = self.total % self.capacity
        n1 = min(len(f), self.capacity - i)
        self._buf[i: i + n1] = f[:n1]
        self._buf[: len(f) - n1] = f[n1:]
        self.total += len(f)

    def window(self, start: int, length: int) -> np.ndarray:
        """Frames ``start … start+length-1`` as (length, bins); zeros outside ``[0, total)``.

        Raises if part of the range was already overwritten."""
        out = np.zeros((length, self.bins), np.float32)
        lo, hi = max(start, 0), min(start + length, self.total)
        if hi <= lo:
            return out
        if lo < self.oldest:
            raise IndexError(f"frames {lo}..{self.oldest - 1} were overwritten (capacity {self.capacity})")
        idx = np.arange(lo, hi) % self.capacity
        out[lo - start: hi - start] = self._buf[idx]
        return out
