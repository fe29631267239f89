"""Nearest-snippet search over a library's sheet embeddings (cosine = inner product of unit vectors).

``SnippetIndex(emb)`` picks exact search (numpy matmul) for small libraries and a
FAISS inverted-file index (IVF-Flat, inner product) above ``exact_max`` snippets;
both answer ``search(queries, k) -> (scores, ids)`` with the same meaning, best first.

The approximate index's defaults: ``nlist = 4 sqrt(N)`` lists (16 … 65,536) and
``nprobe = max(nlist // 16, min(192, nlist))`` lists searched per query.  Chosen on
real data, audio-window queries (the tracker's) against sheet snippets, recall@10 vs.
exact search (benchmarks/library.py, ``benchmarks/results/library.json``):

* the corpus test split's own library (203 pieces, 88,935 snippets, bl1_2s columns),
  forced to IVF (nlist 1,192): nprobe 74 (= nlist/16) 0.977, 96 0.986, 128 0.992;
* a Gaussian mixture fitted to those snippets (256 components; it reproduces their
  recall curve to within 0.01, slightly pessimistic) at 150 k-1 M snippets: recall
  grows with the library at a fixed share of lists, so ``nlist // 16`` suffices
  from ~250 k on (0.991 at 440 k, 0.995 at 1 M, about 0.8 ms per query on one core at
  1 M) and the floor of 128 lists covers the sizes just above ``exact_max``;
* random unit vectors (no structure, far worse than real embeddings) are only a
  latency test.

tests/test_library.py checks recall@10 >= 0.98 at the defaults on such data.
"""

from __future__ import annotations

import logging
import math

import numpy as np

log = logging.getLogger(__name__)

EXACT_MAX = 150_000      # snippets up to which exact search is used ("auto")
EXACT_CHUNK = 65_536     # candidates per matmul block (bounded memory)


def default_nlist(n: int) -> int:
    """IVF lists for ``n`` snippets: 4 sqrt(n), within 16 … 65,536."""
    return max(16, min(65_536, 4 * int(math.sqrt(max(n, 1)))))


def default_nprobe(nlist: int) -> int:
    """Lists searched per query: a 24th of them, at least 192 (all when there are fewer)."""
    return max(nlist // 24, min(192, nlist))


class SnippetIndex:
    """Top-k inner-product search over ``emb`` (N, D), rows unit-norm (float16 or float32)."""

    def __init__(self, emb: np.ndarray, *, kind: str = "auto", exact_max: int = EXACT_MAX, nlist: int | None = None,
                 nprobe: int | None = None, threads: int | None = None, seed: int = 0) -> None:
        emb = np.asarray(emb)
        if emb.ndim != 2:
            raise ValueError(f"embeddings must be (N, D), got {emb.shape}")
        self.size, self.dim = int(emb.shape[0]), int(emb.shape[1])
        if kind == "auto":
            kind = "exact" if self.size <= exact_max else "ivf"
        if kind not in ("exact", "ivf"):
            raise ValueError(f"unknown index kind {kind!r}: 'auto', 'exact' or 'ivf'")
        self.kind = kind
        self._emb32 = np.ascontiguousarray(emb, dtype=np.float32)
        self._faiss = None
        if kind == "ivf":
            self._build_ivf(nlist, nprobe, threads, seed)

    # ---- building
    def _build_ivf(self, nlist: int | None, nprobe: int | None, threads: int | None, seed: int) -> None:
        import faiss

        if threads:
            faiss.omp_set_num_threads(int(threads))
        n = self.size
        nlist = int(nlist or default_nlist(n))
        quant = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quant, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        train = self._emb32[rng.choice(n, size=min(n, 64 * nlist), replace=False)] if n > 64 * nlist else self._emb32
        index.train(train)
        index.add(self._emb32)
        index.nprobe = int(nprobe or default_nprobe(nlist))
        self._faiss = index
        self.nlist = nlist
        log.info("snippet index: IVF-Flat over %d snippets, %d lists, nprobe %d", n, nlist, index.nprobe)

    @property
    def nprobe(self) -> int | None:
        return None if self._faiss is None else int(self._faiss.nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if self._faiss is not None:
            self._faiss.nprobe = int(value)

    @property
    def memory_bytes(self) -> int:
        extra = 0 if self._faiss is None else self.size * (self.dim * 4 + 8) + self.nlist * self.dim * 4
        return int(self._emb32.nbytes + extra)

    # ---- searching
    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(scores (B, k) float32, ids (B, k) int64), best first; ids of -1 pad when k > size."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {q.shape[1]}, the index {self.dim}")
        k = int(k)
        if self.size == 0 or k <= 0:
            return np.zeros((len(q), max(k, 0)), np.float32), np.full((len(q), max(k, 0)), -1, np.int64)
        if self._faiss is not None:
            scores, ids = self._faiss.search(q, k)
            return scores.astype(np.float32), ids.astype(np.int64)
        return _exact_topk(q, self._emb32, k)

    def scores_all(self, queries: np.ndarray) -> np.ndarray:
        """Exact similarity of every query to every snippet (B, N) — for small libraries and tests."""
        return np.atleast_2d(np.asarray(queries, np.float32)) @ self._emb32.T


def _exact_topk(q: np.ndarray, emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    B, N = len(q), len(emb)
    kk = min(k, N)
    best_s = np.full((B, kk), -np.inf, np.float32)
    best_i = np.full((B, kk), -1, np.int64)
    for s in range(0, N, EXACT_CHUNK):
        sims = q @ emb[s: s + EXACT_CHUNK].T
        m = min(kk, sims.shape[1])
        part = np.argpartition(-sims, m - 1, axis=1)[:, :m] if m < sims.shape[1] else np.tile(np.arange(sims.shape[1]), (B, 1))
        ps = np.take_along_axis(sims, part, axis=1)
        cs = np.concatenate([best_s, ps], axis=1)
        ci = np.concatenate([best_i, part + s], axis=1)
        top = np.argpartition(-cs, kk - 1, axis=1)[:, :kk]
        best_s, best_i = np.take_along_axis(cs, top, axis=1), np.take_along_axis(ci, top, axis=1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    best_s, best_i = np.take_along_axis(best_s, order, axis=1), np.take_along_axis(best_i, order, axis=1)
    if kk < k:
        best_s = np.pad(best_s, ((0, 0), (0, k - kk)), constant_values=-np.inf)
        best_i = np.pad(best_i, ((0, 0), (0, k - kk)), constant_values=-1)
    return best_s, best_i
