"""Cross-modal retrieval metrics (pure numpy).

Queries and candidates are L2-normalised embeddings; query i's true match is
candidate i.  Similarity is the cosine (dot product).  Ranks are 1-based: the
rank of the true match is 1 + the number of candidates strictly more similar
than it (ties resolved in the query's favour).
"""

from __future__ import annotations

import numpy as np

# Dorfer et al. (TISMIR 2018) / Balke et al. (2019): audio-to-sheet retrieval,
# MSMD synthetic test set.
PUBLISHED = {
    "BL1-2s": {"R@1": 19.1, "MRR": 0.31},
    "BL2-8s+AT": {"R@1": 66.7, "MRR": 0.75},
}


def retrieval_ranks(queries: np.ndarray, candidates: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """1-based rank of candidate i for query i (cosine similarity)."""
    q = np.asarray(queries, dtype=np.float32)
    c = np.asarray(candidates, dtype=np.float32)
    if q.ndim != 2 or c.ndim != 2 or q.shape != c.shape:
        raise ValueError(f"queries {q.shape} and candidates {c.shape} must both be (N, D)")
    n = q.shape[0]
    ranks = np.empty(n, dtype=np.int64)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        sims = q[s:e] @ c.T                                    # (b, N)
        true = sims[np.arange(e - s), np.arange(s, e)]
        ranks[s:e] = 1 + (sims > true[:, None]).sum(axis=1)
    return ranks


def metrics_from_ranks(ranks: np.ndarray) -> dict:
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ValueError("no ranks")
    return {
        "R@1": float(np.mean(ranks <= 1) * 100),
        "R@5": float(np.mean(ranks <= 5) * 100),
        "R@25": float(np.mean(ranks <= 25) * 100),
        "MRR": float(np.mean(1.0 / ranks)),
        "MR": float(np.median(ranks)),
        "n": int(ranks.size),
    }


def retrieval_metrics(queries: np.ndarray, candidates: np.ndarray) -> dict:
    """R@1, R@5, R@25 (percent), MRR, median rank MR, and n."""
    return metrics_from_ranks(retrieval_ranks(queries, candidates))


def both_directions(audio_emb: np.ndarray, sheet_emb: np.ndarray) -> dict:
    """{"A2S": audio queries vs sheet candidates, "S2A": the reverse}."""
    return {"A2S": retrieval_metrics(audio_emb, sheet_emb), "S2A": retrieval_metrics(sheet_emb, audio_emb)}


def error_breakdown(queries: np.ndarray, candidates: np.ndarray, groups: np.ndarray, chunk: int = 2048) -> dict:
    """Where the retrieval errors come from, given each pair's piece id ``groups``.

    * ``R@1_within_piece``: R@1 when only the query's own piece is searched
      (can the model tell positions within a piece apart?);
    * ``R@1_across_pieces``: R@1 when the other candidates of its own piece are
      left out (can it tell pieces apart?);
    * ``top1_wrong_same_piece`` / ``top1_wrong_other_piece``: percent of queries whose
      best-scoring candidate (when it scores above the true one) is in the same /
      another piece.
    """
    q = np.asarray(queries, np.float32)
    c = np.asarray(candidates, np.float32)
    g = np.asarray(groups).reshape(-1)
    n = q.shape[0]
    if g.shape[0] != n or c.shape[0] != n:
        raise ValueError(f"groups ({g.shape[0]}) must have one entry per pair ({n})")
    within = np.empty(n, np.int64)
    across = np.empty(n, np.int64)
    wrong_same = wrong_other = 0
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        sims = q[s:e] @ c.T
        rows = np.arange(e - s)
        true = sims[rows, np.arange(s, e)]
        better = sims > true[:, None]
        same = g[s:e, None] == g[None, :]
        within[s:e] = 1 + (better & same).sum(1)
        across[s:e] = 1 + (better & ~same).sum(1)
        top = sims.argmax(1)
        wrong = sims[rows, top] > true
        top_same = g[top] == g[s:e]
        wrong_same += int((wrong & top_same).sum())
        wrong_other += int((wrong & ~top_same).sum())
    return {
        "R@1_within_piece": float(np.mean(within == 1) * 100),
        "R@1_across_pieces": float(np.mean(across == 1) * 100),
        "top1_wrong_same_piece": 100.0 * wrong_same / n,
        "top1_wrong_other_piece": 100.0 * wrong_other / n,
    }


def format_table(results: dict, name: str = "ours", published: dict | None = None) -> str:
    """Markdown table: our A2S/S2A rows beside the published audio-to-sheet numbers."""
    published = PUBLISHED if published is None else published
    lines = [
        "| model | direction | R@1 | R@5 | R@25 | MRR | MR | candidates |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for direction in ("A2S", "S2A"):
        if direction in results:
            m = results[direction]
            lines.append(
                f"| {name} | {direction} | {m['R@1']:.1f} | {m['R@5']:.1f} | {m['R@25']:.1f} | "
                f"{m['MRR']:.3f} | {m['MR']:g} | {m['n']} |"
            )
    for pname, m in published.items():
        lines.append(f"| {pname} (published, MSMD synth.) | A2S | {m['R@1']:.1f} | – | – | {m['MRR']:.2f} | – | – |")
    return "\n".join(lines)
