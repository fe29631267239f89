"""The score library: ingest speed, and the snippet index's search latency, recall and memory.

**Ingest** (``Library.add``, the path of ``scorestream library add``, default ensemble model,
every core): pages per minute on

* *engraved*: page PNGs (835 px) of corpus test-split pieces (``data/corpus``, only the
  images), and
* *scans*: Joplin's 1-bit 300 dpi scanned editions (``shared/data/joplin`` PDFs, rendered by
  the library at 1670 px),

with the time split into decode + system detection + unrolling + page writing ("pages"),
embedding ("embed") and the rest (strip / embedding files, fsync, commit).  A few settings
(embedding threads, batch) are compared on a subset, and one ``scorestream library add``
process is timed end to end (interpreter and model start included).  Target: >= 30 pages
per minute on this machine.

**Index** (``engine.index.SnippetIndex`` as the tracker uses it: bl1_2s columns, 32-d unit
rows): libraries of 10 k snippets, 200 / 1,000 / 10,000 pieces (the corpus's measured
snippets per piece), 1 M and 10 M snippets, drawn from a Gaussian mixture fitted to a real
library (tests/fixtures/index_realistic.npz; at the real library's size it reproduces the
real recall curve), queried with real audio-window embeddings.  The index kind is the
automatic choice (exact up to ``EXACT_MAX``, IVF above); per size: build time, memory,
ms per query for a batch of 64 (top-10) and for single queries (top-32, the tracker's call),
all on one core, and recall@10 / @32 against exact search.  Also: the real library itself
(exact and forced IVF) and random unit vectors at 1 M (no structure: worst case).

Prints Markdown tables; writes ``benchmarks/results/library.json`` and ``library.md``.

    nice .venv/bin/python benchmarks/library.py [--pieces 20] [--scans 3] [--max-snippets 10000000]
    .venv/bin/python benchmarks/library.py --write-index-fixture     # refit the test fixture
"""

from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):   # exact search on one core, like the tracker's
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results"
INDEX_FIXTURE = REPO / "tests" / "fixtures" / "index_realistic.npz"
GMM_COMPONENTS = 256
TARGET_PAGES_PER_MIN = 30.0


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident memory of this process, MB."""
    cur = peak = 0.0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return cur, peak


def reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


# --------------------------------------------------------------------------- realistic synthetic snippets


def real_index_data(library: Path, cache: Path, dims: tuple[int, int] = (0, 32), n_queries: int = 2000, seed: int = 0):
    """The tracker's index as it is served: the library's sheet embeddings, columns ``dims``
    (bl1_2s of the ensemble), re-normalised; queries: audio-window embeddings of the corpus
    performances (the evaluation cache, same model), unit rows."""
    from scorestream.engine.library import Library

    with Library.open(library, check_model=False) as lib:
        ps = lib.load_all()
    emb = np.concatenate([p.emb for p in ps]).astype(np.float32)[:, dims[0]:dims[1]]
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
    return emb, q, len(ps)


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
    audio-window queries (float16; ~0.3 MB)."""
    emb, q, _ = real_index_data(library, cache, n_queries=n_queries)
    gmm = fit_gmm(emb)
    out.parent.mkdir(parents=True, exist_ok=True)
    tri = np.tril_indices(emb.shape[1])
    src = library.resolve()
    meta = {"source_library": str(src.relative_to(REPO)) if src.is_relative_to(REPO) else str(src),
            "snippets": int(len(emb)), "dim": int(emb.shape[1]), "components": int(len(gmm["weights"])),
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


# --------------------------------------------------------------------------- ingest


def corpus_pieces(corpus: Path, n: int) -> list[tuple[str, list[Path]]]:
    """``n`` test-split pieces of a built corpus (a deterministic mix), with their page PNGs."""
    from scorestream.core.splits import unit_hash

    out = []
    for pj in glob.glob(str(corpus / "pieces" / "*" / "piece.json")):
        m = json.loads(Path(pj).read_text())
        if m["split"] == "test":
            out.append((m["id"], sorted(Path(pj).parent.glob("e0_page*.png"))))
    out.sort(key=lambda t: unit_hash(t[0], 11))
    return [t for t in out if t[1]][:n]


def joplin_scans(data: Path, n: int) -> list[tuple[str, list[Path]]]:
    pdfs = sorted((data / "joplin" / "reference-edition").glob("*.pdf"))
    return [(f"joplin-{p.stem}", [p]) for p in pdfs[:n]]


def ingest(pieces: list[tuple[str, list[Path]]], *, threads: int = 0, batch: int = 64, hop: int | None = None,
           embedder=None) -> dict:
    """Add ``pieces`` to a fresh library; wall time per stage."""
    from scorestream.engine.library import Library, LibraryConfig, load_library_config

    base = load_library_config()
    cfg = LibraryConfig(model=base.model, hop_px=hop or base.hop_px, batch=batch, threads=threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-lib-"))
    try:
        t0 = time.perf_counter()
        lib = Library.create(tmp / "lib", config=cfg, embedder=embedder)
        load_s = time.perf_counter() - t0
        pages = systems = snippets = 0
        stages = {"pages": 0.0, "embed": 0.0, "rest": 0.0}
        reset_peak()
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        t_all = time.perf_counter()
        for pid, files in pieces:
            marks: dict[str, float] = {}

            def cb(stage: str, done: int, total: int) -> None:
                now = time.perf_counter()
                if stage == "pages":
                    marks["pages"] = now
                elif stage == "snippets":
                    marks.setdefault("embed0", marks.get("pages", now))
                    marks["embed"] = now

            t = time.perf_counter()
            info = lib.add(pid, files, progress=cb, config=cfg)
            end = time.perf_counter()
            tp = marks.get("pages", t)
            te = marks.get("embed", tp)
            stages["pages"] += tp - t
            stages["embed"] += te - tp
            stages["rest"] += end - te
            pages += info.pages
            systems += info.systems
            snippets += info.snippets
        total = time.perf_counter() - t_all
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        lib.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"pieces": len(pieces), "pages": pages, "systems": systems, "snippets": snippets, "seconds": round(total, 2),
            "pages_per_min": round(60 * pages / total, 1), "snippets_per_s": round(snippets / max(stages["embed"], 1e-9), 1),
            "s_per_page": {k: round(v / max(pages, 1), 3) for k, v in stages.items()},
            "cpu_s_per_page": round(cpu / max(pages, 1), 3),
            # what the same work takes on otherwise idle cores (the CPU time spread over all of them): an upper bound
            "pages_per_min_idle_cores_bound": round(60 * pages / (cpu / (threads or os.cpu_count() or 1)), 1),
            "load_avg": [round(x, 2) for x in os.getloadavg()],
            "model_load_s": round(load_s, 2), "threads": threads or os.cpu_count(), "batch": batch, "hop_px": cfg.hop_px,
            "peak_rss_mb": round(rss_mb()[1])}


def cli_add_seconds(files: list[Path]) -> float:
    tmp = Path(tempfile.mkdtemp(prefix="bench-cli-"))
    try:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "scorestream.cli", "-q", "library", "add", "--library", str(tmp / "lib"), "--id", "x",
                        "--no-progress", *map(str, files)], check=True, capture_output=True, cwd=REPO)
        return round(time.perf_counter() - t, 2)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_ingest(a) -> dict:
    from scorestream.models.embedder import load_embedder

    from scorestream.engine.library import load_library_config

    out: dict = {}
    eng = corpus_pieces(Path(a.corpus), a.pieces) if a.pieces else []
    scans = joplin_scans(Path(a.data), a.scans) if a.scans else []
    if not eng and not scans:
        return out
    emb = load_embedder(load_library_config().model, intra_op_threads=1)
    if eng:
        out["engraved"] = ingest(eng, embedder=emb)
        print(f"  engraved: {out['engraved']['pages_per_min']} pages/min", flush=True)
    if scans:
        out["scans"] = ingest(scans, embedder=emb)
        print(f"  scans: {out['scans']['pages_per_min']} pages/min", flush=True)
    if eng and a.settings:
        sub = eng[: max(1, len(eng) // 4)]
        out["settings"] = []
        for threads, batch, hop in ((1, 64, None), (2, 32, None), (2, 64, None), (2, 128, None), (2, 64, 40)):
            r = ingest(sub, threads=threads, batch=batch, hop=hop, embedder=emb)
            out["settings"].append(r)
            print(f"  settings threads {threads} batch {batch} hop {r['hop_px']}: {r['pages_per_min']} pages/min, "
                  f"{r['snippets_per_s']} snippets/s, {r['cpu_s_per_page']} CPU s/page", flush=True)
    if eng:
        out["cli_one_piece"] = {"piece": eng[0][0], "pages": len(eng[0][1]), "seconds": cli_add_seconds(eng[0][1])}
    return out


# --------------------------------------------------------------------------- index


def recall(ids: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(a[a >= 0].tolist()) & set(b.tolist())) / k for a, b in zip(ids, exact)]))


def time_search(index, q: np.ndarray, *, batch: int, k: int, budget_s: float = 3.0, max_queries: int = 512) -> float:
    """Median ms per query over batches of ``batch`` queries (one core)."""
    import faiss

    faiss.omp_set_num_threads(1)
    per = []
    t_end = time.perf_counter() + budget_s
    for s in range(0, min(len(q), max_queries), batch):
        t = time.perf_counter()
        index.search(q[s:s + batch], k)
        per.append((time.perf_counter() - t) / len(q[s:s + batch]) * 1e3)
        if time.perf_counter() > t_end and len(per) >= 3:
            break
    return float(np.median(per))


def measure_index(name: str, emb: np.ndarray, q: np.ndarray, *, kind: str = "auto", exact_latency: bool = True) -> dict:
    import faiss

    from scorestream.engine.index import SnippetIndex, _exact_topk

    n = len(emb)
    t = time.perf_counter()
    ex10, ex32 = None, None
    ex = _exact_topk(q, emb, 32)[1]
    exact_s = time.perf_counter() - t
    ex10, ex32 = ex[:, :10], ex
    cur0 = rss_mb()[0]
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    t = time.perf_counter()
    index = SnippetIndex(emb, kind=kind, threads=os.cpu_count())
    build_s = time.perf_counter() - t
    r = {"name": name, "snippets": n, "kind": index.kind, "build_s": round(build_s, 2),
         "memory_mb": round(index.memory_bytes / 1e6, 1), "rss_growth_mb": round(rss_mb()[0] - cur0, 1)}
    if index.kind == "ivf":
        r.update(nlist=index.nlist, nprobe=index.nprobe)
    r["ms_per_query_batch64_top10"] = round(time_search(index, q, batch=64, k=10), 4)
    r["ms_per_query_single_top32"] = round(time_search(index, q, batch=1, k=32, max_queries=200), 4)
    r["recall_at_10"] = round(recall(index.search(q, 10)[1], ex10), 4)
    r["recall_at_32"] = round(recall(index.search(q, 32)[1], ex32), 4)
    if index.kind == "ivf" and exact_latency:
        exact = SnippetIndex(emb, kind="exact")
        r["exact_ms_per_query_batch64_top10"] = round(time_search(exact, q, batch=64, k=10, budget_s=2.0), 4)
        r["exact_ms_per_query_single_top32"] = round(time_search(exact, q, batch=1, k=32, budget_s=2.0, max_queries=50), 4)
    r["exact_topk_s_for_recall"] = round(exact_s, 1)
    del index
    return r


def run_index(a) -> dict:
    from scorestream.engine.index import EXACT_MAX

    gmm, q = load_index_fixture()
    out: dict = {"exact_max": EXACT_MAX, "queries": int(len(q)), "rows": []}
    spp = 88935 / 203
    if Path(a.library).is_dir() and Path(a.cache).is_dir():
        emb, q_real, n_pieces = real_index_data(Path(a.library), Path(a.cache), n_queries=len(q))
        spp = len(emb) / n_pieces
        for kind in ("exact", "ivf"):
            r = measure_index(f"real library ({n_pieces} pieces), {kind}", emb, q_real, kind=kind, exact_latency=False)
            out["rows"].append(r)
            print(_row(r), flush=True)
        r = measure_index(f"mixture, same size, ivf", sample_gmm(gmm, len(emb), seed=5), q_real, kind="ivf", exact_latency=False)
        out["rows"].append(r)
        print(_row(r), flush=True)
    out["snippets_per_piece"] = round(spp, 1)
    sizes = [("10 k snippets", 10_000), ("200 pieces", int(200 * spp)), ("1,000 pieces", int(1000 * spp)),
             ("1 M snippets", 1_000_000), ("10,000 pieces", int(10_000 * spp)), ("10 M snippets", 10_000_000)]
    for name, n in sizes:
        if n > a.max_snippets:
            continue
        emb = sample_gmm(gmm, n, seed=n % 1000)
        r = measure_index(f"{name} (mixture)", emb, q, exact_latency=n <= 1_000_000)
        out["rows"].append(r)
        print(_row(r), flush=True)
        del emb
    if a.max_snippets >= 1_000_000:
        rng = np.random.default_rng(3)
        emb = rng.standard_normal((1_000_000, q.shape[1]), dtype=np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        r = measure_index("1 M random unit vectors", emb, q, exact_latency=False)
        out["rows"].append(r)
        print(_row(r), flush=True)
    return out


def _row(r: dict) -> str:
    ivf = f"{r.get('nlist', '')}/{r.get('nprobe', '')}" if r["kind"] == "ivf" else ""
    return (f"| {r['name']} | {r['snippets']:,} | {r['kind']} {ivf} | {r['build_s']} | {r['memory_mb']} | "
            f"{r['ms_per_query_batch64_top10']:.3f} | {r['ms_per_query_single_top32']:.3f} | {r['recall_at_10']:.4f} | "
            f"{r['recall_at_32']:.4f} | {r.get('exact_ms_per_query_single_top32', '')} |")


INDEX_HEADER = ("| library | snippets | index (nlist/nprobe) | build s | memory MB | ms/query, batch 64, top-10 | "
                "ms/query, single, top-32 | recall@10 | recall@32 | exact: ms/query single |\n|---|---|---|---|---|---|---|---|---|---|")


def markdown(res: dict) -> str:
    lines = ["# Library benchmark", "", f"Machine: {res['machine']}; {res['date']}.", ""]
    ing = res.get("ingest", {})
    if ing:
        lines += ["## Ingest (default ensemble, all cores)", "",
                  "| workload | pieces | pages | snippets | pages/min | CPU s/page | pages/min, idle cores (bound) | snippets/s (embedding) "
                  "| s/page: pages | embed | rest | peak RSS MB | load avg |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for key in ("engraved", "scans"):
            if key in ing:
                r = ing[key]
                sp = r["s_per_page"]
                lines.append(f"| {key} | {r['pieces']} | {r['pages']} | {r['snippets']} | **{r['pages_per_min']}** | {r['cpu_s_per_page']} | "
                             f"{r['pages_per_min_idle_cores_bound']} | {r['snippets_per_s']} | "
                             f"{sp['pages']} | {sp['embed']} | {sp['rest']} | {r['peak_rss_mb']} | {r['load_avg'][0]} |")
        if "settings" in ing:
            lines += ["", "Settings (engraved subset):", "", "| threads | batch | hop px | pages/min | CPU s/page | snippets/s | load avg |",
                      "|---|---|---|---|---|---|---|"]
            for r in ing["settings"]:
                lines.append(f"| {r['threads']} | {r['batch']} | {r['hop_px']} | {r['pages_per_min']} | {r['cpu_s_per_page']} | "
                             f"{r['snippets_per_s']} | {r['load_avg'][0]} |")
        if "cli_one_piece" in ing:
            c = ing["cli_one_piece"]
            lines += ["", f"One `scorestream library add` process ({c['pages']} pages, start-up and model load included): {c['seconds']} s."]
        lines.append("")
    idx = res.get("index", {})
    if idx:
        lines += ["## Snippet index (bl1_2s columns, 32-d; one core; real audio-window queries)", "",
                  f"Exact search up to {idx['exact_max']:,} snippets, IVF-Flat above; {idx['snippets_per_piece']} snippets per piece.", "",
                  INDEX_HEADER] + [_row(r) for r in idx["rows"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--library", default=str(REPO / "data" / "lib_test"), help="a real library (the corpus test split's)")
    ap.add_argument("--cache", default=str(REPO / "data" / "eval_cache"), help="audio-window embeddings of the corpus takes")
    ap.add_argument("--corpus", default=str(REPO / "data" / "corpus"), help="built corpus (page PNGs of the test split)")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"), help="shared data (joplin scans)")
    ap.add_argument("--pieces", type=int, default=20, help="engraved corpus pieces to ingest (0: skip)")
    ap.add_argument("--scans", type=int, default=3, help="Joplin scan PDFs to ingest (0: skip)")
    ap.add_argument("--no-settings", dest="settings", action="store_false", help="skip the threads/batch comparison")
    ap.add_argument("--max-snippets", type=int, default=10_000_000, help="largest index size")
    ap.add_argument("--no-index", action="store_true")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--write-index-fixture", action="store_true", help="write tests/fixtures/index_realistic.npz and stop")
    a = ap.parse_args(argv)
    if a.write_index_fixture:
        print(json.dumps(write_index_fixture(Path(a.library), Path(a.cache)), indent=1))
        return 0
    t0 = time.time()
    res = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
           "date": time.strftime("%Y-%m-%d"), "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]}
    print("ingest …", flush=True)
    res["ingest"] = run_ingest(a)
    if not a.no_index:
        print("index …\n" + INDEX_HEADER, flush=True)
        res["index"] = run_index(a)
    res["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    res["seconds"] = round(time.time() - t0, 1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "library.json").write_text(json.dumps(res, indent=1))
    md = markdown(res)
    (out / "library.md").write_text(md)
    print("\n" + md)
    ing = res["ingest"].get("engraved")
    if ing and ing["pages_per_min"] < TARGET_PAGES_PER_MIN:
        print(f"below target: {ing['pages_per_min']} < {TARGET_PAGES_PER_MIN} pages/min", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
