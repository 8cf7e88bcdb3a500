"""Dense vectors: exact flat search (our own memory-mapped matrix), and FAISS's HNSW graph and IVF lists.

Scores are inner products; an encoder that normalises its vectors makes them cosines.
``flat`` keeps ``vectors.npy`` and searches it with the device's exact scorer (FAISS's BLAS
search on the CPU, torch on a GPU). ``hnsw`` and ``ivf`` are FAISS indexes in FAISS's own
file format (``faiss.index``), which loads without running code; IVF's inverted lists are
memory-mapped on load, HNSW's graph needs RAM.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from retr.errors import RetrError
from retr.indexers.vectors import VectorStore
from retr.progress import progress_bar

FAISS_FILE = "faiss.index"
ADD_CHUNK = 1 << 16  # vectors per FAISS add call, so the progress bar moves
POINTS_PER_CELL = 64  # k-means training points per IVF cell (FAISS's guidance: 39 to 256)
PROBE_SHARE = 3  # an IVF search probes 1 / PROBE_SHARE of the cells unless told (auto_nprobe)
FINITE_ROWS = 1 << 16  # rows checked for NaN / infinity at once


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise RetrError("dense indexes need FAISS: pip install 'retr[dense]'") from None
    return faiss


def as_matrix(vectors: Any, dim: int | None, what: str) -> np.ndarray:
    """A C-contiguous float32 (n, dim) matrix, or a clear error."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise RetrError(f"{what}: expected a (n, dim) matrix, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise RetrError(f"{what}: vectors have dimension {x.shape[1]}, the index holds dimension {dim}")
    check_finite(x, what)
    return x


def check_finite(x: np.ndarray, what: str) -> None:
    """A clear error when ``x`` holds NaN or infinity, checked ``FINITE_ROWS`` rows at a time: a boolean
    copy of the whole matrix would add a quarter of its size to the peak of a build (305 MB at 794K x 384)."""
    if not all(np.isfinite(x[s : s + FINITE_ROWS]).all() for s in range(0, len(x), FINITE_ROWS)):
        raise RetrError(f"{what}: vectors contain NaN or infinity")


def auto_nlist(n: int) -> int:
    """About 4 * sqrt(n) cells, with at least 39 training points each."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def auto_nprobe(nlist: int) -> int:
    """Cells a search probes unless told: a third of them (``PROBE_SHARE``). The share of the exact top 10
    an IVF probe finds depends on the share of cells probed, not on their number, and queries unlike the
    documents need a large share: on 100,000 pypi-summaries documents (MiniLM, 1,264 cells) IVF-Flat
    finds 0.70 at 16 cells, 0.90 at a tenth, 0.94 at a fifth, 0.98 at two fifths (README, "Large corpora")."""
    return max(1, -(-nlist // PROBE_SHARE))


class FlatIndex:
    """Exhaustive inner-product search: exact, the reference for every approximate index."""

    name = "flat"
    kind = "dense"

    def __init__(self) -> None:
        self.store = VectorStore()

    def config(self) -> dict[str, Any]:
        return {}

    @property
    def dim(self) -> int | None:
        return self.store.dim

    def __len__(self) -> int:
        return len(self.store)

    def stage(self, directory: Path) -> None:
        self.store.stage(directory)

    def use_device(self, device: str) -> None:
        self.store.use_device(device)

    def add(self, vectors: Any) -> None:
        self.store.add(as_matrix(vectors, self.dim, f"adding to a {self.name} index"))

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self) == 0:
            raise RetrError("the index is empty: add documents before searching")
        return self.store.search(as_matrix(queries, self.dim, f"searching a {self.name} index"), k)

    def save(self, directory: Path) -> None:
        self.store.save(directory)

    @classmethod
    def load(cls, directory: Path, config: dict[str, Any], count: int) -> "FlatIndex":
        index = cls(**config)
        index.store = VectorStore.load(directory, count)
        return index


class FaissIndex(ABC):
    """Base for the FAISS-backed dense indexes; subclasses say how the index is made."""

    name = "faiss"
    kind = "dense"

    def __init__(self) -> None:
        self._index: Any = None
        self.dim: int | None = None

    def config(self) -> dict[str, Any]:
        return {}

    @abstractmethod
    def _make(self, dim: int, train: np.ndarray | None, n: int) -> Any:
        """A new, trained, empty FAISS index for ``dim``-d vectors (``train``: a sample of the ``n`` to come)."""

    def _tune(self) -> None:
        """Apply search-time settings to the FAISS index."""

    def __len__(self) -> int:
        return 0 if self._index is None else int(self._index.ntotal)

    @property
    def trained(self) -> bool:
        return self._index is not None

    def train(self, vectors: Any, n: int) -> None:
        """Make the index from a sample of the corpus (``n`` documents in all)."""
        x = as_matrix(vectors, self.dim, f"training a {self.name} index")
        self.dim = x.shape[1]
        self._index = self._make(self.dim, x, n)
        self._tune()

    def add(self, vectors: Any) -> None:
        x = as_matrix(vectors, self.dim, f"adding to a {self.name} index")
        if self._index is None:  # not trained on a sample first: train on these
            self.train(x, len(x))
        with progress_bar(total=len(x), desc=f"adding to {self.name}", unit="vec") as bar:
            for start in range(0, len(x), ADD_CHUNK):
                self._index.add(x[start : start + ADD_CHUNK])
                bar.update(min(ADD_CHUNK, len(x) - start))

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._index is None or len(self) == 0:
            raise RetrError("the index is empty: add documents before searching")
        q = as_matrix(queries, self.dim, f"searching a {self.name} index")
        scores, ids = self._index.search(q, k)
        scores[ids < 0] = -np.inf
        return scores, ids.astype(np.int64, copy=False)

    def save(self, directory: Path) -> None:
        _faiss().write_index(self._index, str(directory / FAISS_FILE))

    memory_mapped = False  # open the FAISS file memory-mapped (IVF lists) instead of reading it into RAM

    @classmethod
    def load(cls, directory: Path, config: dict[str, Any], count: int) -> "FaissIndex":
        faiss = _faiss()
        index = cls(**config)
        try:
            flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if cls.memory_mapped else 0
            index._index = faiss.read_index(str(directory / FAISS_FILE), flags)
        except RuntimeError as exc:
            raise RetrError(f"cannot read {directory / FAISS_FILE}: {exc}; rebuild the index") from None
        if index._index.ntotal != count:
            raise RetrError(f"{directory}: FAISS holds {index._index.ntotal} vectors, the manifest says {count}")
        index.dim = index._index.d
        index._tune()
        return index


class HNSWIndex(FaissIndex):
    """Hierarchical navigable small-world graph (FAISS ``IndexHNSWFlat``, inner product); needs no training."""

    name = "hnsw"

    def __init__(self, M: int = 32, ef_construction: int = 200, ef_search: int = 128) -> None:
        super().__init__()
        if M < 2 or ef_construction < 1 or ef_search < 1:
            raise RetrError("hnsw needs M >= 2, ef_construction >= 1, ef_search >= 1")
        self.M, self.ef_construction, self.ef_search = int(M), int(ef_construction), int(ef_search)

    def config(self) -> dict[str, Any]:
        return {"M": self.M, "ef_construction": self.ef_construction, "ef_search": self.ef_search}

    def _make(self, dim: int, train: np.ndarray | None, n: int) -> Any:
        faiss = _faiss()
        index = faiss.IndexHNSWFlat(dim, self.M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        return index

    def _tune(self) -> None:
        self._index.hnsw.efSearch = self.ef_search


class IVFIndex(FaissIndex):
    """Inverted file over k-means cells (FAISS ``IndexIVFFlat``), trained on a sample of the corpus.

    ``nlist=0`` picks about 4·sqrt(n) cells for n documents; k-means trains on ``POINTS_PER_CELL``
    sampled vectors a cell; ``nprobe=0`` probes ``auto_nprobe(nlist)`` cells. The inverted lists are
    memory-mapped when the index is opened.
    """

    name = "ivf"
    memory_mapped = True

    def __init__(self, nlist: int = 0, nprobe: int = 0) -> None:
        super().__init__()
        if nlist < 0 or nprobe < 0:
            raise RetrError("ivf needs nlist >= 0 and nprobe >= 0 (0 = automatic)")
        self.nlist, self.nprobe = int(nlist), int(nprobe)

    def config(self) -> dict[str, Any]:
        return {"nlist": self.nlist, "nprobe": self.nprobe}

    def training_size(self, n: int) -> int:
        return min(n, (self.nlist or auto_nlist(n)) * POINTS_PER_CELL)

    def _make(self, dim: int, train: np.ndarray | None, n: int) -> Any:
        faiss = _faiss()
        if self.nlist == 0:
            self.nlist = auto_nlist(n)
        if len(train) < self.nlist:
            raise RetrError(f"ivf with nlist={self.nlist} needs at least {self.nlist} vectors to train, got {len(train)}")
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.min_points_per_centroid = 1  # small corpora: fewer than 39 points a cell, without warnings
        index.train(train)
        return index

    def empty(self) -> "IVFIndex":
        """A new empty index of the same settings (a new segment) keeping the trained cells."""
        new = IVFIndex(**self.config())
        if self._index is not None:
            faiss = _faiss()
            quantizer = faiss.clone_index(faiss.extract_index_ivf(self._index).quantizer)
            new.dim = self.dim
            new._index = faiss.IndexIVFFlat(quantizer, self.dim, self.nlist, faiss.METRIC_INNER_PRODUCT)
            new._index.own_fields = True
            quantizer.this.disown()
            new._tune()
        return new

    def _tune(self) -> None:
        self._index.nprobe = self.nprobe or auto_nprobe(self._index.nlist)
