"""The score library: pieces as page images, their staff systems, snippets and embeddings.

One folder, no server::

    LIB/
      library.sqlite        metadata (format version, model + fingerprint + input spec, pieces, pages,
                            systems with page coordinates, snippet positions); WAL journal
      pieces/<uid>/         one folder per piece, written completely before its rows are committed:
        page001.png …       the page images the library serves (coordinates refer to these pixels)
        strip.png           the unrolled strip (staff space 7.2 px)
        emb.npy             float16 (n_snippets, D) sheet embeddings, unit rows
      .staging/<uid>/       a piece being added (not part of the library)
      .write.lock           held by the one writer (add/remove/rebuild)

Adding is atomic: every input file is opened and checked first, then pages are decoded
one at a time (bounded memory), their systems detected and the page images written into
``.staging/<uid>/``; the strip is embedded, the folder fsynced, renamed into ``pieces/``
and only then made visible by one SQLite transaction. A crash or ``kill -9`` at any point
leaves the library as it was: at most an unreferenced folder in ``.staging/`` or
``pieces/`` that no query sees, not counted by :meth:`Library.stats`, and removed by the
next writer. Readers, who read in one transaction, never see a half-added piece. Removing
deletes the rows in one transaction, then the folder (a reader whose snapshot still had
the piece retries, see :meth:`Library.load_all`). A failed add (bad file, no staves, a
duplicate id) changes nothing.

A library remembers the model that embedded it (name, fingerprint of the weights, input
spec). Opening it with other weights raises :class:`IncompatibleModelError` naming the
rebuild command.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import sys
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from scorestream.core.config import default_path, load_section
from scorestream.core.errors import IncompatibleModelError, InputError
from scorestream.core.geometry import STRIP_HEIGHT, ink
from scorestream.core.spec import ModelInputSpec
from scorestream.models.embedder import embed_sheet_at
from scorestream.core.geometry import CROP_W
from scorestream.core.strip import Segment, Strip, unroll

from .pages import PageImage, check_inputs, iter_pages

log = logging.getLogger(__name__)

LIBRARY_FORMAT = 1
DB_NAME = "library.sqlite"
STAGING = ".staging"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pieces (
    pid INTEGER PRIMARY KEY, id TEXT UNIQUE NOT NULL, title TEXT, composer TEXT, folder TEXT NOT NULL,
    n_pages INTEGER NOT NULL, n_systems INTEGER NOT NULL, n_snippets INTEGER NOT NULL, strip_width INTEGER NOT NULL,
    sources TEXT NOT NULL, added REAL NOT NULL);
CREATE TABLE IF NOT EXISTS pages (
    pid INTEGER NOT NULL REFERENCES pieces(pid) ON DELETE CASCADE, page INTEGER NOT NULL,
    image TEXT NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL, source TEXT NOT NULL,
    PRIMARY KEY (pid, page));
CREATE TABLE IF NOT EXISTS systems (
    pid INTEGER NOT NULL REFERENCES pieces(pid) ON DELETE CASCADE, page INTEGER NOT NULL, system INTEGER NOT NULL,
    x0 REAL, y0 REAL, x1 REAL, y1 REAL, staff_space REAL, skew_deg REAL, staves TEXT, staff_lines TEXT,
    strip_x0 INTEGER, strip_width INTEGER, scale REAL, src_x0 REAL, src_y_centre REAL, tan REAL, x_ref REAL,
    PRIMARY KEY (pid, page, system));
CREATE TABLE IF NOT EXISTS snippets (
    pid INTEGER PRIMARY KEY REFERENCES pieces(pid) ON DELETE CASCADE, n INTEGER NOT NULL,
    strip_x BLOB NOT NULL, page BLOB NOT NULL, system BLOB NOT NULL, page_x BLOB NOT NULL, page_y BLOB NOT NULL);
"""


@dataclass(frozen=True)
class LibraryConfig:
    """Ingest settings (configs/library.toml, section [library])."""

    model: str = "bl1_2s+bl2_4s_at"   # the embedding model a new library uses
    hop_px: int = 20                  # strip pixels between snippet centres
    batch: int = 64                   # snippets per embedding call
    threads: int = 0                  # embedding threads (0: all cores)


def load_library_config(path: str | Path | None = None) -> LibraryConfig:
    return load_section(LibraryConfig, path or default_path("library"), "library")


# --------------------------------------------------------------------------- records

@dataclass
class SystemRecord:
    page: int                 # 1-based
    system: int               # 1-based within the page
    bbox: list[float]         # [x0, y0, x1, y1] page pixels
    staff_space: float
    skew_deg: float
    staves: list[list[float]]
    staff_lines: list[float]
    segment: Segment          # where it sits in the strip (0-based page/system inside)

    @property
    def centre_y(self) -> float:
        return (self.bbox[1] + self.bbox[3]) / 2

    def to_json(self) -> dict:
        return {"page": self.page, "system": self.system, "bbox": [round(v, 2) for v in self.bbox],
                "staff_space": round(self.staff_space, 3), "skew_deg": round(self.skew_deg, 3),
                "staves": self.staves, "staff_lines": self.staff_lines,
                "strip_x0": self.segment.strip_x0, "strip_width": self.segment.width}


@dataclass
class PageRecord:
    page: int                 # 1-based
    image: Path
    width: int
    height: int
    source: str
    systems: list[SystemRecord] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"page": self.page, "image": str(self.image), "width": self.width, "height": self.height, "source": self.source,
                "systems": [s.to_json() for s in self.systems]}


@dataclass
class PieceInfo:
    id: str
    title: str | None
    composer: str | None
    pages: int
    systems: int
    snippets: int
    strip_width: int

    def to_json(self) -> dict:
        return {"id": self.id, "title": self.title, "composer": self.composer, "pages": self.pages, "systems": self.systems,
                "snippets": self.snippets, "strip_width": self.strip_width}


@dataclass
class PieceSnippets:
    """Everything the tracker needs of one piece, in memory."""

    info: PieceInfo
    emb: np.ndarray           # float16 (n, D)
    strip_x: np.ndarray       # float32 (n,)
    page: np.ndarray          # int16 (n,) 1-based
    system: np.ndarray        # int16 (n,) 1-based within page
    page_x: np.ndarray        # float32 (n,) page pixels
    page_y: np.ndarray        # float32 (n,) page pixels (system centre line at page_x)
    systems: list[SystemRecord]
    pages: list[PageRecord]


# --------------------------------------------------------------------------- helpers

def _blob(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def _unblob(b: bytes, dtype) -> np.ndarray:
    return np.frombuffer(b, dtype=dtype).copy()


def snippet_positions(strip_width: int, hop_px: int) -> np.ndarray:
    """Snippet centres along a strip: every ``hop_px`` px from ``hop_px / 2``."""
    if strip_width <= 0:
        return np.zeros(0, np.float32)
    return (np.arange(hop_px / 2, strip_width, hop_px)).astype(np.float32)


def is_library(path: str | Path) -> bool:
    """Whether ``path`` holds a library database (possibly damaged: :meth:`Library.open` says what
    is wrong with it), not just the leftovers of an interrupted create."""
    path = Path(path)
    return (path / DB_NAME).is_file() and not _interrupted_create(path)


def _interrupted_create(path: Path) -> bool:
    """A folder left by a killed :meth:`Library.create`: the database without tables, no pieces."""
    names = {q.name for q in path.iterdir()}
    if DB_NAME not in names or not names <= {DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm", DB_NAME + "-journal", "pieces",
                                             STAGING, ".write.lock"}:
        return False
    if (path / "pieces").is_dir() and any((path / "pieces").iterdir()):
        return False
    try:
        conn = sqlite3.connect(f"file:{path / DB_NAME}?mode=ro", uri=True, timeout=30.0)
        try:
            return conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0] == 0
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return False


class _WriteLock:
    def __init__(self, folder: Path) -> None:
        self._f = open(folder / ".write.lock", "w")
        try:
            fcntl.flock(self._f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._f.close()
            raise InputError(f"{folder}: another scorestream command is changing this library; wait for it to finish") from None

    def release(self) -> None:
        if not self._f.closed:
            fcntl.flock(self._f, fcntl.LOCK_UN)
            self._f.close()


# --------------------------------------------------------------------------- library

class Library:
    """A score library folder. Use :meth:`create` or :meth:`open`."""

    def __init__(self, path: Path, conn: sqlite3.Connection, meta: dict) -> None:
        self.path = path
        self._conn = conn
        self.meta = meta
        self.model_name: str = meta["model"]
        self.model_fingerprint: str = meta["model_fingerprint"]
        self.input_spec = ModelInputSpec.from_json(json.loads(meta["input_spec"]))
        self.hop_px = int(meta["hop_px"])
        self._embedder = None

    # ---- opening
    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        conn = sqlite3.connect(str(path / DB_NAME), timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA busy_timeout = 30000")
        return conn

    @classmethod
    def create(cls, path: str | Path, *, model: str | None = None, hop_px: int | None = None,
               config: LibraryConfig | None = None, embedder=None) -> "Library":
        """A new, empty library folder (the folder may exist only if empty)."""
        path = Path(path)
        cfg = config or load_library_config()
        if path.exists() and not path.is_dir():
            raise InputError(f"{path} is a file; give a folder for the library")
        if path.is_dir() and is_library(path):
            raise InputError(f"{path} already holds a library")
        if path.is_dir() and any(path.iterdir()) and not _interrupted_create(path):
            raise InputError(f"{path} is a non-empty folder that is not a library; give a new or empty folder")
        if embedder is None:
            from scorestream.models.embedder import load_embedder

            embedder = load_embedder(model or cfg.model, intra_op_threads=1)
        hop = int(hop_px or cfg.hop_px)
        if hop < 1:
            raise InputError(f"hop must be at least 1 px, got {hop}")
        path.mkdir(parents=True, exist_ok=True)
        for f in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm", DB_NAME + "-journal"):   # an interrupted create
            (path / f).unlink(missing_ok=True)
        (path / "pieces").mkdir(exist_ok=True)
        conn = cls._connect(path)
        conn.execute("PRAGMA journal_mode = WAL")
        meta = {"format": str(LIBRARY_FORMAT), "model": embedder.name, "model_fingerprint": embedder.fingerprint,
                "input_spec": json.dumps(embedder.input_spec.to_json()), "hop_px": str(hop), "created": str(time.time()),
                "generation": "0"}
        conn.execute("BEGIN IMMEDIATE")      # tables and meta in one transaction: a killed create leaves no half library
        for stmt in filter(None, (x.strip() for x in _SCHEMA.split(";"))):
            conn.execute(stmt)
        conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(meta.items()))
        conn.execute("COMMIT")
        lib = cls(path, conn, meta)
        lib._embedder = embedder
        return lib

    @classmethod
    def open(cls, path: str | Path, *, embedder=None, check_model: bool = True) -> "Library":
        """Open an existing library; with ``check_model`` the current weights must be the ones it was built with."""
        path = Path(path)
        if not path.exists():
            raise InputError(f"library {path} does not exist; create it with 'scorestream library add --library {path} --id ID FILE…'")
        if not path.is_dir() or not (path / DB_NAME).is_file():
            raise InputError(f"{path} is not a scorestream library (no {DB_NAME}); give the folder 'scorestream library add' created")
        try:
            conn = cls._connect(path)
            has_meta = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
            rows = conn.execute("SELECT key, value FROM meta").fetchall() if has_meta else []
        except sqlite3.DatabaseError as exc:
            raise InputError(f"{path / DB_NAME}: damaged library database ({exc}); rebuild the library") from None
        if not rows:
            conn.close()
            raise InputError(f"{path}: an empty library whose creation was interrupted; run 'scorestream library add "
                             f"--library {path} …' again (it creates the library anew)")
        meta = dict(rows)
        if int(meta.get("format", -1)) != LIBRARY_FORMAT:
            raise IncompatibleModelError(f"{path}: library format {meta.get('format')} (this scorestream reads {LIBRARY_FORMAT}); "
                                         f"rebuild it with 'scorestream library rebuild --library {path}'")
        lib = cls(path, conn, meta)
        if check_model:
            if embedder is None:
                from scorestream.models.embedder import load_embedder

                try:
                    embedder = load_embedder(lib.model_name, intra_op_threads=1)
                except FileNotFoundError as exc:
                    raise IncompatibleModelError(f"{path} was built with model {lib.model_name!r}, which this installation does "
                                                 f"not have ({exc}); rebuild it with 'scorestream library rebuild --library {path}'") from None
            lib.check_model(embedder)
            lib._embedder = embedder
        return lib

    def check_model(self, embedder) -> None:
        rebuild = f"rebuild it with 'scorestream library rebuild --library {self.path}'"
        if embedder.fingerprint != self.model_fingerprint:
            raise IncompatibleModelError(
                f"library {self.path} was embedded with model {self.model_name} (weights {self.model_fingerprint}); "
                f"the model now is {embedder.name} (weights {embedder.fingerprint}): {rebuild}")
        self.input_spec.require_equal(embedder.input_spec, f"library {self.path}", rebuild)

    @property
    def embedder(self):
        if self._embedder is None:
            from scorestream.models.embedder import load_embedder

            self._embedder = load_embedder(self.model_name, intra_op_threads=1)
            self.check_model(self._embedder)
        return self._embedder

    def close(self) -> None:
        try:
            self._conn.close()
        except sqlite3.Error:
            pass

    def __enter__(self) -> "Library":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- reading
    def pieces(self) -> list[PieceInfo]:
        rows = self._conn.execute("SELECT id, title, composer, n_pages, n_systems, n_snippets, strip_width FROM pieces ORDER BY id").fetchall()
        return [PieceInfo(*r) for r in rows]

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM pieces").fetchone()[0])

    def __contains__(self, piece_id: str) -> bool:
        return self._conn.execute("SELECT 1 FROM pieces WHERE id = ?", (piece_id,)).fetchone() is not None

    def _pid(self, piece_id: str) -> tuple[int, str]:
        row = self._conn.execute("SELECT pid, folder FROM pieces WHERE id = ?", (piece_id,)).fetchone()
        if row is None:
            raise InputError(f"no piece {piece_id!r} in library {self.path}; 'scorestream library list --library {self.path}' lists them")
        return int(row[0]), row[1]

    def info(self, piece_id: str) -> PieceInfo:
        row = self._conn.execute("SELECT id, title, composer, n_pages, n_systems, n_snippets, strip_width FROM pieces WHERE id = ?",
                                 (piece_id,)).fetchone()
        if row is None:
            self._pid(piece_id)
        return PieceInfo(*row)

    def pages(self, piece_id: str) -> list[PageRecord]:
        """Every page of a piece with its systems (page pixels)."""
        pid, folder = self._pid(piece_id)
        return self._pages(pid, folder)

    def _pages(self, pid: int, folder: str) -> list[PageRecord]:
        base = self.path / "pieces" / folder
        pages = {r[0]: PageRecord(r[0], base / r[1], r[2], r[3], r[4]) for r in self._conn.execute(
            "SELECT page, image, width, height, source FROM pages WHERE pid = ? ORDER BY page", (pid,))}
        for r in self._conn.execute("SELECT page, system, x0, y0, x1, y1, staff_space, skew_deg, staves, staff_lines, strip_x0, "
                                    "strip_width, scale, src_x0, src_y_centre, tan, x_ref FROM systems WHERE pid = ? "
                                    "ORDER BY page, system", (pid,)):
            (page, system, x0, y0, x1, y1, ss, skew, staves, lines, sx0, sw, scale, src_x0, src_yc, tan, x_ref) = r
            seg = Segment(page - 1, system - 1, src_x0, src_yc, scale, sx0, sw, tan=tan, x_ref=x_ref)
            pages[page].systems.append(SystemRecord(page, system, [x0, y0, x1, y1], ss, skew, json.loads(staves), json.loads(lines), seg))
        return list(pages.values())

    def page_image(self, piece_id: str, page: int) -> Path:
        """Path of the stored image of page ``page`` (1-based) of a piece."""
        pid, folder = self._pid(piece_id)
        row = self._conn.execute("SELECT image FROM pages WHERE pid = ? AND page = ?", (pid, int(page))).fetchone()
        if row is None:
            raise InputError(f"piece {piece_id!r} has no page {page}")
        return self.path / "pieces" / folder / row[0]

    def load_all(self, ids: Iterable[str] | None = None) -> list[PieceSnippets]:
        """Snippets, embeddings and layout of every piece (one consistent snapshot).

        A piece removed while it is read (its folder deleted after the snapshot began) makes
        the whole snapshot start again, so the result is always one committed state whose
        files were all there when it was taken (a later remove can of course still delete them)."""
        want = set(ids) if ids is not None else None
        for attempt in range(20):
            try:
                return self._load_snapshot(want)
            except FileNotFoundError:
                if attempt == 19:
                    raise
                time.sleep(0.05)
        raise AssertionError("unreachable")

    def _load_snapshot(self, want: set[str] | None) -> list[PieceSnippets]:
        out = []
        self._conn.execute("BEGIN")
        try:
            rows = self._conn.execute("SELECT pid, id, title, composer, n_pages, n_systems, n_snippets, strip_width, folder "
                                      "FROM pieces ORDER BY id").fetchall()
            for pid, pid_s, title, composer, n_pages, n_systems, n_snip, sw, folder in rows:
                if want is not None and pid_s not in want:
                    continue
                sn = self._conn.execute("SELECT n, strip_x, page, system, page_x, page_y FROM snippets WHERE pid = ?", (pid,)).fetchone()
                emb = np.load(self.path / "pieces" / folder / "emb.npy")
                pages = self._pages(pid, folder)
                systems = [s for p in pages for s in p.systems]
                info = PieceInfo(pid_s, title, composer, n_pages, n_systems, n_snip, sw)
                out.append(PieceSnippets(info, emb, _unblob(sn[1], np.float32), _unblob(sn[2], np.int16), _unblob(sn[3], np.int16),
                                         _unblob(sn[4], np.float32), _unblob(sn[5], np.float32), systems, pages))
        finally:
            self._conn.execute("COMMIT")
        for p in out:       # a remove that committed after our snapshot began may have deleted files since
            for pg in p.pages:
                if not pg.image.is_file():
                    raise FileNotFoundError(pg.image)
        return out

    def stats(self) -> dict:
        self._conn.execute("BEGIN")
        try:
            r = self._conn.execute("SELECT COUNT(*), COALESCE(SUM(n_pages),0), COALESCE(SUM(n_systems),0), COALESCE(SUM(n_snippets),0) "
                                   "FROM pieces").fetchone()
            folders = [row[0] for row in self._conn.execute("SELECT folder FROM pieces")]
        finally:
            self._conn.execute("COMMIT")
        # the database and the pieces' folders (not a killed add's leftovers, not the WAL's scratch size)
        page_size, page_count = (self._conn.execute(f"PRAGMA {k}").fetchone()[0] for k in ("page_size", "page_count"))
        size = int(page_size) * int(page_count)
        for d in folders:
            size += sum(f.stat().st_size for f in (self.path / "pieces" / d).iterdir() if f.is_file())
        return {"library": str(self.path), "pieces": r[0], "pages": r[1], "systems": r[2], "snippets": r[3],
                "model": self.model_name, "model_fingerprint": self.model_fingerprint, "hop_px": self.hop_px,
                "embed_dim": self.input_spec.embed_dim, "format": LIBRARY_FORMAT, "disk_mb": round(size / 1e6, 2)}

    # ---- writing
    def _cleanup_orphans(self) -> None:
        """Remove what killed writers left: staged pieces and piece folders no row refers to (writers only)."""
        known = {r[0] for r in self._conn.execute("SELECT folder FROM pieces")}
        for d in (self.path / "pieces").iterdir():
            if d.is_dir() and d.name not in known:
                shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(self.path / STAGING, ignore_errors=True)

    def add(self, piece_id: str, files: list[str | Path], *, title: str | None = None, composer: str | None = None,
            progress: Callable[[str, int, int], None] | None = None, config: LibraryConfig | None = None) -> PieceInfo:
        """Add one piece from a PDF, page images or a folder of page images. Atomic; see the module docstring.

        ``progress(stage, done, total)`` is called while pages are read and snippets embedded."""
        if not isinstance(piece_id, str) or not _ID_RE.match(piece_id):
            raise InputError(f"invalid id {piece_id!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
        cfg = config or load_library_config()
        lock = _WriteLock(self.path)
        stage = final = None
        try:
            if piece_id in self:
                raise InputError(f"a piece with id {piece_id!r} is already in {self.path}; remove it first or choose another id")
            self._cleanup_orphans()
            paths, n_total = check_inputs(files)
            sources = [str(p) for p in paths]
            embedder = self.embedder          # a model mismatch is refused before any work
            folder = uuid.uuid4().hex[:16]
            stage = self.path / STAGING / folder
            stage.mkdir(parents=True)
            strip, page_rows, kept_systems, n_read = self._ingest_pages(paths, n_total, stage, progress)
            if not page_rows:
                raise InputError(f"no music staves found on any page of {', '.join(sources)}; give score pages (PDF or images)")
            xs = snippet_positions(strip.width, self.hop_px)
            emb = embed_strip(embedder, strip.image, xs, batch=cfg.batch, threads=cfg.threads, progress=progress)
            system_rows = []
            for seg in strip.segments:
                d = kept_systems[seg.page][seg.system]
                system_rows.append((seg.page + 1, seg.system + 1, d.x0, d.y0, d.x1, d.y1, d.staff_space, d.skew_deg,
                                    json.dumps([list(map(float, s)) for s in d.staves]), json.dumps([float(v) for v in d.staff_lines]),
                                    seg.strip_x0, seg.width, seg.scale, seg.src_x0, seg.src_y_centre, seg.tan, seg.x_ref))
            Image.fromarray(strip.image).save(stage / "strip.png", compress_level=6)
            np.save(stage / "emb.npy", emb.astype(np.float16))
            sp, ss, px, py = snippet_layout(strip, xs)
            for f in stage.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            _fsync_dir(stage)
            final = self.path / "pieces" / folder
            os.replace(stage, final)
            stage = None
            _fsync_dir(final.parent)
            info = PieceInfo(piece_id, title, composer, len(page_rows), len(strip.segments), int(len(xs)), strip.width)
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                cur = c.execute("INSERT INTO pieces (id, title, composer, folder, n_pages, n_systems, n_snippets, strip_width, sources, added) "
                                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                (piece_id, title, composer, folder, info.pages, info.systems, info.snippets, info.strip_width,
                                 json.dumps(sorted(set(sources))), time.time()))
                pid = cur.lastrowid
                c.executemany("INSERT INTO pages VALUES (?, ?, ?, ?, ?, ?)", [(pid, *r) for r in page_rows])
                c.executemany("INSERT INTO systems VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                              [(pid, *r) for r in system_rows])
                c.execute("INSERT INTO snippets VALUES (?, ?, ?, ?, ?, ?, ?)",
                          (pid, int(len(xs)), _blob(xs), _blob(sp), _blob(ss), _blob(px), _blob(py)))
                c.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            final = None
            skipped = n_read - len(page_rows)
            log.info("added %s: %d pages%s, %d systems, %d snippets", piece_id, info.pages,
                     f" ({skipped} without staves skipped)" if skipped else "", info.systems, info.snippets)
            return info
        finally:
            for d in (stage, final):
                if d is not None:
                    shutil.rmtree(d, ignore_errors=True)
            try:
                (self.path / STAGING).rmdir()
            except OSError:
                pass
            lock.release()

    def _ingest_pages(self, paths: list[Path], n_total: int, stage: Path, progress) -> tuple[Strip, list, list, int]:
        """Decode, detect, store and unroll the pages one at a time (only one page image in memory).

        Returns the strip, the page rows, the systems of every kept page and the number of pages read."""
        from .systems import NoStavesError, detect_systems

        blocks, segments, page_rows, kept_systems, skipped = [], [], [], [], []
        x = n_read = 0
        for pg in iter_pages(paths):
            n_read += 1
            try:
                systems = detect_systems(pg.image)
            except NoStavesError:
                skipped.append(pg.label)
                systems = []
            if systems:
                n = len(page_rows) + 1
                name = f"page{n:03d}.png"
                Image.fromarray(pg.image).save(stage / name, compress_level=6)
                h, w = pg.image.shape
                page_rows.append((n, name, w, h, pg.label))
                part = unroll([pg.image], [[(d.x0, d.y0, d.x1, d.y1, d.staff_space, float(np.tan(np.radians(d.skew_deg))))
                                            for d in systems]])
                for seg in part.segments:
                    seg.page = n - 1
                    seg.strip_x0 += x
                blocks.append(part.image)
                segments.extend(part.segments)
                x += part.width
                kept_systems.append(systems)
            if progress:
                progress("pages", n_read, max(n_total, n_read))
        if page_rows:       # (when no page has staves, the one error says so)
            for label in skipped:
                log.warning("warning: %s: no music staves found; page skipped", label)
        strip = Strip(np.concatenate(blocks, axis=1) if blocks else np.zeros((STRIP_HEIGHT, 0), np.uint8), segments)
        return strip, page_rows, kept_systems, n_read

    def remove(self, piece_id: str) -> None:
        lock = _WriteLock(self.path)
        try:
            pid, folder = self._pid(piece_id)
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                c.execute("DELETE FROM pieces WHERE pid = ?", (pid,))
                c.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            shutil.rmtree(self.path / "pieces" / folder, ignore_errors=True)
            log.info("removed %s", piece_id)
        finally:
            lock.release()


# --------------------------------------------------------------------------- ingest steps

def detect_pages(pages: list[PageImage], progress=None) -> list[list]:
    """Staff systems of every page ([] for a page without staves, with a warning)."""
    from .systems import NoStavesError, detect_systems

    out = []
    for i, pg in enumerate(pages):
        try:
            out.append(detect_systems(pg.image))
        except NoStavesError:
            log.warning("warning: %s: no music staves found; page skipped", pg.label)
            out.append([])
        if progress:
            progress("pages", i + 1, len(pages))
    return out


def snippet_layout(strip: Strip, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(page, system) (1-based) and page position (x, y of the system's centre line) of snippets at strip columns ``xs``."""
    seg_idx = np.clip(np.searchsorted([s.strip_x0 for s in strip.segments], xs, side="right") - 1, 0, len(strip.segments) - 1)
    sp = np.array([strip.segments[i].page + 1 for i in seg_idx], np.int16)
    ss = np.array([strip.segments[i].system + 1 for i in seg_idx], np.int16)
    px = np.empty(len(xs), np.float32)
    py = np.empty(len(xs), np.float32)
    for j, (i, x) in enumerate(zip(seg_idx, xs)):
        px[j], py[j] = strip.segments[i].strip_to_page(float(x), STRIP_HEIGHT / 2)
    return sp, ss, px, py


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def embed_strip(embedder, strip_image: np.ndarray, xs: np.ndarray, *, batch: int = 64, threads: int = 0,
                progress=None) -> np.ndarray:
    """Sheet embeddings of the snippets for strip columns ``xs`` (batched; ``threads`` parallel calls).
    Crops are centred on the columns, or placed as the model was trained (``sheet_offset_px``).

    Each batch cuts its snippets from only the strip columns it covers, so the cost per snippet
    does not grow with the length of the piece."""
    ink_strip = ink(strip_image)
    W = ink_strip.shape[1]
    n = len(xs)
    if n == 0:
        return np.zeros((0, embedder.embed_dim), np.float32)
    xi = np.round(np.asarray(xs, np.float64)).astype(np.int64)     # sheet_snippets' own rounding, done once
    starts = list(range(0, n, batch))
    out = np.empty((n, embedder.embed_dim), np.float32)
    workers = threads or max(1, os.cpu_count() or 1)
    done = 0

    def run(s: int) -> int:
        e = min(n, s + batch)
        lo = int(max(0, xi[s:e].min() - 2 * CROP_W))     # 2 crops: room for a model's sheet_offset_px (<= CROP_W / 2)
        hi = int(min(W, xi[s:e].max() + 2 * CROP_W))
        out[s:e] = embed_sheet_at(embedder, ink_strip[:, lo:hi], xi[s:e] - lo)
        return e - s

    if workers == 1 or len(starts) == 1:
        for s in starts:
            done += run(s)
            if progress:
                progress("snippets", done, n)
    else:   # onnxruntime releases the GIL: one session, several concurrent calls
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for k in pool.map(run, starts):
                done += k
                if progress:
                    progress("snippets", done, n)
    return out


# --------------------------------------------------------------------------- bulk operations

def import_corpus(lib: Library, corpus_dir: str | Path, *, split: str = "test", limit: int | None = None,
                  distractors: int = 0, progress: bool = True) -> dict:
    """Add a built corpus's page PNGs (engraving 0) through :meth:`Library.add`; ids = corpus piece ids.

    Only the page images are used (never the engraver's layout). ``distractors`` extra pieces
    come from the other splits (deterministic order), so that large libraries can be built.
    Pieces already in the library are skipped, so an interrupted import resumes."""
    from tqdm import tqdm

    from scorestream.core.splits import unit_hash

    corpus_dir = Path(corpus_dir)
    pieces_dir = corpus_dir / "pieces"
    if not pieces_dir.is_dir():
        raise InputError(f"{corpus_dir} is not a corpus folder (no pieces/); build one with 'scorestream corpus build'")
    metas = {}
    for pj in sorted(pieces_dir.glob("*/piece.json")):
        m = json.loads(pj.read_text())
        metas[m["id"]] = m
    main = sorted(i for i, m in metas.items() if m["split"] == split)
    if limit is not None:
        main = main[: max(0, int(limit))]
    others = sorted((i for i, m in metas.items() if m["split"] != split), key=lambda i: unit_hash(i, 7))[: max(0, int(distractors))]
    todo = main + others
    if not todo:
        raise InputError(f"{corpus_dir}: no {split} pieces to import")
    added, skipped, failed = 0, 0, []
    bar = tqdm(todo, desc="import-corpus", unit="piece", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    for pid in bar:
        if pid in lib:
            skipped += 1
            continue
        files = sorted((pieces_dir / pid).glob("e0_page*.png"))
        src = Path(metas[pid]["source"])
        try:
            lib.add(pid, files, title=src.stem.replace("_", " "), composer=src.parent.name.replace("_", " ") or None)
            added += 1
        except InputError as exc:
            failed.append({"piece": pid, "error": str(exc)})
            log.warning("warning: %s not imported: %s", pid, exc)
    return {"split": split, "pieces": len(main), "distractors": len(others), "added": added, "already_there": skipped,
            "failed": failed, "library_pieces": len(lib)}


def rebuild(path: str | Path, *, model: str | None = None, progress: bool = True) -> dict:
    """Re-embed every piece of a library from its stored page images, with the current (or given) model.

    Builds a new library next to the old one and swaps the folders at the end, so an
    interrupted rebuild leaves the old library untouched."""
    from tqdm import tqdm

    path = Path(path)
    old = Library.open(path, check_model=False)
    cfg = load_library_config()
    entries = []
    for p in old.pieces():
        pages = old.pages(p.id)
        entries.append((p, [pg.image for pg in pages]))
    hop = old.hop_px
    old.close()
    new_path = path.with_name(path.name + ".rebuild")
    if new_path.exists():
        shutil.rmtree(new_path)
    new = Library.create(new_path, model=model or cfg.model, hop_px=hop)
    try:
        for info, images in tqdm(entries, desc="rebuild", unit="piece", file=sys.stderr, disable=not progress):
            new.add(info.id, images, title=info.title, composer=info.composer)
        new.close()
        backup = path.with_name(path.name + ".old")
        if backup.exists():
            shutil.rmtree(backup)
        os.replace(path, backup)
        os.replace(new_path, path)
        shutil.rmtree(backup, ignore_errors=True)
    except BaseException:
        new.close()
        shutil.rmtree(new_path, ignore_errors=True)
        raise
    return {"library": str(path), "pieces": len(entries), "model": new.model_name}
