"""Dense indexes that store PQ-family codes instead of floats: ``pq``, ``opq``, ``ivfpq``.

``dense:all-MiniLM-L6-v2@pq:M=16`` composes a dense encoder with a PQ quantizer: the
first vectors added train the quantizer, every vector is stored as its ``code_size``
bytes (``codes.npy``), and a search scores codes by asymmetric distance computation in
FAISS (inner product, per-query lookup tables). The quantizer lives in
``quantizer/`` of the index directory; the index's settings are the quantizer's, plus
search-time ones (``nprobe`` for IVF-PQ).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from retr.errors import RetrError
from retr.indexers.faiss_index import as_matrix
from retr.progress import progress_bar
from retr.quantizers.pq import (
    FaissQuantizer,
    IVFPQQuantizer,
    OPQQuantizer,
    PQQuantizer,
    inner_index,
)
from retr.storage import load_array, save_array

CODES_FILE, QUANTIZER_DIR = "codes.npy", "quantizer"
ENCODE_CHUNK = 1 << 16


def train_and_encode(quantizer: Any, x: np.ndarray, index_name: str) -> np.ndarray:
    """uint8 codes of ``x``, ``ENCODE_CHUNK`` vectors at a time; an untrained quantizer first trains on ``x``
    (every code-storing index trains on the first vectors added)."""
    if not quantizer.trained:
        quantizer.train(x)
    parts = []
    with progress_bar(total=len(x), desc=f"encoding for {index_name}", unit="vec") as bar:
        for start in range(0, len(x), ENCODE_CHUNK):
            parts.append(quantizer.encode(x[start : start + ENCODE_CHUNK]))
            bar.update(min(ENCODE_CHUNK, len(x) - start))
    return np.concatenate(parts)


class QuantizedIndex:
    """Codes of one ``FaissQuantizer``, searched with the quantizer's FAISS searcher."""

    name = "quantized"
    kind = "dense"

    def __init__(self, quantizer: FaissQuantizer) -> None:
        self.quantizer = quantizer
        self._codes = np.zeros((0, 0), dtype=np.uint8)
        self._searcher: Any = None

    def config(self) -> dict[str, Any]:
        return self.quantizer.config()

    @property
    def dim(self) -> int | None:
        return self.quantizer.dim

    @property
    def codes(self) -> np.ndarray:
        """uint8 (n, code_size): the stored vectors."""
        return self._codes

    def __len__(self) -> int:
        return len(self._codes)

    def add(self, vectors: Any) -> None:
        codes = train_and_encode(self.quantizer, as_matrix(vectors, self.dim, f"adding to a {self.name} index"),
                                 self.name)
        self._codes = np.concatenate([self._codes, codes]) if len(self._codes) else codes
        self._searcher = None

    def _tune(self, searcher: Any) -> None:
        """Apply search-time settings to a fresh searcher."""

    def refresh(self) -> None:
        """Rebuild the searcher (after the quantizer's codebooks changed, as JPQ training does)."""
        self._searcher = None

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self) == 0:
            raise RetrError("the index is empty: add documents before searching")
        q = as_matrix(queries, self.dim, f"searching a {self.name} index")
        if self._searcher is None:
            self._searcher = self.quantizer.searcher(self._codes)
            self._tune(self._searcher)
        scores, ids = self._searcher.search(q, k)
        scores[ids < 0] = -np.inf
        return scores, ids.astype(np.int64, copy=False)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        save_array(directory / CODES_FILE, self._codes)
        (directory / QUANTIZER_DIR).mkdir()
        self.quantizer.save(directory / QUANTIZER_DIR)

    @classmethod
    def load(cls, directory: Path, config: dict[str, Any], count: int) -> QuantizedIndex:
        directory = Path(directory)
        index = cls(**config)
        index.quantizer = type(index.quantizer).load(directory / QUANTIZER_DIR, index.quantizer.config())
        codes = load_array(directory / CODES_FILE, mmap=False)
        if codes.dtype != np.uint8 or codes.ndim != 2 or len(codes) != count or codes.shape[1] != index.quantizer.code_size:
            raise RetrError(f"{directory}: codes have shape {codes.shape} {codes.dtype}, expected ({count}, "
                            f"{index.quantizer.code_size}) uint8; rebuild the index")
        index._codes = codes
        return index


class PQIndex(QuantizedIndex):
    """``pq:M=16,nbits=8``: product-quantized vectors, ``M * nbits / 8`` bytes each."""

    name = "pq"

    def __init__(self, M: int = 16, nbits: int = 8) -> None:
        super().__init__(PQQuantizer(M=M, nbits=nbits))


class OPQIndex(QuantizedIndex):
    """``opq:M=16,nbits=8,niter=25``: a learned rotation, then PQ; the same size as ``pq``."""

    name = "opq"

    def __init__(self, M: int = 16, nbits: int = 8, niter: int = 25) -> None:
        super().__init__(OPQQuantizer(M=M, nbits=nbits, niter=niter))


class IVFPQIndex(QuantizedIndex):
    """``ivfpq:nlist=64,M=16,nprobe=8``: IVF cells over PQ codes; ``nprobe`` cells searched per query."""

    name = "ivfpq"

    def __init__(self, nlist: int = 0, M: int = 16, nbits: int = 8, nprobe: int = 8) -> None:
        super().__init__(IVFPQQuantizer(nlist=nlist, M=M, nbits=nbits))
        if nprobe < 1:
            raise RetrError("ivfpq needs nprobe >= 1")
        self.nprobe = int(nprobe)

    def config(self) -> dict[str, Any]:
        return {**self.quantizer.config(), "nprobe": self.nprobe}

    def _tune(self, searcher: Any) -> None:
        inner_index(searcher).nprobe = self.nprobe


class JPQIndex(PQIndex):
    """``jpq:M=16``: PQ codes whose centroids, and query encoder, JPQ trained (``retr.quantizers.jpq``).

    Built from a spec it is a plain PQ index; ``train_jpq`` then fine-tunes the query
    encoder and the centroid embeddings with the document codes fixed. The trained query
    encoder is saved in ``query_encoder/`` (safetensors) and searches in place of the
    index's document encoder.
    """

    name = "jpq"

    def __init__(self, M: int = 16, nbits: int = 8) -> None:
        super().__init__(M=M, nbits=nbits)
        self.query_encoder: Any = None
        self.training: dict[str, Any] = {}  # settings and losses of the JPQ run, saved as jpq.json

    def save(self, directory: Path) -> None:
        super().save(directory)
        if self.query_encoder is not None:
            from retr.quantizers.jpq import save_jpq_state

            save_jpq_state(self, Path(directory))

    @classmethod
    def load(cls, directory: Path, config: dict[str, Any], count: int) -> JPQIndex:
        index = super().load(directory, config, count)
        from retr.quantizers.jpq import load_jpq_state

        load_jpq_state(index, Path(directory))  # type: ignore[arg-type]
        return index  # type: ignore[return-value]
