"""``scorestream library …``: the score library (add page images or PDFs, list, show, remove, import a corpus)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scorestream.core.errors import InputError


def _bar(desc: str, enabled: bool):
    """A progress callback (stage, done, total) drawing tqdm bars on stderr."""
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def cb(stage: str, done: int, total: int) -> None:
        if not enabled:
            return
        b = bars.get(stage)
        if b is None:
            b = bars[stage] = tqdm(total=total, desc=f"{desc}: {stage}", unit=stage[:-1] if stage.endswith("s") else stage,
                                   file=sys.stderr, dynamic_ncols=True, leave=False)
        b.n = done
        b.refresh()
        if done >= total:
            b.close()

    return cb


def _open_or_create(path: str, model: str | None, hop: int | None):
    from scorestream.engine.library import Library, is_library

    p = Path(path)
    if is_library(p):
        lib = Library.open(p)
        if model and model != lib.model_name:
            lib.close()
            raise InputError(f"{p} uses model {lib.model_name}; --model applies only to a new library")
        return lib
    return Library.create(p, model=model, hop_px=hop)


def _add(a: argparse.Namespace) -> int:
    from scorestream.engine.library import is_library

    p = Path(a.library)
    existed = p.exists()
    created = not is_library(p)      # Library.create refuses folders that hold anything but an interrupted create
    lib = _open_or_create(a.library, a.model, a.hop)
    try:
        with lib:
            info = lib.add(a.id, a.files, title=a.title, composer=a.composer, progress=_bar(a.id, not a.no_progress))
    except BaseException:
        if created:       # a failed first add leaves no library behind
            import shutil

            if existed:
                for q in p.iterdir():
                    shutil.rmtree(q) if q.is_dir() else q.unlink()
            else:
                shutil.rmtree(p, ignore_errors=True)
        raise
    print(f"added {info.id}: {info.pages} pages, {info.systems} systems, {info.snippets} snippets")
    return 0


def _list(a: argparse.Namespace) -> int:
    from scorestream.engine.library import Library

    with Library.open(a.library, check_model=False) as lib:
        pieces = lib.pieces()
    if a.json:
        print(json.dumps([p.to_json() for p in pieces], indent=1))
        return 0
    if not pieces:
        print(f"{a.library}: no pieces yet")
    for p in pieces:
        print(f"{p.id}\t{p.title or ''}\t{p.composer or ''}\t{p.pages} pages\t{p.systems} systems\t{p.snippets} snippets")
    return 0


def _show(a: argparse.Namespace) -> int:
    from scorestream.engine.library import Library

    with Library.open(a.library, check_model=False) as lib:
        info = lib.info(a.id)
        pages = lib.pages(a.id)
    if a.out:
        if a.page is None:
            raise InputError("--out needs --page N (the page to draw)")
        if not 1 <= a.page <= len(pages):
            raise InputError(f"--page {a.page}: piece {a.id} has pages 1..{len(pages)}")
        import numpy as np
        from PIL import Image

        from scorestream.engine.systems import DetectedSystem, draw_systems

        pg = pages[a.page - 1]
        img = np.asarray(Image.open(pg.image).convert("L"))
        systems = [DetectedSystem(*s.bbox, staves=[tuple(x) for x in s.staves], staff_lines=s.staff_lines,
                                  staff_space=s.staff_space, skew_deg=s.skew_deg) for s in pg.systems]
        draw_systems(img, systems).save(a.out)
        print(f"wrote {a.out}: page {a.page} of {a.id}, {len(systems)} systems")
        return 0
    sel = pages if a.page is None else [p for p in pages if p.page == a.page]
    if a.page is not None and not sel:
        raise InputError(f"--page {a.page}: piece {a.id} has pages 1..{len(pages)}")
    if a.json:
        print(json.dumps({**info.to_json(), "pages": [p.to_json() for p in sel]}, indent=1))
        return 0
    print(f"{info.id}: {info.title or ''} {('— ' + info.composer) if info.composer else ''}".rstrip())
    for p in sel:
        print(f"  page {p.page}: {p.width} x {p.height} px, {len(p.systems)} systems  ({p.image})")
        for s in p.systems:
            print(f"    system {s.system}: bbox {[round(v) for v in s.bbox]}, {len(s.staves)} staves, staff space {s.staff_space:.1f} px")
    return 0


def _remove(a: argparse.Namespace) -> int:
    from scorestream.engine.library import Library

    with Library.open(a.library, check_model=False) as lib:
        lib.remove(a.id)
    print(f"removed {a.id}")
    return 0


def _stats(a: argparse.Namespace) -> int:
    from scorestream.engine.library import Library

    with Library.open(a.library, check_model=False) as lib:
        st = lib.stats()
    if a.json:
        print(json.dumps(st, indent=1))
    else:
        for k, v in st.items():
            print(f"{k}: {v}")
    return 0


def _import_corpus(a: argparse.Namespace) -> int:
    from scorestream.engine.library import import_corpus

    lib = _open_or_create(a.library, a.model, a.hop)
    with lib:
        res = import_corpus(lib, a.corpus, split=a.split, limit=a.limit, distractors=a.distractors, progress=not a.no_progress)
    print(json.dumps(res, indent=1))
    return 0


def _rebuild(a: argparse.Namespace) -> int:
    from scorestream.engine.library import rebuild

    res = rebuild(a.library, model=a.model, progress=not a.no_progress)
    print(json.dumps(res, indent=1))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    lib = sub.add_parser("library", help="the score library: add PDFs or page images, list, show, remove")
    lsub = lib.add_subparsers(dest="library_command", required=True, metavar="COMMAND")

    def common(p, json_help=None):
        p.add_argument("--library", required=True, metavar="DIR", help="library folder")
        if json_help:
            p.add_argument("--json", action="store_true", help=json_help)

    ad = lsub.add_parser("add", help="add a piece from a PDF, page images (in page order) or a folder of page images")
    common(ad)
    ad.add_argument("--id", required=True, help="piece id (letters, digits, . _ -)")
    ad.add_argument("--title", default=None, help="title shown to users")
    ad.add_argument("--composer", default=None, help="composer shown to users")
    ad.add_argument("--model", default=None, help="embedding model of a NEW library (default from configs/library.toml)")
    ad.add_argument("--hop", type=int, default=None, help="snippet hop in strip px for a NEW library (default 20)")
    ad.add_argument("--no-progress", action="store_true", help="no progress bar")
    ad.add_argument("files", nargs="+", metavar="FILE", help="PDF, PNG/JPEG/TIFF pages, or one folder of page images")
    ad.set_defaults(func=_add)

    ls = lsub.add_parser("list", help="list the pieces")
    common(ls, "JSON: id, title, composer, pages, systems, snippets")
    ls.set_defaults(func=_list)

    sh = lsub.add_parser("show", help="a piece's pages and systems (or draw one page's systems with --out)")
    common(sh, "JSON: every page with image path, size and systems (bbox, staff lines, staff space)")
    sh.add_argument("id", help="piece id")
    sh.add_argument("--page", type=int, default=None, help="only this page (1-based)")
    sh.add_argument("--out", default=None, metavar="PNG", help="draw the page's detected systems into this PNG (needs --page)")
    sh.set_defaults(func=_show)

    rm = lsub.add_parser("remove", help="remove a piece")
    common(rm)
    rm.add_argument("id", help="piece id")
    rm.set_defaults(func=_remove)

    st = lsub.add_parser("stats", help="size of the library")
    common(st, "JSON output")
    st.set_defaults(func=_stats)

    ic = lsub.add_parser("import-corpus", help="add a built corpus's page images through the same path as 'add' (ids = piece ids)")
    common(ic)
    ic.add_argument("corpus", metavar="CORPUS", help="corpus folder (scorestream corpus build)")
    ic.add_argument("--split", default="test", choices=("train", "valid", "test"), help="which split's pieces (default test)")
    ic.add_argument("--limit", type=int, default=None, help="at most this many pieces of the split")
    ic.add_argument("--distractors", type=int, default=0, help="also add this many pieces of the other splits")
    ic.add_argument("--model", default=None, help="embedding model of a NEW library")
    ic.add_argument("--hop", type=int, default=None, help="snippet hop in strip px for a NEW library")
    ic.add_argument("--no-progress", action="store_true", help="no progress bar")
    ic.set_defaults(func=_import_corpus)

    rb = lsub.add_parser("rebuild", help="re-detect and re-embed every piece from its stored pages (after a model change)")
    common(rb)
    rb.add_argument("--model", default=None, help="embedding model to rebuild with (default from configs/library.toml)")
    rb.add_argument("--no-progress", action="store_true", help="no progress bar")
    rb.set_defaults(func=_rebuild)
