"""Spherical k-means for centroid tables (PLAID's): torch on a GPU when there is one, FAISS on the CPU.

Both start from ``k`` distinct sampled points (seeded), assign by largest inner product,
and re-normalise each centroid to unit length; an emptied cell takes a random point. The
GPU version makes PLAID's training on millions of token vectors a matter of seconds.
Points may be float16 (half the memory of a large sample): both versions widen them a block
at a time (FAISS through a float16 codec, ``Clustering.train_encoded``), never all at once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from retr.errors import RetrError

ASSIGN_ROWS = 1 << 14  # points assigned to centroids at once, at most
ASSIGN_CELLS = 1 << 24  # point-centroid scores computed at once on the CPU (64 MB; 16K x 22K centroids was 1.5 GB)


def normalize_rows(x: Any) -> Any:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _gpu() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return "cuda" if torch.cuda.is_available() else None


def nearest_centroids(x: np.ndarray, centroids: np.ndarray, device: str | None = None) -> np.ndarray:
    """int32 (n,): each row's centroid of largest inner product (torch on a GPU when there is one)."""
    device = device if device is not None else _gpu()
    out = np.empty(len(x), dtype=np.int32)
    if device is None:
        rows = max(1, min(ASSIGN_ROWS, ASSIGN_CELLS // max(len(centroids), 1)))
        for s in range(0, len(x), rows):
            out[s : s + rows] = np.argmax(np.asarray(x[s : s + rows], np.float32) @ centroids.T, axis=1)
        return out
    import torch

    c = torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32)).to(device)
    for s in range(0, len(x), ASSIGN_ROWS):
        block = torch.from_numpy(np.ascontiguousarray(x[s : s + ASSIGN_ROWS], dtype=np.float32)).to(device)
        out[s : s + len(block)] = (block @ c.T).argmax(1).int().cpu().numpy()
    return out


def spherical_kmeans(x: np.ndarray, k: int, niter: int = 10, seed: int = 42, device: str | None = None) -> np.ndarray:
    """(k, dim) float32 unit centroids of the rows of ``x`` ((n, dim) float32 or float16, n >= k)."""
    if not 1 <= k <= len(x):
        raise RetrError(f"k-means needs 1 <= k <= the number of points ({len(x)}), got k={k}")
    device = device if device is not None else _gpu()
    if device is None:
        return _faiss_kmeans(x, k, niter, seed)
    return _torch_kmeans(x, k, niter, seed, device)


def _faiss_kmeans(x: np.ndarray, k: int, niter: int, seed: int) -> np.ndarray:
    import faiss

    params = faiss.ClusteringParameters()
    params.niter, params.spherical, params.seed = niter, True, seed
    params.max_points_per_centroid, params.min_points_per_centroid, params.verbose = 1 << 30, 1, False
    clustering, index = faiss.Clustering(x.shape[1], k, params), faiss.IndexFlatIP(x.shape[1])
    if x.dtype == np.float16:  # decoded a block at a time by FAISS
        codec = faiss.IndexScalarQuantizer(x.shape[1], faiss.ScalarQuantizer.QT_fp16)
        clustering.train_encoded(np.ascontiguousarray(x).view(np.uint8), codec, index)
    else:
        clustering.train(np.ascontiguousarray(x, dtype=np.float32), index)
    return normalize_rows(faiss.vector_to_array(clustering.centroids).reshape(k, x.shape[1]))


def _torch_kmeans(x: np.ndarray, k: int, niter: int, seed: int, device: str) -> np.ndarray:
    import torch

    rng = np.random.default_rng(seed)
    half = x.dtype == np.float16
    points = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float16 if half else np.float32)).to(device)
    centroids = points[torch.from_numpy(rng.choice(len(x), k, replace=False)).to(device)].float()
    for _ in range(niter):
        sums = torch.zeros_like(centroids)
        counts = torch.zeros(k, device=device)
        for start in range(0, len(points), ASSIGN_ROWS):
            block = points[start : start + ASSIGN_ROWS].float()
            assign = (block @ centroids.T).argmax(1)
            sums.index_add_(0, assign, block)
            counts += torch.bincount(assign, minlength=k).float()
        empty = counts == 0
        if empty.any():
            refill = torch.from_numpy(rng.choice(len(x), int(empty.sum()), replace=False)).to(device)
            sums[empty] = points[refill].float()
        centroids = torch.nn.functional.normalize(sums, dim=1)
    return centroids.cpu().numpy().astype(np.float32)
