"""Binary index over BEBR codes: Hamming ranking or symmetric distance calculation (SDC).

``dense:all-MiniLM-L6-v2@bebr:u=4,search=sdc`` trains a ``BEBRQuantizer`` on the first
vectors added and stores ``dim * u / 8`` bytes per document. Queries are binarized by
the same model (symmetric), then

- ``search=hamming``: FAISS ``IndexBinaryFlat`` (popcount); score = bits - 2 * Hamming;
- ``search=sdc``: ``<v_q, v_d>`` from lookup tables over the code bytes. The per-query
  table row ``T[q_p]`` of byte position p is what FAISS's PQ scanner computes for a
  ``IndexPQ`` whose 256 "centroids" per position are the byte values' dimension values,
  so FAISS's SIMD lookup-table scan runs SDC (``retr.quantizers.bebr.sdc_scores`` is the
  numpy version, and the tests hold both to a slow reference);
- ``rerank=N`` (N > 0) keeps float vectors (``vectors.npy``) and re-scores the top N
  binary candidates by exact inner product with the float query.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from retr.errors import RetrError
from retr.indexers.faiss_index import _faiss, as_matrix
from retr.indexers.quantized import train_and_encode
from retr.quantizers.bebr import BEBRQuantizer, byte_values
from retr.storage import load_array, save_array

CODES_FILE, VECTORS_FILE, QUANTIZER_DIR = "codes.npy", "vectors.npy", "quantizer"
SEARCHES = ("sdc", "hamming")


def sdc_searcher(codes: np.ndarray, weights: np.ndarray) -> Any:
    """A FAISS IndexPQ (inner product) over ``codes`` whose lookup tables are SDC table rows."""
    faiss = _faiss()
    size = codes.shape[1]
    values = byte_values(weights)  # (256, 8 / u)
    index = faiss.IndexPQ(size * values.shape[1], size, 8, faiss.METRIC_INNER_PRODUCT)
    faiss.copy_array_to_vector(np.ascontiguousarray(np.tile(values[None], (size, 1, 1))).ravel(), index.pq.centroids)
    index.is_trained = True
    if len(codes):
        index.add_sa_codes(np.ascontiguousarray(codes))
    return index


def hamming_searcher(codes: np.ndarray) -> Any:
    faiss = _faiss()
    index = faiss.IndexBinaryFlat(8 * codes.shape[1])
    if len(codes):
        index.add(np.ascontiguousarray(codes))
    return index


class BEBRIndex:
    """BEBR binary codes searched by SDC or Hamming, optionally re-ranked with float vectors."""

    name = "bebr"
    kind = "dense"

    def __init__(self, u: int = 4, search: str = "sdc", rerank: int = 0, bits: int = 0, hidden: int = 0,
                 blocks: int = 1, epochs: int = 30, seed: int = 42) -> None:
        if search not in SEARCHES:
            raise RetrError(f"bebr search is one of {', '.join(SEARCHES)}, got {search!r}")
        if rerank < 0:
            raise RetrError("bebr needs rerank >= 0 (0 = no float re-ranking)")
        self.search_mode, self.rerank = search, int(rerank)
        self.quantizer = BEBRQuantizer(u=u, bits=bits, hidden=hidden, blocks=blocks, epochs=epochs, seed=seed)
        self._codes = np.zeros((0, 0), dtype=np.uint8)
        self._vectors: np.ndarray | None = None
        self._searcher: Any = None

    def config(self) -> dict[str, Any]:
        q = self.quantizer
        return {"u": q.u, "search": self.search_mode, "rerank": self.rerank, "bits": q.bits, "hidden": q.hidden,
                "blocks": q.blocks, "epochs": q.epochs, "seed": q.seed}

    @property
    def dim(self) -> int | None:
        return self.quantizer.dim

    @property
    def codes(self) -> np.ndarray:
        return self._codes

    def __len__(self) -> int:
        return len(self._codes)

    def add(self, vectors: Any) -> None:
        x = as_matrix(vectors, self.dim, f"adding to a {self.name} index")
        codes = train_and_encode(self.quantizer, x, self.name)
        self._codes = np.concatenate([self._codes, codes]) if len(self._codes) else codes
        if self.rerank:
            self._vectors = np.concatenate([self._vectors, x]) if self._vectors is not None else x.copy()
        self._searcher = None

    def with_search(self, search: str, rerank: int | None = None) -> BEBRIndex:
        """The same codes and model searched another way (no retraining)."""
        other = BEBRIndex(search=search, rerank=self.rerank if rerank is None else rerank)
        other.quantizer, other._codes, other._vectors = self.quantizer, self._codes, self._vectors
        if other.rerank and other._vectors is None:
            raise RetrError("re-ranking needs the float vectors: build the index with rerank > 0")
        return other

    def _binary_search(self, q_codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._searcher is None:
            self._searcher = (sdc_searcher(self._codes, self.quantizer.weights) if self.search_mode == "sdc"
                              else hamming_searcher(self._codes))
        if self.search_mode == "sdc":
            return self._searcher.search(self.quantizer.embed(q_codes), k)
        dist, ids = self._searcher.search(q_codes, k)
        return (8 * q_codes.shape[1] - 2 * dist).astype(np.float32), ids

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self) == 0:
            raise RetrError("the index is empty: add documents before searching")
        q = as_matrix(queries, self.dim, f"searching a {self.name} index")
        depth = min(len(self), max(k, self.rerank))
        scores, ids = self._binary_search(self.quantizer.encode(q), depth)
        scores = scores.astype(np.float32, copy=False)
        if self.rerank:
            safe = np.where(ids < 0, 0, ids)
            scores = np.einsum("qd,qkd->qk", q, self._vectors[safe]).astype(np.float32)
            scores[ids < 0] = -np.inf
            order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
        else:
            scores, ids = scores[:, :k], ids[:, :k]
        if ids.shape[1] < k:
            pad = k - ids.shape[1]
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        scores[ids < 0] = -np.inf
        return scores, ids.astype(np.int64, copy=False)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        save_array(directory / CODES_FILE, self._codes)
        if self.rerank:
            save_array(directory / VECTORS_FILE, self._vectors)
        (directory / QUANTIZER_DIR).mkdir()
        self.quantizer.save(directory / QUANTIZER_DIR)

    @classmethod
    def load(cls, directory: Path, config: dict[str, Any], count: int) -> BEBRIndex:
        directory = Path(directory)
        index = cls(**config)
        index.quantizer = BEBRQuantizer.load(directory / QUANTIZER_DIR, index.quantizer.config())
        codes = load_array(directory / CODES_FILE, mmap=False)
        if codes.dtype != np.uint8 or codes.shape != (count, index.quantizer.code_size):
            raise RetrError(f"{directory}: codes have shape {codes.shape} {codes.dtype}, expected "
                            f"({count}, {index.quantizer.code_size}) uint8; rebuild the index")
        index._codes = codes
        if index.rerank:
            vectors = load_array(directory / VECTORS_FILE)
            if vectors.shape != (count, index.quantizer.dim):
                raise RetrError(f"{directory}: float vectors have shape {vectors.shape}; rebuild the index")
            index._vectors = vectors
        return index
