"""``scorestream corpus pack``: the compact training pack (see ``models/PACK.md``).

A corpus folder holds tens of GB of page images and float spectrograms; the
model only needs the log spectrograms (8 bits are plenty for a log
magnitude), the unrolled strips (1 bit: engraved music is black on white) and
the pair table.  Packing keeps the whole training set in one file small
enough to ship to a rented GPU and to keep resident in its memory.
"""

from __future__ import annotations

import json
import logging
import random
import zlib
from pathlib import Path

import numpy as np

from scorestream.core.geometry import STAFF_SPACE, STRIP_HEIGHT
from scorestream.core.pack import (P_SPEC_LEN, P_SPEC_START, P_SPLIT, P_STRIP_LEN, P_STRIP_START, SPEC_SCALE, PackError,
                                   encode_v2, pack_ink, quantize_spec, read_pack, write_pack_v1, write_pack_v2)
from scorestream.core.splits import SPLIT_CODE, SPLITS, tempo_milli

from .reader import Corpus, Piece

log = logging.getLogger(__name__)


def _compressed_size(a: np.ndarray) -> int:
    return len(zlib.compress(np.ascontiguousarray(a).tobytes(), 6))


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
        bits = pack_ink(img[:, x0:x1])
        q = quantize_spec(spec[f0:f1])
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
                log.info("pack: %d training excerpts, %.2f h, %.1f MB", added, hours["train"], used / 1e6)
        if full:
            break

    if not pairs:
        raise ValueError(f"{corpus_dir}: no aligned pairs to pack")
    meta = {"version": 1, "spec_bins": int(spec_parts[0].shape[1]), "fps": 20, "spec_scale": SPEC_SCALE, "strip_height": STRIP_HEIGHT,
            "staff_space": STAFF_SPACE, "timbres": timbres, "test_timbre": test_timbre, "splits": list(SPLITS),
            "pieces": pieces, "hours": {k: round(v, 3) for k, v in hours.items()}, "pairs": n_pairs, "corpus": str(corpus_dir)}
    out = write_pack_v1(out, meta, np.concatenate(spec_parts), np.concatenate(strip_parts, axis=1), np.asarray(perfs, np.int64),
                        np.concatenate(pairs))
    meta["size_mb"] = round(out.stat().st_size / 1e6, 2)
    return meta


# --------------------------------------------------------------------------- dense repack

def repack(src: str | Path, out: str | Path, max_mb: float = 53.0, spec_bits: int = 6, seed: int = 0) -> dict:
    """Write a denser pack (format version 2) from a bigger one, keeping its valid and test sets.

    Why: a pack must fit the ~55 MB that travels to a rented GPU, and with zlib
    at 8 bits the spectrograms dominate (they compress only 1.4x).  Stored
    bins-major with lzma at ``spec_bits`` bits (6 bits: a log10 step of 1/16,
    dithered back to continuous values at training time, see
    ``models.packdata.BatchMaker``) the same budget holds about twice the
    training performances.  Training performances are drawn at random from
    ``src`` until the compressed size reaches ``max_mb``.
    """
    if not 4 <= spec_bits <= 8:
        raise ValueError(f"spec_bits must be 4..8, got {spec_bits}")
    log.info("repack: reading %s", src)
    data = read_pack(src)
    meta = data.meta
    if meta.get("codec"):
        raise PackError(f"{src} is already a dense (version 2) pack; repack the original version-1 pack")
    spec, strips, perfs, pairs = data.spec, data.strips, data.perfs, data.pairs
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
    sample_spec_z, sample_strips_z = encode_v2(sample[1], sample[2])
    ratio = sample[1].nbytes / len(sample_spec_z)
    per_perf = (len(sample_spec_z) + len(sample_strips_z)) / len(sample[3])
    n = max(1, min(n, int(budget * 0.97 / per_perf) - len(keep_eval)))
    log.info("repack: spectrogram lzma ratio ~%.2f at %d bits; trying %d of %d training performances", ratio, spec_bits, n, len(train))
    while True:
        log.info("repack: compressing %d training performances (lzma is slow: about a minute per 100 MB)", n)
        sel, q, s, rows, prs = build(np.concatenate([keep_eval, train[:n]]))
        spec_z, strips_z = encode_v2(q, s)
        size = spec_z.nbytes + strips_z.nbytes + prs.nbytes // 2 + rows.nbytes
        log.info("repack: %d training performances -> %.1f MB", n, size / 1e6)
        if size <= budget:
            break
        if n <= 1:
            raise ValueError(f"the validation and test sets of {src} alone exceed {max_mb} MB; raise --max-mb")
        n = int(n * budget / size * 0.98)
    pieces = meta.get("pieces")
    out_meta = dict(meta)
    out_meta.update({
        "spec_bits": spec_bits,
        "spec_scale": float(meta["spec_scale"]) / (1 << shift), "spec_shape": list(q.shape), "strips_shape": list(s.shape),
        "source": str(src),
        "pairs": {name: int((rows[prs[:, 0], P_SPLIT] == k).sum()) for k, name in enumerate(SPLITS)},
        "hours": {name: round(float(rows[rows[:, P_SPLIT] == k, P_SPEC_LEN].sum()) / 20 / 3600, 3)
                  for k, name in enumerate(SPLITS)},
    })
    if pieces is not None:
        rows[:, 7] = np.arange(len(rows))
        out_meta["pieces"] = [pieces[int(perfs[p, 7])] for p in sel]
    out = write_pack_v2(out, out_meta, spec_z, strips_z, rows, prs)
    out_meta.update(version=2, codec="lzma", spec_layout="bins_major")
    out_meta["size_mb"] = round(out.stat().st_size / 1e6, 2)
    return out_meta
