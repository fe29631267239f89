"""Tests for the audio front end (scorestream.core.frontend, scorestream.core.audio).

The main fixture renders a few bars of a Bach chorale from music21's bundled
corpus with the fluidsynth CLI, so streaming/offline equivalence is checked on
real polyphonic music rather than only on noise.
"""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soxr

from scorestream.core.audio import StreamingResampler, load_audio, to_mono_float, write_wav
from scorestream.core.frontend import (
    FrontEndConfig,
    StreamingSpectrogram,
    filterbank_bins,
    frame_centres,
    make_filterbank,
    num_frames,
    spectrogram,
)

CFG = FrontEndConfig()
SR = CFG.sample_rate
TOL = 1e-5

_SOUNDFONTS = [
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
    "/usr/share/sounds/sf3/MuseScore_General.sf3",
    "/usr/share/sounds/sf3/FluidR3Mono_GM.sf3",
]


# --------------------------------------------------------------------------- #
# Fixtures
# --------------------------------------------------------------------------- #


def _render(midi: Path, wav: Path, rate: int, soundfont: str) -> None:
    cmd = ["fluidsynth", "-ni", "-g", "0.6", "-r", str(rate), "-F", str(wav), soundfont, str(midi)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 or not wav.exists():
        raise RuntimeError(f"fluidsynth failed ({proc.returncode}): {proc.stderr[-2000:]}")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """MIDI of BWV 66.6 bars 0-8 rendered at 22050 Hz and 44100 Hz (stereo int16 WAVs)."""
    if shutil.which("fluidsynth") is None:
        pytest.skip("the `fluidsynth` binary is not installed (apt install fluidsynth)")
    soundfont = next((sf for sf in _SOUNDFONTS if Path(sf).exists()), None)
    if soundfont is None:
        pytest.fail(f"fluidsynth is installed but none of the soundfonts {_SOUNDFONTS} exists")
    music21 = pytest.importorskip("music21")

    tmp = tmp_path_factory.mktemp("bwv66_6")
    midi = tmp / "bwv66_6.mid"
    score = music21.corpus.parse("bach/bwv66.6")
    score.measures(0, 8).write("midi", fp=str(midi))
    out = {"midi": midi, "wav22": tmp / "r22050.wav", "wav44": tmp / "r44100.wav"}
    _render(midi, out["wav22"], 22050, soundfont)
    _render(midi, out["wav44"], 44100, soundfont)
    return out


@pytest.fixture(scope="module")
def music(rendered: dict[str, Path]) -> np.ndarray:
    """The 22050 Hz rendering as mono float32 (~23 s)."""
    x, sr = load_audio(rendered["wav22"])
    assert sr == SR
    assert x.dtype == np.float32 and x.ndim == 1
    assert len(x) > 10 * SR and np.abs(x).max() > 0.05, "rendering is unexpectedly short or silent"
    return x


@pytest.fixture(scope="module")
def music_spec(music: np.ndarray) -> np.ndarray:
    return spectrogram(music)


def _stream(x: np.ndarray, sizes, proc: StreamingSpectrogram | None = None) -> np.ndarray:
    """Feed ``x`` in chunks whose sizes cycle through ``sizes``; return all frames."""
    proc = proc or StreamingSpectrogram(CFG)
    out = []
    i = 0
    k = 0
    while i < len(x):
        n = sizes[k % len(sizes)]
        k += 1
        frames = proc.process(x[i : i + n])
        assert frames.dtype == np.float32 and frames.shape[1] == CFG.n_bins
        out.append(frames)
        i += n
    out.append(proc.flush())
    assert proc.frames_emitted == num_frames(len(x))
    return np.concatenate(out)


# --------------------------------------------------------------------------- #
# Filterbank
# --------------------------------------------------------------------------- #


def test_filterbank_has_92_bins() -> None:
    assert CFG.n_bins == 92
    fb = make_filterbank(CFG)
    assert fb.shape == (CFG.frame_size // 2, 92)
    assert fb.dtype == np.float32
    assert (fb >= 0).all()
    np.testing.assert_allclose(fb.sum(axis=0), 1.0, rtol=1e-6)  # unit area
    peaks = fb.argmax(axis=0)
    assert (np.diff(peaks) > 0).all(), "band peaks must increase with frequency"
    bin_hz = SR / CFG.frame_size
    assert 30 - bin_hz <= peaks[0] * bin_hz and peaks[-1] * bin_hz <= 6000 + bin_hz


def test_filterbank_matches_independent_construction() -> None:
    """Re-derive the madmom recipe step by step, with different code."""
    bpo, fref = 16, 440.0
    k = np.arange(-200, 200)
    freqs = fref * 2.0 ** (k / bpo)
    freqs = freqs[(freqs >= 30.0) & (freqs <= 6000.0)]
    fft_freqs = np.fft.rfftfreq(CFG.frame_size, 1.0 / SR)[: CFG.frame_size // 2]
    nearest = np.array([int(np.argmin(np.abs(fft_freqs - f))) for f in freqs])
    bins = sorted(set(nearest.tolist()))
    np.testing.assert_array_equal(filterbank_bins(CFG), bins)

    ref = np.zeros((CFG.frame_size // 2, len(bins) - 2))
    for i, (start, centre, stop) in enumerate(zip(bins, bins[1:], bins[2:])):
        tri = np.concatenate(
            [np.linspace(0, 1, centre - start, endpoint=False), np.linspace(1, 0, stop - centre, endpoint=False)]
        )
        ref[start:stop, i] = tri / tri.sum()
    np.testing.assert_allclose(make_filterbank(CFG), ref, atol=1e-7)


def test_make_filterbank_returns_a_copy() -> None:
    fb = make_filterbank(CFG)
    fb[:] = 0
    assert make_filterbank(CFG).sum() > 0


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="even"):
        FrontEndConfig(frame_size=2047)
    with pytest.raises(ValueError, match="fmin"):
        FrontEndConfig(fmin=7000.0)
    with pytest.raises(ValueError, match="positive integer"):
        FrontEndConfig(fps=0)
    with pytest.raises(ValueError, match="positive integer"):
        FrontEndConfig(sample_rate=22050.5)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- #
# Frame grid
# --------------------------------------------------------------------------- #


def test_frame_centres_alternate_and_never_drift() -> None:
    c = frame_centres(72_001)  # one hour at 20 fps
    assert c[0] == 0 and c[1] == 1102 and c[2] == 2205 and c[3] == 3307
    assert set(np.diff(c).tolist()) == {1102, 1103}
    assert c[-1] == 72_000 * 2205 // 2 == 79_380_000  # exactly 3600 s * 22050


@pytest.mark.parametrize(
    "length, expected",
    [(0, 0), (1, 1), (1102, 1), (1103, 2), (2205, 2), (2206, 3), (22050, 20), (22051, 21), (SR * 60, 1200)],
)
def test_frame_count_rule(length: int, expected: int) -> None:
    # Frames whose centre floor(n * 2205 / 2) is < L: ceil(2 L / 2205).
    assert num_frames(length) == expected == math.ceil(2 * length / 2205)
    assert spectrogram(np.zeros(length, np.float32)).shape == (expected, 92)
    assert _stream(np.zeros(length, np.float32), [333]).shape == (expected, 92)


def _naive_spectrogram(x: np.ndarray) -> np.ndarray:
    """Slow, obviously-correct float64 reference: one frame at a time."""
    n = num_frames(len(x))
    padded = np.concatenate([np.zeros(1024), x.astype(np.float64), np.zeros(2048)])
    window = np.hanning(2048)
    fb = make_filterbank(CFG).astype(np.float64)
    out = np.zeros((n, fb.shape[1]))
    for i in range(n):
        centre = (i * 2205) // 2
        frame = padded[centre : centre + 2048]  # padded index = sample index + 1024
        mag = np.abs(np.fft.rfft(frame * window))[:1024]
        out[i] = np.log10(1.0 + mag @ fb)
    return out


def test_matches_naive_reference(music: np.ndarray) -> None:
    x = music[5 * SR : 7 * SR + 1234]
    np.testing.assert_allclose(spectrogram(x), _naive_spectrogram(x), atol=2e-5, rtol=1e-5)


def test_frame_support_and_leading_zeros() -> None:
    # Frame n covers samples [c_n - 1024, c_n + 1024): a click at sample 1000
    # is seen by frames 0 and 1 (centres 0 and 1102) but not by frame 2
    # (centre 2205, first sample 1181). Frame 0 is centred on sample 0, with
    # zeros before it, so a click at 0 hits the window's peak.
    x = np.zeros(5000, np.float32)
    x[1000] = 1.0
    spec = spectrogram(x)
    assert spec[0].max() > 0 and spec[1].max() > 0 and spec[2].max() == 0
    x[:] = 0
    x[0] = 1.0
    spec = spectrogram(x)
    assert spec[0].max() > 0.1 and not spec[1:].any()


# --------------------------------------------------------------------------- #
# Basic signals
# --------------------------------------------------------------------------- #


def test_sine_440_peaks_in_expected_band() -> None:
    t = np.arange(2 * SR) / SR
    x = (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    spec = spectrogram(x)
    assert spec.dtype == np.float32 and spec.shape == (40, 92)
    # The band whose centre is the FFT bin nearest 440 Hz.
    bins = filterbank_bins(CFG)
    expected_band = int(np.flatnonzero(bins[1:-1] == round(440.0 / (SR / CFG.frame_size)))[0])
    assert np.all(spec[2:-2].argmax(axis=1) == expected_band)


def test_silence_gives_zeros() -> None:
    spec = spectrogram(np.zeros(3 * SR, np.float32))
    assert spec.shape == (60, 92)
    assert not spec.any()


# --------------------------------------------------------------------------- #
# Streaming == offline
# --------------------------------------------------------------------------- #


def test_offline_output_format(music_spec: np.ndarray, music: np.ndarray) -> None:
    assert music_spec.dtype == np.float32
    assert music_spec.shape == (num_frames(len(music)), 92)
    assert np.isfinite(music_spec).all() and music_spec.max() > 0.1


@pytest.mark.parametrize("chunk", [7, 1102, 1103, 4096, 220500])
def test_streaming_equals_offline(music: np.ndarray, music_spec: np.ndarray, chunk: int) -> None:
    streamed = _stream(music, [chunk])
    assert streamed.shape == music_spec.shape
    assert np.abs(streamed - music_spec).max() <= TOL


def test_streaming_chunk_size_one(music: np.ndarray) -> None:
    x = music[3 * SR : 3 * SR + SR // 2 + 17]  # short excerpt: one Python call per sample
    offline = spectrogram(x)
    streamed = _stream(x, [1])
    assert streamed.shape == offline.shape
    assert np.abs(streamed - offline).max() <= TOL


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_random_chunks(music: np.ndarray, music_spec: np.ndarray, seed: int) -> None:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 30000, size=200).tolist()  # includes empty chunks
    sizes = [s if s % 4 else int(rng.integers(1, 8)) for s in sizes]  # and many tiny ones
    sizes[0] = max(sizes[0], 1)
    streamed = _stream(music, sizes)
    assert streamed.shape == music_spec.shape
    assert np.abs(streamed - music_spec).max() <= TOL


@pytest.mark.parametrize(
    "cfg",
    [
        FrontEndConfig(fps=5),  # hop 4410 > frame size: frames do not overlap
        FrontEndConfig(fps=30),  # hop 735
        FrontEndConfig(fps=7),  # integer hop 3150
        FrontEndConfig(sample_rate=44100, frame_size=4096, fps=20, fmax=8000.0),
    ],
    ids=["fps5", "fps30", "fps7", "44k"],
)
def test_streaming_equals_offline_other_configs(music: np.ndarray, cfg: FrontEndConfig) -> None:
    x = music[: 6 * SR]
    offline = spectrogram(x, cfg)
    assert offline.shape == (math.ceil(len(x) * cfg.fps / cfg.sample_rate), cfg.n_bins)
    proc = StreamingSpectrogram(cfg)
    rng = np.random.default_rng(11)
    out, i = [], 0
    while i < len(x):
        n = int(rng.integers(1, 9000))
        out.append(proc.process(x[i : i + n]))
        i += n
    out.append(proc.flush())
    streamed = np.concatenate(out)
    assert streamed.shape == offline.shape
    assert np.abs(streamed - offline).max() <= TOL


def test_streaming_emits_frames_as_soon_as_complete() -> None:
    proc = StreamingSpectrogram(CFG)
    assert proc.process(np.zeros(1023, np.float32)).shape == (0, 92)
    assert proc.process(np.zeros(1, np.float32)).shape == (1, 92)  # frame 0 ends at sample 1023
    assert proc.process(np.zeros(1101, np.float32)).shape == (0, 92)
    assert proc.process(np.zeros(1, np.float32)).shape == (1, 92)  # frame 1: centre 1102, ends at 2125
    assert proc.frames_emitted == 2
    assert proc.flush().shape == (num_frames(2126) - 2, 92)


def test_streaming_buffer_stays_bounded(music: np.ndarray) -> None:
    proc = StreamingSpectrogram(CFG)
    for i in range(0, len(music), 1024):
        proc.process(music[i : i + 1024])
    assert len(proc._buf) <= 4 * CFG.frame_size  # never grew: consumed samples were dropped


def test_reset_makes_second_stream_identical(music: np.ndarray) -> None:
    x = music[: 4 * SR]
    proc = StreamingSpectrogram(CFG)
    first = _stream(x, [3000, 17], proc)
    with pytest.raises(RuntimeError, match="reset"):
        proc.process(x[:10])
    proc.reset()
    assert proc.frames_emitted == 0
    second = _stream(x, [3000, 17], proc)
    np.testing.assert_array_equal(first, second)
    proc.reset()
    third = _stream(x, [5], proc)
    assert np.abs(third - first).max() <= TOL


def test_streaming_rejects_bad_chunks() -> None:
    proc = StreamingSpectrogram(CFG)
    with pytest.raises(ValueError, match="to_mono_float"):
        proc.process(np.zeros(10, np.int16))
    with pytest.raises(ValueError, match="1-D"):
        proc.process(np.zeros((10, 2), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        proc.process(np.array([0.0, np.nan], np.float32))


# --------------------------------------------------------------------------- #
# Conversion and resampling
# --------------------------------------------------------------------------- #


def test_int16_scaling_and_layouts() -> None:
    pcm = np.array([-32768, 16384, 0, 32767], np.int16)
    np.testing.assert_array_equal(to_mono_float(pcm, SR), np.array([-1.0, 0.5, 0.0, 32767 / 32768], np.float32))
    np.testing.assert_array_equal(to_mono_float(np.array([-2**31, 2**30], np.int32), SR), [-1.0, 0.5])
    stereo = np.array([[0, 16384], [-32768, -32768]], np.int16)
    np.testing.assert_array_equal(to_mono_float(stereo, SR), [0.25, -1.0])
    np.testing.assert_array_equal(to_mono_float(stereo.reshape(-1), SR, channels=2), [0.25, -1.0])
    assert to_mono_float(np.zeros(10, np.float64), SR).dtype == np.float32
    buf = np.zeros(10, np.float32)
    out = to_mono_float(buf, SR)
    buf[:] = 1.0  # caller reuses its buffer
    assert not out.any()


def test_44k_stereo_int16_matches_22k_original(rendered: dict[str, Path], music_spec: np.ndarray) -> None:
    from scipy.io import wavfile

    sr44, pcm44 = wavfile.read(rendered["wav44"])
    assert sr44 == 44100 and pcm44.dtype == np.int16 and pcm44.shape[1] == 2
    x = to_mono_float(pcm44, sr44)  # (n, 2) layout
    assert x.dtype == np.float32 and abs(len(x) - len(pcm44) / 2) <= 1
    np.testing.assert_array_equal(to_mono_float(pcm44.reshape(-1), sr44, channels=2), x)  # interleaved
    spec = spectrogram(x)
    n = min(len(spec), len(music_spec))
    assert abs(len(spec) - len(music_spec)) <= 1
    corr = np.corrcoef(spec[:n].ravel(), music_spec[:n].ravel())[0, 1]
    assert corr > 0.98, corr


def test_streaming_resampler_matches_offline(rendered: dict[str, Path]) -> None:
    from scipy.io import wavfile

    sr44, pcm44 = wavfile.read(rendered["wav44"])
    pcm44 = pcm44[: 8 * sr44]
    interleaved = pcm44.reshape(-1)
    offline = to_mono_float(pcm44, sr44)

    rs = StreamingResampler(sr44, channels=2)
    rng = np.random.default_rng(7)
    out, i = [], 0
    while i < len(pcm44):
        n = int(rng.integers(1, 6000))  # frames per websocket message
        out.append(rs.process(interleaved[2 * i : 2 * (i + n)]))
        i += n
    out.append(rs.flush())
    streamed = np.concatenate(out)
    assert streamed.dtype == np.float32
    assert abs(len(streamed) - len(offline)) <= 2
    n = min(len(streamed), len(offline))
    assert np.abs(streamed[:n] - offline[:n]).max() < 1e-4

    # Whole live pipeline: resampler -> streaming spectrogram == offline pipeline.
    rs.reset()
    spec_proc = StreamingSpectrogram(CFG)
    frames = []
    for j in range(0, len(interleaved), 4096):
        frames.append(spec_proc.process(rs.process(interleaved[j : j + 4096])))
    frames.append(spec_proc.process(rs.flush()))
    frames.append(spec_proc.flush())
    live = np.concatenate(frames)
    ref = spectrogram(offline)
    m = min(len(live), len(ref))
    assert abs(len(live) - len(ref)) <= 1
    assert np.abs(live[:m] - ref[:m]).max() < 1e-3


def test_streaming_resampler_passthrough_and_reset() -> None:
    x = (np.arange(1000, dtype=np.int16) - 500) * 30
    rs = StreamingResampler(SR, channels=1)
    np.testing.assert_array_equal(rs.process(x), to_mono_float(x, SR))
    assert rs.flush().size == 0
    with pytest.raises(RuntimeError, match="reset"):
        rs.process(x)
    rs.reset()
    assert rs.process(x).size == 1000


def test_offline_resampling_matches_soxr_hq() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(48000).astype(np.float32) * 0.1
    np.testing.assert_allclose(to_mono_float(x, 48000), soxr.resample(x, 48000, SR, quality="HQ"), atol=1e-6)


@pytest.mark.parametrize(
    "samples, rate, kwargs, match",
    [
        (np.zeros(0, np.int16), SR, {}, "empty"),
        (np.zeros((0, 2), np.float32), SR, {}, "empty"),
        (np.array([0.0, np.nan]), SR, {}, "NaN"),
        (np.array([0.0, np.inf], np.float32), SR, {}, "NaN or infinite"),
        (np.zeros(10, np.complex64), SR, {}, "unsupported sample dtype"),
        (np.zeros(10, np.int8), SR, {}, "unsupported sample dtype"),
        (np.array(["a", "b"]), SR, {}, "unsupported sample dtype"),
        (np.zeros(10, np.int16), 0, {}, "must be > 0"),
        (np.zeros(10, np.int16), -44100, {}, "must be > 0"),
        (np.zeros(10, np.int16), 1_000_000, {}, "maximum of 384000"),
        (np.zeros(10, np.int16), float("nan"), {}, "must be > 0"),
        (np.zeros(10, np.int16), "44100", {}, "must be a number"),
        (np.zeros(11, np.int16), 44100, {"channels": 2}, "not a multiple of channels=2"),
        (np.zeros((10, 2), np.int16), 44100, {"channels": 3}, "does not match"),
        (np.zeros((2, 44100), np.int16), 44100, {}, "transposed"),
        (np.zeros((2, 2, 2), np.int16), 44100, {}, "1-D .* or 2-D"),
        (np.zeros(10, np.int16), 44100, {"channels": 0}, "channels must be"),
    ],
)
def test_bad_input_raises_helpful_error(samples, rate, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        to_mono_float(samples, rate, **kwargs)


def test_streaming_resampler_validation() -> None:
    with pytest.raises(ValueError, match="in_rate"):
        StreamingResampler(0, 2)
    with pytest.raises(ValueError, match="maximum"):
        StreamingResampler(400_000, 2)
    rs = StreamingResampler(44100, 2)
    with pytest.raises(ValueError, match="whole sample frames"):
        rs.process(np.zeros(3, np.int16))
    assert rs.process(np.zeros(0, np.int16)).size == 0  # empty websocket message is fine


def test_spectrogram_rejects_integer_pcm() -> None:
    with pytest.raises(ValueError, match="to_mono_float"):
        spectrogram(np.zeros(1000, np.int16))


# --------------------------------------------------------------------------- #
# WAV I/O
# --------------------------------------------------------------------------- #


def test_wav_roundtrip(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    stereo = np.clip(rng.standard_normal((5000, 2)) * 0.3, -1, 1).astype(np.float32)
    write_wav(tmp_path / "a.wav", stereo, 44100)
    back, sr = load_audio(tmp_path / "a.wav", mono=False)
    assert sr == 44100 and back.shape == (5000, 2) and back.dtype == np.float32
    assert np.abs(back - stereo).max() <= 1 / 32768 + 1e-7

    write_wav(tmp_path / "b.wav", stereo[:, 0], 22050, sample_format="float32")
    mono, sr = load_audio(tmp_path / "b.wav")
    assert sr == 22050
    np.testing.assert_array_equal(mono, stereo[:, 0])

    resampled, sr = load_audio(tmp_path / "a.wav", sample_rate=22050)
    assert sr == 22050 and resampled.ndim == 1 and abs(len(resampled) - 2500) <= 1


def test_wav_errors(tmp_path: Path) -> None:
    bad = tmp_path / "not.wav"
    bad.write_bytes(b"this is not a wav file at all")
    with pytest.raises(ValueError, match="WAV"):
        load_audio(bad)
    with pytest.raises(ValueError, match="float"):
        write_wav(tmp_path / "c.wav", np.zeros(10, np.int16), 22050)
    with pytest.raises(ValueError, match="sample_format"):
        write_wav(tmp_path / "c.wav", np.zeros(10, np.float32), 22050, sample_format="int24")
