"""The gate in front of the tracker's evidence (engine/gate.py): fixed thresholds for silence,
flat noise and steady sounds, and the fitted music / not-music classifier (configs/gate.toml)
for speech, applause and coloured noise. Real audio through the real front end."""

from __future__ import annotations

import numpy as np
import pytest

import music_fixtures as mf
from conftest_server import test_library  # noqa: F401  (session fixture)

from scorestream.core.audio import decode_audio_file
from scorestream.core.frontend import FrontEndConfig, spectrogram
from scorestream.engine import nonmusic
from scorestream.engine.gate import FEATURES, GateConfig, MusicClassifier, gate_features, gate_vector

WIN = 42


def _windows(frames: np.ndarray, step: int = 10) -> list[np.ndarray]:
    return [frames[s:s + WIN].T for s in range(0, len(frames) - WIN, step)]


def _rejected_share(frames: np.ndarray, clf: MusicClassifier) -> float:
    cfg = GateConfig()
    ws = _windows(frames)
    out = [gate_features(w, cfg).reason(cfg) is not None or not clf.is_music(w) for w in ws]
    return float(np.mean(out))


def test_classifier_ships_and_matches_the_features():
    clf = MusicClassifier.load()
    assert clf is not None
    assert len(clf.weights) == len(clf.mean) == len(clf.scale) == len(FEATURES)
    assert 0.0 < clf.threshold < 1.0


def test_classifier_refuses_a_config_of_other_features(tmp_path):
    p = tmp_path / "gate.toml"
    p.write_text('[classifier]\nfeatures = ["level"]\nmean = [0]\nscale = [1]\nweights = [1]\nbias = 0\nthreshold = 0.5\n')
    with pytest.raises(ValueError, match="refit"):
        MusicClassifier.load(p)
    (tmp_path / "none.toml").write_text("# no classifier\n")
    assert MusicClassifier.load(tmp_path / "none.toml") is None


def test_piano_passes_and_speech_and_noise_do_not(test_library):  # noqa: F811
    clf = MusicClassifier.load()
    fe = FrontEndConfig()
    wav = mf.performance("mozart-k545-1", lib=test_library)
    x, sr = decode_audio_file(wav)
    from scorestream.core.audio import to_mono_float

    music = spectrogram(to_mono_float(x, sr, target_rate=fe.sample_rate), fe)
    assert _rejected_share(music, clf) < 0.1
    for kind in ("speech_en", "speech_de", "noise_brown", "applause", "noise_white", "silence"):
        f = nonmusic.frames(kind, 15.0, 23)
        assert _rejected_share(f, clf) > 0.9, kind


def test_features_are_finite_for_edge_cases():
    for spec in (np.zeros((92, WIN), np.float32), np.full((92, WIN), 3.0, np.float32),
                 np.random.default_rng(0).random((92, WIN)).astype(np.float32), np.zeros((92, 3), np.float32)):
        v = gate_vector(spec)
        assert v.shape == (len(FEATURES),) and np.isfinite(v).all()


def test_nonmusic_is_reproducible():
    a = nonmusic.audio("applause", 3.0, 7, 22050)
    b = nonmusic.audio("applause", 3.0, 7, 22050)
    assert a.shape == (66150,) and np.array_equal(a, b)
    assert not np.array_equal(a, nonmusic.audio("applause", 3.0, 8, 22050))
    with pytest.raises(ValueError, match="choose from"):
        nonmusic.audio("birdsong", 1.0, 0, 22050)
