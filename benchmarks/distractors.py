"""A large library for identification (issue 10: ">= 1,000 pieces"): a copy of a corpus library
(e.g. data/lib_test, the 203 test pieces) plus distractor pieces of the *training* split,
engraved here from their source scores and added through the normal path (page images ->
system detection -> embedding, ``Library.add``).  Only page images are made (no audio), so it
costs a fraction of ``corpus build``.

    nice -n 5 .venv/bin/python benchmarks/distractors.py --base data/lib_test --out data/lib_1000 \
        --total 1000 [--sources ../shared/data/lieder/scores ../shared/data/piano]

* distractors: the source scores whose work falls in the train split (the corpus generator's own
  split rule, ``configs/corpus.toml``), in a fixed shuffled order; each engraved once by verovio in a
  random house style (``EngravingStyle.random``, seeded by the piece id) with the piano part only,
  as the corpus generator does; scores longer than ``max_pages`` or that verovio cannot read are
  skipped (listed in OUT/distractors_failed.tsv);
* resumable: pieces already in OUT are skipped; kill it at any time and run it again;
* then: ``python benchmarks/tracker.py --library data/lib_1000 --split test --perf 0 --modes identify``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scorestream.engine.library import Library  # noqa: E402
from scorestream.models.corpus.build import discover, load_configs, split_of  # noqa: E402

ENGRAVE_AHEAD = 3      # pieces engraved ahead of the one being added


def engrave_pages(source: Path, piece_id: str, folder: Path, max_pages: int) -> list[Path]:
    from PIL import Image

    from scorestream.models.corpus.build import _toolkit
    from scorestream.models.corpus.engrave import EngravingStyle, load_score, rasterize
    from scorestream.models.corpus.scorefile import load_for_engraving

    rng = random.Random(int(hashlib.sha256(piece_id.encode()).hexdigest()[:8], 16))
    tk = _toolkit()          # one verovio toolkit per process, as the corpus generator keeps it
    tk.setOptions({"transpose": ""})
    n = load_score(tk, load_for_engraving(source, keyboard=True), EngravingStyle.random(rng))
    if n > max_pages:
        raise ValueError(f"{n} pages (more than {max_pages})")
    out = []
    for p in range(1, n + 1):
        f = folder / f"page{p:03d}.png"
        Image.fromarray(rasterize(tk.renderToSVG(p))).save(f, compress_level=1)
        out.append(f)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="library to start from (copied, not changed)")
    ap.add_argument("--out", required=True, help="the large library (created from --base, or resumed)")
    ap.add_argument("--total", type=int, default=1000, help="pieces wanted in OUT")
    ap.add_argument("--sources", nargs="+", default=["/work/shared/data/lieder/scores", "/work/shared/data/piano"])
    a = ap.parse_args(argv)
    out = Path(a.out)
    if not out.exists():
        tmp = out.with_name(out.name + ".copying")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(a.base, tmp)
        tmp.rename(out)
    cfg, _ = load_configs()
    found = [(pid, f) for pid, f, g in discover(a.sources) if split_of(g, cfg) == "train"]
    random.Random(0).shuffle(found)
    failed_tsv = out / "distractors_failed.tsv"
    failed = {ln.split("\t")[0] for ln in failed_tsv.read_text().splitlines()} if failed_tsv.exists() else set()
    lib = Library.open(out)
    have = {p.id for p in lib.pieces()}
    print(f"{out}: {len(have)} pieces; {len(found)} train-split scores to draw from", flush=True)
    todo = [(pid, src) for pid, src in found if pid not in have and pid not in failed]
    t0, added = time.time(), 0
    # one process engraves the next pieces while this one detects and embeds (both cores busy)
    with tempfile.TemporaryDirectory() as root, ProcessPoolExecutor(1) as pool:
        def submit(k: int):
            pid, src = todo[k]
            folder = Path(root) / f"{k:05d}"
            folder.mkdir()
            return pool.submit(engrave_pages, src, pid, folder, cfg.max_pages)
        ahead = {k: submit(k) for k in range(min(ENGRAVE_AHEAD, len(todo)))}
        for k, (pid, src) in enumerate(todo):
            if len(have) >= a.total:
                break
            if k + ENGRAVE_AHEAD < len(todo):
                ahead[k + ENGRAVE_AHEAD] = submit(k + ENGRAVE_AHEAD)
            try:
                pages = ahead.pop(k).result(timeout=cfg.timeout_s)
                lib.add(pid, pages, title=src.stem)
            except (BrokenProcessPool, FuturesTimeout) as exc:
                # the engraving process died or hangs on this score: skip it from now on, and stop
                # (the pool cannot be trusted); running the command again resumes after it
                with failed_tsv.open("a") as fh:
                    fh.write(f"{pid}\t{type(exc).__name__}: the engraver died or hung\n")
                print(f"stopped at {pid}: the engraving process died or hung ({type(exc).__name__}); "
                      "run the same command again to go on without it", flush=True)
                os._exit(3)
            except Exception as exc:      # a score verovio cannot engrave, or without detectable staves
                with failed_tsv.open("a") as fh:
                    fh.write(f"{pid}\t{type(exc).__name__}: {str(exc)[:200]}\n")
                failed.add(pid)
                print(f"skipped {pid}: {exc}", flush=True)
                continue
            finally:
                shutil.rmtree(Path(root) / f"{k:05d}", ignore_errors=True)
            have.add(pid)
            added += 1
            el = time.time() - t0
            print(f"[{len(have)}/{a.total}] {pid} ({el / added:.1f} s per piece, {el / 60:.1f} min)", flush=True)
        for f in ahead.values():
            f.cancel()
    lib.close()
    print(f"{out}: {len(have)} pieces ({added} added this run, {len(failed)} skipped in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
