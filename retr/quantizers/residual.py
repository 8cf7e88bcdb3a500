"""ColBERTv2 residual compression: nearest centroid id + a few bits per dimension of residual.

Spherical k-means (faiss) over a sample of the token vectors gives the centroids. Each
vector is stored as its nearest centroid's id (int32) and its residual ``x - C[id]``
quantised per dimension to ``nbits`` (1 or 2) bits: the bucket cut-offs are quantiles
of the residual distribution of each dimension, and a bucket decodes to its
mid-quantile value (its "weight"), as in ColBERTv2. Bits are packed with
``np.packbits``, so a 384-d vector costs 4 + 96 bytes at 2 bits (768 as float16).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from retr.errors import RetrError
from retr.storage import load_array, save_array

CENTROIDS_FILE, CUTOFFS_FILE, WEIGHTS_FILE = "centroids.npy", "cutoffs.npy", "weights.npy"
CHUNK = 16384  # vectors encoded or decoded at once


def auto_centroids(n_tokens: int) -> int:
    """The next power of two of 16 * sqrt(n_tokens), at most n_tokens."""
    target = max(1.0, 16 * np.sqrt(max(n_tokens, 1)))
    return int(max(1, min(n_tokens, 1 << int(np.ceil(np.log2(target))))))


def _normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class ResidualQuantizer:
    """Centroid id (int32) + ``nbits``-bit per-dimension residual, bits packed into uint8."""

    name = "residual"

    def __init__(self, nbits: int = 2, n_centroids: int = 0, niter: int = 10, sample: int = 65536,
                 seed: int = 42) -> None:
        if nbits not in (1, 2):
            raise RetrError(f"residual quantizer needs nbits 1 or 2, got {nbits}")
        if n_centroids < 0 or niter < 1 or sample < 1:
            raise RetrError("residual quantizer needs n_centroids >= 0 (0 = auto), niter >= 1 and sample >= 1")
        self.nbits, self.n_centroids, self.niter, self.sample, self.seed = (
            int(nbits), int(n_centroids), int(niter), int(sample), int(seed))
        self.centroids: np.ndarray | None = None  # (n_centroids, dim) float32, unit rows
        self.cutoffs: np.ndarray | None = None  # (dim, 2^nbits - 1) float32
        self.weights: np.ndarray | None = None  # (dim, 2^nbits) float32

    def config(self) -> dict[str, Any]:
        return {"nbits": self.nbits, "n_centroids": self.n_centroids, "niter": self.niter,
                "sample": self.sample, "seed": self.seed}

    @property
    def dim(self) -> int | None:
        return None if self.centroids is None else int(self.centroids.shape[1])

    @property
    def trained(self) -> bool:
        return self.centroids is not None

    @property
    def packed_size(self) -> int:
        """Bytes of packed residual per vector."""
        return (self._need_trained().shape[1] * self.nbits + 7) // 8

    @property
    def code_size(self) -> int:
        """Bytes per vector: 4 (centroid id) + the packed residual."""
        return 4 + self.packed_size

    def _need_trained(self) -> np.ndarray:
        if self.centroids is None:
            raise RetrError("the residual quantizer is not trained: call train() first")
        return self.centroids

    def _check(self, vectors: Any, what: str) -> np.ndarray:
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] == 0:
            raise RetrError(f"{what}: expected a non-empty (n, dim) matrix, got shape {x.shape}")
        if self.centroids is not None and x.shape[1] != self.centroids.shape[1]:
            raise RetrError(f"{what}: vectors have dimension {x.shape[1]}, the quantizer holds {self.centroids.shape[1]}")
        if not np.isfinite(x).all():
            raise RetrError(f"{what}: vectors contain NaN or infinity")
        return np.ascontiguousarray(x)

    def train(self, vectors: np.ndarray) -> None:
        import faiss

        x = self._check(vectors, "training the residual quantizer")
        rng = np.random.default_rng(self.seed)
        n_total = len(x)
        if len(x) > self.sample:
            x = x[np.sort(rng.choice(len(x), self.sample, replace=False))]
        k = min(self.n_centroids or auto_centroids(n_total), len(x))
        km = faiss.Kmeans(x.shape[1], k, niter=self.niter, spherical=True, seed=self.seed,
                          max_points_per_centroid=1 << 30, verbose=False)
        km.train(x)
        self.centroids = _normalize(np.asarray(km.centroids, dtype=np.float32))
        residuals = x - self.centroids[self.assign(x)]
        levels = 1 << self.nbits
        cut_q = np.arange(1, levels) / levels
        weight_q = (np.arange(levels) + 0.5) / levels
        self.cutoffs = np.quantile(residuals, cut_q, axis=0).T.astype(np.float32).copy()
        self.weights = np.quantile(residuals, weight_q, axis=0).T.astype(np.float32).copy()

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """Nearest centroid (largest inner product) of each vector, int32."""
        c = self._need_trained()
        out = np.empty(len(vectors), dtype=np.int32)
        for s in range(0, len(vectors), CHUNK):
            out[s : s + CHUNK] = np.argmax(np.asarray(vectors[s : s + CHUNK], np.float32) @ c.T, axis=1)
        return out

    def encode(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(codes int32 (n,), packed residuals uint8 (n, packed_size))."""
        x = self._check(vectors, "encoding with the residual quantizer")
        c = self._need_trained()
        codes = self.assign(x)
        dim = c.shape[1]
        packed = np.empty((len(x), self.packed_size), dtype=np.uint8)
        shifts = np.arange(self.nbits - 1, -1, -1, dtype=np.uint8)
        for s in range(0, len(x), CHUNK):
            res = x[s : s + CHUNK] - c[codes[s : s + CHUNK]]
            buckets = (res[:, :, None] > self.cutoffs[None]).sum(-1).astype(np.uint8)  # (n, dim)
            bits = (buckets[:, :, None] >> shifts) & 1  # (n, dim, nbits), most significant first
            packed[s : s + CHUNK] = np.packbits(bits.reshape(len(res), dim * self.nbits), axis=1)
        return codes, packed

    def decode(self, codes: np.ndarray, packed: np.ndarray) -> np.ndarray:
        """float32 (n, dim): centroid + dequantised residual, L2-normalised."""
        c = self._need_trained()
        codes, packed = np.asarray(codes), np.asarray(packed)
        dim = c.shape[1]
        if codes.ndim != 1 or packed.shape != (len(codes), self.packed_size) or packed.dtype != np.uint8:
            raise RetrError(f"decoding: expected codes (n,) and uint8 residuals (n, {self.packed_size}), "
                            f"got {codes.shape} and {packed.shape} {packed.dtype}")
        if len(codes) and (codes.min() < 0 or codes.max() >= len(c)):
            raise RetrError(f"decoding: centroid ids must lie in 0..{len(c) - 1}")
        out = np.empty((len(codes), dim), dtype=np.float32)
        weights = np.ascontiguousarray(self.weights.T)  # (levels, dim)
        cols = np.arange(dim)
        for s in range(0, len(codes), CHUNK):
            bits = np.unpackbits(packed[s : s + CHUNK], axis=1, count=dim * self.nbits).reshape(-1, dim, self.nbits)
            buckets = bits[:, :, 0].astype(np.intp)
            for b in range(1, self.nbits):
                buckets = (buckets << 1) | bits[:, :, b]
            out[s : s + CHUNK] = _normalize(c[codes[s : s + CHUNK]] + weights[buckets, cols])
        return out

    def save(self, directory: Path) -> None:
        self._need_trained()
        directory = Path(directory)
        save_array(directory / CENTROIDS_FILE, self.centroids)
        save_array(directory / CUTOFFS_FILE, self.cutoffs)
        save_array(directory / WEIGHTS_FILE, self.weights)

    @classmethod
    def load(cls, directory: Path, config: dict[str, Any] | None = None) -> ResidualQuantizer:
        directory = Path(directory)
        centroids = load_array(directory / CENTROIDS_FILE, mmap=False)
        cutoffs = load_array(directory / CUTOFFS_FILE, mmap=False)
        weights = load_array(directory / WEIGHTS_FILE, mmap=False)
        config = dict(config or {})
        if weights.ndim == 2:
            config.setdefault("nbits", int(np.log2(max(weights.shape[1], 1))))
        q = cls(**config)
        levels = 1 << q.nbits
        if (centroids.ndim != 2 or centroids.dtype != np.float32 or len(centroids) == 0
                or cutoffs.shape != (centroids.shape[1], levels - 1) or weights.shape != (centroids.shape[1], levels)
                or cutoffs.dtype != np.float32 or weights.dtype != np.float32):
            raise RetrError(f"{directory}: residual quantizer arrays have the wrong shape or type; rebuild it")
        q.centroids, q.cutoffs, q.weights = centroids, cutoffs, weights
        return q
