"""Dense indexes that store PQ-family codes instead of floats: ``pq``, ``opq``, ``ivfpq``.

``dense:all-MiniLM-L6-v2@pq:M=16`` composes a dense encoder with a PQ quantizer: the
quantizer trains on a seeded sample of the corpus (``sample_size``: FAISS's guidance of up
to 256 points a centroid), every vector is then stored as its ``code_size`` bytes
(``codes.npy``, written as the build adds chunks), and a search scores codes by asymmetric
distance computation in FAISS (inner product, per-query lookup tables). The quantizer lives
in ``quantizer/`` of the index directory; the index's settings are the quantizer's, plus
search-time ones (``nprobe`` for IVF-PQ).

``refine=N`` keeps the float vectors too (``vectors.npy``, memory-mapped) and re-scores the
best N candidates of the codes exactly (FAISS's IndexRefine idea): compressed codes in RAM,
exact top k, the float matrix read only at the candidates' rows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from retr.errors import RetrError
from retr.indexers.faiss_index import as_matrix, auto_nprobe
from retr.indexers.vectors import VectorStore
from retr.progress import progress_bar
from retr.quantizers.pq import (
    FaissQuantizer,
    IVFPQQuantizer,
    OPQQuantizer,
    PQQuantizer,
    inner_index,
)
from retr.storage import GrowingArray, load_array

CODES_FILE, QUANTIZER_DIR = "codes.npy", "quantizer"
ENCODE_CHUNK = 1 << 16


def encode_chunks(quantizer: Any, x: np.ndarray, index_name: str) -> np.ndarray:
    """uint8 codes of ``x``, ``ENCODE_CHUNK`` vectors at a time (with a progress bar)."""
    parts = []
    with progress_bar(total=len(x), desc=f"encoding for {index_name}", unit="vec") as bar:
        for start in range(0, len(x), ENCODE_CHUNK):
            parts.append(quantizer.encode(x[start : start + ENCODE_CHUNK]))
            bar.update(min(ENCODE_CHUNK, len(x) - start))
    return np.concatenate(parts) if parts else np.zeros((0, quantizer.code_size), np.uint8)


class CodeIndex(ABC):
    """What every code-storing dense index shares: a trained quantizer, growing codes, optional float re-scoring.

    A subclass says how codes are searched (``_candidates``) and which re-scoring setting it
    exposes; the float vectors kept for it are a ``VectorStore`` scored on the index's device.
    """

    name = "codes"
    kind = "dense"

    def __init__(self, quantizer: Any, refine: int = 0) -> None:
        if refine < 0:
            raise RetrError(f"{self.name} needs a re-scoring depth >= 0 (0 = none)")
        self.quantizer, self.refine = quantizer, int(refine)
        self._codes = GrowingArray(np.uint8)
        self.vectors = VectorStore() if self.refine else None
        self._searcher: Any = None

    @property
    def dim(self) -> int | None:
        return self.quantizer.dim

    @property
    def codes(self) -> np.ndarray:
        """uint8 (n, code_size): the stored vectors."""
        return self._codes.array

    @property
    def trained(self) -> bool:
        return self.quantizer.trained

    def __len__(self) -> int:
        return len(self._codes)

    def training_size(self, n: int) -> int:
        return self.quantizer.sample_size(n)

    def empty(self) -> "CodeIndex":
        """A new empty index of the same settings sharing this one's trained quantizer (a new segment)."""
        new = type(self)(**self.config())
        new.quantizer = self.quantizer
        return new

    def train(self, vectors: Any, n: int) -> None:
        """Train the quantizer on a sample of the corpus (``n`` documents in all)."""
        self.quantizer.train(as_matrix(vectors, self.dim, f"training a {self.name} index"), n)

    def stage(self, directory: Path) -> None:
        self._codes = self._codes.staged(directory / CODES_FILE)
        if self.vectors is not None:
            self.vectors.stage(directory)

    def use_device(self, device: str) -> None:
        if self.vectors is not None:
            self.vectors.use_device(device)

    def add(self, vectors: Any) -> None:
        x = as_matrix(vectors, self.dim, f"adding to a {self.name} index")
        if not self.trained:  # not trained on a sample first: train on these
            self.train(x, len(x))
        self._codes.append(encode_chunks(self.quantizer, x, self.name))
        if self.vectors is not None:
            self.vectors.add(x)
        self._searcher = None

    @abstractmethod
    def _candidates(self, queries: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and ids of the best ``depth`` documents by their codes."""

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self) == 0:
            raise RetrError("the index is empty: add documents before searching")
        q = as_matrix(queries, self.dim, f"searching a {self.name} index")
        if self.vectors is None:
            return self._candidates(q, k)
        _, candidates = self._candidates(q, min(len(self), max(k, self.refine)))
        return self.vectors.rerank(q, candidates, k)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        self._codes.save(directory / CODES_FILE)
        if self.vectors is not None:
            self.vectors.save(directory)
        (directory / QUANTIZER_DIR).mkdir()
        self.quantizer.save(directory / QUANTIZER_DIR)

    @classmethod
    def load(cls, directory: Path, config: dict[str, Any], count: int) -> "CodeIndex":
        directory = Path(directory)
        index = cls(**config)
        index.quantizer = type(index.quantizer).load(directory / QUANTIZER_DIR, index.quantizer.config())
        codes = load_array(directory / CODES_FILE)
        if codes.dtype != np.uint8 or codes.ndim != 2 or len(codes) != count or codes.shape[1] != index.quantizer.code_size:
            raise RetrError(f"{directory}: codes have shape {codes.shape} {codes.dtype}, expected ({count}, "
                            f"{index.quantizer.code_size}) uint8; rebuild the index")
        index._codes = GrowingArray.of(codes)
        if index.vectors is not None:
            index.vectors = VectorStore.load(directory, count)
        return index


class QuantizedIndex(CodeIndex):
    """Codes of one ``FaissQuantizer``, searched with the quantizer's FAISS searcher (ADC)."""

    name = "quantized"

    def __init__(self, quantizer: FaissQuantizer, refine: int = 0) -> None:
        super().__init__(quantizer, refine)

    def config(self) -> dict[str, Any]:
        return {**self.quantizer.config(), "refine": self.refine}

    def _tune(self, searcher: Any) -> None:
        """Apply search-time settings to a fresh searcher."""

    def refresh(self) -> None:
        """Rebuild the searcher (after the quantizer's codebooks changed, as JPQ training does)."""
        self._searcher = None

    def _candidates(self, queries: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        if self._searcher is None:
            self._searcher = self.quantizer.searcher(self.codes)
            self._tune(self._searcher)
        scores, ids = self._searcher.search(queries, depth)
        scores[ids < 0] = -np.inf
        return scores, ids.astype(np.int64, copy=False)


class PQIndex(QuantizedIndex):
    """``pq:M=16,nbits=8``: product-quantized vectors, ``M * nbits / 8`` bytes each."""

    name = "pq"

    def __init__(self, M: int = 16, nbits: int = 8, refine: int = 0) -> None:
        super().__init__(PQQuantizer(M=M, nbits=nbits), refine)


class OPQIndex(QuantizedIndex):
    """``opq:M=16,nbits=8,niter=25``: a learned rotation, then PQ; the same size as ``pq``."""

    name = "opq"

    def __init__(self, M: int = 16, nbits: int = 8, niter: int = 25, refine: int = 0) -> None:
        super().__init__(OPQQuantizer(M=M, nbits=nbits, niter=niter), refine)


class IVFPQIndex(QuantizedIndex):
    """``ivfpq:nlist=64,M=16,nprobe=8``: IVF cells over PQ codes; ``nprobe`` cells searched per query
    (``0``: ``auto_nprobe``, a third of the cells: with ``refine=400``, 0.96-0.97 of the exact top 10 on
    100K-400K pypi-summaries documents)."""

    name = "ivfpq"

    def __init__(self, nlist: int = 0, M: int = 16, nbits: int = 8, nprobe: int = 0, refine: int = 0) -> None:
        super().__init__(IVFPQQuantizer(nlist=nlist, M=M, nbits=nbits), refine)
        if nprobe < 0:
            raise RetrError("ivfpq needs nprobe >= 0 (0 = automatic)")
        self.nprobe = int(nprobe)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "nprobe": self.nprobe}

    def _tune(self, searcher: Any) -> None:
        inner = inner_index(searcher)
        inner.nprobe = self.nprobe or auto_nprobe(inner.nlist)


class JPQIndex(PQIndex):
    """``jpq:M=16``: PQ codes whose centroids, and query encoder, JPQ trained (``retr.quantizers.jpq``).

    Built from a spec it is a plain PQ index; ``train_jpq`` then fine-tunes the query
    encoder and the centroid embeddings with the document codes fixed. The trained query
    encoder is saved in ``query_encoder/`` (safetensors) and searches in place of the
    index's document encoder.
    """

    name = "jpq"

    def __init__(self, M: int = 16, nbits: int = 8, refine: int = 0) -> None:
        super().__init__(M=M, nbits=nbits, refine=refine)
        self.query_encoder: Any = None
        self.training: dict[str, Any] = {}  # settings and losses of the JPQ run, saved as jpq.json

    def empty(self) -> JPQIndex:
        new = super().empty()
        new.query_encoder, new.training = self.query_encoder, self.training  # type: ignore[attr-defined]
        return new  # type: ignore[return-value]

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
