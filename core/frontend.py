"""Audio front end shared by training and streaming.

The score follower consumes a log-frequency magnitude spectrogram in the
style of Dorfer et al. (TISMIR 2018) / madmom: 22050 Hz mono, 2048-sample
Hann frames at 20 frames per second, a triangular filterbank with 16 bands
per octave between 30 and 6000 Hz (92 bands), and ``log10(1 + x)``
compression.

Training (offline, whole files) and serving (streaming, arbitrary chunks) must
see *bit-for-bit the same kind of numbers*; a model trained on slightly
different features degrades silently. Both paths therefore go through one
private routine, :func:`_compute_frames`, and differ only in how samples are
buffered.

Frame grid
----------
The hop is ``sample_rate / fps`` = 1102.5 samples, which is not an integer.
Rounding it (to 1102 or 1103) would make the frame grid drift against wall
clock time by ~0.05 % -- 1.6 s per hour -- so instead frame ``n`` is centred on
the integer sample::

    c_n = floor(n * sample_rate / fps)        # = floor(n * 2205 / 2)

Hops therefore alternate 1102 / 1103 samples and frame ``n`` is never more
than half a sample away from ``n / fps`` seconds. Frame ``n`` covers samples
``[c_n - frame_size // 2, c_n + frame_size // 2)`` (the centre sample sits at
index ``frame_size // 2`` of the frame, as in madmom); samples before 0 are
zeros.

Frame-count rule
----------------
A signal of ``L`` samples yields exactly the frames whose centre lies inside
the signal, ``c_n < L``::

    n_frames(L) = ceil(L * fps / sample_rate)  = ceil(2 L / 2205)   (0 if L == 0)

Samples past the end of the signal are zeros. This equals madmom's
``ceil(L / hop)``. A streaming processor emits frame ``n`` as soon as its last
sample ``c_n + frame_size // 2 - 1`` has arrived, and :meth:`flush` emits the
remaining frames with ``c_n < L`` using the same zero padding, so a stream fed
in any chunking produces exactly ``spectrogram(signal)``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import scipy.fft
from numpy.lib.stride_tricks import as_strided

__all__ = [
    "FrontEndConfig",
    "make_filterbank",
    "filterbank_bins",
    "num_frames",
    "frame_centres",
    "spectrogram",
    "StreamingSpectrogram",
]

# Offline processing works in blocks of this many frames: bounds the memory of
# the frame matrix (an hour of audio would otherwise need ~600 MB) and keeps
# the working set cache-friendly, which is measurably faster than one huge FFT.
_BLOCK_FRAMES = 256


@dataclass(frozen=True)
class FrontEndConfig:
    """Parameters of the spectrogram front end.

    Frozen (hashable) so that the filterbank and window can be cached per
    configuration, and so that a config stored next to a trained model cannot
    be mutated by accident.
    """

    sample_rate: int = 22050
    frame_size: int = 2048
    fps: int = 20
    bands_per_octave: int = 16
    fmin: float = 30.0
    fmax: float = 6000.0

    def __post_init__(self) -> None:
        for name in ("sample_rate", "frame_size", "fps", "bands_per_octave"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"FrontEndConfig.{name} must be a positive integer, got {value!r}")
            # Plain Python ints: the frame-grid arithmetic must never overflow.
            object.__setattr__(self, name, int(value))
        if self.frame_size % 2:
            raise ValueError(f"FrontEndConfig.frame_size must be even, got {self.frame_size}")
        if not (0.0 < self.fmin < self.fmax <= self.sample_rate / 2):
            raise ValueError(
                "FrontEndConfig needs 0 < fmin < fmax <= sample_rate / 2, got "
                f"fmin={self.fmin}, fmax={self.fmax}, sample_rate={self.sample_rate}"
            )

    @property
    def hop_size(self) -> float:
        """Nominal (fractional) hop in samples, e.g. 1102.5."""
        return self.sample_rate / self.fps

    @property
    def n_bins(self) -> int:
        """Number of filterbank bands, i.e. the feature dimension (92 by default)."""
        return len(filterbank_bins(self)) - 2

    @property
    def _period(self) -> tuple[int, int]:
        """(frames, samples) after which the frame grid repeats exactly.

        ``c_{n+p} = c_n + s`` with ``p = fps / g`` and ``s = sample_rate / g``
        where ``g = gcd(sample_rate, fps)``; for 22050 Hz / 20 fps this is
        (2, 2205). Frames of equal phase ``n mod p`` are therefore uniformly
        spaced, which lets us build the frame matrix from ``p`` strided views.
        """
        g = math.gcd(self.sample_rate, self.fps)
        return self.fps // g, self.sample_rate // g


# --------------------------------------------------------------------------- #
# Frame grid
# --------------------------------------------------------------------------- #


def num_frames(n_samples: int, cfg: FrontEndConfig = FrontEndConfig()) -> int:
    """Number of frames for a signal of ``n_samples`` samples.

    Frames whose centre ``c_n`` lies inside the signal: ``ceil(L * fps / sr)``.
    Pure integer arithmetic, so it cannot disagree with the streaming path
    because of floating-point rounding.
    """
    return _frames_with_centre_below(int(n_samples), cfg)


def _frames_with_centre_below(x: int, cfg: FrontEndConfig) -> int:
    """Count of n >= 0 with c_n < x, where c_n = floor(n * sr / fps).

    floor(n*sr/fps) < x  <=>  n*sr < x*fps  <=>  n < x*fps/sr.
    """
    if x <= 0:
        return 0
    return -((-x * cfg.fps) // cfg.sample_rate)  # ceil division


def frame_centres(n_frames: int, cfg: FrontEndConfig = FrontEndConfig()) -> np.ndarray:
    """Integer centre sample of frames ``0 .. n_frames - 1`` (int64)."""
    n = np.arange(int(n_frames), dtype=np.int64)
    return (n * cfg.sample_rate) // cfg.fps


def _centre(n: int, cfg: FrontEndConfig) -> int:
    return (n * cfg.sample_rate) // cfg.fps


# --------------------------------------------------------------------------- #
# Filterbank
# --------------------------------------------------------------------------- #


@functools.lru_cache(maxsize=16)
def _filterbank_bins_cached(cfg: FrontEndConfig) -> tuple[int, ...]:
    fref = 440.0
    bpo = cfg.bands_per_octave
    # Log-spaced frequencies on a grid anchored at A4 = 440 Hz, restricted to
    # [fmin, fmax].
    lo = math.floor(math.log2(cfg.fmin / fref) * bpo)
    hi = math.ceil(math.log2(cfg.fmax / fref) * bpo)
    freqs = fref * 2.0 ** (np.arange(lo, hi + 1) / bpo)
    freqs = freqs[(freqs >= cfg.fmin) & (freqs <= cfg.fmax)]
    # Nearest FFT bin (ties go to the upper bin, as madmom does). Like madmom
    # we consider frame_size // 2 bins, i.e. without the Nyquist bin.
    n_fft_bins = cfg.frame_size // 2
    bin_width = cfg.sample_rate / cfg.frame_size
    bins = np.floor(freqs / bin_width + 0.5).astype(np.int64)
    bins = np.clip(bins, 0, n_fft_bins - 1)
    # Low bands are narrower than an FFT bin and map onto the same bin; keep
    # each bin once so that no two filters are identical.
    bins = np.unique(bins)
    if len(bins) < 3:
        raise ValueError(
            f"FrontEndConfig {cfg} gives only {len(bins)} distinct FFT bins; "
            "need at least 3 for one triangular filter"
        )
    return tuple(int(b) for b in bins)


def filterbank_bins(cfg: FrontEndConfig = FrontEndConfig()) -> np.ndarray:
    """FFT bin indices of the filter corners (start/centre/stop points).

    ``n_bins + 2`` strictly increasing indices; filter ``i`` rises from bin
    ``b[i]`` to a peak at ``b[i+1]`` and falls to zero at ``b[i+2]``.
    """
    return np.array(_filterbank_bins_cached(cfg), dtype=np.int64)


@functools.lru_cache(maxsize=16)
def _filterbank_cached(cfg: FrontEndConfig) -> np.ndarray:
    bins = _filterbank_bins_cached(cfg)
    n_fft_bins = cfg.frame_size // 2
    fb = np.zeros((n_fft_bins, len(bins) - 2), dtype=np.float64)
    for i in range(len(bins) - 2):
        start, centre, stop = bins[i : i + 3]
        k = np.arange(start, stop, dtype=np.float64)
        rise = (k - start) / (centre - start)
        fall = (stop - k) / (stop - centre)
        weights = np.minimum(rise, fall)  # 0 at start, 1 at centre, >0 until stop-1
        # Unit area: a wide (high-frequency) band does not get more energy
        # than a narrow one just because it spans more FFT bins.
        fb[start:stop, i] = weights / weights.sum()
    fb = fb.astype(np.float32)
    fb.setflags(write=False)
    return fb


def make_filterbank(cfg: FrontEndConfig = FrontEndConfig()) -> np.ndarray:
    """Triangular log-frequency filterbank, shape ``(frame_size // 2, n_bins)``.

    Built the madmom way: centre frequencies ``440 * 2**(k / bands_per_octave)``
    within ``[fmin, fmax]``, mapped to the nearest FFT bin, duplicates removed,
    then overlapping triangles over consecutive (start, centre, stop) bins, each
    normalised to unit area. Returns a fresh float32 array (safe to modify).
    """
    return np.array(_filterbank_cached(cfg), copy=True)


@functools.lru_cache(maxsize=16)
def _plan(cfg: FrontEndConfig) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Cached (window, trimmed filterbank, first bin, end bin) for ``cfg``.

    The filterbank is zero outside ``[lo, hi)`` (30..6000 Hz is bins 3..550 of
    1024), so only that slice of the spectrum is turned into magnitudes and
    multiplied: about half the work of the full matmul.
    """
    # Symmetric Hann window, as np.hanning / madmom use.
    window = np.hanning(cfg.frame_size).astype(np.float32)
    bins = _filterbank_bins_cached(cfg)
    lo, hi = bins[0], bins[-1] + 1
    fb = np.ascontiguousarray(_filterbank_cached(cfg)[lo:hi])
    window.setflags(write=False)
    fb.setflags(write=False)
    return window, fb, lo, hi


# --------------------------------------------------------------------------- #
# Core computation (shared by offline and streaming)
# --------------------------------------------------------------------------- #


def _compute_frames(buf: np.ndarray, origin: int, n0: int, n1: int, cfg: FrontEndConfig) -> np.ndarray:
    """Spectrogram frames ``n0 .. n1 - 1`` from a float32 sample buffer.

    ``buf[i]`` holds absolute sample ``origin + i`` and must cover
    ``[c_n0 - frame_size//2, c_{n1-1} + frame_size//2)``. Both the offline and
    the streaming path call this, so they cannot drift apart.
    """
    window, fb, lo, hi = _plan(cfg)
    count = max(0, n1 - n0)
    out = np.empty((count, fb.shape[1]), dtype=np.float32)
    if count == 0:
        return out
    fs = cfg.frame_size
    half = fs // 2
    p, step = cfg._period
    assert buf.dtype == np.float32 and buf.ndim == 1 and buf.flags.c_contiguous
    itemsize = buf.itemsize
    frames = np.empty((min(count, _BLOCK_FRAMES), fs), dtype=np.float32)
    for b0 in range(0, count, _BLOCK_FRAMES):
        nb = min(_BLOCK_FRAMES, count - b0)
        fr = frames[:nb]
        # Frames of equal phase (n mod p) are exactly `step` samples apart, so
        # each phase is one strided view; multiply by the window straight into
        # the frame matrix (no gather copy).
        for k in range(min(p, nb)):
            n = n0 + b0 + k
            start = _centre(n, cfg) - half - origin
            rows = (nb - k + p - 1) // p
            last = start + (rows - 1) * step + fs
            if start < 0 or last > len(buf):
                raise AssertionError("sample buffer does not cover the requested frames")
            view = as_strided(buf[start:], shape=(rows, fs), strides=(step * itemsize, itemsize), writeable=False)
            np.multiply(view, window, out=fr[k::p])
        spec = scipy.fft.rfft(fr, axis=1, workers=1)[:, lo:hi]
        mag = np.abs(spec)
        res = out[b0 : b0 + nb]
        np.matmul(mag, fb, out=res)
        res += 1.0
        np.log10(res, out=res)
    return out


def _as_mono_float32(signal: np.ndarray, what: str) -> np.ndarray:
    """Validate a mono float signal already at the front-end sample rate."""
    x = np.asarray(signal)
    if x.dtype.kind != "f":
        raise ValueError(
            f"{what} expects a float signal in [-1, 1] at the front-end sample rate, got dtype "
            f"{x.dtype}; convert integer PCM with scorestream.core.audio.to_mono_float()"
        )
    if x.ndim != 1:
        raise ValueError(
            f"{what} expects a 1-D mono signal, got shape {x.shape}; "
            "downmix with scorestream.core.audio.to_mono_float()"
        )
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.size and not np.isfinite(x).all():
        raise ValueError(f"{what}: signal contains NaN or infinite values")
    return x


def spectrogram(signal: np.ndarray, cfg: FrontEndConfig = FrontEndConfig()) -> np.ndarray:
    """Log-filtered magnitude spectrogram of a whole mono signal.

    ``signal`` is 1-D float at ``cfg.sample_rate``. Returns float32 of shape
    ``(num_frames(len(signal)), cfg.n_bins)``; see the module docstring for
    the frame grid and the zero padding at both ends.
    """
    x = _as_mono_float32(signal, "spectrogram()")
    n = num_frames(len(x), cfg)
    if n == 0:
        return np.zeros((0, cfg.n_bins), dtype=np.float32)
    half = cfg.frame_size // 2
    end = _centre(n - 1, cfg) + cfg.frame_size - half  # one past the last sample needed
    buf = np.zeros(half + max(end, len(x)), dtype=np.float32)
    buf[half : half + len(x)] = x
    return _compute_frames(buf, -half, 0, n, cfg)


# --------------------------------------------------------------------------- #
# Streaming
# --------------------------------------------------------------------------- #


class StreamingSpectrogram:
    """Incremental spectrogram for live audio, madmom-processor style.

    Feed mono float chunks of any size with :meth:`process`; each call returns
    the frames that became complete (possibly none). At the end of the stream
    :meth:`flush` returns the remaining frames, zero-padded exactly like
    :func:`spectrogram`, so that ``concat(process(c) for c in chunks) +
    flush()`` equals ``spectrogram(concat(chunks))``.

    Samples are kept in a linear buffer that only holds what future frames
    still need (at most ``frame_size`` samples plus the unconsumed part of the
    last chunk); it is compacted lazily when it would overflow, so per-chunk
    work is O(chunk) and no frame is ever computed twice.
    """

    def __init__(self, cfg: FrontEndConfig = FrontEndConfig()) -> None:
        self.cfg = cfg
        self._half = cfg.frame_size // 2
        self._buf = np.zeros(4 * cfg.frame_size, dtype=np.float32)
        self.reset()

    def reset(self) -> None:
        """Forget everything and start a new stream at sample 0."""
        # The buffer starts at absolute sample -frame_size//2, pre-filled with
        # the zeros that precede the signal.
        self._origin = -self._half
        self._buf[: self._half] = 0.0
        self._fill = self._half
        self._received = 0
        self._next = 0  # index of the next frame to emit
        self._finished = False

    @property
    def frames_emitted(self) -> int:
        """Frames returned so far in this stream (= index of the next frame)."""
        return self._next

    @property
    def samples_received(self) -> int:
        """Samples fed so far in this stream."""
        return self._received

    def _append(self, x: np.ndarray) -> None:
        need = self._fill + len(x)
        if need > len(self._buf):
            # Drop samples no future frame needs: everything before the start
            # of the next frame.
            keep_from = _centre(self._next, self.cfg) - self._half - self._origin
            keep_from = max(0, min(keep_from, self._fill))
            if keep_from:
                remaining = self._fill - keep_from
                self._buf[:remaining] = self._buf[keep_from : self._fill]
                self._fill = remaining
                self._origin += keep_from
            need = self._fill + len(x)
            if need > len(self._buf):
                new = np.zeros(max(need, 2 * len(self._buf)), dtype=np.float32)
                new[: self._fill] = self._buf[: self._fill]
                self._buf = new
        self._buf[self._fill : self._fill + len(x)] = x
        self._fill += len(x)

    def _emit(self, total: int) -> np.ndarray:
        out = _compute_frames(self._buf[: self._fill], self._origin, self._next, total, self.cfg)
        self._next = max(self._next, total)
        return out

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Append ``chunk`` (1-D float, cfg.sample_rate) and return the new frames.

        Returns float32 ``(k, n_bins)``, ``k >= 0``.
        """
        if self._finished:
            raise RuntimeError("StreamingSpectrogram.process() after flush(); call reset() to start a new stream")
        x = _as_mono_float32(chunk, "StreamingSpectrogram.process()")
        if len(x):
            self._append(x)
            self._received += len(x)
        # Frame n is complete once sample c_n + frame_size - half - 1 arrived,
        # i.e. c_n < received - (frame_size - half) + 1.
        total = _frames_with_centre_below(self._received - (self.cfg.frame_size - self._half) + 1, self.cfg)
        return self._emit(total)

    def flush(self) -> np.ndarray:
        """End the stream: return all remaining frames (centre < samples received).

        Pads with zeros exactly like :func:`spectrogram`. Further
        :meth:`process` calls require :meth:`reset` first.
        """
        if self._finished:
            return np.zeros((0, self.cfg.n_bins), dtype=np.float32)
        self._finished = True
        total = num_frames(self._received, self.cfg)
        if total > self._next:
            end = _centre(total - 1, self.cfg) + self.cfg.frame_size - self._half
            pad = end - (self._origin + self._fill)
            if pad > 0:
                self._append(np.zeros(pad, dtype=np.float32))
        return self._emit(total)
