"""``scorestream corpus pack``: the compact training pack (see ``models/PACK.md``).

A corpus folder holds tens of GB of page images and float spectrograms; the
model only needs the log spectrograms (8 bits are plenty for a log
magnitude), the unrolled strips (1 bit: engraved music is black on white) and
the pair table.  Packing keeps the whole training set in one file small
enough to ship to a rented GPU and to keep resident in its memory.
"""

from __future__ import annotations

import io
import json
import random
import sys
import zlib
from pathlib import Path

import numpy as np

from .reader import Corpus, Piece
from .strip import STAFF_SPACE, STRIP_HEIGHT

SPEC_SCALE = 64.0  # uint8 = round(log_spec * 64): covers log values 0 .. 3.98
SPLIT_CODE = {"train": 0, "valid": 1, "test": 2}


def _compressed_size(a: np.ndarray) -> int:
    return len(zlib.compress(np.ascontiguousarray(a).tobytes(), 6))


def _quantize(spec: np.ndarray) -> np.ndarray:
    return np.clip(np.round(spec * SPEC_SCALE), 0, 255).astype(np.uint8)


def _ink_bits(strip: np.ndarray) -> np.ndarray:
    ink = (strip < 128).astype(np.uint8)
    return np.packbits(ink, axis=0)  # (25, W)


def tempo_milli(style: dict) -> int:
    """1000 x global tempo; exactly 1000 only for a metronomic (no rubato) tempo-1.0 take,
    the paper's test condition."""
    t = int(round(style["tempo"] * 1000))
    if style.get("rubato", 0) > 0 and t == 1000:
        return 1001
    return t


def build_pack(corpus_dir: str | Path, out: str | Path, max_mb: float = 55.0, max_train_hours: float | None = None,
               test_pairs: int = 12000, valid_pairs: int = 3000, excerpt_s: float | None = 60.0, seed: int = 0) -> dict:
    """Write ``out`` (.npz); returns a summary.

    Reserves the paper's test condition (test pieces, held-out timbre, tempo
    1.0) and a validation set first, then fills the size budget with training
    performances.  Training takes are cut to ``excerpt_s`` seconds (a random
    stretch of each piece) so that the budget holds many more distinct scores,
    engravings and timbres: variety matters more than full-length pieces.
    """
    corpus = Corpus(corpus_dir)
    with open(Path(corpus_dir) / "corpus.json") as f:
        cinfo = json.load(f)
    timbres = list(cinfo["timbres"]["train"]) + [cinfo["timbres"]["test"]]
    test_timbre = len(timbres) - 1
    by_split: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    for pid in corpus.piece_ids():
        by_split[corpus.piece(pid).split].append(pid)
    rng = random.Random(seed)
    for v in by_split.values():
        v.sort()
        rng.shuffle(v)

    budget = max_mb * 1e6 * 0.97
    used = 0.0
    spec_parts: list[np.ndarray] = []
    strip_parts: list[np.ndarray] = []
    perfs: list[list[int]] = []
    pairs: list[np.ndarray] = []
    pieces: list[str] = []
    spec_pos = strip_pos = 0
    hours = {"train": 0.0, "valid": 0.0, "test": 0.0}
    n_pairs = {"train": 0, "valid": 0, "test": 0}
    margin = 90  # frames kept around an excerpt's pairs, > half the longest audio context

    def add(piece: Piece, j: int, split: str, excerpt: float | None) -> bool:
        nonlocal used, spec_pos, strip_pos
        spec, _ = piece.performance(j)
        pr = piece.pairs(j, 0)
        keep = (pr.frame >= 0) & (pr.frame < len(spec))
        f0, f1 = 0, len(spec)
        if excerpt is not None and len(spec) > excerpt * 20 + 2 * margin:
            f0 = rng.randrange(0, len(spec) - int(excerpt * 20) - 2 * margin)
            f1 = f0 + int(excerpt * 20) + 2 * margin
            keep &= (pr.frame >= f0 + margin) & (pr.frame < f1 - margin)
        if keep.sum() == 0:
            return False
        xs = np.round(pr.strip_x[keep]).astype(np.int64)
        img = piece.strip(0).image
        x0 = 0 if excerpt is None else max(0, int(xs.min()) - 130)
        x1 = img.shape[1] if excerpt is None else min(img.shape[1], int(xs.max()) + 130)
        bits = _ink_bits(img[:, x0:x1])
        q = _quantize(spec[f0:f1])
        cost = _compressed_size(bits) + _compressed_size(q) + int(keep.sum()) * 8
        if used + cost > budget:
            return False
        used += cost
        style = piece.meta["performances"][j]["style"]
        perf_row = len(perfs)
        perfs.append([spec_pos, len(q), strip_pos, bits.shape[1], SPLIT_CODE[split], timbres.index(style["timbre"]), tempo_milli(style), len(pieces)])
        pieces.append(piece.id)
        tab = np.stack([np.full(keep.sum(), perf_row), spec_pos + pr.frame[keep] - f0, strip_pos + xs - x0,
                        np.round(pr.strip_y[keep]).astype(np.int64)], axis=1).astype(np.int32)
        pairs.append(tab)
        spec_parts.append(q)
        strip_parts.append(bits)
        spec_pos += len(q)
        strip_pos += bits.shape[1]
        hours[split] += len(q) / 20 / 3600
        n_pairs[split] += len(tab)
        return True

    # 1. the paper's test condition: test pieces, held-out timbre, tempo 1.0 (performance 0 of a test piece)
    for pid in by_split["test"]:
        if n_pairs["test"] >= test_pairs:
            break
        add(corpus.piece(pid), 0, "test", None)
    # 2. validation (a training-like take: performance 0 of a valid piece)
    for pid in by_split["valid"]:
        if n_pairs["valid"] >= valid_pairs:
            break
        add(corpus.piece(pid), 0, "valid", excerpt_s)
    # 3. training: one excerpt per piece first (more scores beat more takes), then the other takes
    n_perf = max((len(corpus.piece(p).meta["performances"]) for p in by_split["train"][:1]), default=1)
    added = 0
    full = False
    for round_ in range(n_perf):
        for k, pid in enumerate(by_split["train"]):
            if max_train_hours is not None and hours["train"] >= max_train_hours:
                full = True
                break
            j = (k + round_) % n_perf  # alternate takes (timbres) across pieces
            if not add(corpus.piece(pid), j, "train", excerpt_s):
                if used > budget * 0.995:
                    full = True
                    break
                continue
            added += 1
            if added % 100 == 0:
                print(f"pack: {added} training excerpts, {hours['train']:.2f} h, {used / 1e6:.1f} MB", file=sys.stderr)
        if full:
            break

    if not pairs:
        raise ValueError(f"{corpus_dir}: no aligned pairs to pack")
    meta = {"version": 1, "spec_bins": int(spec_parts[0].shape[1]), "fps": 20, "spec_scale": SPEC_SCALE, "strip_height": STRIP_HEIGHT,
            "staff_space": STAFF_SPACE, "timbres": timbres, "test_timbre": test_timbre, "splits": ["train", "valid", "test"],
            "pieces": pieces, "hours": {k: round(v, 3) for k, v in hours.items()}, "pairs": n_pairs, "corpus": str(corpus_dir)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, meta=np.array(json.dumps(meta)), spec=np.concatenate(spec_parts), strips=np.concatenate(strip_parts, axis=1),
                        perfs=np.asarray(perfs, np.int64), pairs=np.concatenate(pairs))
    meta["size_mb"] = round(out.stat().st_size / 1e6, 2)
    return meta
