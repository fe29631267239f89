"""Real-scan evaluation (issue 10): the Joplin kern files synthesized and followed against
their real scanned editions (``shared/data/joplin``: 1-bit 300-dpi PDF scans).

* **Library**: the scans as they are, through the normal path (``scorestream library add
  --library data/lib_joplin --id <kern stem> <scan>.pdf``, one piece per kern <-> scan pair
  of ``pairs.tsv``); build it first (``--build`` does it here, or see the README of the data).
* **Performance**: each kern file read by a small reader of its ``**kern`` spines (chords,
  ties, grace notes skipped, spine splits/merges, ``*MM`` tempo changes, ``*ped``/``*Xped``
  pedal). **No repeat expansion**: the notes are played in written order (first and second
  endings both, once). Tempo: the kern's first ``*MM`` (100 quarters/min if none) times a
  smooth random curve (0.92-1.08, seeded by the piece name; later ``*MM`` changes are
  followed); velocities 60-84 at random (seeded). Played by libfluidsynth with the held-out
  soundfont MuseScore_General (``models.corpus.perform.FluidRenderer``), 22050 Hz mono, dry.
* **Truth**, system level: every note's system is the number of ``!!LO:LB`` / ``!!LO:PB``
  records before it (the kern keeps the scan's line breaks). At time t the truth is the
  system of the most recent onset <= t. Systems are mapped to (page, system-on-page) by the
  per-page counts of ``benchmarks/systems.py:JOPLIN_PAGE_COUNTS`` where it has the piece;
  otherwise by the library's own detected systems in reading order (the k-th kern system =
  the k-th detected one), which is exact when the detection is right. Pieces whose detected
  count differs from the kern's (per page where hand counts exist, else in total) are marked
  ``ambiguous`` and reported apart: there the mapping, hence the truth, is uncertain.
* **Run**: causal, as ``engine.follow.follow_audio`` does (the per-stream front end on 0.1 s
  chunks, windows embedded, ``Tracker.update`` in order); the windows are embedded once and
  fed to two trackers: piece given (``--piece``) and identify (the whole Joplin library).
* **Scores** over the results between the first and the last onset: share whose
  (page, system) equals the truth (results not tracking the piece count as wrong), share
  within +-1 system (strip order); identify mode also: share of results tracking the right
  piece, time to identify (from the first onset until the right piece is named and stays).

* ``--out-of-library``: instead, each piece's audio against the library *without* that piece
  (what a monitor hears when the music is not in its library): the share of 10 s stretches in
  which some piece is named (as ``scorestream eval``'s unknown measure) and of results naming
  one; writes ``real_joplin_ool[_TAG].*``. The cost side of a lower evidence allowance.

Audio, truth and embeddings are cached under ``data/real_joplin/`` (gitignored). Writes
``benchmarks/results/real_joplin.json`` and ``real_joplin.md``.

Usage: ``nice -n 5 .venv/bin/python benchmarks/real_joplin.py [--data /work/shared/data]
[--library data/lib_joplin] [--limit N] [--pieces a,b] [--build]``
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from systems import JOPLIN_PAGE_COUNTS, kern_system_count  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
CACHE = REPO / "data" / "real_joplin"
SOUNDFONT = Path("/usr/share/sounds/sf3/MuseScore_General.sf3")
SR = 22050
DEFAULT_MM = 100.0
TARGET = 0.90
READER_VERSION = 3          # bump when the reader or the synthesis changes (cache key)

# --------------------------------------------------------------------------- kern reader

_DUR = re.compile(r"(\d+)(%\d+)?(\.*)")
_PITCH = re.compile(r"([a-gA-G])\1*")


def _duration(tok: str) -> float | None:
    """Quarter lengths of a kern token's duration (None: no duration, e.g. a grace note)."""
    if "q" in tok or "Q" in tok:
        return None
    m = _DUR.search(tok)
    if m is None:
        return None
    n = int(m.group(1))
    base = 8.0 if m.group(1) == "0" else (16.0 if m.group(1) == "00" else 4.0 / n)
    if m.group(2):
        base *= int(m.group(2)[1:])
    dots = len(m.group(3))
    return base * (2.0 - 0.5 ** dots)


def _midi(tok: str) -> int | None:
    m = _PITCH.search(tok)
    if m is None:
        return None
    s = m.group(0)
    step = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}[s[0].lower()]
    octave = 4 + (len(s) - 1) if s[0].islower() else 3 - (len(s) - 1)
    rest = tok[m.end():]
    acc = rest.count("#") - rest.count("-")
    return 12 * (octave + 1) + step + acc


def read_kern(path: Path) -> dict:
    """Notes of a kern file in written order (no repeat expansion).

    Returns ``{"notes": [(on_q, off_q, midi, system, bar)], "tempo": [(q, bpm)], "pedal": [(q, down)],
    "systems": n}`` with times in quarter lengths; tied continuations extend their note."""
    spines: list[list] = []          # [type, end_q]
    t = 0.0
    system = 0
    notes: list[list] = []
    ties: dict[int, int] = {}
    tempo: list[tuple[float, float]] = []
    pedal: list[tuple[float, bool]] = []
    bar = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line:
            continue
        if line.startswith("!!"):
            if line.startswith("!!LO:LB") or line.startswith("!!LO:PB"):
                system += 1
            continue
        if line.startswith("!"):
            continue
        toks = line.split("\t")
        if line.startswith("**"):
            spines = [[tk[2:], t] for tk in toks]
            continue
        if line.startswith("*"):
            new: list[list] = []
            i = 0
            while i < len(toks):
                tk = toks[i]
                sp = spines[i] if i < len(spines) else ["kern", t]
                if sp[0] == "kern":
                    m = re.match(r"\*MM(\d+(?:\.\d+)?)$", tk)
                    if m and not any(abs(q - t) < 1e-9 for q, _ in tempo):
                        tempo.append((t, float(m.group(1))))
                    if tk == "*ped" and (not pedal or not pedal[-1][1]):
                        pedal.append((t, True))
                    elif tk == "*Xped" and (not pedal or pedal[-1][1]):
                        pedal.append((t, False))
                if tk == "*^":
                    new += [list(sp), list(sp)]
                elif tk == "*v":
                    j = i
                    while j < len(toks) and toks[j] == "*v":
                        j += 1
                    new.append([sp[0], max(s[1] for s in spines[i:j])])
                    i = j
                    continue
                elif tk == "*-":
                    pass
                elif tk == "*x" and i + 1 < len(toks) and toks[i + 1] == "*x":
                    new += [list(spines[i + 1]), list(sp)]
                    i += 2
                    continue
                elif tk == "*+":
                    new += [list(sp), ["kern", t]]
                else:
                    new.append(sp)
                i += 1
            spines = new
            continue
        if line.startswith("="):
            bar += 1
            continue
        # a data line: every token starts at t
        for sp, tk in zip(spines, toks):
            if sp[0] != "kern" or tk == ".":
                continue
            ends = []
            for sub in tk.split(" "):
                if not sub or sub == ".":
                    continue
                d = _duration(sub)
                if d is None:
                    continue                 # grace note: not played, no time
                ends.append(t + d)
                if "r" in sub:
                    continue
                p = _midi(sub)
                if p is None:
                    continue
                if ("_" in sub or "]" in sub) and p in ties:
                    notes[ties[p]][1] = t + d
                    if "]" in sub:
                        ties.pop(p)
                    continue
                notes.append([t, t + d, p, system, bar])
                if "[" in sub:
                    ties[p] = len(notes) - 1
            if ends:
                sp[1] = min(ends)
        later = [sp[1] for sp in spines if sp[0] == "kern" and sp[1] > t + 1e-9]
        if later:
            t = min(later)
    return {"notes": [tuple(n) for n in notes], "tempo": tempo or [(0.0, DEFAULT_MM)], "pedal": pedal,
            "systems": system + 1, "end_q": t}


def bar_music(kern: dict) -> tuple[dict, dict]:
    """Bar -> signature of its notes (onsets relative to the bar's first onset, pitches), and
    system -> set of the signatures of its bars: music printed twice (a written-out repeat) that
    no audio can tell apart locally."""
    by: dict[int, list] = {}
    where: dict[int, int] = {}
    for on, _off, p, sy, b in kern["notes"]:
        by.setdefault(b, []).append((on, p))
        where[b] = sy
    sig = {}
    for b, v in by.items():
        t0 = min(o for o, _ in v)
        sig[b] = hash(tuple(sorted((round(o - t0, 4), p) for o, p in v)))
    per_sys: dict[int, set] = {}
    for b, g in sig.items():
        per_sys.setdefault(where[b], set()).add(g)
    return sig, per_sys


def performance_clock(kern: dict, seed: int):
    """Quarter lengths -> seconds: the kern's tempo map times a smooth random factor in [0.92, 1.08]."""
    tempo = sorted(kern["tempo"])
    if tempo[0][0] > 0:
        tempo.insert(0, (0.0, tempo[0][1]))
    end = max(kern["end_q"], max((n[1] for n in kern["notes"]), default=0.0)) + 8
    grid = np.arange(0.0, end + 0.25, 0.25)
    bpm = np.array([next(b for q, b in reversed(tempo) if q <= g + 1e-9) for g in grid])
    rng = np.random.default_rng(seed)
    knots = np.arange(0.0, end + 32, 16.0)                      # a new factor every 16 quarters
    fac = np.interp(grid, knots, rng.uniform(0.92, 1.08, len(knots)))
    sec_per_q = 60.0 / (bpm * fac)
    secs = np.concatenate([[0.0], np.cumsum(sec_per_q[:-1] * 0.25)])
    return lambda q: np.interp(q, grid, secs)


def synthesize(kern: dict, seed: int) -> tuple[np.ndarray, list]:
    """Mono float32 audio and the onsets [(seconds, system)] (one per distinct onset time)."""
    from scorestream.models.corpus.perform import FluidRenderer

    clock = performance_clock(kern, seed)
    rng = np.random.default_rng(seed + 1)
    lead = 0.5
    played = []
    for on, off, p, _s, _b in kern["notes"]:
        a, b = lead + float(clock(on)), lead + float(clock(off))
        played.append((a, max(a + 0.05, b - 0.01), int(p), int(rng.integers(60, 85))))
    pedal = [(lead + float(clock(q)) + (0.03 if down else -0.02), 100 if down else 0) for q, down in kern["pedal"]]
    audio = FluidRenderer(SR).render(played, SOUNDFONT, 0, pedal_events=pedal, tail=1.5)
    return audio.astype(np.float32), onsets_of(kern, seed)


def onsets_of(kern: dict, seed: int) -> list:
    """[(seconds, system, bar)] of every distinct onset of :func:`synthesize`'s performance."""
    clock = performance_clock(kern, seed)
    return [list(x) for x in sorted({(round(0.5 + float(clock(n[0])), 4), int(n[3]), int(n[4])) for n in kern["notes"]})]


# --------------------------------------------------------------------------- library / engine


def pairs(data: Path) -> list[tuple[str, Path, Path, str]]:
    root = data / "joplin"
    out = []
    for line in (root / "pairs.tsv").read_text().splitlines()[1:]:
        r = line.split("\t")
        if r[0].endswith(".krn"):
            out.append((Path(r[0]).stem, root / r[0], root / r[1], r[4] if len(r) > 4 else ""))
    return sorted(out)


def build_library(lib: Path, todo, engraved: bool = False) -> None:
    exe = REPO / ".venv" / "bin" / "scorestream"
    have = set()
    if lib.exists():
        from scorestream.engine.library import Library
        with Library.open(lib, check_model=False) as L:
            have = {p.id for p in L.pieces()}
    for pid, _k, pdf, title in todo:
        if pid in have:
            continue
        src = [str(p) for p in engrave_pages(_k, CACHE / "engraved" / pid)] if engraved else [str(pdf)]
        r = subprocess.run([str(exe), "library", "add", "--library", str(lib), "--id", pid, "--title", title or pid,
                            "--composer", "Scott Joplin", "--no-progress", *src], capture_output=True, text=True)
        print(r.stdout.strip() or r.stderr.strip(), flush=True)


def engrave_pages(kfile: Path, folder: Path) -> list[Path]:
    """The control: the kern engraved by verovio with its own line breaks (``breaks: line``), page PNGs."""
    from scorestream.models.corpus.engrave import EngravingStyle, new_toolkit, rasterize

    pages = sorted(folder.glob("page*.png"))
    if pages:
        return pages
    tk = new_toolkit()
    opts = EngravingStyle().verovio_options()
    opts["breaks"] = "line"
    tk.setOptions(opts)
    if not tk.loadData(kfile.read_text(encoding="utf-8", errors="replace")):
        raise RuntimeError(f"verovio could not load {kfile}")
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, tk.getPageCount() + 1):
        Image.fromarray(rasterize(tk.renderToSVG(i))).save(folder / f"page{i:03d}.png")
    return sorted(folder.glob("page*.png"))


def windows_and_embeddings(engine, audio: np.ndarray, key: str):
    """Windows as ``follow_audio`` cuts them (0.1 s chunks through the stream front end) and their embeddings (cached)."""
    from scorestream.engine.follow import CHUNK_S, _chunks
    from scorestream.streamer.frontend import StreamFrontEnd

    fe = StreamFrontEnd(SR, 1, audio_frames=engine.audio_frames, stride_frames=engine.stride_frames)
    ws = []
    for chunk in _chunks(audio[:, None], SR, CHUNK_S):
        ws += fe.process(chunk[:, 0])
    ws += fe.flush()
    fp = getattr(engine.embedder, "fingerprint", "model")
    f = CACHE / "emb" / f"{key}-{hashlib.sha256((fp + str(engine.stride_frames) + getattr(engine.embedder, 'name', '')).encode()).hexdigest()[:12]}.npy"
    if f.is_file():
        emb = np.load(f)
        if len(emb) == len(ws):
            return ws, emb
    emb = np.concatenate([engine.embed(ws[i:i + 16]) for i in range(0, len(ws), 16)])
    f.parent.mkdir(parents=True, exist_ok=True)
    np.save(f, emb.astype(np.float32))
    return ws, emb


# --------------------------------------------------------------------------- scoring


def system_map(engine, pid: str, kern_systems: int, use_hand: bool = True):
    """(kern system index -> (page, system)), (page, system) -> strip-order index, ambiguity note."""
    pm = engine.by_id[pid]
    det = [(int(s.page), int(s.system)) for s in pm.systems]
    per_page = [sum(1 for p, _ in det if p == pg) for pg in range(1, pm.n_pages + 1)]
    hand = JOPLIN_PAGE_COUNTS.get(pid) if use_hand else None
    if hand:
        truth = [(pg + 1, s + 1) for pg, n in enumerate(hand) for s in range(n)]
        source = "hand counts (JOPLIN_PAGE_COUNTS)"
        ok = per_page == list(hand)
    else:
        truth = det[:kern_systems] + [(None, None)] * max(0, kern_systems - len(det))
        source = "detected systems in reading order"
        ok = len(det) == kern_systems
    return truth, {ps: i for i, ps in enumerate(det)}, {"detected_per_page": per_page, "detected": len(det),
                                                        "kern_systems": kern_systems, "hand_per_page": hand,
                                                        "map_source": source, "counts_match": ok}


def score(results: list, onsets: list, pid: str, truth_map: list, det_index: dict, identify: bool,
          music: tuple | None = None) -> dict:
    ts = np.array([o[0] for o in onsets])
    syss = np.array([o[1] for o in onsets])
    bars = [o[2] for o in onsets]
    first, last = float(ts[0]), float(ts[-1])
    right = near = tracked = n = equiv = 0
    for r in results:
        t = r.t
        if t < first or t > last:
            continue
        n += 1
        at = int(np.searchsorted(ts, t, side="right") - 1)
        k = int(syss[at])
        if r.state != "tracking" or r.piece != pid:
            continue
        tracked += 1
        if (r.page, r.system) == truth_map[k]:
            right += 1
        j = det_index.get((r.page, r.system))
        kt = det_index.get(truth_map[k])
        if j is not None and kt is not None and abs(j - kt) <= 1:
            near += 1
        if (r.page, r.system) == truth_map[k] or (music is not None and j is not None
                                                  and music[0].get(bars[at]) in music[1].get(j, ())):
            equiv += 1
    out = {"results": n, "right": right, "within_1": near, "tracking_piece": tracked, "right_or_same_bar": equiv,
           "system_accuracy": right / max(n, 1), "within_1_accuracy": near / max(n, 1),
           "same_bar_accuracy": equiv / max(n, 1),
           "tracking_share": tracked / max(n, 1)}
    if identify:
        stay = None
        for r in reversed(results):
            if r.t < first:
                break
            if r.state == "tracking" and r.piece == pid:
                stay = max(0.0, r.t - first)
            else:
                break
        out["time_to_identify_s"] = stay
        out["named_other"] = sum(1 for r in results if first <= r.t <= last and r.state == "tracking" and r.piece != pid)
    return out


# --------------------------------------------------------------------------- report


def pooled(rows: list, mode: str) -> dict:
    n = sum(r[mode]["results"] for r in rows)
    d = {"pieces": len(rows), "results": n,
         "system_accuracy": sum(r[mode]["right"] for r in rows) / max(n, 1),
         "within_1_accuracy": sum(r[mode]["within_1"] for r in rows) / max(n, 1),
         "same_bar_accuracy": sum(r[mode]["right_or_same_bar"] for r in rows) / max(n, 1),
         "tracking_share": sum(r[mode]["tracking_piece"] for r in rows) / max(n, 1),
         "mean_per_piece_system_accuracy": float(np.mean([r[mode]["system_accuracy"] for r in rows])) if rows else None}
    if mode == "identify":
        tti = [r[mode]["time_to_identify_s"] for r in rows]
        d["time_to_identify_median_s"] = float(np.median([x if x is not None else np.inf for x in tti])) if tti else None
        d["never_identified"] = sum(x is None for x in tti)
    return d


def markdown(res: dict) -> str:
    pct = lambda x: f"{100 * x:.1f} %"  # noqa: E731
    L = [f"# Real-scan evaluation: Joplin kern synthesized, followed on {res['sheets']}\n",
         f"`{res['command']}`  \n{res['date']}, {res['machine']}\n",
         "Truth at system level (the kern's `!!LO:LB`/`!!LO:PB` line breaks); audio: written order (no repeats), "
         "kern `*MM` x smooth random curve 0.92-1.08, MuseScore_General (held out), dry. "
         "'Right or same bar': the reported system is the true one, or it holds a bar with the same notes as the bar "
         "being played (music printed twice, e.g. a written-out repeat: no audio can tell them apart locally). "
         f"Map kern system -> (page, system): {res['map_note']}. Target: >= {pct(TARGET)} of results on the right system.\n",
         "## Pooled (share of results between first and last onset)\n",
         "| pieces | mode | results | right (page, system) | right or same bar | within +-1 system | tracking the piece | mean per piece | median time to identify |",
         "|---|---|---|---|---|---|---|---|---|"]
    for name, key in (("all", "all"), ("counts match", "match"), ("counts differ (ambiguous truth)", "ambiguous")):
        for mode in ("piece", "identify"):
            p = res["pooled"][key][mode]
            if not p["pieces"]:
                continue
            tti = p.get("time_to_identify_median_s")
            L.append(f"| {name} ({p['pieces']}) | {'piece given' if mode == 'piece' else 'identify'} | {p['results']} | "
                     f"{pct(p['system_accuracy'])} | {pct(p['same_bar_accuracy'])} | {pct(p['within_1_accuracy'])} | {pct(p['tracking_share'])} | "
                     f"{pct(p['mean_per_piece_system_accuracy'])} | {'' if tti is None else f'{tti:.1f} s'} |")
    L += ["\n## Per piece\n",
          "| piece | audio s | kern systems | system pairs sharing a bar | detected per page | match | given: right | given: right or same bar | given: +-1 | identify: right | identify: +-1 | tracking | time to identify | named other |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["pieces"]:
        g, i = r["piece"], r["identify"]
        tti = i["time_to_identify_s"]
        same = r.get("systems_sharing_a_bar", "")
        L.append(f"| {r['id']} | {r['seconds']:.0f} | {r['systems']['kern_systems']} | {same} | {r['systems']['detected_per_page']} | "
                 f"{'yes' if r['systems']['counts_match'] else '**no**'} | {pct(g['system_accuracy'])} | {pct(g['same_bar_accuracy'])} | "
                 f"{pct(g['within_1_accuracy'])} | "
                 f"{pct(i['system_accuracy'])} | {pct(i['within_1_accuracy'])} | {pct(i['tracking_share'])} | "
                 f"{'never' if tti is None else f'{tti:.1f} s'} | {i['named_other']} |")
    if res.get("skipped"):
        L.append("\nSkipped: " + "; ".join(f"{k} ({v})" for k, v in res["skipped"].items()))
    return "\n".join(L) + "\n"


def out_of_library(engine, lib, pid: str, ws, emb, config) -> dict:
    """The piece's audio identified within the library without the piece: how often something is named."""
    from scorestream.engine.engine import Engine
    from scorestream.engine.evaluation import UNKNOWN_STRETCH_S

    without = Engine(lib, tracker_config=config, pieces=[p.id for p in engine.pieces if p.id != pid])
    tr = without.new_tracker(None)
    res = [tr.update(w, e) for w, e in zip(ws, emb)]
    end = max((r.t for r in res), default=0.0)
    n = max(1, int(end // UNKNOWN_STRETCH_S))
    named = np.zeros(n, bool)
    for r in res:
        named[min(n - 1, int(r.t // UNKNOWN_STRETCH_S))] |= r.state == "tracking"
    who: dict[str, int] = {}
    for r in res:
        if r.state == "tracking":
            who[r.piece] = who.get(r.piece, 0) + 1
    return {"id": pid, "results": len(res), "stretches": n, "named_stretches": int(named.sum()),
            "named_results": sum(who.values()), "named_share": sum(who.values()) / max(len(res), 1),
            "most_named": max(who, key=who.get) if who else None}


def write_out_of_library(a, stem: str, cmd: str, engine, rows: list, skipped: dict) -> int:
    st = sum(r["stretches"] for r in rows)
    share = sum(r["named_stretches"] for r in rows) / max(st, 1)
    res_share = sum(r["named_results"] for r in rows) / max(sum(r["results"] for r in rows), 1)
    res = {"command": cmd, "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
           "machine": f"this machine: {os.cpu_count()} cores, CPU only, Python {platform.python_version()}, "
                      f"model {getattr(engine.embedder, 'name', '?')}",
           "tracker_overrides": a.tracker, "library": str(a.library), "library_pieces": len(engine.pieces),
           "measure": "each piece's audio identified within the library without that piece",
           "stretches": st, "false_identification_share": share, "named_results_share": res_share,
           "skipped": skipped, "pieces": rows}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{stem}.json").write_text(json.dumps(res, indent=1, default=float))
    over = ", ".join(a.tracker) or "none (configs/tracker.toml)"
    L = [f"# Joplin audio not in the library: how often a piece is named anyway\n",
         f"`{cmd}`  \n{res['date']}, {res['machine']}; tracker overrides: {over}\n",
         f"Each of {len(rows)} pieces' audio (as real_joplin.py) identified within `{a.library}` minus that piece "
         f"({len(engine.pieces) - 1} scans). A 10 s stretch counts as a false identification when any result in it names a piece.\n",
         "| pieces | 10 s stretches | stretches with a piece named | results naming a piece |", "|---|---|---|---|",
         f"| {len(rows)} | {st} | {100 * share:.1f} % | {100 * res_share:.1f} % |", "",
         "| piece | stretches | named | results naming a piece | most often named |", "|---|---|---|---|---|"]
    L += [f"| {r['id']} | {r['stretches']} | {r['named_stretches']} | {100 * r['named_share']:.1f} % | {r['most_named'] or '–'} |"
          for r in rows]
    md = "\n".join(L) + "\n"
    (a.out / f"{stem}.md").write_text(md)
    print(md)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("SCORESTREAM_DATA", "/work/shared/data")))
    ap.add_argument("--library", type=Path, default=None, help="default data/lib_joplin (--engraved: data/lib_joplin_engraved)")
    ap.add_argument("--engraved", action="store_true",
                    help="control: the same performances against the kern engraved by verovio with its line breaks "
                         "(library data/lib_joplin_engraved, built with --build; results real_joplin_engraved.*)")
    ap.add_argument("--limit", type=int, default=None, help="first N pieces in sorted order")
    ap.add_argument("--pieces", default=None, help="comma-separated ids (default all)")
    ap.add_argument("--build", action="store_true", help="add missing pieces to the library first")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--tracker", "--set", dest="tracker", action="append", default=[], metavar="KEY=VALUE",
                    help="override a configs/tracker.toml setting (diagnostics; results then go to real_joplin_<tag>.*)")
    ap.add_argument("--tag", default=None, help="suffix of the result files")
    ap.add_argument("--jsonl", action="store_true", help="also keep every result under data/real_joplin/results/")
    ap.add_argument("--out-of-library", action="store_true",
                    help="each piece's audio against the library without it: how often a piece is named (real_joplin_ool*)")
    a = ap.parse_args(argv)
    if a.library is None:
        a.library = REPO / "data" / ("lib_joplin_engraved" if a.engraved else "lib_joplin")
    stem = ("real_joplin_engraved" if a.engraved else "real_joplin") + ("_ool" if a.out_of_library else "") + \
        (f"_{a.tag}" if a.tag else "")
    todo = pairs(a.data)
    if a.pieces:
        want = set(a.pieces.split(","))
        todo = [p for p in todo if p[0] in want]
    if a.limit:
        todo = todo[:a.limit]
    if a.build:
        build_library(a.library, todo, a.engraved)

    from scorestream.engine.engine import Engine
    from scorestream.engine.library import Library

    lib = Library.open(a.library)
    from scorestream.engine.evaluation import config_with

    engine = Engine(lib, tracker_config=config_with(a.tracker))
    print(f"library {a.library}: {len(engine.pieces)} pieces, {engine.size} snippets", flush=True)
    rows, skipped = [], {}
    t_start = time.time()
    for n, (pid, kfile, _pdf, _title) in enumerate(todo):
        if pid not in engine.by_id:
            skipped[pid] = "not in the library"
            continue
        if kern_system_count(kfile) is None:
            skipped[pid] = "kern has no line breaks: no system truth"
            continue
        kern = read_kern(kfile)
        seed = int(hashlib.sha256(pid.encode()).hexdigest()[:8], 16)
        key = f"{pid}-v{READER_VERSION}-{hashlib.sha256(kfile.read_bytes()).hexdigest()[:10]}"
        wav, tj = CACHE / "audio" / f"{key}.flac", CACHE / "audio" / f"{key}.truth.json"
        import soundfile as sf
        if wav.is_file() and tj.is_file():
            audio = sf.read(str(wav), dtype="float32")[0]
            onsets = json.loads(tj.read_text())["onsets"]
        else:
            audio, onsets = synthesize(kern, seed)
            wav.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(wav), audio, SR, subtype="PCM_16")
            tj.write_text(json.dumps({"piece": pid, "onsets": onsets, "tempo": kern["tempo"], "seed": seed}))
            audio = sf.read(str(wav), dtype="float32")[0]      # the same samples whether cached or not
        t0 = time.time()
        ws, emb = windows_and_embeddings(engine, audio, key)
        t_emb = time.time() - t0
        if a.out_of_library:
            rows.append(out_of_library(engine, lib, pid, ws, emb, config_with(a.tracker)))
            r = rows[-1]
            print(f"[{n + 1}/{len(todo)}] {pid} not in the library: named in {r['named_stretches']}/{r['stretches']} "
                  f"stretches of 10 s, {100 * r['named_share']:.1f} % of results (most named: {r['most_named']})  "
                  f"[{time.time() - t0:.0f} s, total {time.time() - t_start:.0f} s]", flush=True)
            continue
        music = bar_music(kern)
        onsets = onsets_of(kern, seed)          # truth (seconds, system, bar); the same times as the cached audio's
        truth_map, det_index, sysinfo = system_map(engine, pid, kern["systems"], not a.engraved)
        row = {"id": pid, "seconds": len(audio) / SR, "notes": len(kern["notes"]), "onsets": len(onsets),
               "mm": kern["tempo"][0][1], "systems": sysinfo, "embed_s": t_emb,
               "systems_sharing_a_bar": sum(1 for a in music[1] for b in music[1] if a < b and music[1][a] & music[1][b])}
        for mode in ("piece", "identify"):
            tr = engine.new_tracker(pid if mode == "piece" else None)
            res = [tr.update(w, e) for w, e in zip(ws, emb)]
            row[mode] = score(res, onsets, pid, truth_map, det_index, mode == "identify", music)
            if a.jsonl:
                f = CACHE / "results" / f"{stem}-{pid}-{mode}.jsonl"
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_text("".join(json.dumps(r.to_json()) + "\n" for r in res))
        rows.append(row)
        g, i = row["piece"], row["identify"]
        print(f"[{n + 1}/{len(todo)}] {pid}: {row['seconds']:.0f} s audio, systems kern {sysinfo['kern_systems']} / "
              f"detected {sysinfo['detected']} {sysinfo['detected_per_page']}{'' if sysinfo['counts_match'] else ' MISMATCH'}; "
              f"given {100 * g['system_accuracy']:.1f} % (+-1 {100 * g['within_1_accuracy']:.1f} %), identify "
              f"{100 * i['system_accuracy']:.1f} %, tracking {100 * i['tracking_share']:.1f} %, "
              f"identified after {i['time_to_identify_s']} s  [{time.time() - t0:.0f} s, total {time.time() - t_start:.0f} s]",
              flush=True)
    cmd = " ".join([".venv/bin/python", "benchmarks/real_joplin.py"] + (argv if argv is not None else sys.argv[1:]))
    if a.out_of_library:
        return write_out_of_library(a, stem, cmd, engine, rows, skipped)
    groups = {"all": rows, "match": [r for r in rows if r["systems"]["counts_match"]],
              "ambiguous": [r for r in rows if not r["systems"]["counts_match"]]}
    res = {"command": cmd, "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
           "machine": f"{platform.node() and 'this machine'}: {os.cpu_count()} cores, CPU only, Python {platform.python_version()}, "
                      f"model {getattr(engine.embedder, 'name', '?')}",
           "tracker_overrides": a.tracker, "library": str(a.library), "sheets": "verovio engraving of the kern (control)" if a.engraved else "real scans", "library_pieces": len(engine.pieces), "target": TARGET,
           "map_note": ("JOPLIN_PAGE_COUNTS where it has the piece (it has "
                        f"{sum(1 for r in rows if r['systems']['hand_per_page'])} of these), else the library's "
                        "detected systems in reading order; 'counts match' = detected total == kern total (per page "
                        "where hand counts exist)"),
           "performance": "written order, no repeat expansion; kern *MM (100 if none) x smooth random factor 0.92-1.08 "
                          "per 16 quarters; velocity 60-84; *ped/*Xped pedal; MuseScore_General via FluidRenderer, 22050 Hz, dry",
           "pooled": {k: {m: pooled(v, m) for m in ("piece", "identify")} for k, v in groups.items()},
           "skipped": skipped, "pieces": rows}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{stem}.json").write_text(json.dumps(res, indent=1, default=float))
    md = markdown(res)
    (a.out / f"{stem}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
