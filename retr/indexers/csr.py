"""Exhaustive sparse search: every document's term weights in one CSR matrix, scored by sparse dot products.

The exact reference for inverted indexes over the same vectors (scipy does the
products); documents sharing no term with the query never match, as in Lucene.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from retr.errors import RetrError
from retr.scoring import top_k
from retr.sparse import CsrArrays, align, as_sparse
from retr.storage import StringArray

QUERY_GROUP = 256  # queries scored at once: bounds the dense (queries, documents) score block


class ExhaustiveSparseIndex:
    """Term weights in a CSR matrix (float32), searched by exact sparse dot products."""

    name = "csr"
    kind = "sparse"

    def __init__(self) -> None:
        self._blocks: list[Any] = []  # CSR blocks as added, stacked once when searched or saved
        self._rows = 0
        self._vocab: list[str] | None = None

    def config(self) -> dict[str, Any]:
        return {}

    def __len__(self) -> int:
        return self._rows

    @property
    def _matrix(self) -> Any:
        """All rows as one CSR matrix over the whole vocabulary (blocks stacked on first use)."""
        from scipy.sparse import csr_matrix, vstack

        if len(self._blocks) != 1 or self._blocks[0].shape[1] != len(self._vocab or ()):
            width = len(self._vocab or ())
            grown = [csr_matrix((b.data, b.indices, b.indptr), shape=(b.shape[0], width)) for b in self._blocks]
            self._blocks = [vstack(grown, format="csr") if grown else csr_matrix((0, width), dtype=np.float32)]
        return self._blocks[0]

    def add(self, reps: Any) -> None:
        vectors = as_sparse(reps, f"adding to a {self.name} index")
        if self._vocab is None:
            self._vocab = list(vectors.vocab)
        elif list(vectors.vocab) != self._vocab:  # new terms get new columns; earlier blocks widen when stacked
            self._vocab = self._vocab + sorted(set(vectors.vocab) - set(self._vocab))
        self._blocks.append(align(vectors, self._vocab).tocsr())
        self._rows += len(vectors)

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
        index._blocks = [CsrArrays.load(directory, "docs", count, len(index._vocab)).rows()]
        index._rows = count
        return index
