"""Exact late-interaction search: every document's token vectors, scored by MaxSim.

``S(q, d) = sum_i max_j <q_i, d_j>``. All token vectors live in one (N_tok, dim)
matrix; document ``i`` owns rows ``offsets[i]:offsets[i+1]``. Both are ``.npy`` files,
memory-mapped on load. Search is exhaustive, so it is the reference for approximate
multi-vector indexes (PLAID, MUVERA).

Tokens are float16 by default (``dtype=float16``). The matrix products run in float32, so
each chunk of tokens is widened first, through faiss's SIMD float16 decoder (about 3x
numpy's cast here); for one query at a time that is still most of the work, and
``dtype=float32`` doubles the storage to skip it (batches of queries share one widening per
chunk, so it matters little there).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from retr.errors import RetrError
from retr.progress import progress_bar
from retr.storage import load_array, save_array

TOKENS_FILE, OFFSETS_FILE = "tokens.npy", "offsets.npy"
DTYPES = ("float16", "float32")
CELLS = 1 << 24  # similarity-matrix entries computed at once (64 MB of float32)
GATHER = 2048  # float32 token rows gathered at once when scoring a subset (stays in cache for the product)
QUERY_GROUP = 64  # queries scored together in one pass over the documents


@functools.lru_cache(maxsize=8)
def _float16_decoder(dim: int) -> Any:
    import faiss

    return faiss.ScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16)


def widen(tokens: np.ndarray) -> np.ndarray:
    """float32 token rows: float16 ones decoded by faiss (SIMD, multi-threaded), others cast by numpy."""
    if tokens.dtype != np.float16 or tokens.size == 0:
        return np.asarray(tokens, dtype=np.float32)
    rows = np.ascontiguousarray(tokens)
    return _float16_decoder(rows.shape[1]).decode(rows.view(np.uint8))


def maxsim_batch(
    queries: Sequence[np.ndarray], doc_tokens: np.ndarray, doc_offsets: np.ndarray, cells: int = CELLS,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """(nq, n_docs) float32 MaxSim scores of each query against each document; empty documents get -inf.

    All query tokens are multiplied with a chunk of document tokens at once (one matrix
    product), reduced to a max per document segment (``np.maximum.reduceat``) and summed
    per query (``np.add.reduceat``). Chunks end on document boundaries and hold about
    ``cells / total query tokens`` tokens, which bounds memory. With ``rows``, the documents
    are those rows of ``doc_tokens`` (``doc_offsets`` index into ``rows``); float32 rows are
    gathered ``GATHER`` at a time so each chunk is still in cache for its product, float16
    rows in whole chunks (each faiss widening call costs milliseconds of fixed overhead).
    """
    offsets = np.asarray(doc_offsets, dtype=np.int64)
    n_docs = len(offsets) - 1
    q_lens = np.array([len(q) for q in queries], dtype=np.int64)
    if len(queries) == 0:
        return np.zeros((0, n_docs), dtype=np.float32)
    if (q_lens == 0).any():
        raise RetrError("a query has no token vectors")
    q_all = np.concatenate([np.asarray(q, dtype=np.float32) for q in queries])
    q_starts = np.concatenate([[0], np.cumsum(q_lens)[:-1]])
    out = np.full((len(queries), n_docs), -np.inf, dtype=np.float32)
    chunk = max(1, cells // len(q_all))
    if rows is not None and doc_tokens.dtype == np.float32:
        chunk = min(chunk, GATHER)
    d0 = 0
    while d0 < n_docs:
        # the documents whose tokens fit in one chunk (at least one document)
        d1 = int(np.searchsorted(offsets, offsets[d0] + chunk, side="right")) - 1
        d1 = min(max(d1, d0 + 1), n_docs)
        t0, t1 = int(offsets[d0]), int(offsets[d1])
        if t1 > t0:
            block = doc_tokens[t0:t1] if rows is None else doc_tokens[rows[t0:t1]]
            sims = q_all @ widen(block).T  # (sum q_len, tokens)
            lengths = np.diff(offsets[d0 : d1 + 1])
            nonempty = np.flatnonzero(lengths > 0)
            best = np.maximum.reduceat(sims, offsets[d0:d1][nonempty] - t0, axis=1)  # (sum q_len, docs)
            out[:, d0 + nonempty] = np.add.reduceat(best, q_starts, axis=0)
        d0 = d1
    return out


def maxsim_scores(
    query: np.ndarray, doc_tokens: np.ndarray, doc_offsets: np.ndarray, cells: int = CELLS,
) -> np.ndarray:
    """(n_docs,) float32 MaxSim scores of one query (q_len, dim) against every document."""
    return maxsim_batch([query], doc_tokens, doc_offsets, cells)[0]


def maxsim_reference(query: np.ndarray, doc_tokens: np.ndarray, doc_offsets: np.ndarray) -> np.ndarray:
    """The same scores with plain Python loops over documents and tokens (slow; for tests)."""
    q = np.asarray(query, dtype=np.float64)
    scores = np.empty(len(doc_offsets) - 1, dtype=np.float64)
    for d in range(len(scores)):
        tokens = np.asarray(doc_tokens[doc_offsets[d] : doc_offsets[d + 1]], dtype=np.float64)
        if len(tokens) == 0:
            scores[d] = -np.inf
            continue
        total = 0.0
        for qi in q:
            total += max(float(np.dot(qi, t)) for t in tokens)
        scores[d] = total
    return scores


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` per row of (nq, n) scores: (scores, ids), best first, ties by id, -1 / -inf padded."""
    nq, n = scores.shape
    top_scores = np.full((nq, k), -np.inf, dtype=np.float32)
    top_ids = np.full((nq, k), -1, dtype=np.int64)
    m = min(k, n)
    if m == 0:
        return top_scores, top_ids
    part = np.argpartition(-scores, m - 1, axis=1)[:, :m] if m < n else np.tile(np.arange(n), (nq, 1))
    for row in range(nq):
        cand = part[row]
        order = np.lexsort((cand, -scores[row, cand]))  # score descending, then id ascending
        ids = cand[order]
        ids = ids[np.isfinite(scores[row, ids])]  # empty documents never match
        top_ids[row, : len(ids)] = ids
        top_scores[row, : len(ids)] = scores[row, ids]
    return top_scores, top_ids


def token_rows(offsets: np.ndarray, doc_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Token rows of the given documents, concatenated, and the offsets of each document within them."""
    starts, ends = offsets[doc_ids], offsets[doc_ids + 1]
    lengths = ends - starts
    seg = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    rows = np.repeat(starts - seg[:-1], lengths) + np.arange(seg[-1], dtype=np.int64)
    return rows, seg


def as_token_matrices(reps: Any, dim: int | None, what: str) -> list[np.ndarray]:
    """A list of float32 (tokens, dim) matrices, or a clear error."""
    if isinstance(reps, np.ndarray) and reps.ndim == 2:
        raise RetrError(f"{what}: expected a list of (tokens, dim) matrices (multi-vector), got one matrix")
    out = []
    for i, rep in enumerate(reps):
        x = np.asarray(rep, dtype=np.float32)
        if x.ndim != 2:
            raise RetrError(f"{what}: item {i} has shape {x.shape}, expected (tokens, dim)")
        if dim is None:
            dim = x.shape[1]
        if x.shape[1] != dim:
            raise RetrError(f"{what}: item {i} has dimension {x.shape[1]}, the index holds dimension {dim}")
        if not np.isfinite(x).all():
            raise RetrError(f"{what}: item {i} contains NaN or infinity")
        out.append(x)
    return out


class ExactMultiVectorIndex:
    """Exhaustive MaxSim over float16 (or float32) token vectors: exact late-interaction search."""

    name = "maxsim"
    kind = "multi"

    def __init__(self, dtype: str = "float16") -> None:
        if dtype not in DTYPES:
            raise RetrError(f"maxsim: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.dtype = np.dtype(dtype)
        self.dim: int | None = None
        self._tokens: np.ndarray = np.zeros((0, 0), dtype=self.dtype)
        self._offsets: np.ndarray = np.zeros(1, dtype=np.int64)

    def config(self) -> dict[str, Any]:
        return {"dtype": self.dtype.name}

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def add(self, reps: Any) -> None:
        docs = as_token_matrices(reps, self.dim, f"adding to a {self.name} index")
        if not docs:
            return
        self.dim = docs[0].shape[1]
        lengths = np.array([len(d) for d in docs], dtype=np.int64)
        new = np.concatenate(docs).astype(self.dtype)
        if len(self._tokens) == 0:
            self._tokens = new
        else:
            self._tokens = np.concatenate([np.asarray(self._tokens), new])
        self._offsets = np.concatenate([self._offsets, self._offsets[-1] + np.cumsum(lengths)])

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self) == 0:
            raise RetrError("the index is empty: add documents before searching")
        qs = as_token_matrices(queries, self.dim, f"searching a {self.name} index")
        scores, ids = [], []
        with progress_bar(total=len(qs), desc=f"searching {self.name}", unit="query") as bar:
            for start in range(0, len(qs), QUERY_GROUP):
                group = qs[start : start + QUERY_GROUP]
                s, i = top_k(maxsim_batch(group, self._tokens, self._offsets), k)
                scores.append(s)
                ids.append(i)
                bar.update(len(group))
        if not qs:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return np.concatenate(scores), np.concatenate(ids)

    def rescore(self, query: np.ndarray, doc_ids: np.ndarray) -> np.ndarray:
        """Exact MaxSim of one query against the given documents only (candidates from a first stage)."""
        rows, sub_offsets = token_rows(self._offsets, np.asarray(doc_ids, dtype=np.int64))
        return maxsim_batch([query], self._tokens, sub_offsets, rows=rows)[0]

    def save(self, directory: Path) -> None:
        save_array(directory / TOKENS_FILE, np.asarray(self._tokens, dtype=self.dtype))
        save_array(directory / OFFSETS_FILE, self._offsets)

    @classmethod
    def load(cls, directory: Path, config: dict[str, Any], count: int) -> "ExactMultiVectorIndex":
        index = cls(**config)
        tokens, offsets = load_array(directory / TOKENS_FILE), load_array(directory / OFFSETS_FILE)
        if tokens.ndim != 2 or tokens.dtype != index.dtype or offsets.ndim != 1 or offsets.dtype != np.int64:
            raise RetrError(f"{directory}: token or offset arrays have the wrong shape or type; rebuild the index")
        if len(offsets) != count + 1 or offsets[0] != 0 or offsets[-1] != len(tokens):
            raise RetrError(
                f"{directory}: offsets describe {len(offsets) - 1} documents and {offsets[-1]} tokens, "
                f"the manifest says {count} documents and the file holds {len(tokens)} tokens; rebuild it"
            )
        index._tokens, index._offsets, index.dim = tokens, offsets, int(tokens.shape[1])
        return index
