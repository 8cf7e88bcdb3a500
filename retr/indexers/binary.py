"""Binary index over BEBR codes: Hamming ranking or symmetric distance calculation (SDC).

``dense:all-MiniLM-L6-v2@bebr:u=4,search=sdc`` trains a ``BEBRQuantizer`` on a seeded sample
of the corpus (``sample`` vectors, so its cost does not grow with the corpus) and stores
``dim * u / 8`` bytes per document. Queries are binarized by
the same model (symmetric), then

- ``search=hamming``: FAISS ``IndexBinaryFlat`` (popcount); score = bits - 2 * Hamming;
- ``search=sdc``: ``<v_q, v_d>`` from lookup tables over the code bytes. The per-query
  table row ``T[q_p]`` of byte position p is what FAISS's PQ scanner computes for a
  ``IndexPQ`` whose 256 "centroids" per position are the byte values' dimension values,
  so FAISS's SIMD lookup-table scan runs SDC (``retr.quantizers.bebr.sdc_scores`` is the
  numpy version, and the tests hold both to a slow reference);
- ``rerank=N`` (N > 0) keeps float vectors (``vectors.npy``, memory-mapped) and re-scores the
  top N binary candidates exactly with the float query (the same refinement as ``pq:refine``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from retr.errors import RetrError
from retr.indexers.faiss_index import _faiss
from retr.indexers.quantized import CodeIndex
from retr.quantizers.bebr import BEBRQuantizer, byte_values

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


class BEBRIndex(CodeIndex):
    """BEBR binary codes searched by SDC or Hamming, optionally re-ranked with float vectors."""

    name = "bebr"

    def __init__(self, u: int = 4, search: str = "sdc", rerank: int = 0, bits: int = 0, hidden: int = 0,
                 blocks: int = 1, epochs: int = 30, sample: int = 16384, seed: int = 42) -> None:
        if search not in SEARCHES:
            raise RetrError(f"bebr search is one of {', '.join(SEARCHES)}, got {search!r}")
        super().__init__(BEBRQuantizer(u=u, bits=bits, hidden=hidden, blocks=blocks, epochs=epochs, sample=sample,
                                       seed=seed), rerank)
        self.search_mode = search

    @property
    def rerank(self) -> int:
        """Candidates re-scored with the float vectors (0: none)."""
        return self.refine

    def config(self) -> dict[str, Any]:
        q = self.quantizer
        return {"u": q.u, "search": self.search_mode, "rerank": self.refine, "bits": q.bits, "hidden": q.hidden,
                "blocks": q.blocks, "epochs": q.epochs, "sample": q.sample, "seed": q.seed}

    def with_search(self, search: str, rerank: int | None = None) -> BEBRIndex:
        """The same codes and model searched another way (no retraining)."""
        other = BEBRIndex(search=search, rerank=self.refine if rerank is None else rerank)
        other.quantizer, other._codes = self.quantizer, self._codes
        if other.refine:
            if self.vectors is None:
                raise RetrError("re-ranking needs the float vectors: build the index with rerank > 0")
            other.vectors = self.vectors
        return other

    def _candidates(self, queries: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        q_codes = self.quantizer.encode(queries)
        if self._searcher is None:
            self._searcher = (sdc_searcher(self.codes, self.quantizer.weights) if self.search_mode == "sdc"
                              else hamming_searcher(self.codes))
        if self.search_mode == "sdc":
            scores, ids = self._searcher.search(self.quantizer.embed(q_codes), depth)
        else:
            dist, ids = self._searcher.search(q_codes, depth)
            scores = (8 * q_codes.shape[1] - 2 * dist).astype(np.float32)
        scores = scores.astype(np.float32, copy=False)
        scores[ids < 0] = -np.inf
        return scores, ids.astype(np.int64, copy=False)
