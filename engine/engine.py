"""The engine: one score library + one embedder + one snippet index, shared by every stream.

Sans-I/O (docs/engine.md): callers push :class:`~scorestream.streamer.frontend.AudioWindow`
objects and their embeddings into a :class:`~scorestream.engine.tracker.Tracker` (one per
stream, from :meth:`Engine.new_tracker`) and get :class:`~scorestream.engine.results.Result`
objects back.  The engine itself is read-only after construction, so trackers of many streams
(threads) share it safely; :meth:`Engine.embed` may be called from any thread.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scorestream.core.config import CONFIG_DIR, from_dict, read_toml
from scorestream.core.errors import InputError

from .index import SnippetIndex
from .tracker import Tracker, TrackerConfig

FPS = 20
BACKGROUND_SAMPLE = 4096      # snippets whose mean likelihood stands for "anywhere in the library"


def load_tracker_config(path: str | Path | None = None, **overrides) -> TrackerConfig:
    """``configs/tracker.toml`` as a :class:`TrackerConfig`, with the ``[tracker]`` settings of
    ``path`` on top (a file may hold only what it changes, e.g. configs/tracker_scans.toml); keyword
    overrides win over both."""
    data = read_toml(CONFIG_DIR / "tracker.toml").get("tracker", {})
    if path is not None:
        data.update(read_toml(path).get("tracker", {}))
    data.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(TrackerConfig, data, "tracker")


@dataclass
class PieceModel:
    """One library piece as the tracker sees it: snippet embeddings in strip order and the layout."""

    index: int                      # position in Engine.pieces
    id: str
    title: str | None
    emb: np.ndarray                 # (n, D) float32, unit rows
    strip_x: np.ndarray             # (n,) snippet centres, strip px (uniform hop)
    strip_width: int
    hop_px: float
    seg_x0: np.ndarray              # (S,) strip x where each system starts (strip order)
    seg_x1: np.ndarray              # (S,) strip x where it ends
    systems: list                   # SystemRecord per system (strip order)
    page_sizes: dict[int, tuple[int, int]]
    n_pages: int
    sys_start_states: np.ndarray    # state index of each system's first snippet
    last_on_page: np.ndarray        # (S,) bool: the last system of its page
    offset: int = 0                 # first row in the engine's concatenated index

    @property
    def n(self) -> int:
        return int(len(self.strip_x))

    def system_at(self, x: float) -> int:
        """Index (strip order) of the system holding strip x."""
        return int(np.clip(np.searchsorted(self.seg_x0, x, side="right") - 1, 0, len(self.seg_x0) - 1))

    def locate(self, x: float) -> dict:
        """Strip x -> page, system (1-based), page x/y, bbox, page size."""
        j = self.system_at(x)
        rec = self.systems[j]
        seg = rec.segment
        sx = float(np.clip(x, seg.strip_x0, seg.strip_x0 + max(seg.width - 1, 0)))
        px, py = seg.strip_to_page(sx)
        w, h = self.page_sizes.get(rec.page, (None, None))
        return {"sys": j, "page": int(rec.page), "system": int(rec.system), "x": float(px),
                "y": float(rec.centre_y), "bbox": [float(v) for v in rec.bbox],
                "page_size": [int(w), int(h)] if w is not None else None}


class FusedAudio:
    """Several models that embed the same audio window, each about its own onset frame.

    Why: a model trained with its onset at the window's end (``bl1_2s_c``, audio_offset_frames
    -18) tells where the music is now but retrieves less well; the centred ``bl1_2s`` retrieves
    better but describes the music 0.9 s earlier.  Fused, the tracker scores each position ``x``
    by the first model's similarity at ``x`` plus each other model's at ``x - tempo * lag``
    (``lag_s``: how much earlier that model's onset frame is), so both inform the present.
    Embeddings are concatenated, each scaled by 1/sqrt(k) (the dot product is the mean cosine)."""

    def __init__(self, members: list) -> None:
        frames = {int(m.audio_frames) for m in members}
        if len(frames) != 1:
            raise InputError(f"fused audio models must take the same window; got {sorted(frames)} frames")
        self.members = list(members)
        self.name = "&".join(m.name for m in members)
        self.audio_frames = frames.pop()
        self.spec_bins = members[0].spec_bins
        self.embed_dim = sum(int(m.embed_dim) for m in members)
        self.audio_offset_frames = int(getattr(members[0], "audio_offset_frames", 0))
        self.providers = getattr(members[0], "providers", None)
        self.fingerprint = hashlib.sha256("&".join(m.fingerprint for m in members).encode()).hexdigest()[:16]
        self._scale = np.float32(1.0 / np.sqrt(len(members)))
        blocks, start = [], 0
        for m in members:
            lag = (int(getattr(m, "audio_offset_frames", 0)) - self.audio_offset_frames) / FPS
            blocks.append((start, start + int(m.embed_dim), lag))
            start += int(m.embed_dim)
        self.blocks = blocks        # (first column, end column, lag_s) per member

    def embed_audio(self, spec_windows: np.ndarray) -> np.ndarray:
        return np.concatenate([m.embed_audio(spec_windows) for m in self.members], axis=1) * self._scale


def _piece_model(i: int, ps, hop_px: float) -> PieceModel:
    emb = np.asarray(ps.emb, np.float32)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-8)
    systems = list(ps.systems)
    seg_x0 = np.array([s.segment.strip_x0 for s in systems], np.float64)
    seg_x1 = np.array([s.segment.strip_x0 + s.segment.width for s in systems], np.float64)
    xs = np.asarray(ps.strip_x, np.float64)
    starts = np.unique(np.clip(np.searchsorted(xs, seg_x0, side="left"), 0, max(len(xs) - 1, 0))).astype(np.int64)
    pages = [s.page for s in systems]
    last = np.array([k == len(pages) - 1 or pages[k + 1] != pages[k] for k in range(len(pages))], bool)
    sizes = {p.page: (int(p.width), int(p.height)) for p in ps.pages}
    return PieceModel(i, ps.info.id, ps.info.title, np.ascontiguousarray(emb), xs, int(ps.info.strip_width), float(hop_px),
                      seg_x0, seg_x1, systems, sizes, len(ps.pages), starts, last)


class Engine:
    """Library + embedder + index.  ``Engine(Library.open(path))``.

    ``tracker_config``: a :class:`TrackerConfig` (default: configs/tracker.toml).
    ``embedder``: default the library's own model (checked against the library's weights).
    ``pieces``: serve only these library ids (default all)."""

    def __init__(self, library, *, embedder=None, tracker_config: TrackerConfig | None = None,
                 index_kind: str = "auto", pieces=None, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("scorestream.engine")
        self.library = library
        self.embedder = embedder if embedder is not None else library.embedder
        if embedder is not None and hasattr(library, "check_model"):
            library.check_model(embedder)
        self.config = tracker_config or load_tracker_config()
        from .gate import MusicClassifier

        self.music_classifier = MusicClassifier.load()     # configs/gate.toml (None: fixed thresholds only)
        self.library_embedder = self.embedder
        self.fusion = None          # FusedAudio.blocks when audio_model is "A&B"
        dims = self._choose_audio_model(self.config.audio_model)
        self.audio_frames = int(self.embedder.audio_frames)
        self.stride_frames = max(1, int(round(self.config.stride_s * FPS)))
        self.stride_s = self.stride_frames / FPS
        # the onset frame the audio embedding describes: the window centre, or where the model was
        # trained to put it (models.nets.ModelConfig.audio_offset_frames; -20 of 42: the window's end)
        offset = int(getattr(self.embedder, "audio_offset_frames", 0))
        self.query_shift_s = -offset / FPS                        # onset frame - window centre
        self.window_lead_s = (self.audio_frames // 2 + offset) / FPS   # window end - onset frame: what is extrapolated
        hop = float(getattr(library, "hop_px", 20))
        snippets = library.load_all(pieces)     # pieces: only these ids (evaluations hold some out)
        self.pieces: list[PieceModel] = []
        for ps in snippets:
            if ps.info.snippets <= 0 or len(ps.emb) == 0:
                continue
            if isinstance(dims, list):
                ps.emb = np.concatenate([ps.emb[:, a:b] for a, b in dims], axis=1)
            elif dims is not None:
                ps.emb = ps.emb[:, dims[0]:dims[1]]
            self.pieces.append(_piece_model(len(self.pieces), ps, hop))
        self.by_id = {p.id: p for p in self.pieces}
        offs, rows, owner = 0, [], []
        for p in self.pieces:
            p.offset = offs
            offs += p.n
            rows.append(p.emb)
            owner.append(np.full(p.n, p.index, np.int32))
        self.size = offs
        dim = int(getattr(self.embedder, "embed_dim", rows[0].shape[1] if rows else 1))
        all_emb = np.concatenate(rows) if rows else np.zeros((0, dim), np.float32)
        self.owner = np.concatenate(owner) if owner else np.zeros(0, np.int32)
        self.index = SnippetIndex(all_emb, kind=index_kind, threads=1)
        rng = np.random.default_rng(0)
        pick = rng.choice(self.size, size=min(self.size, BACKGROUND_SAMPLE), replace=False) if self.size else np.zeros(0, int)
        self.background_emb = np.ascontiguousarray(all_emb[np.sort(pick)])
        self.piece_sizes = np.array([p.n for p in self.pieces], np.float64)
        self._embed_lock = threading.Lock()
        self.log.debug("engine: %d pieces, %d snippets, index %s, model %s", len(self.pieces), self.size, self.index.kind,
                      getattr(self.embedder, "name", "?"))

    def _choose_audio_model(self, name: str | None):
        """Follow with one member of the library's ensemble (its own columns of the library's
        embeddings, re-normalised): a member with a shorter audio context needs a shorter
        look-ahead to report the present (bl1_2s: 1.05 s instead of the ensemble's 2.1 s); or
        ``A&B``: members that embed the same audio window together (see :class:`FusedAudio`).
        Sets ``self.embedder``; returns the column range to keep (a list of them for ``A&B``), or
        None for the library's model as it is."""
        lib = self.embedder
        if not name or name == getattr(lib, "name", None):
            return None
        if "&" in name:
            found = [(part.strip(), self._member(part.strip())) for part in name.split("&")]
            for part, f in found:
                if f is None:
                    raise InputError(f"audio model {part!r} of {name!r} is not a member of the library's model "
                                     f"{getattr(lib, 'name', '?')}")
            self.embedder = FusedAudio([f[0] for _, f in found])
            self.fusion = self.embedder.blocks
            return [f[1] for _, f in found]
        f = self._member(name)
        if f is None:
            self.log.warning("audio model %s is not part of the library's model %s; using %s", name,
                             getattr(lib, "name", "?"), getattr(lib, "name", "?"))
            return None
        self.embedder = f[0]
        return f[1]

    def _member(self, name: str):
        """(member, its column range) of the library's ensemble called ``name``, or None."""
        start = 0
        for m in getattr(self.embedder, "members", None) or []:
            if m.name == name:
                return m, (start, start + int(m.embed_dim))
            start += int(m.embed_dim)
        return None

    # ---- shared services
    def embed(self, windows) -> np.ndarray:
        """Embeddings (len(windows), D) of audio windows (thread-safe)."""
        if len(windows) == 0:
            return np.zeros((0, int(self.embedder.embed_dim)), np.float32)
        x = np.stack([w.spec for w in windows]).astype(np.float32, copy=False)
        return np.asarray(self.embedder.embed_audio(x), np.float32)

    def new_tracker(self, piece: str | None = None, *, config: TrackerConfig | None = None,
                    logger: logging.Logger | None = None) -> Tracker:
        """A tracker for one stream; ``piece``: follow this library piece (no identification)."""
        if piece is not None and piece not in self.by_id:
            raise InputError(f"piece {piece!r} is not in the library; 'scorestream library list --library "
                             f"{getattr(self.library, 'path', 'DIR')}' shows the ids")
        return Tracker(self, piece=piece, config=config or self.config, logger=logger or self.log)

    def page_image(self, piece_id: str, page: int) -> Path:
        return self.library.page_image(piece_id, page)

    def title(self, piece_id: str) -> str | None:
        p = self.by_id.get(piece_id)
        return p.title if p else None
