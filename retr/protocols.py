"""The three small protocols every part implements.

Representations come in kinds, and an index accepts one kind:

- ``dense``: ``np.ndarray`` float32 of shape (n, dim), one vector per text
- ``multi``: a list of (tokens, dim) float arrays, one per text
- ``sparse``: ``retr.sparse.SparseVectors``, one CSR row over a vocabulary per text
  (indexes also take a list of ``{term: weight}`` dicts)
- ``multi-sparse``: ``SparseVectors`` with ``offsets``: a set of sparse token vectors per text (SLIM)
- ``text``: the texts themselves, for indexes that analyse text (Lucene BM25)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

KINDS = ("dense", "multi", "sparse", "multi-sparse", "text")


@runtime_checkable
class Encoder(Protocol):
    """Turns texts into representations of one kind."""

    name: str  # registry name
    kind: str  # one of KINDS
    dim: int | None  # vector width for dense/multi; None otherwise

    def config(self) -> dict[str, Any]:
        """Settings that rebuild this encoder (stored in the manifest)."""

    def encode_documents(self, texts: Sequence[str]) -> Any: ...

    def encode_queries(self, texts: Sequence[str]) -> Any: ...


@runtime_checkable
class Index(Protocol):
    """Stores representations under internal ids 0..n-1 and finds the best for a query.

    An index type that can hold several kinds lists them in ``kinds`` and takes the one
    it holds as its ``kind`` setting (``retr.registry.create_index`` passes it).
    """

    name: str
    kind: str

    def config(self) -> dict[str, Any]: ...

    def add(self, reps: Any) -> None:
        """Append representations; their internal ids continue from ``len(self)``."""

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores (nq, k) float32 and internal ids (nq, k) int64, best first, -1 padded."""

    def __len__(self) -> int: ...

    def save(self, directory: Path) -> None:
        """Write the index's files into ``directory`` (files ``stage`` put there already are only closed)."""

    # Optional, by index type:
    #   stage(directory): write arrays into ``directory`` as documents are added, not into memory
    #   training_size(n) -> int, train(reps, n), trained: an index that trains (IVF, PQ, BEBR, PLAID,
    #       MUVERA over a trained inner index) says how many of n documents to sample, then trains
    #       on their representations before the build adds the whole corpus in chunks
    #   relocate(directory): the staged directory was renamed into place (for files reopened by path)
    #   use_device(device): run exact scoring on a device (``retr.scoring``)


@runtime_checkable
class Quantizer(Protocol):
    """Compresses dense vectors into fixed-size codes and back."""

    name: str
    code_size: int  # bytes per vector

    def config(self) -> dict[str, Any]: ...

    def train(self, vectors: np.ndarray, n: int | None = None) -> None:
        """Learn the codec from ``vectors``, a sample of a corpus of ``n`` (default: all of it)."""

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """uint8 codes of shape (n, code_size)."""

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Approximate float32 vectors of shape (n, dim)."""

    def save(self, directory: Path) -> None: ...
