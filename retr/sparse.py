"""Sparse vocabulary-space vectors, the representation of the ``sparse`` and ``multi-sparse`` kinds.

One CSR matrix over a vocabulary: row ``i`` is text ``i`` (kind ``sparse``: SPLADE, any
term -> weight vector), or, with ``offsets``, rows ``offsets[i]:offsets[i+1]`` are the
token vectors of text ``i`` (kind ``multi-sparse``: SLIM). Columns are term ids;
``vocab[j]`` is the term a Lucene index stores for column ``j``. Pooling and integer
quantisation are small vectorised functions over the CSR arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from retr.errors import RetrError
from retr.storage import load_array, save_array


def _csr(data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, n_cols: int) -> Any:
    from scipy.sparse import csr_matrix

    return csr_matrix((data.astype(np.float32, copy=False), indices, indptr), shape=(len(indptr) - 1, n_cols))


@dataclass(frozen=True)
class SparseVectors:
    """Non-negative sparse vectors over ``vocab`` (a scipy CSR matrix), optionally grouped per text."""

    matrix: Any  # scipy.sparse.csr_matrix (rows, len(vocab)) float32
    vocab: Sequence[str]
    offsets: np.ndarray | None = None  # int64 (texts + 1,) for token-level vectors

    def __post_init__(self) -> None:
        if self.matrix.shape[1] != len(self.vocab):
            raise RetrError(f"sparse vectors have {self.matrix.shape[1]} columns but a vocabulary of {len(self.vocab)}")
        data = self.matrix.data
        if len(data) and (not np.isfinite(data).all() or data.min() < 0):
            raise RetrError("sparse vectors must hold finite, non-negative weights")
        if self.offsets is not None and (self.offsets[0] != 0 or self.offsets[-1] != self.matrix.shape[0]):
            raise RetrError("sparse token offsets must start at 0 and end at the number of rows")

    def __len__(self) -> int:
        return self.matrix.shape[0] if self.offsets is None else len(self.offsets) - 1

    @classmethod
    def from_dicts(cls, vectors: Sequence[Mapping[str, float]], vocab: Sequence[str] | None = None) -> "SparseVectors":
        """Build from ``{term: weight}`` dicts; the vocabulary is ``vocab`` or the sorted terms seen."""
        if vocab is None:
            vocab = sorted({term for vector in vectors for term in vector})
        column = {term: j for j, term in enumerate(vocab)}
        indptr, indices, data = [0], [], []
        for i, vector in enumerate(vectors):
            for term, weight in vector.items():
                if term not in column:
                    raise RetrError(f"vector {i}: term {term!r} is not in the vocabulary")
                if weight:
                    indices.append(column[term])
                    data.append(weight)
            indptr.append(len(indices))
        return cls(_csr(np.asarray(data, dtype=np.float32), np.asarray(indices, dtype=np.int32),
                        np.asarray(indptr, dtype=np.int64), len(vocab)), vocab)

    def to_dicts(self) -> list[dict[str, float]]:
        """One ``{term: weight}`` dict per row."""
        m = self.matrix
        return [
            {self.vocab[j]: float(w) for j, w in zip(m.indices[m.indptr[r]: m.indptr[r + 1]],
                                                     m.data[m.indptr[r]: m.indptr[r + 1]])}
            for r in range(m.shape[0])
        ]


def as_sparse(reps: Any, what: str, grouped: bool = False) -> SparseVectors:
    """``reps`` as SparseVectors (dicts are converted), or a clear error."""
    if not isinstance(reps, SparseVectors):
        if grouped:
            raise RetrError(f"{what}: expected token-level SparseVectors (kind multi-sparse), got {type(reps).__name__}")
        if isinstance(reps, Sequence) and all(isinstance(r, Mapping) for r in reps):
            return SparseVectors.from_dicts(reps)
        raise RetrError(f"{what}: expected SparseVectors or a list of {{term: weight}} dicts, got {type(reps).__name__}")
    if grouped != (reps.offsets is not None):
        raise RetrError(f"{what}: expected {'token-level' if grouped else 'one-per-text'} sparse vectors")
    return reps


def pool(matrix: Any, offsets: np.ndarray, how: str) -> Any:
    """(groups, V) CSR: rows ``offsets[g]:offsets[g+1]`` of ``matrix`` combined per column by ``max`` or ``sum``."""
    coo = matrix.tocoo()
    group = np.searchsorted(offsets, coo.row, side="right") - 1
    keys = group.astype(np.int64) * matrix.shape[1] + coo.col
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], coo.data[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.zeros(0, np.int64)
    reduce = {"max": np.maximum, "sum": np.add}[how]
    pooled = reduce.reduceat(values, starts) if len(keys) else values
    unique = keys[starts]
    rows, cols = unique // matrix.shape[1], unique % matrix.shape[1]
    indptr = np.searchsorted(rows, np.arange(len(offsets)), side="left").astype(np.int64)
    return _csr(pooled, cols.astype(np.int32), indptr, matrix.shape[1])


def top_terms(matrix: Any, k: int) -> Any:
    """Keep the ``k`` largest entries of each row (all of them when ``k`` is 0)."""
    lengths = np.diff(matrix.indptr)
    if k <= 0 or lengths.max(initial=0) <= k:
        return matrix
    row = np.repeat(np.arange(matrix.shape[0]), lengths)
    order = np.lexsort((-matrix.data, row))  # by row, heaviest first
    rank = np.arange(len(order)) - np.repeat(matrix.indptr[:-1], lengths)
    keep = np.sort(order[rank < k])
    kept = np.bincount(row[keep], minlength=matrix.shape[0])
    indptr = np.concatenate([[0], np.cumsum(kept)]).astype(np.int64)
    return _csr(matrix.data[keep], matrix.indices[keep], indptr, matrix.shape[1])


def quantize(matrix: Any, scale: float) -> Any:
    """Integer impacts: ``round(scale * w)``, zeros dropped (``scale`` 0 keeps the float weights)."""
    if scale <= 0:
        return matrix
    out = matrix.copy()
    out.data = np.rint(out.data * scale).astype(np.float32)
    out.eliminate_zeros()
    return out


def is_integer(matrix: Any) -> bool:
    return bool(np.all(matrix.data == np.rint(matrix.data)))


def to_pairs(matrix: Any) -> list[np.ndarray]:
    """Each row as an (nnz, 2) float32 array of [term id, weight]: the form the embedding cache stores."""
    return [np.stack([matrix.indices[a:b].astype(np.float32), matrix.data[a:b].astype(np.float32)], axis=1)
            for a, b in zip(matrix.indptr[:-1], matrix.indptr[1:])]


def from_pairs(rows: Sequence[np.ndarray], n_cols: int) -> Any:
    """The CSR matrix whose rows ``to_pairs`` gave (term ids are exact in float32 below 2**24)."""
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    pairs = np.concatenate(rows) if len(rows) else np.zeros((0, 2), np.float32)
    return _csr(pairs[:, 1], pairs[:, 0].astype(np.int32), indptr, n_cols)


def align(vectors: SparseVectors, vocab: Sequence[str]) -> Any:
    """``vectors.matrix`` with its columns renumbered to ``vocab``'s; terms ``vocab`` lacks are dropped."""
    if vectors.vocab is vocab or list(vectors.vocab) == list(vocab):
        return vectors.matrix
    column = {term: j for j, term in enumerate(vocab)}
    mapping = np.array([column.get(term, -1) for term in vectors.vocab], dtype=np.int64)
    coo = vectors.matrix.tocoo()
    cols = mapping[coo.col]
    keep = cols >= 0
    from scipy.sparse import csr_matrix

    return csr_matrix((coo.data[keep], (coo.row[keep], cols[keep])), shape=(coo.shape[0], len(vocab)), dtype=np.float32)


@dataclass(frozen=True)
class CsrArrays:
    """A CSR matrix's three arrays as stored: int64 row pointers, uint16 term ids (int32 past 65,536 terms),
    and float32 or float16 weights (scipy has no float16, so rows are gathered into float32 on demand)."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    n_cols: int

    @classmethod
    def of(cls, matrix: Any, weights: Any = np.float32) -> "CsrArrays":
        index_type = np.uint16 if matrix.shape[1] <= 1 << 16 else np.int32
        return cls(matrix.indptr.astype(np.int64), matrix.indices.astype(index_type), matrix.data.astype(weights),
                   matrix.shape[1])

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def rows(self, rows: np.ndarray | None = None) -> Any:
        """The given rows (all by default) as a float32 scipy CSR matrix."""
        if rows is None:
            return _csr(self.data, self.indices.astype(np.int32), self.indptr, self.n_cols)
        from retr.scoring.maxsim import token_rows  # the same segment gather as token matrices

        positions, indptr = token_rows(self.indptr, np.asarray(rows, dtype=np.int64))
        return _csr(self.data[positions], self.indices[positions].astype(np.int32), indptr, self.n_cols)

    @classmethod
    def join(cls, blocks: Sequence["CsrArrays"]) -> "CsrArrays":
        """The rows of ``blocks`` one after the other (one copy of each array)."""
        starts = np.cumsum([0] + [int(b.indptr[-1]) for b in blocks[:-1]])
        indptr = np.concatenate([blocks[0].indptr[:1]] + [b.indptr[1:] + s for b, s in zip(blocks, starts)])
        return cls(indptr, np.concatenate([b.indices for b in blocks]), np.concatenate([b.data for b in blocks]),
                   blocks[0].n_cols)

    def save(self, directory: Path, stem: str) -> None:
        for part in ("indptr", "indices", "data"):
            save_array(directory / f"{stem}.{part}.npy", getattr(self, part))

    @classmethod
    def load(cls, directory: Path, stem: str, n_rows: int, n_cols: int) -> "CsrArrays":
        """The arrays ``save`` wrote (memory-mapped), checked against the expected shape."""
        indptr, indices, data = (load_array(directory / f"{stem}.{part}.npy") for part in ("indptr", "indices", "data"))
        if (indptr.ndim != 1 or len(indptr) != n_rows + 1 or indptr[0] != 0 or indptr[-1] != len(indices)
                or len(indices) != len(data) or (len(indices) and int(indices.max()) >= n_cols)):
            raise RetrError(f"{directory}: the {stem} sparse arrays are inconsistent ({n_rows} rows expected); "
                            "rebuild the index")
        return cls(indptr, indices, data, n_cols)
