"""Corpus pieces under realistic conditions, and the hard solo-piano slice.

``realistic`` / ``realistic_valid``: every piece of the corpus's test / valid split,
engraving 0 as built, played anew by a synthetic concert pianist
(:meth:`models.corpus.perform.PerformanceStyle.concert`: wide global tempo, phrase
rubato, asynchrony, rolled chords, ornaments, pedalling, dynamics, a few wrong and
missed notes — a seed stream of its own) on the Salamander Grand (never used in
training) and recorded in a random scene (:mod:`.acoustics`: image-source room,
noise, MP3/Opus).  ``realistic_valid`` is the validation condition checkpoints are
chosen on; ``realistic`` (test split) is only reported.

``hard``: the paper's condition (held-out timbre MuseScore_General, tempo 1.0) on the
romantic and modern solo-piano pieces of the test split (DCML corpora of Grieg,
Rachmaninoff, Medtner, Bartók, Schumann, Tchaikovsky, Dvořák, Debussy, Ravel,
Schulhoff): dense, wide-range textures.  ``realistic_hard``: the same pieces under the
realistic condition.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from .store import DEFAULT_ROOT, ConditionWriter, TakeInfo

PIANO_COMPOSERS = {
    "bach_en_fr_suites": "J. S. Bach", "bartok_bagatelles": "Bartók", "couperin_clavecin": "Couperin",
    "cpe_bach_keyboard": "C. P. E. Bach", "debussy_suite_bergamasque": "Debussy", "dvorak_silhouettes": "Dvořák",
    "frescobaldi_fiori_musicali": "Frescobaldi", "grieg_lyric_pieces": "Grieg", "handel_keyboard": "Händel",
    "jc_bach_sonatas": "J. C. Bach", "kozeluh_sonatas": "Koželuch", "medtner_tales": "Medtner",
    "rachmaninoff_piano": "Rachmaninoff", "ravel_piano": "Ravel", "scarlatti_sonatas": "Scarlatti",
    "schulhoff_suite_dansante_en_jazz": "Schulhoff", "schumann_kinderszenen": "Schumann",
    "sweelinck_keyboard": "Sweelinck", "tchaikovsky_seasons": "Tchaikovsky", "wf_bach_sonatas": "W. F. Bach",
}
ROMANTIC_MODERN = ("grieg_lyric_pieces", "rachmaninoff_piano", "medtner_tales", "bartok_bagatelles", "schumann_kinderszenen",
                   "tchaikovsky_seasons", "dvorak_silhouettes", "debussy_suite_bergamasque", "ravel_piano",
                   "schulhoff_suite_dansante_en_jazz")
SEED_SALT = 9001          # the realistic performances' own seed stream (never a corpus build seed)


def piece_labels(piece_id: str) -> dict:
    """corpus and composer of a corpus piece id (``piano__grieg_lyric_pieces__op43n04``, ``scores__Brahms_Johannes__…``)."""
    parts = piece_id.split("__")
    if parts[0] == "piano" and len(parts) > 1:
        return {"corpus": parts[1], "composer": PIANO_COMPOSERS.get(parts[1], parts[1]), "solo_piano": True,
                "hard": parts[1] in ROMANTIC_MODERN}
    if parts[0] == "scores" and len(parts) > 1:
        return {"corpus": "lieder", "composer": parts[1].replace("_", " "), "solo_piano": False, "hard": False}
    return {"corpus": parts[0], "composer": parts[1] if len(parts) > 1 else "?", "solo_piano": False, "hard": False}


def is_hard(piece_id: str) -> bool:
    return bool(piece_labels(piece_id)["hard"])


def _take_pairs(piece, onsets: np.ndarray) -> dict[str, np.ndarray]:
    """The corpus reader's pairs (``Piece.pairs``) for a new performance's event onsets."""
    from ..corpus.reader import Piece

    class _Take(Piece):
        def performance(self, j):  # noqa: D401 - same signature as Piece.performance
            return None, onsets

    pr = _Take(piece.dir).pairs(0, 0)
    return {"frame": pr.frame, "time": pr.time, "strip_x": pr.strip_x, "strip_y": pr.strip_y,
            "system": pr.page * 1000 + pr.system}


def build(corpus_dir: str | Path, split: str = "test", out_root: str | Path = DEFAULT_ROOT, name: str | None = None,
          only_hard: bool = False, salamander_root: str | Path | None = None, limit: int | None = None,
          progress=print) -> Path:
    """Render the realistic condition of one corpus split into ``out_root/<name>`` (resumable)."""
    from scorestream.core.frontend import FrontEndConfig, spectrogram
    from scorestream.core.splits import unit_hash

    from ..corpus.perform import PerformanceStyle, human_performance
    from ..corpus.reader import Corpus
    from .acoustics import apply_scene, draw_scene
    from .salamander import DEFAULT_ROOT as SAL_ROOT, Sampler

    corpus = Corpus(corpus_dir)
    name = name or {"test": "realistic", "valid": "realistic_valid"}.get(split, f"realistic_{split}")
    settings = {"corpus": str(Path(corpus_dir).resolve()), "split": split, "only_hard": only_hard, "version": 1,
                "performance": "PerformanceStyle.concert", "timbre": "Salamander Grand", "scene": "acoustics.draw_scene", "acoustics": 2}
    w = ConditionWriter(Path(out_root) / name, name, __doc__.split("\n\n")[0], settings)
    fe = FrontEndConfig()
    sampler = Sampler(salamander_root or SAL_ROOT, fe.sample_rate)
    ids = [p for p in corpus.piece_ids(split) if not only_hard or is_hard(p)]
    if limit:
        ids = ids[:limit]
    for k, pid in enumerate(ids):
        take_id = pid
        if w.has(take_id):
            w.keep(take_id)
            continue
        piece = corpus.piece(pid)
        seed = int(unit_hash(pid, SEED_SALT) * 2**31)
        style = PerformanceStyle.concert(random.Random(seed), "Salamander")
        ev_on, notes, pedal = human_performance(piece.timing, style)
        audio = sampler.render(notes, pedal if style.pedal else None)
        scene = draw_scene(np.random.default_rng(seed + 1))
        audio = apply_scene(audio, scene, fe.sample_rate)
        spec = spectrogram(audio, fe)
        pairs = _take_pairs(piece, ev_on)
        keep = (pairs["frame"] >= 0) & (pairs["frame"] < len(spec))
        pairs = {a: b[keep] for a, b in pairs.items()}
        labels = {**piece_labels(pid), "split": split, "tempo": style.tempo, "pedal": style.pedal_style if style.pedal else "none",
                  "scene": scene.to_json()}
        w.add(TakeInfo(take_id, pid, "all", str((piece.dir / "e0_strip.png").resolve()), labels), spec, pairs)
        if k % 10 == 0:
            progress(f"{name}: {k + 1}/{len(ids)} {pid}: {len(pairs['frame'])} pairs, tempo {style.tempo}, "
                     f"{len(audio) / fe.sample_rate:.0f} s, room rt60 {scene.rt60}, codec {scene.codec or '-'}")
    w.flush()
    return w.folder


def corpus_speed(corpus_dir: str | Path, splits=("valid", "test"), step: int = 1) -> dict:
    """Strip px/s (:func:`.vienna.strip_speed`) of a corpus's performances, by kind of take."""
    from ..corpus.reader import Corpus
    from .vienna import speed_summary, strip_speed

    corpus = Corpus(corpus_dir)
    rows: dict[str, list] = {}
    for sp in splits:
        for pid in corpus.piece_ids(sp)[::step]:
            pc = corpus.piece(pid)
            for j, perf in enumerate(pc.meta["performances"]):
                st = perf["style"]
                kind = "concert" if st.get("human") else ("plain" if st["tempo"] == 1.0 and not st["rubato"] else "random 0.9-1.1")
                pr = pc.pairs(j)
                rows.setdefault(kind, []).extend(strip_speed(pr.time, pr.strip_x, pr.page * 1000 + pr.system))
    return {k: speed_summary(v) for k, v in rows.items()}


def condition_speed(folder: str | Path) -> dict:
    from .store import ConditionData
    from .vienna import speed_summary, strip_speed

    rows = []
    for t in ConditionData(folder).takes:
        p = t.pairs()
        rows.extend(strip_speed(p["time"], p["strip_x"], p["system"]))
    return speed_summary(rows)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))
