"""Compiled loops (numba) of PLAID's CPU search: centroid interaction, residual decoding, a whole query.

Each kernel walks short runs (an inverted list's documents, a document's 16 token centroids, a
code row's residual bytes), where numpy and torch pay a call, and temporaries, per run or per
query token. ``plaid_query`` runs PLAID's stages 1-4 for one query in one call without the GIL
(``nogil``): a batch's query threads then run side by side on every core, where a stage per numpy
or torch call had them queue for the GIL between calls (on 16 cores the GIL was held all the time
and the threads waited ~75% of theirs). ``cache=True`` keeps the machine code beside this module
(or in numba's user cache), so only the first search of an installation compiles.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def _nth_largest(values: np.ndarray, n: int) -> np.float32:
    """The ``n``-th largest of ``values`` (1 <= n <= len): a min-heap of the best n, most values one comparison."""
    heap = np.empty(n, np.float32)
    heap[:] = values[:n]
    for start in range(n // 2 - 1, -1, -1):
        _sift_down(heap, start)
    for j in range(n, len(values)):
        if values[j] > heap[0]:
            heap[0] = values[j]
            _sift_down(heap, 0)
    return heap[0]


@numba.njit(nogil=True, cache=True)
def _sift_down(heap: np.ndarray, at: int) -> None:
    n = len(heap)
    while True:
        low, left = at, 2 * at + 1
        if left < n and heap[left] < heap[low]:
            low = left
        if left + 1 < n and heap[left + 1] < heap[low]:
            low = left + 1
        if low == at:
            return
        heap[at], heap[low] = heap[low], heap[at]
        at = low


@numba.njit(nogil=True, cache=True)
def probe_floors(qc: np.ndarray, probe: int, t_cs: float) -> np.ndarray:
    """float32 (query tokens,): the best score each query token skips when it probes its ``probe`` best
    centroids (the (probe + 1)-th best of its row of ``qc``; the row's minimum when it probes every
    centroid), at least ``t_cs`` (-inf: no threshold). Token i reads the lists of centroids above its floor."""
    n_q, n_c = qc.shape
    floors = np.empty(n_q, np.float32)
    for i in range(n_q):
        floors[i] = _nth_largest(qc[i], probe + 1) if probe < n_c else qc[i].min()
        floors[i] = max(floors[i], np.float32(t_cs))
    return floors


@numba.njit(nogil=True, cache=True)
def probed_totals(qc: np.ndarray, floors: np.ndarray, ivf_offsets: np.ndarray, ivf_docs: np.ndarray,
                  n_docs: int) -> np.ndarray:
    """float32 (n_docs,): ``sum_i max_c (qc[i, c] - floors[i])`` over the centroids c above token i's floor whose
    list (``ivf_offsets`` / ``ivf_docs``, CSR) holds the document; 0 for a document no list read holds.

    Each token's best gain per document is kept in ``gain`` and added to the total once, in token order.
    """
    n_q, n_c = qc.shape
    total = np.zeros(n_docs, np.float32)
    gain = np.zeros(n_docs, np.float32)
    touched = np.empty(n_docs, np.int32)
    for i in range(n_q):
        m = 0
        for c in range(n_c):
            a = qc[i, c] - floors[i]
            if a <= 0:
                continue
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
def centroid_maxsum(qc_t: np.ndarray, cids: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """float32 (documents,): ``sum_i max_j qc_t[cids_j, i]`` over each document's run ``starts[d]:ends[d]`` of
    token centroid ids (0 for an empty run). ``qc_t`` (centroids, query tokens): the query's centroid scores."""
    n_docs, n_q = len(starts), qc_t.shape[1]
    out = np.zeros(n_docs, np.float32)
    best = np.empty(n_q, np.float32)
    for d in range(n_docs):
        lo, hi = starts[d], ends[d]
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


@numba.njit(nogil=True, cache=True, fastmath=True)
def _decode_row(centroid: np.ndarray, packed: np.ndarray, table: np.ndarray, out: np.ndarray) -> None:
    """``out = normalise(centroid + residual)``, the residual read byte by byte off ``table`` (bytes, 256, values
    per byte): byte j holding b stands for values ``table[j, b]``, side by side."""
    dim = len(out)
    per = table.shape[2]
    for j in range(table.shape[0]):
        b = packed[j]
        for p in range(per):
            d = j * per + p
            if d < dim:
                out[d] = centroid[d] + table[j, b, p]
    norm = np.float32(0)
    for d in range(dim):
        norm += out[d] * out[d]
    scale = np.float32(1) / max(np.sqrt(norm), np.float32(1e-12))
    for d in range(dim):
        out[d] *= scale


@numba.njit(nogil=True, cache=True)
def decode_residuals(ids: np.ndarray, packed: np.ndarray, centroids: np.ndarray, table: np.ndarray,
                     out: np.ndarray) -> None:
    """``out[t] = normalise(centroids[ids[t]] + residual_t)`` for every code row t (``_decode_row``)."""
    for t in range(len(ids)):
        _decode_row(centroids[ids[t]], packed[t], table, out[t])


@numba.njit(nogil=True, cache=True)
def best_in_order(values: np.ndarray, count: int) -> np.ndarray:
    """Positions of the ``count`` largest ``values``, ascending; ties at the cut go to the lowest positions."""
    n = len(values)
    if n <= count:
        return np.arange(n)
    cut = np.partition(values, n - count)[n - count]
    keep = np.empty(count, np.int64)
    m = 0
    for j in range(n):
        if values[j] > cut:
            keep[m] = j
            m += 1
    for j in range(n):
        if m == count:
            break
        if values[j] == cut:
            keep[m] = j
            m += 1
    return np.sort(keep)


@numba.njit(nogil=True, cache=True)
def plaid_query(query: np.ndarray, qc: np.ndarray, probe: int, t_cs: float, ndocs: int, final: int, k: int,
                ivf_offsets: np.ndarray, ivf_docs: np.ndarray, doc_offsets: np.ndarray, token_cids: np.ndarray,
                codes: np.ndarray, id_size: int, centroids: np.ndarray, table: np.ndarray,
                ) -> tuple[np.ndarray, np.ndarray]:
    """PLAID's four stages for one query (``qc``: its scores against every centroid): the best ``k`` documents by
    exact MaxSim over their decompressed tokens, best first, ties to the lowest id: (scores, ids), at most k.

    1-2: ``probed_totals`` over the lists of each token's ``probe`` best centroids, best ``ndocs`` kept;
    3: ``centroid_maxsum`` over every token of those, best ``final`` kept; 4: their code rows decoded a document
    at a time (into one buffer) and scored by one small product each. Call with BLAS at one thread.
    """
    n_docs = len(doc_offsets) - 1
    total = probed_totals(qc, probe_floors(qc, probe, t_cs), ivf_offsets, ivf_docs, n_docs)
    cand = np.flatnonzero(total)
    cand = cand[best_in_order(total[cand], ndocs)]
    if len(cand) > final:
        qc_t = np.ascontiguousarray(qc.T)
        approx = centroid_maxsum(qc_t, token_cids, doc_offsets[cand], doc_offsets[cand + 1])
        cand = cand[best_in_order(approx, final)]
    exact = np.empty(len(cand), np.float32)
    longest = 0
    for d in cand:
        longest = max(longest, doc_offsets[d + 1] - doc_offsets[d])
    tokens = np.empty((longest, query.shape[1]), np.float32)
    query_t = np.ascontiguousarray(query.T)
    for j, d in enumerate(cand):
        lo, n = doc_offsets[d], doc_offsets[d + 1] - doc_offsets[d]
        for t in range(n):
            _decode_row(centroids[token_cids[lo + t]], codes[lo + t, id_size:], table, tokens[t])
        sims = np.dot(tokens[:n], query_t)  # (document tokens, query tokens): BLAS, as the exact scorer
        s = np.float32(0)
        for i in range(sims.shape[1]):
            s += sims[:, i].max()
        exact[j] = s
    order = np.argsort(-exact, kind="mergesort")[:k]  # stable: equal scores keep the lower id first
    return exact[order], cand[order]
