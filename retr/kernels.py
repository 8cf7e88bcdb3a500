"""Compiled loops (numba) of PLAID's CPU search: centroid interaction and residual decoding.

Each kernel walks short runs (an inverted list's documents, a document's 16 token centroids, a
code row's residual bytes), where numpy and torch pay a call, and temporaries, per run or per
query token and hold the GIL between calls. Compiled without the GIL (``nogil``), a batch's query
threads run them side by side on every core. ``cache=True`` keeps the machine code beside this
module (or in numba's user cache), so only the first search of an installation compiles.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def probed_totals(best: np.ndarray, above: np.ndarray, ivf_offsets: np.ndarray, ivf_docs: np.ndarray,
                  n_docs: int) -> np.ndarray:
    """float32 (n_docs,): ``sum_i max_p above[i, p]`` over the probes p of query token i whose list holds
    the document, 0 for a document no list holds; probes with ``above <= 0`` are not read.

    ``best`` (tokens, probes): the centroid each token probes; ``ivf_offsets`` / ``ivf_docs``: the
    inverted lists as CSR. Each token's best gain per document is kept in ``gain`` and added to the
    total once, in token order (the same float32 sums as adding token by token).
    """
    n_tokens, probes = best.shape
    longest = 0
    for i in range(n_tokens):
        size = 0
        for p in range(probes):
            if above[i, p] > 0:
                size += ivf_offsets[best[i, p] + 1] - ivf_offsets[best[i, p]]
        longest = max(longest, size)
    total = np.zeros(n_docs, np.float32)
    gain = np.zeros(n_docs, np.float32)
    touched = np.empty(longest, np.int32)
    for i in range(n_tokens):
        m = 0
        for p in range(probes):
            a = above[i, p]
            if a <= 0:
                continue
            c = best[i, p]
            for j in range(ivf_offsets[c], ivf_offsets[c + 1]):
                d = ivf_docs[j]
                if gain[d] == 0:
                    touched[m] = d
                    m += 1
                    gain[d] = a
                elif gain[d] < a:
                    gain[d] = a
        for j in range(m):
            d = touched[j]
            total[d] += gain[d]
            gain[d] = 0
    return total


@numba.njit(nogil=True, cache=True)
def centroid_maxsum(qc_t: np.ndarray, cids: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """float32 (documents,): ``sum_i max_j qc_t[cids_j, i]`` over each document's run ``seg[d]:seg[d+1]`` of
    token centroid ids (0 for an empty run). ``qc_t`` (centroids, query tokens): the query's centroid scores."""
    n_docs, n_q = len(seg) - 1, qc_t.shape[1]
    out = np.zeros(n_docs, np.float32)
    best = np.empty(n_q, np.float32)
    for d in range(n_docs):
        lo, hi = seg[d], seg[d + 1]
        if hi == lo:
            continue
        best[:] = qc_t[cids[lo]]
        for t in range(lo + 1, hi):
            row = qc_t[cids[t]]
            for i in range(n_q):
                if row[i] > best[i]:
                    best[i] = row[i]
        s = np.float32(0)
        for i in range(n_q):
            s += best[i]
        out[d] = s
    return out


@numba.njit(nogil=True, cache=True)
def decode_residuals(ids: np.ndarray, packed: np.ndarray, centroids: np.ndarray, table: np.ndarray,
                     out: np.ndarray) -> None:
    """``out[t] = normalise(centroids[ids[t]] + residual_t)``, the residual read byte by byte off ``table``
    (bytes, 256, values per byte): byte j of a row holding b stands for values ``table[j, b]``, side by side."""
    dim = out.shape[1]
    n_bytes, per = table.shape[0], table.shape[2]
    for t in range(len(ids)):
        c = ids[t]
        for j in range(n_bytes):
            b = packed[t, j]
            for p in range(per):
                d = j * per + p
                if d < dim:
                    out[t, d] = centroids[c, d] + table[j, b, p]
        norm = np.float32(0)
        for d in range(dim):
            norm += out[t, d] * out[t, d]
        scale = np.float32(1) / max(np.sqrt(norm), np.float32(1e-12))
        for d in range(dim):
            out[t, d] *= scale
