"""Audio decoding, conversion and resampling for the front end.

Everything that reaches :mod:`scorestream.core.frontend` is mono float32 at the
front-end rate (22050 Hz). Clients, files and training data arrive in every
other shape -- 44.1 kHz stereo int16 from a browser, 48 kHz float from a
phone, 24-bit WAVs -- so conversion lives in one place with strict validation:
a silently mis-scaled or mis-interleaved signal still produces a plausible
spectrogram and is very hard to debug downstream.

Conventions:

* integer PCM is scaled by ``1 / 2**(bits-1)`` (int16 by 1/32768, int32 by
  1/2**31, unsigned 8-bit WAV is offset by 128 first), so full scale maps to
  [-1, 1) exactly as WAV readers / soundfile do;
* multi-channel audio is either 2-D ``(n_samples, n_channels)`` or 1-D
  interleaved with ``channels=`` given; it is downmixed by averaging (before
  resampling, which is linear, so this is equivalent and cheaper);
* resampling uses soxr, quality ``"HQ"``; the streaming resampler uses the same
  filter so that live and offline features agree.
"""

from __future__ import annotations

import os
from numbers import Real

import numpy as np
import scipy.io.wavfile
import soxr

__all__ = [
    "TARGET_RATE",
    "MAX_SAMPLE_RATE",
    "to_mono_float",
    "StreamingResampler",
    "load_audio",
    "write_wav",
    "decode_audio_file",
]

TARGET_RATE = 22050
#: Anything above this is almost certainly a bug (e.g. a byte rate or a sample
#: count passed as the rate), not real audio.
MAX_SAMPLE_RATE = 384000
#: A 2-D array with more "channels" than this is almost certainly transposed
#: (channels, samples) data.
MAX_CHANNELS = 64
_QUALITY = "HQ"


def _check_rate(sample_rate: object, name: str = "sample_rate") -> float:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, Real):
        raise ValueError(f"{name} must be a number, got {sample_rate!r}")
    rate = float(sample_rate)
    if not np.isfinite(rate) or rate <= 0:
        raise ValueError(f"{name} must be > 0, got {sample_rate!r}")
    if rate > MAX_SAMPLE_RATE:
        raise ValueError(
            f"{name}={sample_rate!r} is above the supported maximum of {MAX_SAMPLE_RATE} Hz "
            "(was a byte rate or sample count passed by mistake?)"
        )
    return rate


def _check_channels(channels: object) -> int | None:
    if channels is None:
        return None
    if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or not 1 <= channels <= MAX_CHANNELS:
        raise ValueError(f"channels must be an integer in 1..{MAX_CHANNELS}, got {channels!r}")
    return int(channels)


def _to_float_frames(samples: object, channels: int | None, *, allow_empty: bool) -> np.ndarray:
    """Scale to float and reshape to ``(n_frames, n_channels)`` float32."""
    x = np.asarray(samples)
    kind = x.dtype.kind
    if x.dtype == np.int16:
        y = x.astype(np.float32) * np.float32(1.0 / 32768.0)
    elif x.dtype == np.int32:
        # float64 intermediate: float32 cannot hold 32-bit integers exactly.
        y = (x.astype(np.float64) * (1.0 / 2147483648.0)).astype(np.float32)
    elif x.dtype == np.uint8:
        y = (x.astype(np.float32) - 128.0) * np.float32(1.0 / 128.0)
    elif x.dtype in (np.float32, np.float64):
        y = x.astype(np.float32, copy=False)
        if y.size and not np.isfinite(x).all():
            raise ValueError("audio contains NaN or infinite values")
    else:
        raise ValueError(
            f"unsupported sample dtype {x.dtype} (kind {kind!r}); expected int16, int32, uint8, float32 or float64"
        )

    if x.ndim == 1:
        ch = channels or 1
        if len(y) % ch:
            raise ValueError(
                f"interleaved audio has {len(y)} samples, which is not a multiple of channels={ch}; "
                "a chunk must contain whole sample frames"
            )
        y = y.reshape(-1, ch)
    elif x.ndim == 2:
        if x.shape[1] > MAX_CHANNELS:
            raise ValueError(
                f"2-D audio must be (n_samples, n_channels); got shape {x.shape} "
                f"(more than {MAX_CHANNELS} channels -- is it transposed? try .T)"
            )
        if channels is not None and channels != x.shape[1]:
            raise ValueError(f"channels={channels} does not match the array's shape {x.shape} (n_samples, n_channels)")
    else:
        raise ValueError(f"audio must be 1-D (mono or interleaved) or 2-D (n_samples, n_channels), got shape {x.shape}")
    if y.shape[1] == 0:
        raise ValueError(f"audio has zero channels (shape {x.shape})")
    if not allow_empty and y.shape[0] == 0:
        raise ValueError("audio is empty (0 samples)")
    return y


def _downmix(frames: np.ndarray) -> np.ndarray:
    if frames.shape[1] == 1:
        return np.ascontiguousarray(frames[:, 0])
    return frames.mean(axis=1, dtype=np.float32)


def to_mono_float(
    samples: np.ndarray,
    sample_rate: float,
    channels: int | None = None,
    *,
    target_rate: int = TARGET_RATE,
) -> np.ndarray:
    """Convert PCM of any common layout to mono float32 at ``target_rate``.

    ``samples`` is int16, int32, uint8 (8-bit WAV), float32 or float64; 1-D
    mono, 1-D interleaved (pass ``channels``), or 2-D ``(n_samples,
    n_channels)``. Raises ``ValueError`` with an explanation for empty input,
    NaN/inf, unsupported dtypes or shapes, and implausible sample rates.
    """
    rate = _check_rate(sample_rate)
    out_rate = _check_rate(target_rate, "target_rate")
    mono = _downmix(_to_float_frames(samples, _check_channels(channels), allow_empty=False))
    if rate == out_rate:
        # Never hand back a view of the caller's buffer (e.g. a reused
        # network buffer): the result must stay valid after they mutate it.
        return mono.copy() if np.may_share_memory(mono, samples) else mono
    y = soxr.resample(mono, rate, out_rate, quality=_QUALITY)
    return np.ascontiguousarray(y, dtype=np.float32)


class StreamingResampler:
    """Chunk-wise :func:`to_mono_float` for live input (e.g. websocket PCM).

    Each :meth:`process` call takes a chunk in the client's format (same
    dtype rules and interleaving as :func:`to_mono_float`, with ``channels``
    fixed at construction) and returns the mono float32 samples at
    ``target_rate`` that are ready; :meth:`flush` returns the filter's tail at
    end of stream. The concatenated output closely matches the offline
    conversion of the whole signal (soxr uses the same filter in both modes).
    """

    def __init__(self, in_rate: float, channels: int = 1, *, target_rate: int = TARGET_RATE) -> None:
        self.in_rate = _check_rate(in_rate, "in_rate")
        self.target_rate = _check_rate(target_rate, "target_rate")
        ch = _check_channels(channels)
        assert ch is not None
        self.channels = ch
        self._passthrough = self.in_rate == self.target_rate
        self._stream = (
            None
            if self._passthrough
            else soxr.ResampleStream(self.in_rate, self.target_rate, 1, dtype="float32", quality=_QUALITY)
        )
        self._finished = False

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Convert one chunk; returns the (possibly empty) resampled output."""
        if self._finished:
            raise RuntimeError("StreamingResampler.process() after flush(); call reset() to start a new stream")
        mono = _downmix(_to_float_frames(chunk, self.channels, allow_empty=True))
        if self._stream is None:
            return mono.copy() if np.may_share_memory(mono, chunk) else mono
        return np.ascontiguousarray(self._stream.resample_chunk(mono, last=False), dtype=np.float32)

    def flush(self) -> np.ndarray:
        """End the stream and return the samples still held in the filter."""
        if self._finished:
            return np.zeros(0, dtype=np.float32)
        self._finished = True
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        tail = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        return np.ascontiguousarray(tail, dtype=np.float32)

    def reset(self) -> None:
        """Start a new stream with the same rates and channel count."""
        if self._stream is not None:
            self._stream.clear()
        self._finished = False


def load_audio(
    path: str | os.PathLike[str],
    *,
    mono: bool = True,
    sample_rate: int | None = None,
) -> tuple[np.ndarray, int]:
    """Read a WAV file as float32 in [-1, 1].

    Returns ``(samples, sr)``. With ``mono=True`` (default) the channels are
    averaged to shape ``(n,)``; otherwise the shape is ``(n, n_channels)``.
    With ``sample_rate`` set, the audio is resampled (mono only) and that rate
    is returned. Supports 8/16/24/32-bit PCM and float WAVs (scipy's reader;
    no extra dependency).
    """
    try:
        sr, data = scipy.io.wavfile.read(os.fspath(path), mmap=False)
    except ValueError as exc:  # scipy raises ValueError for non-RIFF files
        raise ValueError(f"cannot read {os.fspath(path)!r} as a WAV file: {exc}") from exc
    if data.ndim == 1:
        data = data[:, None]
    if sample_rate is not None:
        if not mono:
            raise ValueError("load_audio(): resampling is only supported together with mono=True")
        return to_mono_float(data, sr, target_rate=sample_rate), int(sample_rate)
    frames = _to_float_frames(data, None, allow_empty=True)
    if mono:
        return _downmix(frames), int(sr)
    return np.ascontiguousarray(frames), int(sr)


def write_wav(
    path: str | os.PathLike[str],
    samples: np.ndarray,
    sr: int,
    *,
    sample_format: str = "int16",
) -> None:
    """Write float audio (``(n,)`` or ``(n, n_channels)``, in [-1, 1]) to WAV.

    ``sample_format="int16"`` (default, most portable) rounds and clips to
    16-bit PCM; ``"float32"`` writes IEEE float without loss.
    """
    rate = _check_rate(sr, "sr")
    if rate != int(rate):
        raise ValueError(f"WAV needs an integer sample rate, got {sr!r}")
    x = np.asarray(samples)
    if x.dtype.kind != "f":
        raise ValueError(f"write_wav() expects float samples in [-1, 1], got dtype {x.dtype}")
    if x.ndim not in (1, 2):
        raise ValueError(f"write_wav() expects shape (n,) or (n, n_channels), got {x.shape}")
    if x.size and not np.isfinite(x).all():
        raise ValueError("write_wav(): samples contain NaN or infinite values")
    if sample_format == "int16":
        data = np.clip(np.rint(x * 32768.0), -32768, 32767).astype(np.int16)
    elif sample_format == "float32":
        data = x.astype(np.float32)
    else:
        raise ValueError(f"sample_format must be 'int16' or 'float32', got {sample_format!r}")
    scipy.io.wavfile.write(os.fspath(path), int(rate), data)



#: Audio files larger than this are refused (a 2-hour stereo 48 kHz float WAV is ~2.8 GB).
MAX_AUDIO_FILE_BYTES = 4 << 30


def decode_audio_file(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Any audio file soundfile/libsndfile reads (WAV, FLAC, OGG/Vorbis/Opus, MP3, AIFF, …) →
    ``(frames float32 (n, channels), sample_rate)``; scipy's WAV reader as a fallback.
    Raises ``ValueError`` with a one-line reason for a missing, empty or undecodable file."""
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise ValueError(f"audio file {p!r} does not exist")
    size = os.path.getsize(p)
    if size == 0:
        raise ValueError(f"audio file {p!r} is empty")
    if size > MAX_AUDIO_FILE_BYTES:
        raise ValueError(f"audio file {p!r} is {size / 2**30:.1f} GiB; split it (at most {MAX_AUDIO_FILE_BYTES >> 30} GiB)")
    try:
        import soundfile

        data, sr = soundfile.read(p, dtype="float32", always_2d=True)
    except ImportError:
        data, sr = None, None
    except Exception as exc:  # libsndfile: "Format not recognised", "Error in WAV file", ...
        try:
            data, sr = load_audio(p, mono=False)
        except ValueError:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"cannot decode {p!r} as audio ({msg}); give a WAV, FLAC, OGG or MP3 file") from None
    if data is None:
        data, sr = load_audio(p, mono=False)
    data = np.asarray(data, np.float32)
    if data.ndim == 1:
        data = data[:, None]
    if len(data) == 0:
        raise ValueError(f"audio file {p!r} holds no samples")
    _check_rate(sr)
    return np.ascontiguousarray(data), int(sr)
