"""Exhaustive sparse search: every document's term weights in one CSR matrix, scored by sparse dot products.

The exact reference for inverted indexes over the same vectors (scipy does the
products); documents sharing no term with the query never match, as in Lucene.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from retr.errors import RetrError
from retr.indexers.maxsim import top_k
from retr.sparse import CsrArrays, align, as_sparse
from retr.storage import StringArray

QUERY_GROUP = 256  # queries scored at once: bounds the dense (queries, documents) score block


class ExhaustiveSparseIndex:
    """Term weights in a CSR matrix (float32), searched by exact sparse dot products."""

    name = "csr"
    kind = "sparse"

    def __init__(self) -> None:
        self._matrix: Any = None
        self._vocab: list[str] | None = None

    def config(self) -> dict[str, Any]:
        return {}

    def __len__(self) -> int:
        return 0 if self._matrix is None else self._matrix.shape[0]

    def add(self, reps: Any) -> None:
        from scipy.sparse import csr_matrix, vstack

        vectors = as_sparse(reps, f"adding to a {self.name} index")
        if self._vocab is None:
            self._vocab = list(vectors.vocab)
        elif list(vectors.vocab) != self._vocab:
            grown = self._vocab + sorted(set(vectors.vocab) - set(self._vocab))
            m = self._matrix
            self._matrix = csr_matrix((m.data, m.indices, m.indptr), shape=(m.shape[0], len(grown)))
            self._vocab = grown
        new = align(vectors, self._vocab)
        self._matrix = new.tocsr() if self._matrix is None else vstack([self._matrix, new], format="csr")

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        if not len(self):
            raise RetrError("the index is empty: add documents before searching")
        q = align(as_sparse(queries, f"searching a {self.name} index"), self._vocab)
        docs_t = self._matrix.T.tocsr()
        scores, ids = [], []
        for start in range(0, q.shape[0], QUERY_GROUP):
            block = (q[start : start + QUERY_GROUP] @ docs_t).toarray().astype(np.float32)
            block[block <= 0] = -np.inf  # no shared term: no match
            s, i = top_k(block, k)
            scores.append(s)
            ids.append(i)
        if not scores:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return np.concatenate(scores), np.concatenate(ids)

    def save(self, directory: Path) -> None:
        CsrArrays.of(self._matrix).save(directory, "docs")
        StringArray.from_strings(self._vocab or []).save(directory, "vocab")

    @classmethod
    def load(cls, directory: Path, config: dict[str, Any], count: int) -> "ExhaustiveSparseIndex":
        index = cls(**config)
        index._vocab = list(StringArray.load(directory, "vocab"))
        index._matrix = CsrArrays.load(directory, "docs", count, len(index._vocab)).rows()
        return index
