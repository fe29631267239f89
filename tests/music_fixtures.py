"""Real music for the server, browser and demo: scores from music21's bundled corpus, engraved
with verovio (``scorestream.models.corpus.engrave``), played by fluidsynth
(``scorestream.models.corpus.perform``) and added to a library with ``scorestream library add``.

Everything is built once into a cache folder (``$SCORESTREAM_TEST_CACHE``, default
``~/.cache/scorestream/fixtures``) keyed by the piece list, the engraving and the weights, so a
second test run or demo run starts at once. Needs the ``train`` extra (verovio, music21,
pyfluidsynth) and the soundfonts of scripts/setup.sh; :func:`available` says whether they are there.

Also a command line, used by scripts/demo.sh::

    python tests/music_fixtures.py library --out DIR [--set demo|test]
    python tests/music_fixtures.py perform PIECE --out x.wav [--skip-repeat N] [--tempo 1.0]
    python tests/music_fixtures.py speech --out speech.wav --seconds 10
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SOUNDFONT_TEST = Path("/usr/share/sounds/sf3/MuseScore_General.sf3")   # the held-out timbre
SOUNDFONT_ALT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
SR = 22050


@dataclass(frozen=True)
class PieceSpec:
    id: str
    source: str                 # path inside music21's corpus
    title: str
    composer: str
    systems_per_page: int | None = None   # None: verovio's A4-like page; n: pages cut to about n systems


# Short pieces: the test library (built in every test session; ~1 min on 2 cores).
# "minuet" is engraved with two systems per page, so a performance turns pages within seconds.
TEST_SET = (
    PieceSpec("bach-bwv66.6", "bach/bwv66.6.mxl", "Christ unser Herr zum Jordan kam (BWV 66.6)", "J. S. Bach"),
    PieceSpec("mozart-k545-1", "mozart/k545/movement1_exposition.mxl", "Sonata K. 545, I (exposition)", "W. A. Mozart", 2),
    PieceSpec("bach-bwv1.6", "bach/bwv1.6.mxl", "Wie schön leuchtet der Morgenstern (BWV 1.6)", "J. S. Bach"),
    PieceSpec("schumann-polonaise-1", "schumann_clara/polonaise_op1n1.mxl", "Polonaise op. 1 no. 1", "Clara Schumann"),
    PieceSpec("haydn-op74-1-3", "haydn/opus74no1/movement3.mxl", "String Quartet op. 74/1, III", "J. Haydn"),
)

# The demo's bundled library (~20 pieces).
DEMO_SET = TEST_SET + (
    PieceSpec("joplin-maple-leaf", "joplin/maple_leaf_rag.mxl", "Maple Leaf Rag", "Scott Joplin"),
    PieceSpec("schumann-polonaise-2", "schumann_clara/polonaise_op1n2.mxl", "Polonaise op. 1 no. 2", "Clara Schumann"),
    PieceSpec("schumann-polonaise-3", "schumann_clara/polonaise_op1n3.mxl", "Polonaise op. 1 no. 3", "Clara Schumann"),
    PieceSpec("schumann-polonaise-4", "schumann_clara/polonaise_op1n4.mxl", "Polonaise op. 1 no. 4", "Clara Schumann"),
    PieceSpec("beethoven-op18-1-3", "beethoven/opus18no1/movement3.mxl", "String Quartet op. 18/1, III", "L. van Beethoven"),
    PieceSpec("mozart-k80-3", "mozart/k80/movement3.mxl", "String Quartet K. 80, III", "W. A. Mozart"),
    PieceSpec("mozart-k155-2", "mozart/k155/movement2.mxl", "String Quartet K. 155, II", "W. A. Mozart"),
    PieceSpec("mozart-k156-3", "mozart/k156/movement3.mxl", "String Quartet K. 156, III", "W. A. Mozart"),
    PieceSpec("haydn-op1-1-1", "haydn/opus1no1/movement1.mxl", "String Quartet op. 1/1, I", "J. Haydn"),
    PieceSpec("schubert-lindenbaum", "schubert/Lindenbaum.xml", "Der Lindenbaum", "F. Schubert"),
    PieceSpec("beach-prayer", "beach/prayer_of_a_tired_child.musicxml", "Prayer of a Tired Child", "Amy Beach"),
    PieceSpec("bach-bwv10.7", "bach/bwv10.7.mxl", "Er denket der Barmherzigkeit (BWV 10.7)", "J. S. Bach"),
    PieceSpec("bach-bwv26.6", "bach/bwv26.6.mxl", "Ach wie flüchtig (BWV 26.6)", "J. S. Bach"),
    PieceSpec("bach-bwv40.8", "bach/bwv40.8.mxl", "Freuet euch, ihr Christen (BWV 40.8)", "J. S. Bach"),
    PieceSpec("corelli-op3-1-1", "corelli/opus3no1/1grave.xml", "Sonata op. 3/1, Grave", "A. Corelli"),
)
SETS = {"test": TEST_SET, "demo": DEMO_SET}


def available() -> str | None:
    """None when fixtures can be built here, else the reason they cannot."""
    for mod in ("verovio", "music21", "fluidsynth", "resvg_py", "mido"):
        try:
            __import__(mod)
        except Exception as exc:  # noqa: BLE001 - ImportError, OSError (libfluidsynth missing)
            return f"{mod} is not importable ({exc}): install the train extra (bash scripts/setup.sh)"
    if not SOUNDFONT_TEST.is_file():
        return f"{SOUNDFONT_TEST} missing: run scripts/setup.sh"
    return None


def corpus_dir() -> Path:
    import music21

    return Path(music21.__file__).resolve().parent / "corpus"


def cache_root() -> Path:
    return Path(os.environ.get("SCORESTREAM_TEST_CACHE") or Path.home() / ".cache" / "scorestream" / "fixtures")


def _weights_key() -> str:
    w = ROOT / "models" / "weights"
    h = hashlib.sha256()
    for f in sorted(w.glob("*.onnx")):        # the contents: new weights keep the same file size
        h.update(f.name.encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:10]


# ----------------------------------------------------------------------------- engraving

def _toolkit_for(spec: PieceSpec):
    from scorestream.models.corpus.engrave import EngravingStyle, new_toolkit
    from scorestream.models.corpus.scorefile import load_for_engraving

    tk = new_toolkit()
    text = load_for_engraving(corpus_dir() / spec.source)
    style = EngravingStyle()
    opts = style.verovio_options()
    if spec.systems_per_page:
        # a short page: about n systems of a two-staff piano score per page
        opts["pageHeight"] = int(330 * spec.systems_per_page + 250)
    tk.setOptions(opts)
    if not tk.loadData(text):
        raise RuntimeError(f"verovio cannot load {spec.source}")
    return tk


def engrave(spec: PieceSpec, out: Path) -> list[Path]:
    """Page PNGs of a piece (``out/page001.png`` …) and ``out/timing.json`` (performed order)."""
    from PIL import Image

    from scorestream.models.corpus.engrave import parse_svg_layout, rasterize
    from scorestream.models.corpus.perform import score_timing

    out.mkdir(parents=True, exist_ok=True)
    tk = _toolkit_for(spec)
    pages, notes = [], {}
    for p in range(1, tk.getPageCount() + 1):
        f = out / f"page{p:03d}.png"
        svg = tk.renderToSVG(p)
        Image.fromarray(rasterize(svg)).save(f)
        pages.append(f)
        lay = parse_svg_layout(svg)
        for nid, (k, x0, y0, x1, y1) in lay.notes.items():
            notes[nid] = [p, k + 1, round((x0 + x1) / 2, 1)]     # page, system (1-based), notehead centre x
    (out / "timing.json").write_text(json.dumps(score_timing(tk).to_json()))
    (out / "notes.json").write_text(json.dumps(notes))
    return pages


def timing_of(spec: PieceSpec, work: Path):
    from scorestream.models.corpus.perform import ScoreTiming

    f = work / spec.id / "timing.json"
    if not f.is_file() or not (work / spec.id / "notes.json").is_file():
        engrave(spec, work / spec.id)
    return ScoreTiming.from_json(json.loads(f.read_text()))


# ----------------------------------------------------------------------------- performing

def repeats(timing) -> list[tuple[int, int]]:
    """Repeated passes as event ranges ``[start, end)``: maximal runs of events whose engraved
    notes were already played (note ids are unique per engraved note, so only a repeat, a
    da capo or a dal segno plays one again)."""
    first: dict[str, int] = {}
    again = []
    for i, ids in enumerate(timing.event_ids):
        k = ids[0] if ids else f"?{i}"
        again.append(first.setdefault(k, i) < i)
    out, i = [], 0
    while i < len(again):
        if again[i]:
            j = i
            while j < len(again) and again[j]:
                j += 1
            out.append((i, j))
            i = j
        else:
            i += 1
    return out


def skip_events(timing, start: int, end: int):
    """The performance without events ``[start, end)`` (later events move earlier)."""
    from scorestream.models.corpus.perform import Note, ScoreTiming

    et = np.asarray(timing.event_times, float)
    t0 = et[start]
    t1 = et[end] if end < len(et) else et[-1] + 1.0
    gap = t1 - t0
    keep = [i for i in range(len(et)) if not start <= i < end]
    new_index = {old: k for k, old in enumerate(keep)}
    times = np.array([et[i] - (gap if i >= end else 0.0) for i in keep])
    notes = [Note(n.onset - (gap if n.event >= end else 0.0), n.offset - (gap if n.event >= end else 0.0), n.pitch,
                  new_index[n.event]) for n in timing.notes if n.event in new_index]
    for n in notes:
        if n.event < start and n.offset > t0:
            n.offset = t0        # nothing rings over the cut
    mt = np.asarray(timing.measure_times, float)
    measures = np.concatenate([mt[mt < t0], mt[mt >= t1] - gap])
    return ScoreTiming(times, [timing.event_ids[i] for i in keep], notes, measures)


def perform_audio(timing, *, soundfont: Path = SOUNDFONT_TEST, tempo: float = 1.0, seed: int = 0,
                  rubato: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Mono float32 audio at 22050 Hz and the performance time of every onset event."""
    from scorestream.models.corpus.perform import PerformanceStyle, perform

    style = replace(PerformanceStyle.plain(soundfont.stem, seed=seed), tempo=tempo, rubato=rubato)
    audio, onsets = perform(timing, style, soundfont)
    return audio, np.asarray(onsets, float)


def truth_of(timing, onsets: np.ndarray, notes: dict) -> list[list]:
    """``[[seconds, page, system, x], …]``: where each onset event is printed."""
    out = []
    for t, ids in zip(onsets, timing.event_ids):
        hit = next((notes[i] for i in ids if i in notes), None)
        if hit is not None:
            out.append([round(float(t), 3), *hit])
    return out


def write_wav(path: Path, audio: np.ndarray, sr: int = SR) -> Path:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.asarray(audio, np.float32), sr, subtype="PCM_16")
    return path


def speech(seconds: float = 10.0, sr: int = SR) -> np.ndarray:
    """Spoken English from espeak-ng (the "not music" test), ``seconds`` long."""
    text = ("This is not music. The quick brown fox jumps over the lazy dog. A score follower should say "
            "unknown while somebody talks. Please wait for the next piece, which starts in a moment. ") * 3
    from scorestream.engine.nonmusic import espeak

    y = espeak(text, sr, speed=160)
    n = int(seconds * sr)
    y = np.tile(y, int(np.ceil(n / len(y))))[:n] if len(y) else np.zeros(n, np.float32)
    return (0.5 * y / (np.abs(y).max() + 1e-9)).astype(np.float32)


# ----------------------------------------------------------------------------- the library

def build_library(specs=TEST_SET, *, root: Path | None = None, log=print, model: str | None = None) -> Path:
    """A library of ``specs`` (cached); returns its folder. Pages under ``<cache>/pages/<id>/``.
    ``model``: the embedding model of the library (default: the library config's)."""
    key = hashlib.sha256(json.dumps([s.__dict__ for s in specs], sort_keys=True).encode() + _weights_key().encode()
                         + str(model).encode()).hexdigest()[:12]
    base = (root or cache_root()) / f"lib-{key}"
    lib = base / "library"
    done = base / "complete.json"
    if done.is_file():
        return lib
    pages_root = base / "pages"
    if lib.exists():
        shutil.rmtree(lib)
    exe = [sys.executable, "-m", "scorestream.cli"]
    for s in specs:
        pages = sorted((pages_root / s.id).glob("page*.png"))
        if not pages:
            pages = engrave(s, pages_root / s.id)
        extra = ["--model", model] if model and not lib.exists() else []
        r = subprocess.run(exe + ["-q", "library", "add", "--library", str(lib), "--id", s.id, "--title", s.title,
                                  "--composer", s.composer, "--no-progress", *extra, *map(str, pages)],
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"library add {s.id} failed: {r.stderr.strip()}")
        log(f"fixtures: {r.stdout.strip()}")
    done.write_text(json.dumps({"pieces": [s.id for s in specs]}))
    return lib


def pages_dir(lib: Path) -> Path:
    return lib.parent / "pages"


def spec_of(piece_id: str) -> PieceSpec:
    for s in DEMO_SET:
        if s.id == piece_id:
            return s
    raise KeyError(f"no fixture piece {piece_id!r}")


def performance(piece_id: str, *, lib: Path, tempo: float = 1.0, skip_repeat: int | None = None, seed: int = 0,
                soundfont: Path = SOUNDFONT_TEST, seconds: float | None = None) -> Path:
    """A cached WAV of a performance of a library piece (22050 Hz mono)."""
    tag = f"{piece_id}-t{tempo:g}-s{seed}-r{skip_repeat}-{soundfont.stem}-{seconds}"
    f = lib.parent / "audio" / f"{tag}.wav"
    if f.is_file():
        return f
    spec = spec_of(piece_id)
    timing = timing_of(spec, pages_dir(lib))
    if skip_repeat is not None:
        reps = repeats(timing)
        if not reps:
            raise RuntimeError(f"{piece_id} has no repeat to skip")
        a, b = reps[skip_repeat % len(reps)]
        timing = skip_events(timing, a, b)
    audio, onsets = perform_audio(timing, soundfont=soundfont, tempo=tempo, seed=seed)
    if seconds is not None:
        audio = audio[: int(seconds * SR)]
    notes = json.loads((pages_dir(lib) / spec.id / "notes.json").read_text())
    truth = [e for e in truth_of(timing, onsets, notes) if seconds is None or e[0] < seconds]
    f.parent.mkdir(parents=True, exist_ok=True)
    f.with_suffix(".truth.json").write_text(json.dumps({"piece": piece_id, "seconds": round(len(audio) / SR, 3),
                                                         "events": truth}))
    return write_wav(f, audio)


def truth(wav: Path) -> dict:
    """The truth file written next to a :func:`performance` WAV."""
    return json.loads(Path(wav).with_suffix(".truth.json").read_text())


# ----------------------------------------------------------------------------- the demo

def demo_audio(lib: Path, out: Path, *, first: str, second: str, speech_s: float = 10.0,
               skip_repeat: int = 1, seconds_second: float | None = 40.0) -> tuple[Path, Path]:
    """``first`` with its repeats but one skipped, ``speech_s`` of speech, then ``second``:
    ``out/demo.wav`` and ``out/demo.truth.json`` (segments and where every onset is printed)."""
    a = performance(first, lib=lib, skip_repeat=skip_repeat)
    b = performance(second, lib=lib, seconds=seconds_second)
    import soundfile as sf

    xa, _ = sf.read(str(a), dtype="float32")
    xb, _ = sf.read(str(b), dtype="float32")
    sp = speech(speech_s)
    gap = np.zeros(int(0.5 * SR), np.float32)
    parts, segs, t = [xa, gap, sp, gap, xb], [], 0.0
    ta, tb = truth(a), truth(b)
    reps = repeats(timing_of(spec_of(first), pages_dir(lib)))
    for x, kind, tr in zip(parts, ("piece", "gap", "speech", "gap", "piece"), (ta, None, None, None, tb)):
        d = len(x) / SR
        if kind != "gap":
            segs.append({"kind": kind, "start": round(t, 3), "end": round(t + d, 3),
                         "piece": tr["piece"] if tr else None,
                         "events": [[round(e[0] + t, 3), *e[1:]] for e in tr["events"]] if tr else []})
        t += d
    out.mkdir(parents=True, exist_ok=True)
    wav = write_wav(out / "demo.wav", np.concatenate(parts))
    tf = out / "demo.truth.json"
    tf.write_text(json.dumps({"segments": segs, "seconds": round(t, 3), "repeats_in_first": len(reps),
                              "skipped_repeat": skip_repeat}))
    return wav, tf


def report(truth_file: Path, jsonl: Path, *, lead_s: float = 0.0) -> dict:
    """Time to identify each piece, % of positions right (page and system of the printed onset
    just played), and how the speech was labelled, from a stream's JSONL."""
    tr = json.loads(Path(truth_file).read_text())
    res = [json.loads(line) for line in Path(jsonl).read_text().splitlines() if line.strip()]
    out = {"segments": []}
    for seg in tr["segments"]:
        rs = [r for r in res if seg["start"] <= r["t"] < seg["end"]]
        d = {"kind": seg["kind"], "piece": seg["piece"], "start": seg["start"], "end": seg["end"], "results": len(rs)}
        if seg["kind"] == "speech":
            settled = [r for r in rs if r["t"] >= seg["start"] + 4.0]     # the tracker may hold on a few seconds
            d["not_tracking_pct"] = round(100 * sum(r["state"] != "tracking" for r in settled) / max(1, len(settled)), 1)
            d["states"] = {s: sum(r["state"] == s for r in rs) for s in ("unknown", "searching", "tracking")}
        else:
            ev = seg["events"]
            times = np.asarray([e[0] for e in ev])
            hit = next((r for r in rs if r["state"] == "tracking" and r["piece"] == seg["piece"]), None)
            d["time_to_identify_s"] = round(hit["t"] - seg["start"], 2) if hit else None
            after = [r for r in rs if hit is not None and r["t"] >= hit["t"]]
            ok = 0
            for r in after:
                i = int(np.searchsorted(times, r["t"] - lead_s, side="right")) - 1
                if i < 0:
                    continue
                _, page, system, _x = ev[i]
                ok += r["state"] == "tracking" and r["piece"] == seg["piece"] and r["page"] == page and r["system"] == system
            d["positions_right_pct"] = round(100 * ok / max(1, len(after)), 1) if after else 0.0
            d["wrong_piece_results"] = sum(r["state"] == "tracking" and r["piece"] != seg["piece"] for r in rs)
        out["segments"].append(d)
    out["events"] = [e for r in res for e in r.get("events", [])]
    return out


def format_report(rep: dict) -> str:
    lines = []
    for d in rep["segments"]:
        span = f"{d['start']:6.1f}–{d['end']:6.1f} s"
        if d["kind"] == "speech":
            lines.append(f"  {span}  speech: not tracking {d['not_tracking_pct']} % of the time (after 4 s); states {d['states']}")
        else:
            tti = "never identified" if d["time_to_identify_s"] is None else f"identified after {d['time_to_identify_s']} s"
            lines.append(f"  {span}  {d['piece']}: {tti}; positions right (page + system) {d['positions_right_pct']} %"
                         + (f"; {d['wrong_piece_results']} results named another piece" if d["wrong_piece_results"] else ""))
    kinds = {}
    for e in rep["events"]:
        kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
    lines.append("  events: " + (", ".join(f"{k} x{v}" for k, v in sorted(kinds.items())) or "none"))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("library")
    a.add_argument("--set", choices=sorted(SETS), default="test")
    a.add_argument("--root", default=None)
    a.add_argument("--model", default=None)
    b = sub.add_parser("perform")
    b.add_argument("piece")
    b.add_argument("--set", choices=sorted(SETS), default="test")
    b.add_argument("--root", default=None)
    b.add_argument("--out", required=True)
    b.add_argument("--skip-repeat", type=int, default=None)
    b.add_argument("--tempo", type=float, default=1.0)
    b.add_argument("--seconds", type=float, default=None)
    c = sub.add_parser("speech")
    c.add_argument("--out", required=True)
    c.add_argument("--seconds", type=float, default=10.0)
    d = sub.add_parser("demo-audio")
    d.add_argument("--set", choices=sorted(SETS), default="demo")
    d.add_argument("--root", default=None)
    d.add_argument("--out", required=True)
    d.add_argument("--first", default="joplin-maple-leaf")
    d.add_argument("--second", default="mozart-k545-1")
    e = sub.add_parser("report")
    e.add_argument("--truth", required=True)
    e.add_argument("--jsonl", required=True)
    e.add_argument("--json", default=None)
    r = sub.add_parser("repeats")
    r.add_argument("piece")
    r.add_argument("--set", choices=sorted(SETS), default="test")
    r.add_argument("--root", default=None)
    a_ = ap.parse_args(argv)
    if a_.cmd == "speech":
        write_wav(Path(a_.out), speech(a_.seconds))
        return 0
    if a_.cmd == "report":
        rep = report(Path(a_.truth), Path(a_.jsonl))
        if a_.json:
            Path(a_.json).write_text(json.dumps(rep, indent=1))
        print(format_report(rep))
        return 0
    lib = build_library(SETS[a_.set], root=Path(a_.root) if a_.root else None, log=lambda s: print(s, file=sys.stderr),
                        model=getattr(a_, "model", None))
    if a_.cmd == "library":
        print(lib)
    elif a_.cmd == "demo-audio":
        wav, tf = demo_audio(lib, Path(a_.out), first=a_.first, second=a_.second)
        print(wav)
    elif a_.cmd == "repeats":
        t = timing_of(spec_of(a_.piece), pages_dir(lib))
        print(json.dumps([(a, b, round(float(t.event_times[a]), 2), round(float(t.event_times[min(b, len(t.event_times) - 1)]), 2))
                          for a, b in repeats(t)]))
    else:
        f = performance(a_.piece, lib=lib, tempo=a_.tempo, skip_repeat=a_.skip_repeat, seconds=a_.seconds)
        shutil.copyfile(f, a_.out)
        print(a_.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
