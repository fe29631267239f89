"""The ``vienna`` conditions: 88 real pianists' performances with note-level alignments.

Source: ``../shared/data/vienna4x22`` (Goebl 1999, CPJKU rematch; research use; see its
PROVENANCE.md): 4 excerpts (Chopin op. 10/3, Chopin op. 38, Mozart K331/1, Schubert
D783/15) x 22 pianists; performance MIDI recorded on a Bösendorfer SE, and ``.match``
files aligning every performed note to its score note.  **Evaluation only**: 3 of the 4
pieces overlap the reserved test repertoire; only Schubert D783/15 does not.

Each performance MIDI (every note, insertions included, and the pianist's sustain pedal,
CC64) is played by

* ``vienna``: the held-out timbre MuseScore_General through our fluidsynth renderer, dry;
* ``vienna_realistic``: the Salamander Grand (:mod:`.salamander`) in a random room with
  noise and a lossy codec (:mod:`.acoustics`), one scene per performance (seeded).

The MusicXML (``musicxml_staves_fixed/``, two staves) is engraved with the corpus's
test house style (``EngravingStyle()``) and unrolled like the corpus; every matched score
note is mapped onto its engraved notehead (:func:`.score_map.map_notes`: MusicXML id,
checked by pitch; fallback by onset + pitch) and paired with the pianist's onset time:
exact (performance onset frame, strip x) pairs with real human timing, grouped per
onset frame as in the corpus.

Sets: one per pianist (4 takes, one per piece), so that no retrieval pool holds the same
snippet twice.  ``vienna_schubert`` keeps only Schubert D783/15 (the piece outside the
reserved test repertoire; used, realistic, for checkpoint choice together with
``realistic_valid``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from .store import DEFAULT_ROOT, ConditionWriter, TakeInfo

log = logging.getLogger(__name__)

VIENNA = Path(__file__).resolve().parents[3] / "shared" / "data" / "vienna4x22"
PIECES = {
    "Chopin_op10_no3": ("Chopin_op10_no3.musicxml", "Chopin"),
    "Chopin_op38": ("Chopin_op38.musicxml", "Chopin"),
    "Mozart_K331_1st-mov": ("Mozart_K331_1st-mov.musicxml", "Mozart"),
    "Schubert_D783_no15": ("Schubert_D783_no15.musicxml", "Schubert"),
}
NOT_IN_RESERVED_TEST = ("Schubert_D783_no15",)
TEST_SOUNDFONT = "/usr/share/sounds/sf3/MuseScore_General.sf3"
_PIANIST = re.compile(r"_p(\d+)\.match$")


def matched_notes(match, score) -> tuple[list[str], np.ndarray, dict]:
    """Engraved note ids and performance onsets (s) of a match file's played score notes, and mapping stats."""
    from .score_map import map_notes

    played = match.matched
    bpq = match.beats_per_quarter
    mapping = map_notes([(s.anchor, s.onset_beats / bpq, s.pitch) for s, _ in played], score)
    ids, onsets = [], []
    for s, p in played:
        vid = mapping.ids.get(s.anchor)
        if vid is not None:
            ids.append(vid)
            onsets.append(match.seconds(p.onset_tick))
    stats = {"played": len(played), "mapped": len(ids), "by_id": mapping.by_id, "by_position": mapping.by_position,
             "unmapped": len(mapping.unmapped), "pitch_mismatch": len(mapping.pitch_mismatch),
             "offset_quarters": mapping.offset_quarters}
    return ids, np.asarray(onsets, np.float64), stats


def build(out_root: str | Path = DEFAULT_ROOT, source: str | Path = VIENNA, realistic: bool = False,
          pieces: tuple[str, ...] | None = None, name: str | None = None, salamander_root: str | Path | None = None,
          progress=print) -> Path:
    """Build ``vienna`` (MuseScore_General, dry) or ``vienna_realistic`` into ``out_root/<name>``."""
    from scorestream.core.frontend import FrontEndConfig, spectrogram

    from ..corpus.perform import FluidRenderer
    from .matchfile import read_match
    from .salamander import midi_notes, midi_pedal_events
    from .score_map import engrave, frame_pairs

    source = Path(source)
    if not (source / "match").is_dir():
        raise FileNotFoundError(f"{source}: not the Vienna 4x22 folder (no match/)")
    name = name or ("vienna_realistic" if realistic else "vienna")
    pieces = pieces or tuple(PIECES)
    settings = {"source": str(source), "pieces": list(pieces), "realistic": realistic, "engraving": "EngravingStyle()",
                "timbre": "Salamander Grand + scene" if realistic else "MuseScore_General, dry", "version": 1,
                "acoustics": 2 if realistic else 0}
    w = ConditionWriter(Path(out_root) / name, name, __doc__.split("\n\n")[0], settings)
    fe = FrontEndConfig()
    renderer = None if realistic else FluidRenderer(fe.sample_rate)
    sampler = None
    if realistic:
        from .salamander import DEFAULT_ROOT as SAL_ROOT, Sampler

        sampler = Sampler(salamander_root or SAL_ROOT, fe.sample_rate)
    mapping_stats = {}
    for piece in pieces:
        xml, composer = PIECES[piece]
        score = engrave(str(source / "musicxml_staves_fixed" / xml))
        strip_rel = w.save_strip(piece, score.strip)
        for mpath in sorted((source / "match").glob(f"{piece}_p*.match")):
            pianist = _PIANIST.search(mpath.name).group(1)
            take_id = f"{piece}_p{pianist}"
            if w.has(take_id):
                w.keep(take_id)
                continue
            match = read_match(mpath)
            ids, onsets, stats = matched_notes(match, score)
            mapping_stats[take_id] = stats
            midi = source / "midi" / match.info.get("midiFileName", mpath.with_suffix(".mid").name)
            notes = midi_notes(midi)
            pedal = midi_pedal_events(midi)
            labels = {"corpus": "vienna4x22", "composer": composer, "pianist": int(pianist), "split": "eval",
                      "reserved_test_overlap": piece not in NOT_IN_RESERVED_TEST, "mapping": stats}
            if realistic:
                from .acoustics import apply_scene, draw_scene
                from scorestream.core.splits import unit_hash

                audio = sampler.render(notes, pedal)
                scene = draw_scene(np.random.default_rng(int(unit_hash(take_id, 77) * 2**31)))
                audio = apply_scene(audio, scene, fe.sample_rate)
                labels["scene"] = scene.to_json()
            else:
                audio = renderer.render(notes, TEST_SOUNDFONT, 0, pedal_events=pedal)
                audio = (audio / (np.max(np.abs(audio)) + 1e-9) * 0.9).astype(np.float32)
            spec = spectrogram(audio, fe)
            pairs = frame_pairs(onsets, ids, score, fe.fps)
            keep = pairs["frame"] < len(spec)
            pairs = {k: v[keep] for k, v in pairs.items()}
            w.add(TakeInfo(take_id, piece, f"pianist{pianist}", strip_rel, labels), spec, pairs)
            progress(f"{name}: {take_id}: {len(pairs['frame'])} pairs, {stats['mapped']}/{stats['played']} notes mapped "
                     f"({stats['by_position']} by position), {len(audio) / fe.sample_rate:.0f} s")
    w.flush(mapping=mapping_stats)
    return w.folder


# --------------------------------------------------------------------------- tempo / strip speed

def strip_speed(times: np.ndarray, xs: np.ndarray, systems: np.ndarray, min_notes: int = 6) -> list[tuple[float, float]]:
    """(strip px per second, duration s) per pass through a system: least-squares slope of strip x
    over onset time for each run of consecutive pairs (in time order) in one system (a repeat
    starts a new run)."""
    out = []
    times, xs, systems = map(np.asarray, (times, xs, systems))
    o = np.argsort(times, kind="stable")
    times, xs, systems = times[o], xs[o], systems[o]
    cut = np.flatnonzero((np.diff(systems) != 0) | (np.diff(xs) < -150)) + 1
    for idx in np.split(np.arange(len(times)), cut):
        if len(idx) < min_notes:
            continue
        t, x = times[idx], xs[idx]
        dur = float(t.max() - t.min())
        if dur < 2.0:
            continue
        slope = float(np.polyfit(t, x, 1)[0])
        if slope > 0:
            out.append((slope, dur))
    return out


def speed_summary(rows: list[tuple[float, float]]) -> dict:
    """Duration-weighted quantiles of px/s."""
    if not rows:
        return {}
    v = np.array([r[0] for r in rows])
    w = np.array([r[1] for r in rows])
    o = np.argsort(v)
    v, w = v[o], w[o]
    c = np.cumsum(w) / w.sum()

    def q(p):
        return float(np.interp(p, c, v))

    return {"systems": len(rows), "hours": round(float(w.sum()) / 3600, 3), "p05": q(0.05), "p10": q(0.10), "p25": q(0.25),
            "median": q(0.5), "p75": q(0.75), "p90": q(0.90), "p95": q(0.95)}
