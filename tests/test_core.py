"""The torch-free core: model input contract, pack format, splits, deterministic files, CLI errors."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from scorestream.core import geometry as G
from scorestream.core.errors import IncompatibleModelError
from scorestream.core.frontend import FrontEndConfig, StreamingSpectrogram, spectrogram
from scorestream.core.npz import save_npz
from scorestream.core.pack import PackError, read_pack
from scorestream.core.spec import ModelInputSpec
from scorestream.core.splits import is_paper_test_take, split_of, tempo_milli
from scorestream.core.strip import unroll

REPO = Path(__file__).resolve().parent.parent
WEIGHTS = REPO / "models" / "weights"


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "scorestream.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)


def _assert_one_line_error(r, *words):
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    err = [l for l in r.stderr.strip().splitlines() if "error" in l]
    assert len(err) == 1, r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


# --------------------------------------------------------------------------- input spec

def test_shipped_models_carry_the_input_spec_of_this_core():
    for name in ("bl1_2s", "bl2_4s_at"):
        info = json.loads((WEIGHTS / f"{name}.json").read_text())
        spec = ModelInputSpec.from_json(info["input_spec"])
        assert spec == ModelInputSpec.serving(info["config"]["audio_frames"], info["config"]["embed_dim"])
        assert spec.frontend() == FrontEndConfig() and spec.staff_space == G.STAFF_SPACE


def test_embedder_refuses_a_model_with_another_input_spec(tmp_path):
    from scorestream.models.embedder import OnnxEmbedder

    for part in ("audio", "sheet"):
        (tmp_path / f"m_{part}.onnx").write_bytes((WEIGHTS / f"bl1_2s_{part}.onnx").read_bytes())
    with pytest.raises(IncompatibleModelError, match="missing"):
        OnnxEmbedder(tmp_path / "m")
    info = json.loads((WEIGHTS / "bl1_2s.json").read_text())
    info["input_spec"]["fps"] = 25
    info["input_spec"]["staff_space"] = 8.0
    (tmp_path / "m.json").write_text(json.dumps(info))
    with pytest.raises(IncompatibleModelError, match=r"fps: 25 vs 20.*staff_space: 8.0 vs 7.2"):
        OnnxEmbedder(tmp_path / "m")
    info["input_spec"]["fps"], info["input_spec"]["staff_space"] = 20, 7.2
    (tmp_path / "m.json").write_text(json.dumps(info))
    emb = OnnxEmbedder(tmp_path / "m")
    assert emb.input_spec.audio_frames == 42 and len(emb.fingerprint) == 16


def test_ensemble_satisfies_the_embedder_protocol():
    from scorestream.models.embedder import Embedder, load_embedder

    single, ens = load_embedder("bl1_2s"), load_embedder("bl1_2s+bl2_4s_at")
    assert isinstance(single, Embedder) and isinstance(ens, Embedder)
    assert ens.input_spec.audio_frames == 84 and ens.embed_dim == 64 and ens.fingerprint != single.fingerprint


# --------------------------------------------------------------------------- splits

def test_splits_are_stable_and_by_group():
    groups = [f"work{i}" for i in range(2000)]
    s = [split_of(g, 0.1, 0.1) for g in groups]
    assert s == [split_of(g, 0.1, 0.1) for g in groups]
    share = {k: s.count(k) / len(s) for k in ("train", "valid", "test")}
    assert abs(share["test"] - 0.1) < 0.03 and abs(share["valid"] - 0.1) < 0.03
    assert tempo_milli({"tempo": 1.0, "rubato": 0.0}) == 1000
    assert tempo_milli({"tempo": 1.0, "rubato": 0.05}) == 1001
    assert is_paper_test_take({"timbre": "X", "tempo": 1.0, "rubato": 0}, "X")
    assert not is_paper_test_take({"timbre": "X", "tempo": 1.0, "rubato": 0.1}, "X")
    assert not is_paper_test_take({"timbre": "Y", "tempo": 1.0, "rubato": 0}, "X")


# --------------------------------------------------------------------------- pack files

@pytest.mark.parametrize("content", [b"", b"garbage bytes, not an archive", None])
def test_bad_pack_files_give_one_line_errors(tmp_path, content):
    p = tmp_path / "bad.npz"
    if content is None:          # a valid .npz that is not a pack
        np.savez(p, x=np.zeros(3))
    else:
        p.write_bytes(content)
    with pytest.raises(PackError, match="not a training pack|empty|damaged"):
        read_pack(p)
    _assert_one_line_error(_cli("eval", "retrieval", "--pack", p, "--model", "bl1_2s"), str(p))
    _assert_one_line_error(_cli("corpus", "repack", p, "--out", tmp_path / "o.npz"), str(p))
    assert not (tmp_path / "o.npz").exists()


def test_truncated_pack_is_refused(tmp_path):
    p = tmp_path / "t.npz"
    np.savez_compressed(p, meta=np.array("{}"), spec=np.zeros((100, 92), np.uint8), strips=np.zeros((25, 10), np.uint8),
                        perfs=np.zeros((1, 8), np.int64), pairs=np.zeros((1, 4), np.int32))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(PackError):
        read_pack(p)


def test_eval_cli_option_errors(tmp_path):
    r = _cli("eval", "retrieval", "--pack", tmp_path / "x.npz", "--candidates", "0")
    assert r.returncode == 2 and "at least 2 candidates" in r.stderr and "Traceback" not in r.stderr
    r = _cli("eval", "retrieval")
    assert r.returncode != 0 and "--corpus DIR or --pack FILE" in r.stderr
    _assert_one_line_error(_cli("eval", "retrieval", "--corpus", tmp_path), "not a corpus folder")


def test_version_and_help():
    from scorestream import __version__

    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"scorestream {__version__}"
    r = _cli("eval", "retrieval", "--help")
    assert r.returncode == 0 and "--candidates" in r.stdout and "default 10000" in r.stdout
    # every option and argument of every command has a help text
    import argparse

    from scorestream.cli import build_parser

    missing = []

    def walk(parser, path):
        for act in parser._actions:
            if isinstance(act, argparse._SubParsersAction):
                for name, sub in act.choices.items():
                    walk(sub, f"{path} {name}")
            elif not isinstance(act, (argparse._HelpAction, argparse._VersionAction)) and not act.help:
                missing.append(f"{path} {'/'.join(act.option_strings) or act.dest}")

    walk(build_parser(), "scorestream")
    assert not missing, missing


# --------------------------------------------------------------------------- deterministic npz

def test_save_npz_is_deterministic_and_loadable(tmp_path):
    a = {"spec": np.arange(12, dtype=np.float16).reshape(3, 4), "onsets": np.array([0.5, 1.0], np.float32)}
    save_npz(tmp_path / "a.npz", **a)
    import time

    time.sleep(1.1)   # zip timestamps have 2 s resolution; numpy.savez would differ now
    save_npz(tmp_path / "b.npz", **a)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    z = np.load(tmp_path / "a.npz")
    assert set(z.files) == {"spec", "onsets"} and np.array_equal(z["spec"], a["spec"])
    assert zipfile.is_zipfile(tmp_path / "a.npz")


# --------------------------------------------------------------------------- strip geometry

def test_strip_maps_page_points_both_ways():
    rng = np.random.default_rng(0)
    pages = [np.full((1100, 835), 255, np.uint8), np.full((3300, 2480), 255, np.uint8)]
    systems = [[(60.0, 100.0, 780.0, 160.0, 7.2), (60.0, 300.0, 780.0, 380.0, 8.0)], [(200.0, 400.0, 2300.0, 700.0, 21.0)]]
    strip = unroll(pages, systems)
    assert strip.image.shape[0] == G.STRIP_HEIGHT and len(strip.segments) == 3
    for seg, (p, k) in zip(strip.segments, [(0, 0), (0, 1), (1, 0)]):
        assert (seg.page, seg.system) == (p, k)
        x0, y0, x1, y1, ss = systems[p][k]
        assert seg.scale == pytest.approx(G.STAFF_SPACE / ss, rel=0.01)
        for _ in range(5):
            x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
            sx, sy = strip.page_to_strip(p, k, x, y)
            p2, k2, x2, y2 = strip.strip_to_page(sx, sy)
            assert (p2, k2) == (p, k) and x2 == pytest.approx(x, abs=1e-6) and y2 == pytest.approx(y, abs=1e-6)
        # the system's centre line lands on the strip's centre row
        assert strip.page_to_strip(p, k, x0, (y0 + y1) / 2)[1] == pytest.approx(G.CENTER_ROW)


# --------------------------------------------------------------------------- front end without fluidsynth

def _piano_like(seconds=12.0, sr=22050, seed=0):
    """Decaying harmonic tones with random onsets and pitches: music-like audio from numpy alone."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    x = np.zeros(n, np.float64)
    t = np.arange(int(1.5 * sr)) / sr
    for onset in np.sort(rng.uniform(0, seconds - 0.2, 60)):
        f0 = 440.0 * 2 ** ((rng.integers(30, 80) - 69) / 12)
        tone = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 6) if f0 * h < sr / 2)
        tone *= np.exp(-3.0 * t) * rng.uniform(0.05, 0.2)
        i = int(onset * sr)
        m = min(len(tone), n - i)
        x[i: i + m] += tone[:m]
    return (x / (np.abs(x).max() + 1e-9) * 0.8).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1])
def test_streaming_equals_offline_on_numpy_audio(seed):
    x = _piano_like(seed=seed)
    ref = spectrogram(x)
    rng = np.random.default_rng(seed)
    st = StreamingSpectrogram()
    out, pos = [], 0
    while pos < len(x):
        k = int(rng.integers(1, 6000))
        out.append(st.process(x[pos: pos + k]))
        pos += k
    out.append(st.flush())
    got = np.concatenate(out)
    assert got.shape == ref.shape and ref.max() > 0.5
    np.testing.assert_allclose(got, ref, atol=1e-5)
