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
from scorestream.core.strip import STAFF_SPACE, STRIP_HEIGHT

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
               test_pairs: int = 12000, valid_pairs: int = 8000, excerpt_s: float | None = 60.0, seed: int = 0,
               valid_excerpt_s: float = 20.0) -> dict:
    """Write ``out`` (.npz); returns a summary.

    Reserves the paper's test condition (test pieces, held-out timbre, tempo
    1.0) and a validation set first, then fills the size budget with training
    performances.  Training takes are cut to ``excerpt_s`` seconds (a random
    stretch of each piece) so that the budget holds many more distinct scores,
    engravings and timbres: variety matters more than full-length pieces.
    Validation takes are cut shorter (``valid_excerpt_s``) for the same reason:
    checkpoints chosen on ~9 pieces (3,000 pairs of 60 s excerpts) were
    measurably not the best ones on the corpus's full validation split.
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
        add(corpus.piece(pid), 0, "valid", valid_excerpt_s if excerpt_s is not None else None)
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


# --------------------------------------------------------------------------- dense repack

def _lzma(a: np.ndarray) -> np.ndarray:
    import lzma

    return np.frombuffer(lzma.compress(np.ascontiguousarray(a).tobytes(), preset=6), dtype=np.uint8)


def repack(src: str | Path, out: str | Path, max_mb: float = 53.0, spec_bits: int = 6, seed: int = 0,
           log=lambda m: print(m, file=sys.stderr)) -> dict:
    """Write a denser pack (format version 2) from a bigger one, keeping its valid and test sets.

    Why: a pack must fit the ~55 MB that travels to a rented GPU, and with zlib
    at 8 bits the spectrograms dominate (they compress only 1.4x).  Stored
    bins-major with lzma at ``spec_bits`` bits (6 bits: a log10 step of 1/16,
    dithered back to continuous values at training time, see
    ``models.packdata.BatchMaker``) the same budget holds about twice the
    training performances.  Training performances are drawn at random from
    ``src`` until the compressed size reaches ``max_mb``.
    """
    from scorestream.models.packdata import P_SPEC_LEN, P_SPEC_START, P_SPLIT, P_STRIP_LEN, P_STRIP_START

    if not 4 <= spec_bits <= 8:
        raise ValueError(f"spec_bits must be 4..8, got {spec_bits}")
    with np.load(str(src), allow_pickle=False) as z:
        meta = json.loads(str(z["meta"][()]))
        if meta.get("codec"):
            raise ValueError(f"{src} is already a dense (version 2) pack; repack the original")
        log(f"repack: reading {src}")
        spec, strips, perfs, pairs = z["spec"], z["strips"], z["perfs"].astype(np.int64), z["pairs"].astype(np.int64)
    shift = 8 - spec_bits
    rng = np.random.default_rng(seed)
    keep_eval = np.flatnonzero(perfs[:, P_SPLIT] != 0)
    train = rng.permutation(np.flatnonzero(perfs[:, P_SPLIT] == 0))
    by_perf = np.argsort(pairs[:, 0], kind="stable")                       # pairs grouped by performance
    starts = np.searchsorted(pairs[by_perf, 0], np.arange(len(perfs) + 1))

    def build(sel: np.ndarray):
        sel = np.sort(sel)
        q_parts, s_parts, rows, prs = [], [], [], []
        sp = st = 0
        for new, p in enumerate(sel):
            r = perfs[p].copy()
            a0, a1 = int(r[P_SPEC_START]), int(r[P_SPEC_START] + r[P_SPEC_LEN])
            b0, b1 = int(r[P_STRIP_START]), int(r[P_STRIP_START] + r[P_STRIP_LEN])
            q_parts.append(((spec[a0:a1].astype(np.uint16) + (1 << shift >> 1)) >> shift).clip(0, (1 << spec_bits) - 1).astype(np.uint8))
            s_parts.append(strips[:, b0:b1])
            pr = pairs[by_perf[starts[p]:starts[p + 1]]].copy()
            pr[:, 0] = new
            pr[:, 1] += sp - a0
            pr[:, 2] += st - b0
            r[P_SPEC_START], r[P_STRIP_START] = sp, st
            sp += a1 - a0
            st += b1 - b0
            rows.append(r)
            prs.append(pr)
        return sel, np.concatenate(q_parts), np.concatenate(s_parts, axis=1), np.stack(rows), np.concatenate(prs)

    budget = max_mb * 1e6
    # estimate the compression ratio on a sample, then shrink until the real thing fits
    n = len(train)
    sample = build(train[: max(20, n // 50)] if n else keep_eval)
    sample_spec_z = len(_lzma(sample[1].T))
    ratio = sample[1].nbytes / sample_spec_z
    per_perf = (sample_spec_z + len(_lzma(sample[2]))) / len(sample[3])
    n = max(1, min(n, int(budget * 0.97 / per_perf) - len(keep_eval)))
    log(f"repack: spectrogram lzma ratio ~{ratio:.2f} at {spec_bits} bits; trying {n} of {len(train)} training performances")
    while True:
        log(f"repack: compressing {n} training performances (lzma is slow: about a minute per 100 MB)")
        sel, q, s, rows, prs = build(np.concatenate([keep_eval, train[:n]]))
        spec_z, strips_z = _lzma(q.T), _lzma(s)
        size = spec_z.nbytes + strips_z.nbytes + prs.nbytes // 2 + rows.nbytes
        log(f"repack: {n} training performances -> {size / 1e6:.1f} MB")
        if size <= budget:
            break
        if n <= 1:
            raise ValueError(f"the validation and test sets of {src} alone exceed {max_mb} MB; raise --max-mb")
        n = int(n * budget / size * 0.98)
    pieces = meta.get("pieces")
    out_meta = dict(meta)
    out_meta.update({
        "version": 2, "codec": "lzma", "spec_layout": "bins_major", "spec_bits": spec_bits,
        "spec_scale": float(meta["spec_scale"]) / (1 << shift), "spec_shape": list(q.shape), "strips_shape": list(s.shape),
        "source": str(src),
        "pairs": {name: int((rows[prs[:, 0], P_SPLIT] == k).sum()) for k, name in enumerate(("train", "valid", "test"))},
        "hours": {name: round(float(rows[rows[:, P_SPLIT] == k, P_SPEC_LEN].sum()) / 20 / 3600, 3)
                  for k, name in enumerate(("train", "valid", "test"))},
    })
    if pieces is not None:
        rows[:, 7] = np.arange(len(rows))
        out_meta["pieces"] = [pieces[int(perfs[p, 7])] for p in sel]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, meta=np.array(json.dumps(out_meta)), spec=spec_z, strips=strips_z, perfs=rows, pairs=prs.astype(np.int32))
    out_meta["size_mb"] = round(out.stat().st_size / 1e6, 2)
    return out_meta
