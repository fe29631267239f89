"""The ``scorestream`` command line.

Subcommands import their heavy dependencies lazily, so that ``scorestream
--help`` and the serving commands work in a serving-only install.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _corpus_build(a: argparse.Namespace) -> int:
    from scorestream.models.corpus.build import build

    build(a.source, a.out, workers=a.workers, limit=a.limit, config=a.config, retry_failed=a.retry_failed, progress=not a.no_progress)
    return 0


def _corpus_stats(a: argparse.Namespace) -> int:
    from scorestream.models.corpus.build import format_stats, write_index

    print(format_stats(write_index(a.corpus)))
    return 0


def _corpus_show(a: argparse.Namespace) -> int:
    from scorestream.models.corpus.reader import Corpus
    from scorestream.models.corpus.show import save_overlay

    piece = Corpus(a.corpus).piece(a.piece)
    info = save_overlay(piece, a.out, second=a.second, perf=a.perf, engraving=a.engraving, window=a.window)
    print(f"wrote {a.out}: page {info['page']}, {info['events']} onsets ({info['noteheads']} noteheads) in {info['second']:.2f}-{info['second'] + a.window:.2f} s")
    return 0


def _corpus_align(a: argparse.Namespace) -> int:
    from scorestream.models.corpus.reader import Corpus

    rows = Corpus(a.corpus).piece(a.piece).alignment(a.perf, a.engraving)
    cols = list(rows[0]) if rows else ["note"]
    text = "\t".join(cols) + "\n" + "".join("\t".join(str(r[c]) for c in cols) + "\n" for r in rows)
    if a.out:
        Path(a.out).write_text(text)
        print(f"wrote {a.out}: {len(rows)} notehead onsets")
    else:
        sys.stdout.write(text)
    return 0


def _corpus_pack(a: argparse.Namespace) -> int:
    from scorestream.models.corpus.pack import build_pack

    info = build_pack(a.corpus, a.out, max_mb=a.max_mb, max_train_hours=a.train_hours, excerpt_s=a.excerpt_s or None,
                      valid_pairs=a.valid_pairs)
    info["pieces"] = len(set(info["pieces"]))
    print(json.dumps(info, indent=1))
    return 0


def _corpus_repack(a: argparse.Namespace) -> int:
    from scorestream.models.corpus.pack import repack

    info = repack(a.pack, a.out, max_mb=a.max_mb, spec_bits=a.spec_bits, seed=a.seed)
    info["pieces"] = len(set(info.get("pieces") or []))
    print(json.dumps(info, indent=1))
    return 0


def _eval_retrieval(a: argparse.Namespace) -> int:
    from scorestream.models.evaluate import main as eval_main

    return eval_main(a)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scorestream", description="Live audio-to-sheet-music identification and score following.")
    sub = ap.add_subparsers(dest="command", required=True)

    corpus = sub.add_parser("corpus", help="build and inspect the aligned audio–sheet training corpus")
    csub = corpus.add_subparsers(dest="corpus_command", required=True)
    b = csub.add_parser("build", help="engrave, synthesize and align score files (resumable)")
    b.add_argument("--source", nargs="+", required=True, help="score folders or files (.mxl, .musicxml, .xml, .krn)")
    b.add_argument("--out", required=True, help="output corpus folder")
    b.add_argument("--workers", type=int, default=2)
    b.add_argument("--limit", type=int, default=None, help="build at most this many scores (after a fixed shuffle)")
    b.add_argument("--config", default=None, help="corpus TOML (default configs/corpus.toml)")
    b.add_argument("--retry-failed", action="store_true", help="try again the scores listed in failed.tsv")
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(func=_corpus_build)

    s = csub.add_parser("stats", help="recount a corpus folder and print its size")
    s.add_argument("corpus")
    s.set_defaults(func=_corpus_stats)

    sh = csub.add_parser("show", help="draw noteheads heard in a given second on their page")
    sh.add_argument("piece", help="piece id (or a unique part of it)")
    sh.add_argument("--corpus", required=True)
    sh.add_argument("--out", required=True, help="PNG file to write")
    sh.add_argument("--second", type=float, default=None, help="start of the window in seconds of the performance")
    sh.add_argument("--window", type=float, default=1.0)
    sh.add_argument("--perf", type=int, default=0)
    sh.add_argument("--engraving", type=int, default=0)
    sh.set_defaults(func=_corpus_show)

    al = csub.add_parser("align", help="list every performed notehead onset: page box, time, frame, strip position (TSV)")
    al.add_argument("piece", help="piece id (or a unique part of it)")
    al.add_argument("--corpus", required=True)
    al.add_argument("--perf", type=int, default=0)
    al.add_argument("--engraving", type=int, default=0)
    al.add_argument("--out", default=None, help="TSV file (default: standard output)")
    al.set_defaults(func=_corpus_align)

    pk = csub.add_parser("pack", help="write the compact training pack (uint8 spectrograms, 1-bit strips, pairs)")
    pk.add_argument("corpus")
    pk.add_argument("--out", required=True)
    pk.add_argument("--max-mb", type=float, default=55.0)
    pk.add_argument("--train-hours", type=float, default=None, help="cap on training audio hours (default: as much as fits)")
    pk.add_argument("--excerpt-s", type=float, default=60.0, help="cut training takes to this many seconds (0: whole takes)")
    pk.add_argument("--valid-pairs", type=int, default=8000,
                    help="validation pairs (20 s excerpts of as many validation pieces; early stopping chooses on these)")
    pk.set_defaults(func=_corpus_pack)

    rp = csub.add_parser("repack", help="denser pack (lzma, fewer spectrogram bits) drawn from a bigger pack, to fit a GPU upload")
    rp.add_argument("pack", help="source pack.npz (version 1)")
    rp.add_argument("--out", required=True)
    rp.add_argument("--max-mb", type=float, default=53.0)
    rp.add_argument("--spec-bits", type=int, default=6, help="bits per spectrogram value (4..8; dithered back in training)")
    rp.add_argument("--seed", type=int, default=0)
    rp.set_defaults(func=_corpus_repack)

    ev = sub.add_parser("eval", help="evaluate models")
    esub = ev.add_subparsers(dest="eval_command", required=True)
    r = esub.add_parser("retrieval", help="the paper's snippet-retrieval protocol (R@k, MRR, median rank)")
    r.add_argument("--corpus", help="built corpus folder (uses its test split)")
    r.add_argument("--pack", help="or a training pack (.npz)")
    r.add_argument("--split", default="test")
    r.add_argument("--candidates", type=int, default=10000)
    r.add_argument("--timbre", default=None, help="corpus only: a timbre name or 'any' instead of the paper's condition "
                   "(held-out timbre, tempo 1.0); the valid split needs it")
    r.add_argument("--model", action="append", default=None, help="model under models/weights or a path prefix; A+B is an ensemble (repeatable; default: every shipped model and their ensemble)")
    r.add_argument("--json", default=None, help="write results here")
    r.add_argument("--markdown", default=None, help="write a Markdown table here")
    r.set_defaults(func=_eval_retrieval)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    try:
        return int(a.func(a) or 0)
    except (FileNotFoundError, KeyError, ValueError, RuntimeError) as exc:
        print(f"scorestream: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scorestream: interrupted (a corpus build resumes where it stopped)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
