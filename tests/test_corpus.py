"""Corpus generator: alignment exactness, repeats, bad input, a tiny end-to-end build.

Fixtures come from music21's bundled corpus (no ../shared data needed).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

music21 = pytest.importorskip("music21")
pytest.importorskip("verovio")

from scorestream.models.corpus.engrave import EngravingStyle, load_score, new_toolkit, parse_svg_layout, rasterize  # noqa: E402
from scorestream.models.corpus.perform import PerformanceStyle, perform, performed_times, score_timing, write_midi  # noqa: E402
from scorestream.models.corpus.scorefile import ScoreError, keyboard_only, load_for_engraving, read_score_text  # noqa: E402
from scorestream.core.frontend import spectrogram  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SF_TRAIN = "/usr/share/sounds/sf2/TimGM6mb.sf2"
needs_fluidsynth = pytest.mark.skipif(not Path(SF_TRAIN).is_file(),
                                      reason="fluidsynth/soundfonts missing: run scripts/setup.sh")


def corpus_path(name: str) -> Path:
    return Path(str(music21.corpus.getWork(name)))


@pytest.fixture(scope="module")
def maple():
    """Maple Leaf Rag: piano, 4 repeated strains and a volta."""
    tk = new_toolkit()
    text = load_for_engraving(corpus_path("joplin/maple_leaf_rag"))
    n_pages = load_score(tk, text, EngravingStyle())
    timing = score_timing(tk)
    layouts = [parse_svg_layout(tk.renderToSVG(p)) for p in range(1, n_pages + 1)]
    return tk, timing, layouts


def test_every_onset_has_an_engraved_notehead(maple):
    _, timing, layouts = maple
    known = set().union(*(l.notes for l in layouts))
    ids = [i for ev in timing.event_ids for i in ev]
    assert len(ids) == len(timing.notes) > 2000
    assert all(i in known for i in ids)
    # boxes are inside their page and one staff space tall
    for l in layouts:
        for k, x0, y0, x1, y1 in l.notes.values():
            assert 0 <= x0 < x1 <= l.width and 0 <= y0 < y1 <= l.height
            assert abs((y1 - y0) - l.staff_space) < 0.5


def test_repeats_are_unfolded_like_music21(maple):
    """Performed order follows the repeat signs: music21's expandRepeats agrees on the bar count."""
    _, timing, _ = maple
    part = music21.corpus.parse("joplin/maple_leaf_rag").parts[0]
    written = len(part.getElementsByClass("Measure"))
    performed = len(part.expandRepeats().getElementsByClass("Measure"))
    assert performed > written
    assert len(timing.measure_times) == performed
    # repeated notes come back under the id of the engraved note
    seen: dict[str, int] = {}
    for ev in timing.event_ids:
        for i in ev:
            seen[i] = seen.get(i, 0) + 1
    assert max(seen.values()) == 2
    assert np.all(np.diff(timing.event_times) > 0)


def test_midi_onsets_equal_timemap(maple, tmp_path):
    """The MIDI we synthesize has every onset exactly where the timemap puts it (tempo 1, and with rubato)."""
    import mido

    _, timing, _ = maple
    for style in (PerformanceStyle.plain("x", seed=1), PerformanceStyle(timbre="x", tempo=0.93, rubato=0.1, seed=7)):
        ev_times, played = performed_times(timing, style)
        if style.rubato == 0:
            np.testing.assert_allclose(ev_times, timing.event_times, atol=1e-9)
        else:
            assert not np.allclose(ev_times, timing.event_times / 0.93, atol=0.05)  # rubato really bends time
        write_midi(tmp_path / "a.mid", played)
        t, onsets = 0.0, []
        for msg in mido.MidiFile(tmp_path / "a.mid"):
            t += msg.time
            if msg.type == "note_on" and msg.velocity > 0:
                onsets.append((round(t, 3), msg.note))
        expected = sorted((round(float(ev_times[n.event]), 3), n.pitch) for n in timing.notes)
        assert len(onsets) == len(expected)
        got = np.array(sorted(onsets))
        np.testing.assert_allclose(got[:, 0], np.array(expected)[:, 0], atol=1.5e-3)
        assert (got[:, 1] == np.array(expected)[:, 1]).all()


@needs_fluidsynth
def test_audio_onsets_peak_at_aligned_frames(maple, tmp_path):
    """In the synthesized audio, spectral flux peaks exactly at the labelled onset frames (lag 0 or +1)."""
    _, timing, _ = maple
    style = PerformanceStyle(timbre="TimGM6mb", tempo=1.05, rubato=0.08, seed=3)
    audio, onsets = perform(timing, style, SF_TRAIN)
    spec = spectrogram(audio)
    flux = np.maximum(np.diff(spec, axis=0, prepend=spec[:1]), 0).sum(axis=1)
    frames = np.round(onsets * 20).astype(int)
    frames = frames[(frames > 12) & (frames < len(flux) - 12)]
    lags = np.arange(-8, 9)
    strength = [flux[frames + lag].mean() for lag in lags]
    assert lags[int(np.argmax(strength))] in (0, 1)
    assert max(strength) > 2.0 * np.median(flux)
    assert abs(len(audio) / 22050 - onsets[-1]) < 10


def test_keyboard_only_drops_the_voice():
    text, kind = read_score_text(corpus_path("schubert/Lindenbaum"))
    assert kind == "musicxml" and text.count("<part ") >= 2
    piano = keyboard_only(text)
    assert piano.count("<part ") == 1 and "<staves>2</staves>" in piano


@pytest.mark.parametrize("content,suffix,message", [
    (b"", ".mxl", "empty"),
    (b"garbage bytes \x00\x01", ".mxl", "not a valid compressed MusicXML"),
    (b"<html><body>no score</body></html>", ".xml", "not a MusicXML score"),
    (b"<score-partwise><part-list>", ".musicxml", "well-formed"),
    (b"hello", ".pdf", "unsupported score format"),
    (b"just text", ".krn", "Humdrum"),
])
def test_broken_score_files_give_clear_errors(tmp_path, content, suffix, message):
    f = tmp_path / f"bad{suffix}"
    f.write_bytes(content)
    with pytest.raises(ScoreError, match=message):
        load_for_engraving(f)


def test_page_raster_matches_layout(maple):
    tk, _, layouts = maple
    img = rasterize(tk.renderToSVG(1))
    lay = layouts[0]
    assert img.shape == (lay.height, lay.width) and img.dtype == np.uint8
    # noteheads are ink, the page margin is paper
    inked = [img[int((y0 + y1) / 2), int(x0 + (x1 - x0) / 2)] < 128 for _, x0, y0, x1, y1 in list(lay.notes.values())[:200]]
    assert np.mean(inked) > 0.8
    assert img[:20].min() > 200


@needs_fluidsynth
def test_tiny_end_to_end_build_resume_show_pack(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(corpus_path("bach/bwv66.6"), src / "bwv66.6.mxl")
    shutil.copy(corpus_path("schumann_clara/polonaise_op1n1"), src / "polonaise.mxl")
    (src / "broken.mxl").write_bytes(b"not a zip")
    cfg = tmp_path / "corpus.toml"
    cfg.write_text(
        "[corpus]\nperformances = 1\nvalid_fraction = 0.0\ntest_fraction = 0.5\n"
        "[timbres]\ntrain = [\"TimGM6mb\"]\ntest = \"TimGM6mb\"\n"
        f"[timbres.soundfonts]\nTimGM6mb = \"{SF_TRAIN}\"\n"
    )
    out = tmp_path / "corpus"
    cli = [sys.executable, "-m", "scorestream.cli"]
    r = subprocess.run([*cli, "corpus", "build", "--source", str(src), "--out", str(out), "--workers", "1", "--config", str(cfg), "--no-progress"],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "aligned pairs" in r.stderr
    stats = json.loads((out / "stats.json").read_text())
    assert stats["pieces"] == 2 and stats["failed"] == 1 and stats["aligned_pairs"] > 100
    failed = (out / "failed.tsv").read_text()
    assert "broken" in failed and "not a valid compressed MusicXML" in failed
    splits = json.loads((out / "splits.json").read_text())
    assert sorted(sum(splits.values(), [])) == sorted(p.name for p in (out / "pieces").iterdir())
    piece_dir = next((out / "pieces").glob("*polonaise*"))
    meta = json.loads((piece_dir / "piece.json").read_text())
    assert meta["engravings"][0]["note_coverage"] == 1.0 and meta["performances"][0]["onset_frames"] > 50

    # resume: nothing left to do, nothing rebuilt
    before = (piece_dir / "piece.json").stat().st_mtime_ns
    r2 = subprocess.run([*cli, "corpus", "build", "--source", str(src), "--out", str(out), "--workers", "1", "--config", str(cfg), "--no-progress"],
                        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r2.returncode == 0 and "2 already built" in r2.stderr and "0 to build" in r2.stderr
    assert (piece_dir / "piece.json").stat().st_mtime_ns == before

    # an interrupted piece (no piece.json) is rebuilt
    (piece_dir / "piece.json").unlink()
    r3 = subprocess.run([*cli, "corpus", "build", "--source", str(src), "--out", str(out), "--workers", "1", "--config", str(cfg), "--no-progress"],
                        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r3.returncode == 0 and "1 to build" in r3.stderr and (piece_dir / "piece.json").is_file()

    png = tmp_path / "overlay.png"
    r4 = subprocess.run([*cli, "corpus", "show", "polonaise", "--corpus", str(out), "--out", str(png), "--second", "5"],
                        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r4.returncode == 0, r4.stderr
    assert png.stat().st_size > 10000 and "onsets" in r4.stdout

    tsv = tmp_path / "align.tsv"
    r5 = subprocess.run([*cli, "corpus", "align", "polonaise", "--corpus", str(out), "--out", str(tsv)],
                        capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r5.returncode == 0, r5.stderr
    lines = tsv.read_text().splitlines()
    header = lines[0].split("\t")
    assert header[:2] == ["note", "page"] and "strip_x" in header and "onset_s" in header
    assert len(lines) - 1 == meta["notes"]  # one row per performed note onset
    onset = [float(l.split("\t")[header.index("onset_s")]) for l in lines[1:]]
    assert np.all(np.diff(onset) >= 0)

    from scorestream.models.corpus.pack import build_pack
    from scorestream.models.corpus.reader import Corpus

    info = build_pack(out, tmp_path / "pack.npz", max_mb=5)
    z = np.load(tmp_path / "pack.npz")
    assert z["spec"].dtype == np.uint8 and z["spec"].shape[1] == 92
    assert z["strips"].shape[0] == 25
    pairs, perfs = z["pairs"], z["perfs"]
    assert len(pairs) == sum(info["pairs"].values())
    for perf, frame, x, y in pairs:
        s0, sl, x0, xl = perfs[perf][:4]
        assert s0 <= frame < s0 + sl and x0 <= x < x0 + xl and 0 <= y < 200
    # under a pair's x the strip has notehead ink (the pair's y is the mean of a chord, which may lie between staves)
    ink = np.unpackbits(z["strips"], axis=0)[:200]
    heads = [ink[30:170, max(0, x - 2): x + 3].sum(axis=1).max() >= 5 for _, _, x, y in pairs[:300]]
    assert np.mean(heads) > 0.95
    blank = [ink[30:170, max(0, x - 2): x + 3].sum(axis=1).max() >= 5 for _, _, x, y in pairs[:300] + np.array([0, 0, 9, 0])]
    assert np.mean(heads) > np.mean(blank)

    piece = Corpus(out).piece("polonaise")
    pr = piece.pairs(0)
    assert np.all(np.diff(pr.frame) > 0)  # one pair per distinct onset frame, in time order


def test_missing_piece_and_corpus_errors(tmp_path):
    from scorestream.models.corpus.reader import Corpus

    with pytest.raises(FileNotFoundError, match="not a corpus folder"):
        Corpus(tmp_path)
    (tmp_path / "pieces").mkdir()
    with pytest.raises(KeyError, match="no piece"):
        Corpus(tmp_path).piece("nothing")


@needs_fluidsynth
def test_build_is_reproducible_whatever_was_built_before(tmp_path):
    """The same sources and seed give the same piece folders byte for byte, whatever
    the worker (its verovio toolkit and synthesizers) built before."""
    from scorestream.models.corpus.build import CorpusConfig, PieceTask, TimbreConfig, build_piece

    cfg = CorpusConfig(performances=2)
    timbres = TimbreConfig(train=("TimGM6mb",), test="TimGM6mb", soundfonts={"TimGM6mb": SF_TRAIN})
    a = (str(corpus_path("bach/bwv66.6")), "train", 11)
    b = (str(corpus_path("schumann_clara/polonaise_op1n1")), "test", 22)

    def run(order, root):
        for src, split, seed in order:
            name = Path(src).stem
            build_piece(PieceTask(name, src, name, split, str(root / name), seed), cfg, timbres)
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    first = run([a, b], tmp_path / "ab")
    second = run([b, a], tmp_path / "ba")
    assert sorted(first) == sorted(second) and len(first) > 8
    differ = [k for k in first if first[k] != second[k]]
    assert not differ, differ


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "scorestream.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)


def _one_line_error(r, *words):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    lines = [l for l in r.stderr.strip().splitlines() if l.startswith("scorestream")]
    assert lines, r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


def test_corpus_cli_errors_are_one_line(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    _one_line_error(_cli("corpus", "stats", f), "is a file")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(_cli("corpus", "stats", empty), "not a corpus folder")
    assert list(empty.iterdir()) == []          # nothing written into a folder that is not a corpus
    missing_out = tmp_path / "never"
    _one_line_error(_cli("corpus", "build", "--source", tmp_path / "nope", "--out", missing_out), "does not exist")
    assert not missing_out.exists()             # no output folder for a missing source
    src = tmp_path / "src"
    src.mkdir()
    (src / "broken.mxl").write_bytes(b"not a zip")
    (src / "broken2.krn").write_bytes(b"\x00\x01garbage")
    r = _cli("corpus", "build", "--source", src, "--out", tmp_path / "c", "--workers", "1", "--no-progress", timeout=300)
    _one_line_error(r, "all 2 scores failed", "failed.tsv")
    assert r.returncode == 1
    r = _cli("corpus", "build", "--source", src, "--out", tmp_path / "c2", "--workers", "0")
    assert r.returncode == 2 and "must be at least 1" in r.stderr


@needs_fluidsynth
def test_corpus_show_bad_perf_is_one_line(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(corpus_path("bach/bwv66.6"), src / "bwv66.6.mxl")
    cfg = tmp_path / "corpus.toml"
    cfg.write_text("[corpus]\nperformances = 1\n[timbres]\ntrain = [\"TimGM6mb\"]\ntest = \"TimGM6mb\"\n"
                   f"[timbres.soundfonts]\nTimGM6mb = \"{SF_TRAIN}\"\n")
    out = tmp_path / "corpus"
    assert _cli("corpus", "build", "--source", src, "--out", out, "--workers", "1", "--config", cfg, "--no-progress",
                timeout=300).returncode == 0
    _one_line_error(_cli("corpus", "show", "bwv66", "--corpus", out, "--out", tmp_path / "x.png", "--perf", "7"),
                    "has performances 0..0")
    _one_line_error(_cli("corpus", "align", "nothing-like-this", "--corpus", out), "no piece")
