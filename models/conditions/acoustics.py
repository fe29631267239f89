"""Rooms, noise and lossy codecs for the realistic validation condition (numpy + soundfile only).

* :func:`shoebox_rir` — a physical room model: the image-source method (Allen & Berkley
  1979) for a rectangular room, per octave-band group (low / mid / high) with its own
  wall reflection coefficient from Eyring's formula for the requested RT60, summed
  through complementary band filters.  Image sources are enumerated up to the time the
  count stays affordable; the rest of the decay is a diffuse tail of Gaussian noise with
  the same band decay, scaled to continue the image-source energy envelope (the usual
  hybrid model).  Sub-sample delays use a windowed-sinc kernel.  Deterministic given
  the seed.  (pyroomacoustics installs cleanly too, but a dependency-free model keeps
  the condition identical on every installation.)
* :func:`schroeder_rt60` — RT60 from the Schroeder backward-integrated energy decay
  (T20 fit, -5 … -25 dB, extrapolated to 60 dB).
* :func:`add_noise` — pink noise, brown (HVAC) rumble and mains hum at a given SNR.
* :func:`codec_roundtrip` — MP3 or Ogg/Opus through libsndfile (``soundfile``) when it
  has the encoder, else a documented approximation (band limit + coarse quantisation of
  the MDCT-like STFT magnitudes).
* :class:`Scene` / :func:`draw_scene` / :func:`apply_scene` — one random but plausible
  recording situation (room, source/microphone placement, noise, codec, microphone tilt).
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass

import numpy as np

C_SOUND = 343.0
SAMPLE_RATE = 22050
BAND_EDGES = (500.0, 2000.0)       # low < 500 Hz <= mid < 2 kHz <= high
# a wall absorbs more at high frequencies: band RT60 relative to the nominal (mid) one
BAND_RT60_SCALE = (1.15, 1.0, 0.75)


# --------------------------------------------------------------------------- RIR

def eyring_beta(rt60: float, dims: tuple[float, float, float]) -> float:
    """Wall reflection coefficient (pressure) giving ``rt60`` in a shoebox by Eyring's formula."""
    lx, ly, lz = dims
    V, S = lx * ly * lz, 2 * (lx * ly + lx * lz + ly * lz)
    alpha = 1.0 - math.exp(-0.161 * V / (S * rt60))
    alpha = min(max(alpha, 1e-4), 0.999)
    return math.sqrt(1.0 - alpha)


def _sinc_taps(frac: np.ndarray, half: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Windowed-sinc fractional-delay taps (N, 2*half) for delays frac in [0, 1) and their offsets."""
    offs = np.arange(-half + 1, half + 1)
    t = offs[None, :] - frac[:, None]
    w = 0.5 * (1 + np.cos(np.pi * t / (half + 0.5)))
    return np.sinc(t) * w, offs


def _ism(src, mic, dims, beta: float, sr: int, n: int, max_images: int, rng: np.random.Generator | None,
         t_limit: float | None = None) -> tuple[np.ndarray, float]:
    """Image-source impulse response (n samples) with one reflection coefficient on all walls.

    Returns (rir, t_ism): images are summed up to the arrival time t_ism = ``t_limit``
    or earlier, where the enumeration stops (all images if they fit into ``max_images``)."""
    L = np.asarray(dims, float)
    s = np.asarray(src, float)
    m = np.asarray(mic, float)
    t_max = n / sr if t_limit is None else min(n / sr, float(t_limit))
    # order needed to reach t_max, capped so that (2N+1)^3 * 8 <= max_images
    need = int(np.ceil(C_SOUND * t_max / L.min())) + 1
    cap = max(1, int(((max_images / 8) ** (1 / 3) - 1) / 2))
    N = min(need, cap)
    r = np.arange(-N, N + 1)
    out = np.zeros(n + 16, np.float64)
    # image position along one axis: (1 - 2q) * s + 2 r L, reflections |r - q| + |r|
    comps, refl = [], []
    for ax in range(3):
        pos = np.concatenate([(1 - 2 * q) * s[ax] + 2 * r * L[ax] for q in (0, 1)])
        nref = np.concatenate([np.abs(r - q) + np.abs(r) for q in (0, 1)])
        comps.append(pos - m[ax])
        refl.append(nref)
    dx, dy, dz = comps
    rx, ry, rz = refl
    d2 = (dx[:, None, None] ** 2 + dy[None, :, None] ** 2 + dz[None, None, :] ** 2).ravel()
    nr = (rx[:, None, None] + ry[None, :, None] + rz[None, None, :]).ravel()
    d = np.sqrt(d2)
    if N < need:
        # complete only up to the distance every direction is enumerated to
        t_ism = (2 * N - 1) * L.min() / C_SOUND
    else:
        t_ism = t_max
    keep = d <= min(t_ism, t_max) * C_SOUND
    d, nr = d[keep], nr[keep]
    amp = beta ** nr / (4 * np.pi * np.maximum(d, 0.1))
    if rng is not None:
        # randomised image method (De Sena et al. 2015): small position jitter breaks
        # the sweeping echoes of a perfectly regular lattice
        d = d + rng.uniform(-0.04, 0.04, len(d)) * (nr > 0)
    delay = d / C_SOUND * sr
    i0 = np.floor(delay).astype(np.int64)
    taps, offs = _sinc_taps(delay - i0)
    idx = i0[:, None] + offs[None, :]
    ok = (idx >= 0) & (idx < n)
    np.add.at(out, idx[ok], (taps * amp[:, None])[ok])
    return out[:n], float(min(t_ism, t_max))


def _band_split(x: np.ndarray, sr: int) -> list[np.ndarray]:
    """Complementary low / mid / high parts of x (FFT brick-wall with raised-cosine transitions; sum = x)."""
    X = np.fft.rfft(x)
    f = np.fft.rfftfreq(len(x), 1 / sr)

    def lowpass(fc):
        w = 0.25 * fc
        return np.clip(0.5 - 0.5 * np.sin(np.clip((f - fc) / w, -1, 1) * np.pi / 2), 0, 1)

    lo = lowpass(BAND_EDGES[0])
    lm = lowpass(BAND_EDGES[1])
    return [np.fft.irfft(X * g, len(x)) for g in (lo, lm - lo, 1 - lm)]


def mixing_time(dims) -> float:
    """Seconds after which the late field is treated as diffuse: 2 sqrt(V) ms, at least 50 ms."""
    V = float(np.prod(dims))
    return max(0.05, 2.0 * math.sqrt(V) / 1000.0)


def shoebox_rir(dims=(9.0, 7.0, 3.5), src=(3.0, 2.5, 1.2), mic=(6.0, 4.5, 1.6), rt60: float = 0.8,
                sr: int = SAMPLE_RATE, max_images: int = 400_000, seed: int = 0,
                band_scale: tuple[float, float, float] = BAND_RT60_SCALE, t_mix: float | None = None) -> np.ndarray:
    """Room impulse response from ``src`` to ``mic`` (metres) in a shoebox with reverberation time ``rt60`` (s).

    Direct sound and early reflections (up to the mixing time, :func:`mixing_time`) are
    image sources; the late reverberation is diffuse (a purely specular shoebox keeps
    grazing axial paths alive far longer than Eyring predicts, real rooms scatter), decaying
    at the band's RT60 and level-matched to the image sources.  Normalised so that the
    direct sound has amplitude 1 (the level then depends on the direct-to-reverberant
    ratio, as in a real room)."""
    rng = np.random.default_rng(seed)
    n = int(max(0.2, 1.2 * rt60 * max(band_scale)) * sr)
    total = np.zeros(n)
    t_mix = mixing_time(dims) if t_mix is None else float(t_mix)
    for b, scale in enumerate(band_scale):
        t60 = rt60 * scale
        beta = eyring_beta(t60, dims)
        h, t_ism = _ism(src, mic, dims, beta, sr, n, max_images, rng, t_limit=t_mix)
        if t_ism < n / sr - 1e-3:
            # diffuse tail: Gaussian noise decaying at 60 dB per t60, matched to the ISM
            # energy in the last 20 ms before t_ism
            k0 = int(t_ism * sr)
            win = max(1, int(0.02 * sr))
            e_ism = np.mean(h[max(0, k0 - win): k0] ** 2) + 1e-20
            t = np.arange(n - k0) / sr
            tail = rng.standard_normal(n - k0) * np.exp(-6.9078 * t / t60)
            ramp = np.clip(np.arange(n - k0) / win, 0, 1)
            tail *= np.sqrt(e_ism) * ramp
            h[k0:] = h[k0:] * (1 - ramp) + tail
        total += _band_split(h, sr)[b]
    d = np.linalg.norm(np.asarray(src) - np.asarray(mic))
    return (total * (4 * np.pi * d)).astype(np.float32)


def schroeder_rt60(rir: np.ndarray, sr: int = SAMPLE_RATE, lo_db: float = -5.0, hi_db: float = -25.0) -> float:
    """RT60 (s) from the backward-integrated energy decay curve, fitted between ``lo_db`` and ``hi_db``."""
    e = np.asarray(rir, np.float64) ** 2
    edc = np.cumsum(e[::-1])[::-1]
    edc_db = 10 * np.log10(edc / edc[0] + 1e-30)
    i0 = int(np.argmax(edc_db <= lo_db))
    i1 = int(np.argmax(edc_db <= hi_db))
    if i1 <= i0 + 2:
        return float("nan")
    t = np.arange(i0, i1) / sr
    slope, _ = np.polyfit(t, edc_db[i0:i1], 1)
    return float(-60.0 / slope)


# --------------------------------------------------------------------------- noise, codec

def _fast_len(n: int) -> int:
    from scipy.fft import next_fast_len

    return int(next_fast_len(int(n), real=True))


def _coloured(n: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    """Noise with a 1/f^exponent power spectrum (0 white, 1 pink, 2 brown)."""
    m = _fast_len(n)
    X = np.fft.rfft(rng.standard_normal(m))
    f = np.arange(len(X), dtype=float)
    f[0] = 1.0
    y = np.fft.irfft(X / f ** (exponent / 2), m)[:n]
    return y / (np.std(y) + 1e-12)


def add_noise(x: np.ndarray, snr_db: float, rng: np.random.Generator, sr: int = SAMPLE_RATE,
              kind: str = "mix", hum_hz: float = 50.0) -> np.ndarray:
    """``x`` plus background noise at ``snr_db`` (relative to the signal's mean power)."""
    n = len(x)
    if kind == "pink":
        noise = _coloured(n, rng, 1.0)
    elif kind == "brown":
        noise = _coloured(n, rng, 2.0)
    else:
        t = np.arange(n) / sr
        hum = sum(np.sin(2 * np.pi * hum_hz * h * t + rng.uniform(0, 2 * np.pi)) / h for h in (1, 2, 3, 5))
        noise = _coloured(n, rng, 1.0) + 0.7 * _coloured(n, rng, 2.0) + 0.3 * hum / np.std(hum)
        noise /= np.std(noise) + 1e-12
    p = float(np.mean(np.asarray(x, np.float64) ** 2)) + 1e-12
    return (x + noise * np.sqrt(p / 10 ** (snr_db / 10))).astype(np.float32)


def codec_available(fmt: str) -> bool:
    try:
        import soundfile as sf

        if fmt == "mp3":
            return "MP3" in sf.available_formats()
        if fmt == "opus":
            return "OPUS" in sf.available_subtypes("OGG")
    except Exception:  # noqa: BLE001
        return False
    return False


def codec_roundtrip(x: np.ndarray, fmt: str = "mp3", quality: float = 0.5, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Encode and decode ``x`` (mono float) with a lossy codec.

    ``fmt``: ``"mp3"`` (libsndfile/LAME; ``quality`` 0 = best … 1 = worst, the VBR
    compression level) or ``"opus"`` (Ogg/Opus; Opus runs at 48 kHz, so the signal is
    resampled there and back).  Where libsndfile lacks the encoder, an approximation:
    band limit at 5-11 kHz (by quality) and 5-7 bit quantisation of STFT magnitudes."""
    import soundfile as sf

    x = np.clip(np.asarray(x, np.float32), -1, 1)
    if fmt == "opus" and codec_available("opus"):
        import soxr

        y48 = soxr.resample(x, sr, 48000)
        buf = io.BytesIO()
        sf.write(buf, y48, 48000, format="OGG", subtype="OPUS", compression_level=float(quality))
        buf.seek(0)
        y, r = sf.read(buf, dtype="float32")
        y = soxr.resample(y, r, sr).astype(np.float32)
    elif fmt == "mp3" and codec_available("mp3"):
        buf = io.BytesIO()
        sf.write(buf, x, sr, format="MP3", subtype="MPEG_LAYER_III", compression_level=float(quality))
        buf.seek(0)
        y, r = sf.read(buf, dtype="float32")
    else:
        return _codec_approximation(x, quality, sr)
    y = y[: len(x)]
    if len(y) < len(x):
        y = np.pad(y, (0, len(x) - len(y)))
    # libsndfile removes the encoders' lead-in delay itself (checked: 0 samples of lag on
    # noise for MP3 and Opus at every quality), so sample n stays sample n
    return y.astype(np.float32)


def _codec_approximation(x: np.ndarray, quality: float, sr: int) -> np.ndarray:
    from scipy.signal import istft, stft

    f, _, Z = stft(x, sr, nperseg=1024)
    cut = 11000 - 6000 * float(quality)
    Z[f > cut] = 0
    mag, ph = np.abs(Z), np.angle(Z)
    bits = 7 - 2 * float(quality)
    top = mag.max() + 1e-12
    q = np.round(np.log1p(mag / top * 1e3) / np.log1p(1e3) * (2 ** bits - 1)) / (2 ** bits - 1)
    mag = np.expm1(q * np.log1p(1e3)) / 1e3 * top
    _, y = istft(mag * np.exp(1j * ph), sr, nperseg=1024)
    return np.pad(y[: len(x)], (0, max(0, len(x) - len(y)))).astype(np.float32)


# --------------------------------------------------------------------------- scenes

@dataclass
class Scene:
    """One recording situation."""

    room: tuple[float, float, float] = (0.0, 0.0, 0.0)    # metres; all 0 = dry
    rt60: float = 0.0
    src: tuple[float, float, float] = (0.0, 0.0, 0.0)
    mic: tuple[float, float, float] = (0.0, 0.0, 0.0)
    noise_snr_db: float = 0.0                             # 0 = no added noise
    noise_kind: str = "mix"
    hum_hz: float = 50.0
    codec: str = ""                                        # "", "mp3", "opus"
    codec_quality: float = 0.5
    tilt_db: float = 0.0                                   # microphone / phone colouring: dB per octave re 1 kHz
    lowcut_hz: float = 0.0
    seed: int = 0

    def to_json(self) -> dict:
        d = asdict(self)
        d["room"], d["src"], d["mic"] = list(self.room), list(self.src), list(self.mic)
        return d


def draw_scene(rng: np.random.Generator, dry_p: float = 0.1) -> Scene:
    """A random recording: living room to concert hall, near or far microphone, noise, often a codec."""
    seed = int(rng.integers(2**31))
    if rng.random() < dry_p:
        room, rt60, src, mic = (0.0, 0.0, 0.0), 0.0, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)
    else:
        kind = rng.choice(["living", "studio", "hall", "church"], p=[0.35, 0.2, 0.35, 0.1])
        if kind == "living":
            room, rt60 = (rng.uniform(4, 7), rng.uniform(3.5, 6), rng.uniform(2.4, 3.0)), rng.uniform(0.3, 0.7)
        elif kind == "studio":
            room, rt60 = (rng.uniform(6, 10), rng.uniform(5, 8), rng.uniform(3, 4.5)), rng.uniform(0.25, 0.5)
        elif kind == "hall":
            room, rt60 = (rng.uniform(18, 35), rng.uniform(12, 25), rng.uniform(8, 15)), rng.uniform(1.2, 2.2)
        else:
            room, rt60 = (rng.uniform(25, 45), rng.uniform(10, 20), rng.uniform(10, 20)), rng.uniform(2.2, 3.5)
        L = np.array(room)
        src = tuple(float(v) for v in np.array([rng.uniform(0.2, 0.45), rng.uniform(0.3, 0.7), 0.0]) * L + [0, 0, 1.1])
        dist = rng.uniform(0.8, 3.0) if kind in ("living", "studio") else rng.uniform(2.0, min(15.0, 0.45 * L[0]))
        ang = rng.uniform(-0.6, 0.6)
        m = np.array(src) + np.array([dist * math.cos(ang), dist * math.sin(ang), rng.uniform(0.0, 1.5)])
        mic = tuple(float(v) for v in np.clip(m, 0.3, L - 0.3))
        room, rt60 = tuple(float(v) for v in room), float(rt60)
    noisy = rng.random() < 0.7
    codec = str(rng.choice(["", "mp3", "opus"], p=[0.3, 0.4, 0.3]))
    return Scene(room=room, rt60=round(rt60, 3), src=src, mic=mic,
                 noise_snr_db=round(float(rng.uniform(15, 40)), 1) if noisy else 0.0,
                 noise_kind=str(rng.choice(["mix", "pink", "brown"])), hum_hz=float(rng.choice([50.0, 60.0])),
                 codec=codec, codec_quality=round(float(rng.uniform(0.3, 0.9)), 2),
                 tilt_db=round(float(rng.normal(0, 1.5)), 2), lowcut_hz=float(rng.choice([0.0, 60.0, 120.0])), seed=seed)


def _tilt(x: np.ndarray, tilt_db: float, lowcut_hz: float, sr: int) -> np.ndarray:
    if not tilt_db and not lowcut_hz:
        return x
    m = _fast_len(len(x) + int(0.1 * sr))          # zero padding: the filter's ringing does not wrap around
    X = np.fft.rfft(x, m)
    f = np.maximum(np.fft.rfftfreq(m, 1 / sr), 1.0)
    g = 10 ** (tilt_db * np.log2(f / 1000.0) / 20)
    if lowcut_hz:
        g *= 1 / np.sqrt(1 + (lowcut_hz / f) ** 4)
    return np.fft.irfft(X * g, m)[: len(x)].astype(np.float32)


def apply_scene(x: np.ndarray, scene: Scene, sr: int = SAMPLE_RATE) -> np.ndarray:
    """The dry signal as recorded in ``scene``; peak-normalised to 0.9 like the corpus audio."""
    from scipy.signal import fftconvolve

    rng = np.random.default_rng(scene.seed)
    y = np.asarray(x, np.float32)
    if scene.rt60 > 0 and min(scene.room) > 0:
        h = shoebox_rir(scene.room, scene.src, scene.mic, scene.rt60, sr, seed=scene.seed)
        y = fftconvolve(y, h)[: len(y)].astype(np.float32)
    y = _tilt(y, scene.tilt_db, scene.lowcut_hz, sr)
    if scene.noise_snr_db > 0:
        y = add_noise(y, scene.noise_snr_db, rng, sr, scene.noise_kind, scene.hum_hz)
    y = y / (np.max(np.abs(y)) + 1e-9) * 0.9
    if scene.codec:
        y = codec_roundtrip(y, scene.codec, scene.codec_quality, sr)
    return y.astype(np.float32)
