"""The score library: ingest speed, index search latency / recall / memory.

(The rest of this benchmark follows in the next commit; for now: the index test fixture.)

    .venv/bin/python benchmarks/library.py --write-index-fixture
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

INDEX_FIXTURE = REPO / "tests" / "fixtures" / "index_realistic.npz"
GMM_COMPONENTS = 256


# --------------------------------------------------------------------------- realistic synthetic snippets


def real_index_data(library: Path, cache: Path, dims: tuple[int, int] = (0, 32), n_queries: int = 2000, seed: int = 0):
    """The tracker's index as it is served: the library's sheet embeddings, columns ``dims``
    (bl1_2s of the ensemble), re-normalised; queries: audio-window embeddings of the corpus
    performances (the evaluation cache, same model), unit rows."""
    from scorestream.engine.library import Library

    with Library.open(library, check_model=False) as lib:
        emb = np.concatenate([p.emb for p in lib.load_all()]).astype(np.float32)[:, dims[0]:dims[1]]
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    d = dims[1] - dims[0]
    qs = [np.load(f) for f in sorted(glob.glob(str(cache / "*.npy")))]
    qs = [q for q in qs if q.ndim == 2 and q.shape[1] == d]
    if not qs:
        raise SystemExit(f"{cache}: no {d}-dimensional audio embeddings (run benchmarks/tracker.py once)")
    q = np.concatenate(qs).astype(np.float32)
    rng = np.random.default_rng(seed)
    q = q[rng.choice(len(q), size=min(n_queries, len(q)), replace=False)]
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-8)
    return emb, q


def fit_gmm(x: np.ndarray, k: int = GMM_COMPONENTS, shrink: float = 0.05, seed: int = 1) -> dict:
    """A Gaussian mixture of unit vectors: spherical k-means, then a full covariance (shrunk
    towards its mean variance) per cluster.  Sampling it and normalising the samples gives
    snippets with the real ones' neighbourhood structure at any library size."""
    import faiss

    km = faiss.Kmeans(x.shape[1], k, niter=20, seed=seed, spherical=True)
    km.train(x)
    _, a = km.index.search(x, 1)
    a = a[:, 0]
    weights, means, chols = [], [], []
    d = x.shape[1]
    for c in range(k):
        xc = x[a == c]
        if len(xc) < 3:
            continue
        cov = np.cov(xc.T) + 1e-6 * np.eye(d)
        cov = (1 - shrink) * cov + shrink * np.trace(cov) / d * np.eye(d)
        weights.append(len(xc))
        means.append(xc.mean(0))
        chols.append(np.linalg.cholesky(cov))
    w = np.asarray(weights, np.float64)
    return {"weights": (w / w.sum()).astype(np.float32), "means": np.asarray(means, np.float32),
            "chol": np.asarray(chols, np.float32)}


def sample_gmm(gmm: dict, n: int, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors drawn from :func:`fit_gmm`'s mixture (float32, shuffled)."""
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.asarray(gmm["weights"], np.float64) / np.sum(gmm["weights"]))
    d = gmm["means"].shape[1]
    out = np.empty((n, d), np.float32)
    at = 0
    for mu, chol, c in zip(gmm["means"], gmm["chol"], counts):
        if c:
            out[at:at + c] = mu + rng.standard_normal((c, d), dtype=np.float32) @ np.asarray(chol, np.float32).T
            at += c
    rng.shuffle(out)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def write_index_fixture(library: Path, cache: Path, out: Path = INDEX_FIXTURE, n_queries: int = 512) -> dict:
    """tests/fixtures/index_realistic.npz: the mixture fitted to a real library's index and real
    audio-window queries (float16; ~0.6 MB)."""
    emb, q = real_index_data(library, cache, n_queries=n_queries)
    gmm = fit_gmm(emb)
    out.parent.mkdir(parents=True, exist_ok=True)
    tri = np.tril_indices(emb.shape[1])
    src = library.resolve()
    meta = {"source_library": str(src.relative_to(REPO)) if src.is_relative_to(REPO) else str(src), "snippets": int(len(emb)), "dim": int(emb.shape[1]), "components": int(len(gmm["weights"])),
            "queries": int(len(q)), "note": "written by benchmarks/library.py --write-index-fixture"}
    np.savez_compressed(out, weights=gmm["weights"], means=gmm["means"].astype(np.float16),
                        chol_tril=gmm["chol"][:, tri[0], tri[1]].astype(np.float16), queries=q.astype(np.float16),
                        meta=np.array(json.dumps(meta)))
    return meta


def load_index_fixture(path: Path = INDEX_FIXTURE) -> tuple[dict, np.ndarray]:
    z = np.load(path)
    k, d = z["means"].shape
    chol = np.zeros((k, d, d), np.float32)
    tri = np.tril_indices(d)
    chol[:, tri[0], tri[1]] = z["chol_tril"].astype(np.float32)
    q = z["queries"].astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return {"weights": z["weights"], "means": z["means"].astype(np.float32), "chol": chol}, q


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--library", default=str(REPO / "data" / "lib_test"), help="a real library (the corpus test split's)")
    ap.add_argument("--cache", default=str(REPO / "data" / "eval_cache"), help="audio-window embeddings of the corpus takes")
    ap.add_argument("--write-index-fixture", action="store_true", help="write tests/fixtures/index_realistic.npz and stop")
    a = ap.parse_args(argv)
    if a.write_index_fixture:
        print(json.dumps(write_index_fixture(Path(a.library), Path(a.cache)), indent=1))
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
