"""``scorestream corpus build``: engrave, synthesize and align a score collection.

Output layout (one folder per piece, written atomically: ``piece.json`` is
written last, so a piece folder without it is an interrupted build and is
redone on resume)::

    OUT/
      corpus.json            settings of the build
      manifest.tsv           one line per built piece
      failed.tsv             pieces skipped, with the reason
      splits.json            piece ids per split (train / valid / test)
      stats.json             totals (pieces, pages, hours, aligned pairs)
      pieces/<id>/
        piece.json           metadata, engraving and performance styles
        timing.json          onset events in performed order (score time) + note ids
        e0_layout.json       pages: systems and notehead boxes (page pixels)
        e0_page001.png ...   page images, 835 px wide, grayscale
        e0_strip.png/.json   unrolled score strip and its system segments
        p0.npz ...           performance: log spectrogram (float16, 20 fps x 92) + event onset times
"""

from __future__ import annotations

import concurrent.futures as cf
import fcntl
import logging
import json
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from scorestream.core.config import default_path, load_section
from scorestream.core.errors import InputError
from scorestream.core.npz import save_npz
from scorestream.core.splits import SPLITS, unit_hash
from scorestream.core.splits import split_of as _split_of

from .scorefile import SCORE_SUFFIXES, ScoreError

log = logging.getLogger(__name__)


@dataclass
class TimbreConfig:
    train: tuple[str, ...] = ("FluidR3_GM", "FluidR3Mono_GM", "TimGM6mb")
    test: str = "MuseScore_General"
    soundfonts: dict = field(default_factory=dict)


@dataclass
class CorpusConfig:
    engravings: int = 1
    performances: int = 2
    max_pages: int = 40
    timeout_s: int = 900
    seed: int = 0
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    keyboard_only: bool = True
    # ---- concert playing (defaults: the original generator)
    concert_p: float = 0.0               # share of (non-paper-test) takes played by PerformanceStyle.concert
    concert_tempo_median: float = 0.75   # its global tempo: log-normal (measured on Vienna 4x22, see MODEL_CARD)
    concert_tempo_log_sd: float = 0.3
    concert_tempo_min: float = 0.35
    concert_tempo_max: float = 1.7
    # ---- extra engravings: variant pieces "<id>~v<k>" (own house style, often transposed, own takes)
    variants: dict = field(default_factory=dict)     # piece-id prefix -> variants per piece (longest prefix wins)
    variant_splits: tuple[str, ...] = ("train",)
    transpose_p: float = 0.0             # share of variants transposed (verovio option transpose; audio follows)
    transpose_max: int = 4               # semitones up or down


_INTERVALS = {1: "m2", 2: "M2", 3: "m3", 4: "M3", 5: "P4", 6: "A4", 7: "P5"}


@dataclass
class VariantStyle:
    """An engraving style plus a transposition (verovio's ``transpose`` option, e.g. ``"-m3"``)."""

    base: dict
    transpose: str = ""

    def verovio_options(self) -> dict:
        from .engrave import EngravingStyle

        return {**EngravingStyle(**self.base).verovio_options(), "transpose": self.transpose}


def variants_for(piece_id: str, cfg: CorpusConfig) -> int:
    """Number of variant pieces for ``piece_id``: the value of its longest matching prefix in ``cfg.variants``."""
    best, n = -1, 0
    for prefix, k in (cfg.variants or {}).items():
        if piece_id.startswith(prefix) and len(prefix) > best:
            best, n = len(prefix), int(k)
    return n


def load_configs(path: str | Path | None = None) -> tuple[CorpusConfig, TimbreConfig]:
    p = path or default_path("corpus")
    return load_section(CorpusConfig, p, "corpus"), load_section(TimbreConfig, p, "timbres")


@dataclass
class PieceTask:
    piece_id: str
    source: str
    group: str
    split: str
    out_dir: str
    seed: int
    variant: int = 0     # 0: the piece itself; k > 0: its k-th variant (another engraving, maybe transposed)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_")[:120]


def split_of(group: str, cfg: CorpusConfig) -> str:
    """Deterministic split by group (a work: its movements share one group); see scorestream.core.splits."""
    return _split_of(group, cfg.valid_fraction, cfg.test_fraction)


def discover(sources: list[str | Path]) -> list[tuple[str, Path, str]]:
    """(piece id, path, group) for every score file under the given folders/files."""
    found = []
    for src in sources:
        src = Path(src)
        if src.is_file():
            files, root = [src], src.parent
        elif src.is_dir():
            files = sorted(p for p in src.rglob("*") if p.suffix.lower() in SCORE_SUFFIXES and p.is_file())
            root = src
        else:
            raise InputError(f"score source {src} does not exist; give score folders or files (.mxl, .musicxml, .xml, .krn)")
        tag = _slug(root.name)
        for f in files:
            rel = f.relative_to(root).with_suffix("")
            pid = _slug(f"{tag}__{rel.as_posix().replace('/', '__')}")
            # movements of a work: same folder and same stem up to a trailing movement marker
            stem = re.sub(r"((?<=\d)[a-z]|[_-](\d{1,2}|mov(ement)?\d+))$", "", rel.name, flags=re.IGNORECASE) or rel.name
            group = "/".join(x for x in (tag, rel.parent.as_posix(), stem) if x not in ("", "."))
            found.append((pid, f, group))
    ids = [p for p, _, _ in found]
    if len(ids) != len(set(ids)):
        seen, out = set(), []
        for pid, f, g in found:
            k, i = pid, 1
            while k in seen:
                i += 1
                k = f"{pid}_{i}"
            seen.add(k)
            out.append((k, f, g))
        found = out
    return found


# ---------------------------------------------------------------- worker side

_TK = None


def _toolkit():
    global _TK
    if _TK is None:
        from .engrave import new_toolkit

        _TK = new_toolkit()
    return _TK


class _Timeout(Exception):
    pass


def _alarm(signum, frame):  # pragma: no cover - signal handler
    raise _Timeout()


def _die_with_parent() -> None:
    """Worker initializer: exit when the driver process dies (Linux), so an
    interrupted build leaves no orphan writing into the corpus folder."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def build_piece(task: PieceTask, cfg: CorpusConfig, timbres: TimbreConfig) -> dict:
    """Build one piece folder. Returns a summary dict; raises on failure."""
    from PIL import Image

    from scorestream.core.frontend import FrontEndConfig, spectrogram

    from .engrave import EngravingStyle, load_score, parse_svg_layout, rasterize
    from .perform import PerformanceStyle, perform, score_timing, style_json
    from .scorefile import load_for_engraving
    from scorestream.core.strip import unroll

    t0 = time.time()
    out = Path(task.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(task.seed)
    text = load_for_engraving(task.source, keyboard=cfg.keyboard_only)
    tk = _toolkit()
    tk.setOptions({"transpose": ""})          # a variant's transposition must not stay on for the next piece
    engravings = []
    timing = None
    n_pages_first = 0
    for e in range(cfg.engravings):
        style = EngravingStyle() if (task.split == "test" and e == 0) else EngravingStyle.random(rng)
        if task.variant and e == 0 and cfg.transpose_p > 0 and rng.random() < cfg.transpose_p:
            k = rng.randint(1, max(1, cfg.transpose_max))
            style = VariantStyle(asdict(style), ("+" if rng.random() < 0.5 else "-") + _INTERVALS[min(k, 7)])
        n_pages = load_score(tk, text, style)
        if n_pages > cfg.max_pages:
            raise ScoreError(f"{n_pages} pages (more than max_pages={cfg.max_pages})")
        if timing is None:
            timing = score_timing(tk)
            n_pages_first = n_pages
        pages, layouts = [], []
        for p in range(1, n_pages + 1):
            svg = tk.renderToSVG(p)
            lay = parse_svg_layout(svg)
            img = rasterize(svg)
            Image.fromarray(img).save(out / f"e{e}_page{p:03d}.png", optimize=False, compress_level=6)
            pages.append(img)
            layouts.append(lay)
        strip = unroll(pages, [[(s.x0, s.y0, s.x1, s.y1, s.staff_space) for s in lay.systems] for lay in layouts])
        Image.fromarray(strip.image).save(out / f"e{e}_strip.png")
        (out / f"e{e}_strip.json").write_text(json.dumps(strip.to_json()))
        (out / f"e{e}_layout.json").write_text(json.dumps({"style": asdict(style), "pages": [l.to_json() for l in layouts]}))
        known = set()
        for l in layouts:
            known.update(l.notes)
        ids = [i for ev in timing.event_ids for i in ev]
        coverage = sum(i in known for i in ids) / max(1, len(ids))
        engravings.append({"name": f"e{e}", "style": asdict(style), "pages": n_pages, "staff_space_px": float(np.median([l.staff_space for l in layouts])),
                           "strip_width": int(strip.image.shape[1]), "note_coverage": round(coverage, 4)})
    assert timing is not None
    (out / "timing.json").write_text(json.dumps(timing.to_json()))

    fe = FrontEndConfig()
    performances = []
    for j in range(cfg.performances):
        if task.split == "test" and j == 0:
            style = PerformanceStyle.plain(timbres.test, seed=rng.randrange(2**31))
        elif cfg.concert_p > 0 and rng.random() < cfg.concert_p:
            style = PerformanceStyle.concert(rng, rng.choice(list(timbres.train)), cfg.concert_tempo_median,
                                             cfg.concert_tempo_log_sd, (cfg.concert_tempo_min, cfg.concert_tempo_max))
        else:
            style = PerformanceStyle.random(rng, rng.choice(list(timbres.train)))
        sf = timbres.soundfonts.get(style.timbre)
        if not sf:
            raise RuntimeError(f"no soundfont configured for timbre {style.timbre!r}")
        audio, onsets = perform(timing, style, sf)
        spec = spectrogram(audio, fe)
        save_npz(out / f"p{j}.npz", spec=spec.astype(np.float16), onsets=onsets.astype(np.float32))
        frames = np.unique(np.round(onsets * fe.fps).astype(int))
        performances.append({"name": f"p{j}", "style": style_json(style), "duration_s": round(len(audio) / fe.sample_rate, 3),
                             "frames": int(spec.shape[0]), "onset_frames": int(len(frames))})
    meta = {
        "id": task.piece_id, "source": task.source, "group": task.group, "split": task.split, "variant": task.variant,
        "pages": n_pages_first, "events": int(len(timing.event_times)), "notes": len(timing.notes),
        "engravings": engravings, "performances": performances,
    }
    log.debug("built %s in %.1f s", task.piece_id, time.time() - t0)
    tmp = out / "piece.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, out / "piece.json")
    return meta


def _worker_entry(task: PieceTask, cfg: CorpusConfig, timbres: TimbreConfig) -> tuple[str, dict | None, str | None]:
    """Runs in a spawned worker: never raises, returns (id, meta, error)."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(max(1, int(cfg.timeout_s)))
    err = None
    try:
        return task.piece_id, build_piece(task, cfg, timbres), None
    except _Timeout:
        err = f"timed out after {cfg.timeout_s} s"
    except (ScoreError, RuntimeError, ValueError, OSError, KeyError, IndexError) as exc:
        err = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - a broken file must never stop the build
        tb = traceback.format_exc(limit=3).replace("\n", " | ")
        err = f"{type(exc).__name__}: {exc} [{tb[-300:]}]"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    shutil.rmtree(task.out_dir, ignore_errors=True)  # no half-built piece folder is left behind
    return task.piece_id, None, err


# ---------------------------------------------------------------- driver side

def _read_tsv_ids(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    return {line.split("\t", 1)[0] for line in path.read_text().splitlines()[1:] if line}


def build(sources: list[str | Path], out: str | Path, workers: int = 2, limit: int | None = None,
          config: str | Path | None = None, retry_failed: bool = False, progress: bool = True,
          splits: list[str] | tuple[str, ...] | None = None) -> dict:
    """Build (or resume) a corpus. Returns the stats dict, with ``"this_run"``: scores attempted / failed now.

    ``splits``: build only the scores of these splits (the others can be added by a later run).
    """
    from tqdm import tqdm

    cfg, timbres = load_configs(config)
    for name in set(timbres.train) | {timbres.test}:
        sf = timbres.soundfonts.get(name)
        if not sf or not Path(sf).is_file():
            raise InputError(f"soundfont for timbre {name!r} not found ({sf}); run scripts/setup.sh to install the Debian soundfonts")
    for sp in splits or ():
        if sp not in SPLITS:
            raise InputError(f"unknown split {sp!r}; choose from {', '.join(SPLITS)}")
    found = discover(sources)          # before anything is written: a missing source creates no folder
    if not found:
        raise InputError(f"no score files (.mxl, .musicxml, .xml, .krn) under {', '.join(map(str, sources))}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is a file; give a folder for the corpus")
    if out.is_dir() and any(out.iterdir()) and not (out / "corpus.json").is_file():
        raise InputError(f"{out} is a non-empty folder that is not a corpus; give a new or empty folder")
    (out / "pieces").mkdir(parents=True, exist_ok=True)
    lock = open(out / ".build.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise InputError(f"another 'scorestream corpus build' is writing to {out}; wait for it or stop it first") from None
    rng = random.Random(cfg.seed)
    rng.shuffle(found)  # partial builds still cover every corpus and split
    if limit is not None:
        found = found[:limit]
    (out / "corpus.json").write_text(json.dumps({"sources": [str(s) for s in sources], "config": asdict(cfg), "timbres": asdict(timbres)}, indent=1))

    failed_path = out / "failed.tsv"
    failed = _read_tsv_ids(failed_path)
    if retry_failed and failed_path.exists():
        failed_path.unlink()
        failed = set()
    if not failed_path.exists():
        failed_path.write_text("piece\tsource\treason\n")
    tasks = []
    done = 0
    for pid, path, group in found:
        pdir = out / "pieces" / pid
        if (pdir / "piece.json").is_file():
            done += 1
            continue
        if pid in failed:
            continue
        split = split_of(group, cfg)
        if splits and split not in splits:
            continue
        tasks.append(PieceTask(pid, str(path), group, split, str(pdir), int(unit_hash(pid, cfg.seed) * 2**31)))
    # variant pieces: more engravings (and takes) of the pieces the config weights up
    for pid, path, group in found:
        split = split_of(group, cfg)
        if split not in cfg.variant_splits or (splits and split not in splits):
            continue
        for k in range(1, variants_for(pid, cfg) + 1):
            vid = f"{pid}~v{k}"
            pdir = out / "pieces" / vid
            if (pdir / "piece.json").is_file():
                done += 1
                continue
            if vid in failed:
                continue
            tasks.append(PieceTask(vid, str(path), group, split, str(pdir), int(unit_hash(vid, cfg.seed) * 2**31), k))
    log.info("%d scores found: %d already built, %d failed earlier, %d to build with %d worker(s)",
             len(found), done, len(failed), len(tasks), workers)

    bar = tqdm(total=done + len(tasks), initial=done, disable=not progress, unit="piece", dynamic_ncols=True, file=sys.stderr)
    n_fail = 0
    ctx = mp.get_context("spawn")  # verovio is not fork-safe
    pending = list(reversed(tasks))
    while pending:
        with cf.ProcessPoolExecutor(max_workers=max(1, workers), mp_context=ctx, max_tasks_per_child=200, initializer=_die_with_parent) as pool:
            inflight: dict[cf.Future, PieceTask] = {}
            try:
                while pending or inflight:
                    while pending and len(inflight) < 2 * max(1, workers):
                        t = pending.pop()
                        inflight[pool.submit(_worker_entry, t, cfg, timbres)] = t
                    finished, _ = cf.wait(inflight, return_when=cf.FIRST_COMPLETED)
                    for fut in finished:
                        t = inflight.pop(fut)
                        pid, meta, err = fut.result()
                        if err:
                            n_fail += 1
                            with failed_path.open("a") as f:
                                f.write(f"{pid}\t{t.source}\t{err.replace(chr(9), ' ').replace(chr(10), ' ')}\n")
                        bar.update(1)
                        bar.set_postfix(failed=n_fail)
            except cf.process.BrokenProcessPool:
                # a worker died (segfault, OOM): record the pieces it may have held and start afresh
                for fut, t in inflight.items():
                    with failed_path.open("a") as f:
                        f.write(f"{t.piece_id}\t{t.source}\tworker process crashed\n")
                    n_fail += 1
                    bar.update(1)
                inflight.clear()
    bar.close()
    stats = write_index(out)
    lock.close()
    stats["this_run"] = {"attempted": len(tasks), "failed": n_fail}
    return stats


def write_index(out: str | Path) -> dict:
    """(Re)write manifest.tsv, splits.json and stats.json from the piece folders."""
    out = Path(out)
    rows, splits = [], {s: [] for s in SPLITS}
    stats = {"pieces": 0, "pages": 0, "engraved_pages": 0, "audio_hours": 0.0, "aligned_pairs": 0, "events": 0, "notes": 0,
             "by_split": {s: {"pieces": 0, "audio_hours": 0.0, "aligned_pairs": 0} for s in SPLITS}, "timbres": {}}
    for pj in sorted((out / "pieces").glob("*/piece.json")):
        m = json.loads(pj.read_text())
        hours = sum(p["duration_s"] for p in m["performances"]) / 3600
        pairs = sum(p["onset_frames"] for p in m["performances"])
        stats["pieces"] += 1
        stats["pages"] += m["pages"]
        stats["engraved_pages"] += sum(e["pages"] for e in m["engravings"])
        stats["audio_hours"] += hours
        stats["aligned_pairs"] += pairs
        stats["events"] += m["events"]
        stats["notes"] += m["notes"]
        b = stats["by_split"][m["split"]]
        b["pieces"] += 1
        b["audio_hours"] += hours
        b["aligned_pairs"] += pairs
        for p in m["performances"]:
            stats["timbres"][p["style"]["timbre"]] = stats["timbres"].get(p["style"]["timbre"], 0) + 1
        splits[m["split"]].append(m["id"])
        rows.append(f"{m['id']}\t{m['split']}\t{m['pages']}\t{hours * 3600:.1f}\t{pairs}\t{m['source']}")
    failed = _read_tsv_ids(out / "failed.tsv")
    stats["failed"] = len(failed)
    stats["audio_hours"] = round(stats["audio_hours"], 3)
    for b in stats["by_split"].values():
        b["audio_hours"] = round(b["audio_hours"], 3)
    (out / "manifest.tsv").write_text("piece\tsplit\tpages\tduration_s\taligned_pairs\tsource\n" + "\n".join(rows) + ("\n" if rows else ""))
    (out / "splits.json").write_text(json.dumps(splits, indent=1))
    (out / "stats.json").write_text(json.dumps(stats, indent=1))
    return stats


def format_stats(stats: dict) -> str:
    lines = [
        "| corpus | pieces | score pages | audio hours | aligned pairs |",
        "|---|---:|---:|---:|---:|",
        f"| this build | {stats['pieces']} | {stats['pages']} | {stats['audio_hours']:.2f} | {stats['aligned_pairs']:,} |",
    ]
    for s, b in stats["by_split"].items():
        lines.append(f"| · {s} | {b['pieces']} | | {b['audio_hours']:.2f} | {b['aligned_pairs']:,} |")
    lines.append("| MSMD (paper) | 479 | 1,129 | ~15 | 344,742 |")
    lines.append(f"\nfailed/skipped: {stats.get('failed', 0)} (see failed.tsv); timbres: {stats['timbres']}")
    return "\n".join(lines)
