"""Best-k selection over score rows, and the exact merge of several top-k lists (blocks, segments, shards)."""

from __future__ import annotations

import numpy as np


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` per row of (nq, n) scores: (scores, ids), best first, ties by id, -1 / -inf padded.

    Exact about ties: every entry equal to a row's k-th best score is considered, and the
    lowest ids win, so the answer does not depend on how the scores were partitioned.
    """
    nq, n = scores.shape
    top_scores = np.full((nq, k), -np.inf, dtype=np.float32)
    top_ids = np.full((nq, k), -1, dtype=np.int64)
    m = min(k, n)
    if m == 0:
        return top_scores, top_ids
    part = np.argpartition(-scores, m - 1, axis=1)[:, :m] if m < n else np.tile(np.arange(n), (nq, 1))
    for row in range(nq):
        values = scores[row]
        cand = part[row]
        if m < n:
            kth = values[cand].min()
            if np.count_nonzero(values == kth) > np.count_nonzero(values[cand] == kth):
                cand = np.flatnonzero(values >= kth)  # ties straddle the partition: take them all
        order = np.lexsort((cand, -values[cand]))[:m]  # score descending, then id ascending
        ids = cand[order]
        ids = ids[np.isfinite(values[ids])]  # empty documents (-inf) never match
        top_ids[row, : len(ids)] = ids
        top_scores[row, : len(ids)] = values[ids]
    return top_scores, top_ids


def merge_top_k(scores: list[np.ndarray], ids: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """One (nq, k) top-k from several (nq, k_i) ones whose ids are already global; ties by id."""
    all_scores = np.concatenate(scores, axis=1)
    all_ids = np.concatenate(ids, axis=1)
    nq = len(all_scores)
    out_scores = np.full((nq, k), -np.inf, dtype=np.float32)
    out_ids = np.full((nq, k), -1, dtype=np.int64)
    for row in range(nq):
        valid = all_ids[row] >= 0
        s, i = all_scores[row, valid], all_ids[row, valid]
        order = np.lexsort((i, -s))[:k]
        out_scores[row, : len(order)], out_ids[row, : len(order)] = s[order], i[order]
    return out_scores, out_ids
