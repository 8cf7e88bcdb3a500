"""Float vectors as one growing (n, dim) matrix: written to ``.npy`` as they are added, memory-mapped on load,
scored exactly on the device the index was opened on (``retr.scoring``).

The flat index is one of these; compressed indexes keep one to re-score their candidates
exactly (PQ / IVF-PQ ``refine``, BEBR ``rerank``: FAISS's IndexRefine idea). Only the rows of
the candidates are read from the memory-mapped file, so the float matrix costs disk, not RAM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from retr.errors import RetrError
from retr.scoring import dense_scorer
from retr.storage import GrowingArray, load_array

VECTORS_FILE = "vectors.npy"


class VectorStore:
    """(n, dim) float32 vectors, in memory or staged on disk, with an exact scorer."""

    def __init__(self, filename: str = VECTORS_FILE) -> None:
        self.filename = filename
        self.vectors = GrowingArray(np.float32)
        self.device = "cpu"
        self._scorer: Any = None

    @property
    def dim(self) -> int | None:
        return None if self.vectors.shape is None else int(self.vectors.shape[0])

    def __len__(self) -> int:
        return len(self.vectors)

    def stage(self, directory: Path) -> None:
        self.vectors = self.vectors.staged(directory / self.filename)

    def use_device(self, device: str) -> None:
        self.device, self._scorer = device, None

    def add(self, x: np.ndarray) -> None:
        self.vectors.append(x)
        self._scorer = None

    def scorer(self) -> Any:
        if self._scorer is None:
            self._scorer = dense_scorer(self.vectors.array, self.device)
        return self._scorer

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.scorer().search(queries, k)

    def rerank(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top ``k`` of each query among its candidate ids (-1 entries ignored)."""
        return self.scorer().rerank(queries, candidates, k)

    def save(self, directory: Path) -> None:
        self.vectors.save(directory / self.filename)

    @classmethod
    def load(cls, directory: Path, count: int, filename: str = VECTORS_FILE) -> "VectorStore":
        store = cls(filename)
        vectors = load_array(directory / filename)
        if vectors.ndim != 2 or vectors.dtype != np.float32 or len(vectors) != count:
            raise RetrError(f"{directory}: {filename} has shape {vectors.shape} {vectors.dtype}, expected "
                            f"({count}, dim) float32; rebuild the index")
        store.vectors = GrowingArray.of(vectors)
        return store
