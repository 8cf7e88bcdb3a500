"""Product quantization (PQ), optimised PQ (OPQ) and IVF-PQ, with FAISS as the codec.

Each quantizer is a trained, empty FAISS index used through FAISS's standalone-codec
interface (``sa_encode`` / ``sa_decode``): a vector becomes ``code_size`` bytes
(PQ: ``M`` sub-vector codes of ``nbits`` bits; OPQ: the same after a learned rotation;
IVF-PQ: the coarse cell id, then the PQ code of the residual). An index holds the codes
as one uint8 matrix and asks the quantizer for a FAISS searcher over them, which scores
with asymmetric distance computation (per-query lookup tables, inner product).

The codec is saved as FAISS's own file format (``codec.faiss``), never pickled.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from retr.errors import RetrError
from retr.indexers.faiss_index import auto_nlist, check_finite

CODEC_FILE = "codec.faiss"
CHUNK = 1 << 16  # vectors encoded or decoded per FAISS call
POINTS_PER_CENTROID = 256  # PQ codebook training points a centroid: FAISS's own cap (its guidance: 39 to 256)
IVF_POINTS_PER_CELL = 64  # coarse k-means training points a cell (FAISS's guidance: 39 to 256)


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise RetrError("PQ quantizers need FAISS: pip install 'retr[dense]'") from None
    return faiss


def pq_codebooks(pq: Any) -> np.ndarray:
    """A FAISS ``ProductQuantizer``'s centroids as (M, 2**nbits, dim / M) float32."""
    return _faiss().vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub).astype(np.float32)


def set_pq_codebooks(pq: Any, codebooks: np.ndarray, what: str) -> None:
    """Copy (M, 2**nbits, dim / M) ``codebooks`` into a FAISS ``ProductQuantizer``, or a clear error."""
    if codebooks.shape != (pq.M, pq.ksub, pq.dsub):
        raise RetrError(f"{what} have shape {codebooks.shape}, the PQ needs {(pq.M, pq.ksub, pq.dsub)}; retrain")
    _faiss().copy_array_to_vector(np.ascontiguousarray(codebooks, dtype=np.float32).ravel(), pq.centroids)


def check_vectors(vectors: Any, dim: int | None, what: str) -> np.ndarray:
    """A C-contiguous float32 (n, dim) matrix with n >= 1, or a clear error."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise RetrError(f"{what}: expected a non-empty (n, dim) matrix, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise RetrError(f"{what}: vectors have dimension {x.shape[1]}, the quantizer holds dimension {dim}")
    check_finite(x, what)
    return x


def inner_index(index: Any) -> Any:
    """The index under an ``IndexPreTransform`` (OPQ), else the index itself, downcast."""
    faiss = _faiss()
    index = faiss.downcast_index(index)
    return faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index


class FaissQuantizer(ABC):
    """A FAISS ``index_factory`` codec behind the ``Quantizer`` protocol; subclasses give the factory string."""

    name = "faiss"

    def __init__(self) -> None:
        self.codec: Any = None  # the trained, empty FAISS index

    nbits = 8

    @abstractmethod
    def factory(self, dim: int, n: int, n_train: int) -> str:
        """The FAISS ``index_factory`` string for ``dim``-d vectors, ``n`` in the corpus, ``n_train`` to train on."""

    def config(self) -> dict[str, Any]:
        return {}

    @property
    def trained(self) -> bool:
        return self.codec is not None

    @property
    def dim(self) -> int | None:
        return None if self.codec is None else int(self.codec.d)

    @property
    def code_size(self) -> int:
        return int(self._need_trained().sa_code_size())

    def _need_trained(self) -> Any:
        if self.codec is None:
            raise RetrError(f"the {self.name} quantizer is not trained: call train() (or add vectors) first")
        return self.codec

    def sample_size(self, n: int) -> int:
        """Vectors to train on for a corpus of ``n``: 256 a codebook centroid, never more than ``n``."""
        return min(n, POINTS_PER_CENTROID << self.nbits)

    def train(self, vectors: np.ndarray, n: int | None = None) -> None:
        """Learn the codebooks (and rotation / coarse cells) from ``vectors``, a sample of ``n`` (default: all)."""
        faiss = _faiss()
        x = check_vectors(vectors, None, f"training the {self.name} quantizer")
        codec = faiss.index_factory(x.shape[1], self.factory(x.shape[1], n or len(x), len(x)),
                                    faiss.METRIC_INNER_PRODUCT)
        self._configure(codec)
        codec.train(x)
        self.codec = codec

    def _configure(self, codec: Any) -> None:
        """Set training options on a new codec before it trains."""
        _quiet_clustering(codec)

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """uint8 codes (n, code_size)."""
        codec = self._need_trained()
        x = check_vectors(vectors, self.dim, f"encoding with the {self.name} quantizer")
        return np.concatenate([codec.sa_encode(x[s : s + CHUNK]) for s in range(0, len(x), CHUNK)])

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """float32 (n, dim) reconstructions."""
        codec = self._need_trained()
        codes = check_codes(codes, self.code_size, self.name)
        if len(codes) == 0:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate([codec.sa_decode(codes[s : s + CHUNK]) for s in range(0, len(codes), CHUNK)])

    def searcher(self, codes: np.ndarray) -> Any:
        """A FAISS index holding ``codes`` that searches them by ADC (inner product)."""
        faiss = _faiss()
        index = faiss.clone_index(self._need_trained())
        codes = check_codes(codes, self.code_size, self.name)
        if len(codes):
            inner = inner_index(index)
            inner.add_sa_codes(codes)
            index.ntotal = inner.ntotal  # an IndexPreTransform (OPQ) counts what its inner index holds
        return index

    def save(self, directory: Path) -> None:
        _faiss().write_index(self._need_trained(), str(Path(directory) / CODEC_FILE))

    @classmethod
    def load(cls, directory: Path, config: dict[str, Any] | None = None) -> FaissQuantizer:
        path = Path(directory) / CODEC_FILE
        quantizer = cls(**(config or {}))
        try:
            quantizer.codec = _faiss().read_index(str(path))
        except RuntimeError as exc:
            raise RetrError(f"cannot read {path}: {exc}; rebuild the index") from None
        return quantizer


def check_codes(codes: Any, code_size: int, what: str) -> np.ndarray:
    codes = np.ascontiguousarray(codes)
    if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != code_size:
        raise RetrError(f"{what}: expected uint8 codes of shape (n, {code_size}), got {codes.dtype} {codes.shape}")
    return codes


def _quiet_clustering(codec: Any) -> None:
    """Let k-means run on small corpora (fewer than 39 points per centroid) without FAISS warnings."""
    faiss = _faiss()
    inner = inner_index(codec)
    if hasattr(inner, "pq"):
        inner.pq.cp.min_points_per_centroid = 1
    if isinstance(inner, faiss.IndexIVF):
        inner.cp.min_points_per_centroid = 1
    if isinstance(codec, faiss.IndexPreTransform):
        for i in range(codec.chain.size()):
            transform = faiss.downcast_VectorTransform(codec.chain.at(i))
            if isinstance(transform, faiss.OPQMatrix):
                transform.pq = inner.pq  # OPQ trains this PQ (quiet settings) instead of a default one


def _check_pq(dim_or_none: int | None, M: int, nbits: int, name: str) -> None:
    if M < 1 or not 1 <= nbits <= 16:
        raise RetrError(f"{name} needs M >= 1 and 1 <= nbits <= 16")
    if dim_or_none is not None and dim_or_none % M:
        raise RetrError(f"{name}: M={M} must divide the vector dimension {dim_or_none}")


class PQQuantizer(FaissQuantizer):
    """Product quantization: ``M`` sub-vectors, each the id of one of ``2**nbits`` k-means centroids."""

    name = "pq"

    def __init__(self, M: int = 16, nbits: int = 8) -> None:
        super().__init__()
        _check_pq(None, M, nbits, self.name)
        self.M, self.nbits = int(M), int(nbits)

    def config(self) -> dict[str, Any]:
        return {"M": self.M, "nbits": self.nbits}

    def factory(self, dim: int, n: int, n_train: int) -> str:
        _check_pq(dim, self.M, self.nbits, self.name)
        return f"PQ{self.M}x{self.nbits}np"

    @property
    def pq(self) -> Any:
        """FAISS's ``ProductQuantizer`` (its ``centroids`` are what JPQ trains)."""
        return inner_index(self._need_trained()).pq


class OPQQuantizer(PQQuantizer):
    """Optimised PQ: a learned orthogonal rotation (``niter`` alternations with PQ), then PQ; PQ's code size."""

    name = "opq"

    def __init__(self, M: int = 16, nbits: int = 8, niter: int = 25) -> None:
        super().__init__(M=M, nbits=nbits)
        if niter < 1:
            raise RetrError("opq needs niter >= 1")
        self.niter = int(niter)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "niter": self.niter}

    def _configure(self, codec: Any) -> None:
        super()._configure(codec)
        faiss = _faiss()
        faiss.downcast_VectorTransform(faiss.downcast_index(codec).chain.at(0)).niter = self.niter

    def factory(self, dim: int, n: int, n_train: int) -> str:
        _check_pq(dim, self.M, self.nbits, self.name)
        return f"OPQ{self.M},PQ{self.M}x{self.nbits}np"


class IVFPQQuantizer(FaissQuantizer):
    """IVF-PQ: the nearest of ``nlist`` coarse cells, then PQ of the residual to its centroid.

    ``nlist=0`` picks ``auto_nlist(n)`` at training time; the code holds the cell id too.
    """

    name = "ivfpq"

    def __init__(self, nlist: int = 0, M: int = 16, nbits: int = 8) -> None:
        super().__init__()
        _check_pq(None, M, nbits, self.name)
        if nlist < 0:
            raise RetrError("ivfpq needs nlist >= 0 (0 = automatic)")
        self.nlist, self.M, self.nbits = int(nlist), int(M), int(nbits)

    def config(self) -> dict[str, Any]:
        return {"nlist": self.nlist, "M": self.M, "nbits": self.nbits}

    def sample_size(self, n: int) -> int:
        """PQ's sample, or 64 points a coarse cell if that is more."""
        return min(n, max(super().sample_size(n), (self.nlist or auto_nlist(n)) * IVF_POINTS_PER_CELL))

    def factory(self, dim: int, n: int, n_train: int) -> str:
        _check_pq(dim, self.M, self.nbits, self.name)
        if self.nlist == 0:
            self.nlist = auto_nlist(n)
        if n_train < self.nlist:
            raise RetrError(f"ivfpq with nlist={self.nlist} needs at least {self.nlist} vectors to train, got {n_train}")
        return f"IVF{self.nlist},PQ{self.M}x{self.nbits}np"
