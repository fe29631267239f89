"""Audio that is not music, for the ``unknown`` evaluation (pure functions; numpy, espeak-ng).

The tracker must say ``unknown`` for speech, applause, noise and silence, and let a piece go
soon after its music stops (a radio announcer after the last chord).  These generators make
such audio at the front end's sample rate, reproducibly (a seed per item):

* ``speech``: espeak-ng (Debian package), English and German voices at several speeds and
  pitches, a few different texts; long stretches are made of sentences joined with short
  pauses, as an announcer speaks;
* ``noise``: white, pink (1/f) and brown (1/f^2) noise, with a slow level drift;
* ``applause``: many hand claps (short decaying bursts of band-passed noise, 15-60 per
  second, random levels) over a crowd murmur, swelling and dying away;
* ``hum``: mains hum (50/60 Hz and harmonics) or a fan's whine;
* ``silence``: digital zero and a very low noise floor (a quiet room, -70 dBFS).

``after_piece`` puts one of them right after a stretch of a library piece's frames.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from scorestream.core.frontend import FrontEndConfig, spectrogram

TEXTS = {
    "en": ["You are listening to the evening concert. That was the first movement, and after a short pause "
           "we continue with the second.",
           "Good evening and welcome back. The next work on our programme was written in the spring of the "
           "same year, shortly before the composer left the city.",
           "Traffic news: the motorway is closed between the two northern junctions after an accident this "
           "afternoon, please expect delays.",
           "Thank you very much. We will take a short break of twenty minutes; drinks are served in the foyer."],
    "de": ["Sie hören das Abendkonzert. Das war der erste Satz, und nach einer kurzen Pause geht es weiter mit "
           "dem zweiten.",
           "Guten Abend und willkommen zurück. Das nächste Werk unseres Programms entstand im Frühjahr desselben "
           "Jahres, kurz bevor der Komponist die Stadt verließ.",
           "Die Verkehrsmeldungen: Die Autobahn ist nach einem Unfall zwischen den beiden nördlichen Anschlussstellen "
           "gesperrt, bitte rechnen Sie mit Verzögerungen."],
}
VOICES = {"en": ["en", "en-us", "en+f3", "en+m3"], "de": ["de", "de+f2", "de+m2"]}
KINDS = ("speech_en", "speech_de", "noise_white", "noise_pink", "noise_brown", "applause", "hum", "silence", "room_tone")


def espeak(text: str, sr: int, *, voice: str | None = None, speed: int = 160, pitch: int | None = None) -> np.ndarray:
    """``text`` spoken by espeak-ng (its default voice unless ``voice``), mono float32 at ``sr``."""
    exe = shutil.which("espeak-ng") or shutil.which("espeak")
    if exe is None:
        raise RuntimeError("espeak-ng is missing: run scripts/setup.sh (Debian package espeak-ng)")
    import soundfile as sf

    from scorestream.core.audio import to_mono_float

    args = [exe, "-s", str(speed)] + (["-v", voice] if voice else []) + (["-p", str(pitch)] if pitch is not None else [])
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "s.wav"
        subprocess.run(args + ["-w", str(f), text], check=True, capture_output=True)
        x, r = sf.read(str(f), dtype="float32", always_2d=True)
    return to_mono_float(x, r, target_rate=sr)


def speech(seconds: float, lang: str, rng: np.random.Generator, sr: int, *, voices=None, texts=None) -> np.ndarray:
    """Sentences in ``lang`` ("en" | "de") from random voices, speeds and pitches, with pauses
    (``voices`` / ``texts``: the espeak-ng voices and sentences to draw from; default all)."""
    voices = list(voices or VOICES[lang])
    texts = list(texts or TEXTS[lang])
    out, n = [], int(seconds * sr)
    total = 0
    while total < n:
        text = texts[int(rng.integers(len(texts)))]
        voice = voices[int(rng.integers(len(voices)))]
        y = espeak(text, sr, voice=voice, speed=int(rng.integers(130, 190)), pitch=int(rng.integers(30, 70)))
        y = y / (np.abs(y).max() + 1e-9) * float(rng.uniform(0.2, 0.7))
        out.append(y)
        out.append(np.zeros(int(rng.uniform(0.2, 0.9) * sr), np.float32))
        total += len(y) + len(out[-1])
    return np.concatenate(out)[:n].astype(np.float32)


def _colored(n: int, power: float, rng: np.random.Generator) -> np.ndarray:
    """Noise with a 1/f**power spectrum, unit peak."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    y = np.fft.irfft(spec / f ** (power / 2.0), n)
    return (y / (np.abs(y).max() + 1e-12)).astype(np.float32)


def noise(seconds: float, color: str | float, rng: np.random.Generator, sr: int) -> np.ndarray:
    """Noise of a named colour or a spectral slope ``1/f**color``, with a slow level drift."""
    n = int(seconds * sr)
    power = color if isinstance(color, (int, float)) else {"white": 0.0, "pink": 1.0, "brown": 2.0}[color]
    y = _colored(n, float(power), rng)
    drift = 1.0 + 0.3 * np.sin(2 * np.pi * np.arange(n) / sr / float(rng.uniform(4, 12)) + rng.uniform(0, 6))
    return (y * drift * float(rng.uniform(0.1, 0.5))).astype(np.float32)


def applause(seconds: float, rng: np.random.Generator, sr: int) -> np.ndarray:
    """Hand claps (Poisson, 15-60 per second) over a crowd murmur, swelling and dying away."""
    n = int(seconds * sr)
    y = 0.05 * _colored(n, 1.0, rng)
    rate = float(rng.uniform(15, 60))
    times = np.cumsum(rng.exponential(1.0 / rate, int(rate * seconds * 1.5) + 10))
    times = times[times < seconds - 0.05]
    clap_len = int(0.03 * sr)
    env = np.exp(-np.arange(clap_len) / (float(rng.uniform(0.004, 0.01)) * sr)).astype(np.float32)
    for t0 in times:
        i = int(t0 * sr)
        burst = rng.standard_normal(clap_len).astype(np.float32)
        # a crude band-pass: difference of two one-pole smoothings (claps peak around 1-3 kHz)
        b = np.convolve(burst, np.ones(3, np.float32) / 3, mode="same") - np.convolve(burst, np.ones(15, np.float32) / 15, mode="same")
        y[i:i + clap_len] += b * env * float(rng.uniform(0.2, 1.0))
    shape = np.interp(np.arange(n) / sr, [0, 1.5, seconds - 3, seconds], [0.3, 1.0, 1.0, 0.2]).astype(np.float32)
    y *= shape
    return (0.8 * y / (np.abs(y).max() + 1e-9)).astype(np.float32)


def hum(seconds: float, rng: np.random.Generator, sr: int) -> np.ndarray:
    """Mains hum (50 or 60 Hz and harmonics) or a fan's whine over a little noise."""
    n = int(seconds * sr)
    t = np.arange(n) / sr
    f0 = float(rng.choice([50.0, 60.0, rng.uniform(80, 400)]))
    y = sum(float(rng.uniform(0.1, 1.0)) / k * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) for k in range(1, 8))
    y = y + 0.05 * _colored(n, 1.0, rng)
    return (float(rng.uniform(0.05, 0.4)) * y / (np.abs(y).max() + 1e-9)).astype(np.float32)


def silence(seconds: float, rng: np.random.Generator, sr: int, floor_dbfs: float | None = None) -> np.ndarray:
    n = int(seconds * sr)
    if floor_dbfs is None:
        return np.zeros(n, np.float32)
    return (10 ** (floor_dbfs / 20) * _colored(n, 1.0, rng)).astype(np.float32)


def audio(kind: str, seconds: float, seed: int, sr: int) -> np.ndarray:
    """``seconds`` of ``kind`` (one of KINDS), reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    if kind.startswith("speech_"):
        return speech(seconds, kind.split("_", 1)[1], rng, sr)
    if kind.startswith("noise_"):
        return noise(seconds, kind.split("_", 1)[1], rng, sr)
    if kind == "applause":
        return applause(seconds, rng, sr)
    if kind == "hum":
        return hum(seconds, rng, sr)
    if kind == "silence":
        return silence(seconds, rng, sr)
    if kind == "room_tone":
        return silence(seconds, rng, sr, floor_dbfs=-70.0)
    raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")


def frames(kind: str, seconds: float, seed: int, fe: FrontEndConfig = FrontEndConfig()) -> np.ndarray:
    """The front end's spectrogram frames (T, bins) of ``audio(kind, ...)``."""
    return spectrogram(audio(kind, seconds, seed, fe.sample_rate), fe)
