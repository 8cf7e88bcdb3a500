"""Exact inner-product search over a matrix of vectors, and exact re-scoring of candidates from it.

- ``NumpyDense`` (the CPU default): FAISS's blocked BLAS search (``faiss.knn``) straight over
  the (memory-mapped) float32 matrix; candidates re-scored by a gather and a product.
- ``TorchDense``: the matrix in blocks on a torch device (kept there when they fit, streamed
  otherwise), one matrix product and ``topk`` per block, merged exactly.

Flat indexes search with them; PQ / IVF-PQ refinement and BEBR re-ranking re-score with them.
"""

from __future__ import annotations

import functools

import numpy as np

from retr.scoring.device import Block, DeviceBlocks
from retr.scoring.maxsim import widen
from retr.scoring.topk import top_k

BLOCK_ROWS = 1 << 18  # vectors in one torch block (the unit kept resident or streamed)
QUERY_GROUP = 1024  # queries scored together on a torch device


def _rerank_rows(queries: np.ndarray, candidates: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` of candidates (nq, c) whose vectors are ``rows`` (nq, c, dim); -1 candidates never win."""
    scores = np.einsum("qd,qcd->qc", queries, rows).astype(np.float32)
    scores[candidates < 0] = -np.inf
    s, order = top_k(scores, k)
    ids = np.where(order >= 0, np.take_along_axis(candidates, np.maximum(order, 0), 1), -1)
    return s, ids


class NumpyDense:
    """Exact inner products on the CPU over a (memory-mapped) (n, dim) matrix."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        q = np.ascontiguousarray(queries, dtype=np.float32)
        depth = min(k, len(self.vectors))
        if self.vectors.dtype == np.float32 and self.vectors.flags.c_contiguous:
            scores, ids = faiss.knn(q, self.vectors, depth, metric=faiss.METRIC_INNER_PRODUCT)
        else:
            scores, ids = top_k(q @ widen(np.asarray(self.vectors)).T, depth)
        if depth < k:  # fewer documents than k: -1 / -inf padding
            scores = np.pad(scores, ((0, 0), (0, k - depth)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, k - depth)), constant_values=-1)
        scores[ids < 0] = -np.inf
        return scores.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)

    def rerank(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top ``k`` of each query among its candidate ids (-1 entries ignored)."""
        candidates = np.asarray(candidates, dtype=np.int64)
        flat = np.maximum(candidates, 0).ravel()
        order = np.argsort(flat, kind="stable")  # read the memory-mapped rows in file order
        rows = np.empty((len(flat), self.vectors.shape[1]), dtype=np.float32)
        rows[order] = widen(self.vectors[flat[order]])
        return _rerank_rows(np.asarray(queries, np.float32), candidates, rows.reshape(*candidates.shape, -1), k)


class TorchDense:
    """Exact inner products with torch on any device, the matrix in row blocks (resident or streamed)."""

    def __init__(self, vectors: np.ndarray, device: str, dtype: str = "", budget: int | None = None) -> None:
        import torch

        self.vectors = vectors
        self.dtype = getattr(torch, dtype) if dtype else torch.float32
        blocks = [Block(functools.partial(self._rows, start), len(vectors[start : start + BLOCK_ROWS]) * vectors.shape[1],
                        start) for start in range(0, len(vectors), BLOCK_ROWS)]
        self._blocks = DeviceBlocks(blocks, device, self.dtype, budget)

    @property
    def resident(self) -> bool:
        return self._blocks.resident

    def _rows(self, start: int) -> np.ndarray:
        return widen(np.asarray(self.vectors[start : start + BLOCK_ROWS]))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        out_s, out_i = [], []
        with torch.inference_mode():
            for q0 in range(0, len(queries), QUERY_GROUP):
                q = torch.from_numpy(np.ascontiguousarray(queries[q0 : q0 + QUERY_GROUP], dtype=np.float32))
                q = q.to(self._blocks.device, dtype=self.dtype)
                best_s = torch.full((len(q), k), -float("inf"), device=q.device)
                best_i = torch.full((len(q), k), -1, dtype=torch.int64, device=q.device)
                for block, rows in self._blocks:
                    scores = (q @ rows.T).float()
                    s, i = torch.topk(scores, min(k, scores.shape[1]), dim=1)
                    best_s, order = torch.topk(torch.cat([best_s, s], 1), k, dim=1)
                    best_i = torch.gather(torch.cat([best_i, i + block.meta], 1), 1, order)
                out_s.append(best_s.cpu().numpy())
                out_i.append(best_i.cpu().numpy())
        scores = np.concatenate(out_s) if out_s else np.zeros((0, k), np.float32)
        ids = np.concatenate(out_i) if out_i else np.zeros((0, k), np.int64)
        ids[~np.isfinite(scores)] = -1
        return scores.astype(np.float32), ids

    def rerank(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top ``k`` of each query among its candidates (gathered on the host: candidates are few)."""
        return NumpyDense(self.vectors).rerank(queries, candidates, k)


def dense_scorer(vectors: np.ndarray, device: str = "cpu") -> NumpyDense | TorchDense:
    """The exact inner-product scorer of a matrix on ``device`` ('cpu': numpy/FAISS; else torch there)."""
    return NumpyDense(vectors) if device == "cpu" else TorchDense(vectors, device)


__all__ = ["NumpyDense", "TorchDense", "dense_scorer"]
