"""``scorestream corpus …``: build and inspect the aligned audio–sheet training corpus."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scorestream.core.errors import InputError


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {v}")
    return v


def _corpus_dir(path: str) -> Path:
    """A built corpus folder, or a one-line error that says what it is instead."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"corpus folder {p} does not exist; build one with 'scorestream corpus build --source … --out {p}'")
    if not p.is_dir():
        raise InputError(f"{p} is a file, not a corpus folder; give the folder 'scorestream corpus build --out' wrote")
    if not (p / "pieces").is_dir() or not (p / "corpus.json").is_file():
        raise InputError(f"{p} is not a corpus folder (no pieces/ and corpus.json); build one with 'scorestream corpus build'")
    return p


def _build(a: argparse.Namespace) -> int:
    from scorestream.models.corpus.build import build, format_stats

    stats = build(a.source, a.out, workers=a.workers, limit=a.limit, config=a.config, retry_failed=a.retry_failed,
                  progress=not a.no_progress, splits=a.split)
    print(format_stats(stats), file=sys.stderr)
    run = stats.get("this_run", {})
    if run.get("attempted") and run.get("failed") == run.get("attempted"):
        print(f"scorestream: error: all {run['attempted']} scores failed to build; see {Path(a.out) / 'failed.tsv'} for the reasons",
              file=sys.stderr)
        return 1
    return 0


def _stats(a: argparse.Namespace) -> int:
    from scorestream.models.corpus.build import format_stats, write_index

    print(format_stats(write_index(_corpus_dir(a.corpus))))
    return 0


def _piece(a: argparse.Namespace):
    from scorestream.models.corpus.reader import Corpus

    piece = Corpus(_corpus_dir(a.corpus)).piece(a.piece)
    n_perf, n_eng = len(piece.meta["performances"]), len(piece.meta["engravings"])
    if not 0 <= a.perf < n_perf:
        raise InputError(f"--perf {a.perf}: piece {piece.id} has performances 0..{n_perf - 1}")
    if not 0 <= a.engraving < n_eng:
        raise InputError(f"--engraving {a.engraving}: piece {piece.id} has engravings 0..{n_eng - 1}")
    return piece


def _show(a: argparse.Namespace) -> int:
    from scorestream.models.corpus.show import save_overlay

    piece = _piece(a)
    info = save_overlay(piece, a.out, second=a.second, perf=a.perf, engraving=a.engraving, window=a.window)
    print(f"wrote {a.out}: page {info['page']}, {info['events']} onsets ({info['noteheads']} noteheads) in "
          f"{info['second']:.2f}-{info['second'] + a.window:.2f} s")
    return 0


def _align(a: argparse.Namespace) -> int:
    rows = _piece(a).alignment(a.perf, a.engraving)
    cols = list(rows[0]) if rows else ["note"]
    text = "\t".join(cols) + "\n" + "".join("\t".join(str(r[c]) for c in cols) + "\n" for r in rows)
    if a.out:
        Path(a.out).write_text(text)
        print(f"wrote {a.out}: {len(rows)} notehead onsets")
    else:
        sys.stdout.write(text)
    return 0


def _pack(a: argparse.Namespace) -> int:
    from scorestream.models.corpus.pack import build_pack

    info = build_pack(_corpus_dir(a.corpus), a.out, max_mb=a.max_mb, max_train_hours=a.train_hours,
                      excerpt_s=a.excerpt_s or None, valid_pairs=a.valid_pairs)
    info["pieces"] = len(set(info["pieces"]))
    print(json.dumps(info, indent=1))
    return 0


def _repack(a: argparse.Namespace) -> int:
    from scorestream.models.corpus.pack import repack

    info = repack(a.pack, a.out, max_mb=a.max_mb, spec_bits=a.spec_bits, seed=a.seed)
    info["pieces"] = len(set(info.get("pieces") or []))
    print(json.dumps(info, indent=1))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    corpus = sub.add_parser("corpus", help="build and inspect the aligned audio–sheet training corpus")
    csub = corpus.add_subparsers(dest="corpus_command", required=True, metavar="COMMAND")

    b = csub.add_parser("build", help="engrave, synthesize and align score files (resumable)")
    b.add_argument("--source", nargs="+", required=True, metavar="PATH", help="score folders or files (.mxl, .musicxml, .xml, .krn)")
    b.add_argument("--out", required=True, metavar="DIR", help="output corpus folder (new, empty, or a corpus to resume)")
    b.add_argument("--workers", type=_positive_int, default=2, help="parallel worker processes (default 2)")
    b.add_argument("--limit", type=_positive_int, default=None, help="build at most this many scores (after a fixed shuffle)")
    b.add_argument("--split", nargs="+", default=None, choices=("train", "valid", "test"),
                   help="build only the scores of these splits (default: all)")
    b.add_argument("--config", default=None, metavar="TOML", help="corpus settings (default: the shipped configs/corpus.toml)")
    b.add_argument("--retry-failed", action="store_true", help="try again the scores listed in failed.tsv")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(func=_build)

    s = csub.add_parser("stats", help="recount a corpus folder and print its size")
    s.add_argument("corpus", metavar="CORPUS", help="corpus folder")
    s.set_defaults(func=_stats)

    sh = csub.add_parser("show", help="draw the noteheads heard in a given second on their page (PNG)")
    sh.add_argument("piece", help="piece id (or a unique part of it)")
    sh.add_argument("--corpus", required=True, metavar="DIR", help="corpus folder")
    sh.add_argument("--out", required=True, metavar="PNG", help="PNG file to write")
    sh.add_argument("--second", type=float, default=None, help="start of the window in seconds of the performance (default: a busy one)")
    sh.add_argument("--window", type=float, default=1.0, help="window length in seconds (default 1)")
    sh.add_argument("--perf", type=_nonneg_int, default=0, help="performance number (default 0)")
    sh.add_argument("--engraving", type=_nonneg_int, default=0, help="engraving number (default 0)")
    sh.set_defaults(func=_show)

    al = csub.add_parser("align", help="list every performed notehead onset: page box, time, frame, strip position (TSV)")
    al.add_argument("piece", help="piece id (or a unique part of it)")
    al.add_argument("--corpus", required=True, metavar="DIR", help="corpus folder")
    al.add_argument("--perf", type=_nonneg_int, default=0, help="performance number (default 0)")
    al.add_argument("--engraving", type=_nonneg_int, default=0, help="engraving number (default 0)")
    al.add_argument("--out", default=None, metavar="TSV", help="TSV file (default: standard output)")
    al.set_defaults(func=_align)

    pk = csub.add_parser("pack", help="write the compact training pack (uint8 spectrograms, 1-bit strips, pairs)")
    pk.add_argument("corpus", metavar="CORPUS", help="corpus folder")
    pk.add_argument("--out", required=True, metavar="NPZ", help="pack file to write")
    pk.add_argument("--max-mb", type=float, default=55.0, help="size budget in MB (default 55: fits a GPU upload)")
    pk.add_argument("--train-hours", type=float, default=None, help="cap on training audio hours (default: as much as fits)")
    pk.add_argument("--excerpt-s", type=float, default=60.0, help="cut training takes to this many seconds (0: whole takes)")
    pk.add_argument("--valid-pairs", type=_positive_int, default=8000,
                    help="validation pairs (20 s excerpts of as many validation pieces; early stopping chooses on these)")
    pk.set_defaults(func=_pack)

    rp = csub.add_parser("repack", help="denser pack (lzma, fewer spectrogram bits) drawn from a bigger pack, to fit a GPU upload")
    rp.add_argument("pack", metavar="PACK", help="source pack.npz (version 1)")
    rp.add_argument("--out", required=True, metavar="NPZ", help="dense pack to write")
    rp.add_argument("--max-mb", type=float, default=53.0, help="size budget in MB (default 53)")
    rp.add_argument("--spec-bits", type=int, default=6, choices=range(4, 9), metavar="4..8",
                    help="bits per spectrogram value (4..8, default 6; dithered back in training)")
    rp.add_argument("--seed", type=int, default=0, help="which training performances are drawn (default 0)")
    rp.set_defaults(func=_repack)
