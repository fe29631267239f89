"""Retrieval sanity of an ingested library: does our system detection lose against the corpus's
truth strips?

The paper's snippet retrieval, audio -> sheet: for every aligned onset of a test performance
(``p0``, the held-out timbre), the audio window centred on it is the query; the candidates
are the sheet snippets of all the pieces evaluated, every ``hop`` px along each piece's strip.
A query is a hit at rank r when the r-th nearest snippet is of the right piece and within one
hop of the true strip x. Two candidate sets, same queries, same model (``bl1_2s``, the
tracker's audio model: its columns of the library's embeddings):

* **library**: the snippets the library stores, cut from the strip it unrolled from the
  *detected* systems of the page images (``library import-corpus``). The truth x is the
  aligned notehead's page point mapped through the detected system that holds it (a point
  in no detected system is a miss);
* **truth strips**: snippets at the same hop cut from the corpus's own strip (unrolled from the
  engraver's layout, the training convention) and embedded here.

    python benchmarks/library_retrieval.py [--library data/lib_test] [--corpus data/corpus] [--pieces 40]

Writes ``benchmarks/results/library_retrieval.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scorestream.models.embedder import audio_windows_at  # noqa: E402
from scorestream.engine.engine import Engine  # noqa: E402
from scorestream.engine.library import Library, embed_strip, snippet_positions  # noqa: E402
from scorestream.models.corpus.reader import Corpus  # noqa: E402


def library_truth_x(pm, page: int, px: float, py: float) -> float | None:
    """Strip x (library strip) of page point (px, py) on 1-based ``page``: through the detected
    system whose box holds the point (vertically, with a margin of a quarter of its height)."""
    best = None
    for rec in pm.systems:
        if rec.page != page:
            continue
        x0, y0, x1, y1 = rec.bbox
        m = 0.25 * (y1 - y0)
        if y0 - m <= py <= y1 + m and x0 - 20 <= px <= x1 + 20:
            d = abs(py - (y0 + y1) / 2)
            if best is None or d < best[0]:
                best = (d, rec)
    if best is None:
        return None
    return float(best[1].segment.page_to_strip(px, py)[0])


def ranks(q: np.ndarray, cand: np.ndarray, owner: np.ndarray, xs: np.ndarray, piece: np.ndarray,
          truth_x: np.ndarray, tol: float) -> np.ndarray:
    """Rank (1-based) of the first candidate of the right piece within ``tol`` of the truth x."""
    out = np.full(len(q), np.inf)
    for s in range(0, len(q), 256):
        sim = q[s:s + 256] @ cand.T
        for i in range(sim.shape[0]):
            k = s + i
            if not np.isfinite(truth_x[k]):
                continue
            ok = (owner == piece[k]) & (np.abs(xs - truth_x[k]) <= tol)
            if not ok.any():
                continue
            best = sim[i, ok].max()
            out[k] = 1 + int((sim[i] > best).sum())
    return out


def summary(r: np.ndarray) -> dict:
    f = np.isfinite(r)
    rr = np.where(f, 1.0 / np.where(f, r, 1.0), 0.0)
    return {"queries": int(len(r)), "R@1": float(np.mean(r <= 1)), "R@5": float(np.mean(r <= 5)),
            "R@25": float(np.mean(r <= 25)), "MRR": float(rr.mean()), "median_rank": float(np.median(r)),
            "unmapped": int((~f).sum())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--library", default=str(REPO / "data" / "lib_test"))
    ap.add_argument("--corpus", default=str(REPO / "data" / "corpus"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--pieces", type=int, default=40, help="first N pieces of the split (sorted) that the library holds")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "library_retrieval"))
    a = ap.parse_args(argv)
    t0 = time.time()
    eng = Engine(Library.open(a.library))
    emb = eng.embedder                                # the tracker's audio model (bl1_2s)
    corpus = Corpus(a.corpus)
    ids = [p for p in sorted(corpus.piece_ids(a.split)) if p in eng.by_id][: a.pieces]
    hop = float(eng.pieces[0].hop_px)
    Q, P, TX_lib, TX_truth = [], [], [], []
    L_emb, L_own, L_x, T_emb, T_own, T_x = [], [], [], [], [], []
    for n, pid in enumerate(ids):
        cp = corpus.piece(pid)
        pm = eng.by_id[pid]
        spec, _ = cp.performance(0)
        pr = cp.pairs(0)
        q = emb.embed_audio(audio_windows_at(emb, spec, pr.frame))
        Q.append(q)
        P.append(np.full(len(q), n))
        TX_truth.append(pr.strip_x)
        TX_lib.append(np.array([np.nan if (x := library_truth_x(pm, int(p) + 1, float(px), float(py))) is None else x
                                for p, px, py in zip(pr.page, pr.page_x, pr.page_y)]))
        L_emb.append(pm.emb)
        L_own.append(np.full(pm.n, n))
        L_x.append(pm.strip_x)
        st = cp.strip(0)
        xs = snippet_positions(st.width, int(hop))
        T_emb.append(embed_strip(emb, st.image, xs))
        T_own.append(np.full(len(xs), n))
        T_x.append(xs.astype(np.float64))
        print(f"[{n + 1}/{len(ids)}] {pid}: {len(q)} queries, library {pm.n} / truth {len(xs)} snippets "
              f"({time.time() - t0:.0f} s)", flush=True)
    q = np.concatenate(Q)
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-8)
    piece = np.concatenate(P)

    def unit(x):
        x = np.concatenate(x).astype(np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)

    r_lib = ranks(q, unit(L_emb), np.concatenate(L_own), np.concatenate(L_x), piece, np.concatenate(TX_lib), hop)
    r_tru = ranks(q, unit(T_emb), np.concatenate(T_own), np.concatenate(T_x), piece, np.concatenate(TX_truth), hop)
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.machine(), "library_path": a.library, "split": a.split,
           "pieces": len(ids), "model": getattr(emb, "name", "?"), "hop_px": hop, "tolerance_px": hop,
           "candidates_library": int(sum(len(x) for x in L_x)), "candidates_truth": int(sum(len(x) for x in T_x)),
           "library": summary(r_lib), "truth_strips": summary(r_tru), "seconds": round(time.time() - t0, 1)}
    md = ["# Retrieval sanity: the library's detected systems vs the corpus's truth strips", "",
          f"`python benchmarks/library_retrieval.py --pieces {a.pieces}`, {res['date']}: {len(ids)} pieces of the {a.split} split, "
          f"performance p0 (held-out timbre), audio model {res['model']}, snippets every {hop:g} px, a hit within "
          f"{hop:g} px of the true strip x in the right piece.", "",
          "| candidates | snippets | queries | R@1 | R@5 | R@25 | MRR | median rank | truth point in no detected system |",
          "|---|---|---|---|---|---|---|---|---|"]
    for key, name in (("library", "library (detected systems)"), ("truth_strips", "corpus truth strips")):
        s = res[key]
        md.append(f"| {name} | {res['candidates_' + ('library' if key == 'library' else 'truth')]:,} | {s['queries']:,} | "
                  f"{100 * s['R@1']:.1f} % | {100 * s['R@5']:.1f} % | {100 * s['R@25']:.1f} % | {s['MRR']:.3f} | "
                  f"{s['median_rank']:g} | {s['unmapped']} |")
    text = "\n".join(md) + "\n"
    print(text)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out + ".json").write_text(json.dumps(res, indent=1, default=float))
    Path(a.out + ".md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
