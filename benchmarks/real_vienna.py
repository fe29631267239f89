"""Real timing against real scans: the Vienna 4x22 performances followed on a library of the
printed editions' scans (issue 10).

    nice -n 5 .venv/bin/python benchmarks/real_vienna.py [--data /work/shared/data] \
        [--library data/lib_vienna] [--limit N] [--pieces Chopin_op38 ...]

* library: the 4 scanned PDFs of vienna4x22/pdf added through ``scorestream library add``
  (built by this script if ``--library`` does not exist; page images only, systems detected);
* audio: every performance MIDI (all notes, the pianist's pedal) played by the held-out timbre
  MuseScore_General with the renderer of ``models/conditions/vienna.py`` (FluidRenderer, dry,
  peak-normalised), cached as FLAC under ``data/real_vienna/audio``;
* the engine, causally: the audio in 0.1 s chunks through the live front end
  (``StreamFrontEnd``, as ``engine.follow.follow_audio``), windows embedded once (cached) and fed
  to two trackers: the piece given (``piece`` mode) and identification within the 4-piece
  library (``identify`` mode);
* truth at system level: each performed note's onset (from its ``.match`` line) and score bar,
  mapped through the hand-annotated fixture ``tests/fixtures/vienna_scan_bars.json`` (first bar
  per scan system, the match files' repeats unfolded onto the printed bars) to (page, system);
  the truth at ``t`` is the system of the latest performed onset <= ``t``.
* scores, over the results with first onset <= t <= last onset: share whose (page, system) is
  the truth (and the right piece is tracked), share within +-1 system (in the piece's system
  order), share tracking the right piece (identify), time to identify (from the first onset
  until the right piece is named and stays named to the end; and the first time it is named).

Writes ``benchmarks/results/real_vienna.json`` and ``real_vienna.md``; every take's results
(JSONL) go to ``data/real_vienna/results/<mode>/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scorestream.engine.engine import Engine  # noqa: E402
from scorestream.engine.evaluation import config_with  # noqa: E402
from scorestream.engine.library import Library  # noqa: E402
from scorestream.engine.scoring import identification  # noqa: E402
from scorestream.models.conditions.matchfile import read_match  # noqa: E402
from scorestream.streamer.frontend import StreamFrontEnd  # noqa: E402

FIXTURE = REPO / "tests" / "fixtures" / "vienna_scan_bars.json"
CHUNK_S = 0.1          # as engine/follow.py
NOTES = [
    "The scans are whole printed pages: Chopin op. 38 page 2 goes on into the Presto (systems 4-5, not performed), "
    "Mozart K331 systems 4-6 are Var. I (not performed), the Schubert page holds D783 nos. 15 and 16 and an "
    "Ecossaise (only systems 1-2 are no. 15). The library pieces are the pages as printed, with all of that.",
    "Mozart K331 (theme) and Schubert D783/15 are played with both repeats, which the scans print once (repeat "
    "signs, 1st/2nd endings): the tracker has to jump back; Chopin op. 10/3 and op. 38 have no repeats but much "
    "recurring material (op. 38 bars 30-35 and 41-44 echo bars 1-5 and 6-10).",
    "Audio: the pianists' MIDI (every played note, insertions included, CC64 pedal) through libfluidsynth with "
    "MuseScore_General, no reverb or noise; so this measures human timing and real engraving, not acoustics.",
]
BATCH = 16


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- library

def ensure_library(path: Path, pdf_dir: Path, fixture: dict) -> None:
    if (path / "library.sqlite").exists() or (path.is_dir() and any(path.iterdir())):
        return
    exe = REPO / ".venv" / "bin" / "scorestream"
    for name, p in fixture["pieces"].items():
        log(f"library: adding {p['library_id']} ({p['pdf']})")
        subprocess.run([str(exe), "library", "add", "--library", str(path), "--id", p["library_id"], "--title",
                        name.replace("_", " "), "--no-progress", str(pdf_dir / p["pdf"])], check=True)


# --------------------------------------------------------------------------- truth

def printed_bar(piece: dict, bar: int, beat: int) -> int:
    """Printed bar (repeats folded) of a match bar:beat (fixture's ``unfold`` and ``pickups``)."""
    for mb, from_beat, pb in piece["pickups"]:
        if bar == mb and beat >= from_beat:
            return pb
    for b0, b1, p0 in piece["unfold"]:
        if b0 <= bar <= b1:
            return p0 + bar - b0
    raise ValueError(f"match bar {bar} is outside the fixture's unfold table")


def system_of_bar(piece: dict, pbar: int) -> tuple[int, int]:
    best = None
    for s in piece["systems"]:
        if s["first_bar"] <= pbar:
            best = (s["page"], s["system"])
    return best


def truth_events(match, piece: dict) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Performed onsets (s, sorted) and the (page, system) each is printed on."""
    ev = []
    for s, p in match.matched:
        ev.append((match.seconds(p.onset_tick), system_of_bar(piece, printed_bar(piece, s.bar, s.beat))))
    ev.sort(key=lambda e: e[0])
    return np.array([e[0] for e in ev]), [e[1] for e in ev]


# --------------------------------------------------------------------------- audio and embeddings

def render_take(match, midi_dir: Path, audio_dir: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    from scorestream.core.frontend import FrontEndConfig
    from scorestream.models.conditions.salamander import midi_notes, midi_pedal_events
    from scorestream.models.conditions.vienna import TEST_SOUNDFONT
    from scorestream.models.corpus.perform import FluidRenderer

    midi = midi_dir / match.info["midiFileName"]
    f = audio_dir / (midi.stem + ".flac")
    if f.is_file():
        x, sr = sf.read(str(f), dtype="float32")
        return x, sr
    sr = FrontEndConfig().sample_rate
    # as models/conditions/vienna.py builds the ``vienna`` condition (MuseScore_General, dry)
    audio = FluidRenderer(sr).render(midi_notes(midi), TEST_SOUNDFONT, 0, pedal_events=midi_pedal_events(midi))
    audio = (audio / (np.max(np.abs(audio)) + 1e-9) * 0.9).astype(np.float32)
    audio_dir.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp.flac")
    sf.write(str(tmp), audio, sr, subtype="PCM_16")
    tmp.replace(f)
    x, sr = sf.read(str(f), dtype="float32")       # the same samples whether cached or not
    return x, sr


def windows_and_embeddings(engine, audio: np.ndarray, sr: int, emb_dir: Path, key: str):
    """The live front end over 0.1 s chunks (engine/follow.py), embeddings cached per take."""
    fe = StreamFrontEnd(sr, 1, audio_frames=engine.audio_frames, stride_frames=engine.stride_frames)
    n = max(1, int(round(CHUNK_S * sr)))
    ws = []
    for i in range(0, len(audio), n):
        ws += fe.process(audio[i:i + n])
    ws += fe.flush()
    fp = getattr(engine.embedder, "fingerprint", "model")
    h = hashlib.sha256(f"{fp}|{engine.stride_frames}|{key}|{len(audio)}".encode() + audio[::97].tobytes()).hexdigest()[:20]
    f = emb_dir / f"{key}_{h}.npy"
    if f.is_file():
        emb = np.load(f)
        if len(emb) == len(ws):
            return ws, emb
    emb = np.concatenate([engine.embed(ws[i:i + BATCH]) for i in range(0, len(ws), BATCH)])
    emb_dir.mkdir(parents=True, exist_ok=True)
    np.save(f, emb.astype(np.float32))
    return ws, emb.astype(np.float32)


# --------------------------------------------------------------------------- scoring

def score_take(results: list[dict], onsets: np.ndarray, truth: list[tuple[int, int]], piece_id: str,
               order: dict[tuple[int, int], int]) -> dict:
    first, last = float(onsets[0]), float(onsets[-1])
    n = exact = near = tracking = behind = ahead = 0
    wrong_piece = 0
    for r in results:
        t = float(r["t"])
        if t < first or t > last:
            continue
        n += 1
        k = int(np.searchsorted(onsets, t, side="right")) - 1
        tp = truth[max(k, 0)]
        ok_piece = r["state"] == "tracking" and r["piece"] == piece_id
        tracking += ok_piece
        wrong_piece += r["state"] == "tracking" and r["piece"] != piece_id
        if not ok_piece or r["page"] is None:
            continue
        got = (int(r["page"]), int(r["system"]))
        exact += got == tp
        if got in order and abs(order[got] - order[tp]) <= 1:
            near += 1
            behind += order[got] == order[tp] - 1
            ahead += order[got] == order[tp] + 1
    idn = identification(results, piece_id, start=first, checkpoints=())
    first_named = next((float(r["t"]) - first for r in results
                        if r["t"] >= first and r["state"] == "tracking" and r["piece"] == piece_id), None)
    return {"results": n, "system_right": exact / max(n, 1), "within_1_system": near / max(n, 1),
            "tracking_right_piece": tracking / max(n, 1), "tracking_wrong_piece": wrong_piece / max(n, 1),
            "time_to_identify_s": idn["time_to_identify_s"], "first_named_s": first_named,
            "first_onset_s": first, "last_onset_s": last,
            "one_behind": behind / max(n, 1), "one_ahead": ahead / max(n, 1),
            "counts": {"results": n, "system_right": exact, "within_1_system": near, "tracking_right_piece": tracking,
                       "one_behind": behind, "one_ahead": ahead}}


def pool(rows: list[dict], mode: str) -> dict:
    c = {k: sum(r["counts"][k] for r in rows)
         for k in ("results", "system_right", "within_1_system", "tracking_right_piece", "one_behind", "one_ahead")}
    n = max(c["results"], 1)
    out = {"takes": len(rows), "results": c["results"], "system_right": c["system_right"] / n,
           "within_1_system": c["within_1_system"] / n, "tracking_right_piece": c["tracking_right_piece"] / n,
           "one_system_behind": c["one_behind"] / n, "one_system_ahead": c["one_ahead"] / n,
           "mean_per_take_system_right": float(np.mean([r["system_right"] for r in rows])) if rows else None,
           "min_take_system_right": float(np.min([r["system_right"] for r in rows])) if rows else None}
    if mode.startswith("identify"):
        tti = [r["time_to_identify_s"] for r in rows]
        out["time_to_identify_median_s"] = float(np.median([np.inf if x is None else x for x in tti])) if rows else None
        out["first_named_median_s"] = float(np.median([np.inf if r["first_named_s"] is None else r["first_named_s"]
                                                       for r in rows])) if rows else None
        out["never_identified_to_end"] = int(sum(x is None for x in tti))
        out["tracking_wrong_piece"] = float(np.mean([r["tracking_wrong_piece"] for r in rows])) if rows else None
    return out


# --------------------------------------------------------------------------- report

def finite(x):
    """JSON without Infinity/NaN: non-finite numbers (never identified) as null."""
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [finite(v) for v in x]
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def write_md(path: Path, out: dict) -> None:
    def pc(x):
        return "–" if x is None else f"{100 * x:.1f} %"

    def sec(x):
        return "never" if x is None or not np.isfinite(x) else f"{x:.1f} s"

    L = ["# Real timing on real scans: Vienna 4x22 (benchmarks/real_vienna.py)", "",
         f"{out['machine']}, {out['date']}; library `{out['library']}` ({out['library_pieces']} pieces: the 4 scanned "
         f"PDFs, {out['library_systems']} detected systems); audio: performance MIDI played by MuseScore_General "
         f"(held-out timbre), dry; {out['takes']} takes, {out['audio_s'] / 60:.1f} min; tracker config "
         f"`configs/tracker.toml` (audio model {out['audio_model']})"
         + (f" with {', '.join(out['settings'])}" if out.get("settings") else "") + ".", "",
         "Truth: the system (page, system) of the latest performed onset (.match) at each result's t, via the "
         "hand-annotated first bar per scan system (tests/fixtures/vienna_scan_bars.json); results between the first "
         "and the last onset. `system right`: the right piece tracked and the reported (page, system) is the truth; "
         "`±1 system`: within one system in the piece's order; `tracking`: the right piece named.", "",
         ]
    label = {"piece": "piece given", "identify": "identify (4 scans)",
             "identify_distractors": f"identify (+{out.get('distractor_pieces', 0)} distractors)"}
    head, sep = ["piece", "takes"], ["---", "---"]
    for m in out["modes"]:
        cols = ["system right", "±1 system"]
        if m.startswith("identify"):
            cols += ["tracking right piece", "time to identify (median)", "first named (median)"]
        head += [f"{label.get(m, m)}: {c}" for c in cols]
        sep += ["---"] * len(cols)
    L += ["| " + " | ".join(head) + " |", "|" + "|".join(sep) + "|"]
    for name in list(out["per_piece"]) + ["pooled"]:
        g = out["pooled"] if name == "pooled" else out["per_piece"][name]
        row = ["**pooled**" if name == "pooled" else name, str(g[out["modes"][0]]["takes"])]
        for m in out["modes"]:
            b = g[m]
            row += [pc(b["system_right"]), pc(b["within_1_system"])]
            if m.startswith("identify"):
                row += [pc(b["tracking_right_piece"]), sec(b["time_to_identify_median_s"]), sec(b["first_named_median_s"])]
        L.append("| " + " | ".join(row) + " |")
    L += ["", "Pooled = over all results of all takes (a take weighs by its length). Worst take (system right): "
          + ", ".join(f"{m}: {pc(out['pooled'][m]['min_take_system_right'])}" for m in out["modes"]) + ". "
          + "Of the pooled results, one system behind / ahead of the truth: "
          + ", ".join(f"{m}: {pc(out['pooled'][m]['one_system_behind'])} / {pc(out['pooled'][m]['one_system_ahead'])}"
                      for m in out["modes"]) + ".", ""]
    if out.get("notes"):
        L += ["## Notes", ""] + [f"* {x}" for x in out["notes"]] + [""]
    path.write_text("\n".join(L) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="/work/shared/data", help="folder holding vienna4x22/")
    ap.add_argument("--library", default=str(REPO / "data" / "lib_vienna"), help="library of the scans (built if missing)")
    ap.add_argument("--limit", type=int, default=None, help="first N pianists per piece")
    ap.add_argument("--pieces", nargs="+", default=None)
    ap.add_argument("--modes", nargs="+", default=["piece", "identify"])
    ap.add_argument("--distractors", default=None, metavar="LIB",
                    help="also identify within LIB's pieces + the 4 scans (a copy of LIB under --cache with the scans "
                         "added; mode identify_distractors); LIB must use the same model")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="tracker setting override")
    ap.add_argument("--cache", default=str(REPO / "data" / "real_vienna"), help="audio, embeddings, result JSONL")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "real_vienna"), help="writes OUT.json, OUT.md")
    a = ap.parse_args(argv)
    fx = json.loads(FIXTURE.read_text())
    src = Path(a.data) / "vienna4x22"
    lib_path = Path(a.library)
    ensure_library(lib_path, src / "pdf", fx)
    engine = Engine(Library.open(lib_path), tracker_config=config_with(a.set))
    cache = Path(a.cache)
    engines = {m: engine for m in a.modes}
    if a.distractors:
        import shutil

        big = cache / f"lib_scans_plus_{Path(a.distractors).name}"
        if not big.is_dir():
            tmp = big.with_name(big.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(a.distractors, tmp)
            for name, p in fx["pieces"].items():
                subprocess.run([str(REPO / ".venv" / "bin" / "scorestream"), "library", "add", "--library", str(tmp),
                                "--id", p["library_id"], "--no-progress", str(src / "pdf" / p["pdf"])], check=True)
            tmp.rename(big)
        engines["identify_distractors"] = Engine(Library.open(big), tracker_config=config_with(a.set))
        assert engines["identify_distractors"].embedder.fingerprint == engine.embedder.fingerprint
        a.modes = [m for m in a.modes if m != "identify_distractors"] + ["identify_distractors"]
        log(f"identify_distractors: {len(engines['identify_distractors'].pieces)} pieces ({big})")
    pieces = a.pieces or list(fx["pieces"])
    orders = {}
    for name in pieces:
        pm = engine.by_id[fx["pieces"][name]["library_id"]]
        orders[name] = {(int(s.page), int(s.system)): k for k, s in enumerate(pm.systems)}
        n_fx = len(fx["pieces"][name]["systems"])
        if len(pm.systems) != n_fx:
            log(f"WARNING {name}: library has {len(pm.systems)} systems, the fixture {n_fx}")
    per_take = {m: [] for m in a.modes}
    audio_s = 0.0
    t_start = time.time()
    jobs = [(name, mp) for name in pieces
            for mp in sorted((src / "match").glob(f"{name}_p*.match"))[: a.limit]]
    for i, (name, mp) in enumerate(jobs, 1):
        p = fx["pieces"][name]
        pid = p["library_id"]
        t0 = time.time()
        match = read_match(mp)
        onsets, truth = truth_events(match, p)
        audio, sr = render_take(match, src / "midi", cache / "audio")
        audio_s += len(audio) / sr
        ws, emb = windows_and_embeddings(engine, audio, sr, cache / "emb", mp.stem)
        line = [f"[{i}/{len(jobs)}] {mp.stem}: {len(audio) / sr:.0f} s"]
        for mode in a.modes:
            tr = engines[mode].new_tracker(pid if mode == "piece" else None)
            res = [tr.update(w, e).to_json() for w, e in zip(ws, emb)]
            d = {"take": mp.stem, "piece": name, **score_take(res, onsets, truth, pid, orders[name])}
            per_take[mode].append(d)
            jd = cache / "results" / mode
            jd.mkdir(parents=True, exist_ok=True)
            with open(jd / f"{mp.stem}.jsonl", "w") as fh:
                for r in res:
                    fh.write(json.dumps(r, separators=(",", ":")) + "\n")
            extra = f", identified {d['time_to_identify_s']:.1f} s" if mode.startswith("identify") and d["time_to_identify_s"] is not None else ""
            line.append(f"{mode}: system {100 * d['system_right']:.1f} % (±1 {100 * d['within_1_system']:.1f} %){extra}")
        log("; ".join(line) + f" [{time.time() - t0:.1f} s]")
    out = {"benchmark": "real_vienna", "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
           "machine": f"{platform.node()} ({platform.machine()}, {__import__('os').cpu_count()} CPUs, CPU only, onnxruntime)",
           "library": str(lib_path), "library_pieces": len(engine.pieces),
           "library_systems": int(sum(len(pm.systems) for pm in engine.pieces)),
           "audio_model": engine.config.audio_model, "settings": a.set,
           "distractor_pieces": len(engines["identify_distractors"].pieces) - len(engine.pieces) if a.distractors else 0,
           "distractor_library": a.distractors, "modes": a.modes, "takes": len(jobs), "audio_s": audio_s,
           "fixture": str(FIXTURE.relative_to(REPO)), "notes": NOTES, "wall_s": time.time() - t_start,
           "pooled": {m: pool(per_take[m], m) for m in a.modes},
           "per_piece": {name: {m: pool([r for r in per_take[m] if r["piece"] == name], m) for m in a.modes}
                         for name in pieces},
           "per_take": per_take}
    o = Path(a.out)
    o.parent.mkdir(parents=True, exist_ok=True)
    o.with_suffix(".json").write_text(json.dumps(finite(out), indent=1))
    write_md(o.with_suffix(".md"), out)
    for m in a.modes:
        g = out["pooled"][m]
        log(f"pooled {m}: system right {100 * g['system_right']:.1f} %, ±1 system {100 * g['within_1_system']:.1f} %, "
            f"tracking right piece {100 * g['tracking_right_piece']:.1f} %"
            + (f", time to identify (median) {g['time_to_identify_median_s']:.1f} s" if m.startswith("identify") else ""))
    log(f"wrote {o.with_suffix('.json')} and {o.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
