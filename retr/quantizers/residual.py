"""ColBERTv2 residual compression: nearest centroid id + a compressed residual, in one byte row.

Spherical k-means (``retr.quantizers.kmeans``: torch on a GPU, FAISS on the CPU) over a sample of
the token vectors gives the centroids, with at least 39 training points a centroid (FAISS's
guidance) and at most ``POINTS_PER_CENTROID``. Each
vector is stored as one uint8 row (the ``Quantizer`` protocol's code): its nearest
centroid's id, little-endian in 2 bytes (4 when there are more than 65,536 centroids),
followed by its residual ``x - C[id]`` compressed one of two ways (``residual``):

- ``bits`` (ColBERTv2): ``nbits`` (1, 2 or 4) bits per dimension; the bucket cut-offs are
  quantiles of each dimension's residual distribution and a bucket decodes to its
  mid-quantile value (its "weight"). Bits are packed with ``np.packbits``: a 384-d vector
  costs 2 + 96 bytes at 2 bits (768 as float16).
- ``pq``: a product quantizer over the residuals (faiss ``ProductQuantizer``, 8 bits per
  sub-vector), ``m`` sub-vectors of ``dim / m`` dimensions, one byte each, as in the
  residual PQ of EMVB (Nardini et al., 2024). It spends the same bytes on the directions
  the residuals vary in, not evenly on every dimension: 2 + 64 bytes at ``m=64``.
"""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from retr.errors import RetrError
from retr.indexers.faiss_index import check_finite
from retr.quantizers.kmeans import nearest_centroids, spherical_kmeans
from retr.quantizers.pq import pq_codebooks, set_pq_codebooks
from retr.storage import load_array, save_array

CENTROIDS_FILE, CUTOFFS_FILE, WEIGHTS_FILE = "centroids.npy", "cutoffs.npy", "weights.npy"
CODEBOOKS_FILE = "codebooks.npy"
RESIDUALS = ("bits", "pq")
PQ_BITS = 8  # bits per product-quantizer sub-code: one byte, 256 codewords per sub-space
PQ_SAMPLE = 64 << PQ_BITS  # residuals the codebooks train on: 64 per codeword (faiss trains slowly on more)
RESIDUAL_SAMPLE = 1 << 18  # residuals the codec is fitted on (bucket quantiles, or PQ's sample drawn from them)
CHUNK = 16384  # vectors encoded at once
QUANTILE_COLUMNS = 32  # residual dimensions whose quantiles are taken at once
MIN_POINTS_PER_CENTROID = 39  # FAISS warns below this many training points a centroid
POINTS_PER_CENTROID = 64  # training points a centroid, at most (the sample is drawn down to this)
NBITS = (1, 2, 4)


def auto_centroids(n_tokens: int, n_train: int | None = None) -> int:
    """ColBERT's next power of two of 16 * sqrt(n_tokens), at most one centroid per 39 of ``n_train`` points.

    The cap is not rounded down to a power of two: on 50K pypi-summaries documents (634K sampled
    tokens) that halved 16,384 centroids to 8,192 and PLAID's recall@10 of exact fell from 0.84 to 0.64.
    """
    target = max(1.0, 16 * np.sqrt(max(n_tokens, 1)))
    k = 1 << int(np.ceil(np.log2(target)))
    n_train = n_tokens if n_train is None else n_train
    return int(min(k, max(1, n_train // MIN_POINTS_PER_CENTROID)))


def id_bytes(n_centroids: int) -> int:
    """Bytes of a centroid id in a code: 2 up to 65,536 centroids, else 4."""
    return 2 if n_centroids <= 1 << 16 else 4


class ResidualQuantizer:
    """Centroid id + per-dimension residual bits (``residual=bits``) or residual PQ (``residual=pq``)."""

    name = "residual"

    def __init__(self, nbits: int = 2, n_centroids: int = 0, niter: int = 10, sample: int = 0,
                 seed: int = 42, residual: str = "bits", m: int = 0) -> None:
        if residual not in RESIDUALS:
            raise RetrError(f"residual quantizer: residual must be one of {', '.join(RESIDUALS)}, got {residual!r}")
        if residual == "bits" and nbits not in NBITS:
            raise RetrError(f"residual quantizer needs nbits 1, 2 or 4, got {nbits}")
        if residual == "pq" and m < 1:
            raise RetrError("residual quantizer with residual=pq needs m >= 1 sub-vectors (m must divide the dimension)")
        if n_centroids < 0 or niter < 1 or sample < 0:
            raise RetrError("residual quantizer needs n_centroids >= 0 (0 = auto), niter >= 1 and sample >= 0 "
                            "(0 = 64 points a centroid)")
        self.nbits, self.n_centroids, self.niter, self.sample, self.seed = (
            int(nbits), int(n_centroids), int(niter), int(sample), int(seed))
        self.residual, self.m = residual, int(m)
        self.centroids: np.ndarray | None = None  # (n_centroids, dim) float32, unit rows
        self.cutoffs: np.ndarray | None = None  # bits: (dim, 2^nbits - 1) float32
        self.weights: np.ndarray | None = None  # bits: (dim, 2^nbits) float32
        self.codebooks: np.ndarray | None = None  # pq: (m, 256, dim / m) float32
        self._table: np.ndarray | None = None  # decoding lookup, from the weights or codebooks (byte_table)
        self._pq: Any = None  # pq: a FAISS ProductQuantizer holding the codebooks, for encoding (faiss_pq)

    def config(self) -> dict[str, Any]:
        return {"nbits": self.nbits, "n_centroids": self.n_centroids, "niter": self.niter,
                "sample": self.sample, "seed": self.seed, "residual": self.residual, "m": self.m}

    @property
    def dim(self) -> int | None:
        return None if self.centroids is None else int(self.centroids.shape[1])

    @property
    def trained(self) -> bool:
        return self.centroids is not None

    @property
    def id_size(self) -> int:
        """Bytes of the centroid id at the start of each code."""
        return id_bytes(len(self._need_trained()))

    @property
    def residual_size(self) -> int:
        """Bytes of compressed residual per vector."""
        dim = self._need_trained().shape[1]
        return self.m if self.residual == "pq" else (dim * self.nbits + 7) // 8

    @property
    def code_size(self) -> int:
        """Bytes per vector: the centroid id, then the compressed residual."""
        return self.id_size + self.residual_size

    @property
    def table_bytes(self) -> int:
        """Bytes of the trained tables (centroids, cut-offs and weights or codebooks), shared by all codes."""
        self._need_trained()
        return sum(a.nbytes for a in (self.centroids, self.cutoffs, self.weights, self.codebooks) if a is not None)

    def _need_trained(self) -> np.ndarray:
        if self.centroids is None:
            raise RetrError("the residual quantizer is not trained: call train() first")
        return self.centroids

    def _check(self, vectors: Any, what: str, dtypes: tuple[type, ...] = (np.float32,)) -> np.ndarray:
        """``vectors`` as a C-contiguous matrix of the first of ``dtypes`` unless it is already one of them."""
        x = np.asarray(vectors)
        x = x if x.dtype in dtypes else x.astype(dtypes[0])
        if x.ndim != 2 or x.shape[0] == 0:
            raise RetrError(f"{what}: expected a non-empty (n, dim) matrix, got shape {x.shape}")
        if self.centroids is not None and x.shape[1] != self.centroids.shape[1]:
            raise RetrError(f"{what}: vectors have dimension {x.shape[1]}, the quantizer holds {self.centroids.shape[1]}")
        check_finite(x, what)
        return np.ascontiguousarray(x)

    def train(self, vectors: np.ndarray, n_total: int | None = None) -> None:
        """Centroids and residual codec from ``vectors``, a sample of ``n_total`` token vectors (default: all).

        A float16 sample is kept as it is (half the memory; k-means widens it a block at a time)."""
        x = self._check(vectors, "training the residual quantizer", (np.float32, np.float16))
        self._table = self._pq = None
        if self.residual == "pq" and x.shape[1] % self.m:
            raise RetrError(f"residual quantizer: m={self.m} does not divide the dimension {x.shape[1]}")
        rng = np.random.default_rng(self.seed)
        k = min(self.n_centroids or auto_centroids(n_total or len(x), len(x)), len(x))
        points = self.sample or k * POINTS_PER_CENTROID
        kmeans_points = x[np.sort(rng.choice(len(x), points, replace=False))] if len(x) > points else x
        self.centroids = spherical_kmeans(kmeans_points, k, niter=self.niter, seed=self.seed)
        # the residual codec's statistics need far fewer points than the centroids; residuals made in place
        if len(x) > RESIDUAL_SAMPLE:
            residuals = x[np.sort(rng.choice(len(x), RESIDUAL_SAMPLE, replace=False))].astype(np.float32, copy=False)
        else:
            residuals = x.astype(np.float32)  # a copy
        ids = self.assign(residuals)
        for s in range(0, len(residuals), CHUNK):
            residuals[s : s + CHUNK] -= self.centroids[ids[s : s + CHUNK]]
        if self.residual == "pq":
            if len(residuals) > PQ_SAMPLE:
                residuals = residuals[np.sort(rng.choice(len(residuals), PQ_SAMPLE, replace=False))]
            self.codebooks = _train_pq(residuals, self.m, self.seed)
            return
        levels = 1 << self.nbits
        cut_q = np.arange(1, levels) / levels
        weight_q = (np.arange(levels) + 0.5) / levels
        # a block of columns at a time: np.quantile sorts a copy of what it is given (the whole sample: 400 MB)
        qs = np.concatenate([cut_q, weight_q])
        both = np.concatenate([np.quantile(residuals[:, j : j + QUANTILE_COLUMNS], qs, axis=0)
                               for j in range(0, residuals.shape[1], QUANTILE_COLUMNS)], axis=1).T.astype(np.float32)
        self.cutoffs, self.weights = both[:, : levels - 1].copy(), both[:, levels - 1 :].copy()

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """Nearest centroid (largest inner product) of each vector, int32 (on a GPU when there is one)."""
        return nearest_centroids(vectors, self._need_trained())

    def centroid_ids(self, codes: np.ndarray) -> np.ndarray:
        """int32 (n,) centroid ids read from the first bytes of (n, code_size) codes."""
        codes = self._check_codes(codes)
        width = self.id_size
        ids = np.ascontiguousarray(codes[:, :width]).view("<u2" if width == 2 else "<u4")[:, 0]
        return ids.astype(np.int32)

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """uint8 codes (n, code_size): centroid id (little-endian), then the compressed residual."""
        x = self._check(vectors, "encoding with the residual quantizer")
        c = self._need_trained()
        ids = self.assign(x)
        width = self.id_size
        out = np.empty((len(x), self.code_size), dtype=np.uint8)
        out[:, :width] = ids.astype("<u2" if width == 2 else "<u4").view(np.uint8).reshape(len(x), width)

        def fill(s: int) -> None:
            out[s : s + CHUNK, width:] = self._encode_residuals(x[s : s + CHUNK] - c[ids[s : s + CHUNK]])

        # numpy releases the GIL in these array operations, so chunks encode on every core; faiss's PQ is threaded
        workers = 1 if self.residual == "pq" else os.cpu_count() or 1
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            list(pool.map(fill, range(0, len(x), CHUNK)))
        return out

    def _encode_residuals(self, res: np.ndarray) -> np.ndarray:
        if self.residual == "pq":
            # faiss's threaded compute_codes: 12x numpy's product-and-argmin a sub-space at a time (2 cores, m=192)
            return self.faiss_pq().compute_codes(np.ascontiguousarray(res, dtype=np.float32))
        buckets = np.zeros(res.shape, dtype=np.uint8)  # (n, dim): how many cut-offs each value exceeds
        for cut in self.cutoffs.T:
            buckets += res > cut
        # 8 / nbits buckets a byte, the first in the most significant bits (what np.packbits makes of their bits)
        per = 8 // self.nbits
        buckets = np.pad(buckets, ((0, 0), (0, -buckets.shape[1] % per)))
        packed = np.zeros((len(res), buckets.shape[1] // per), dtype=np.uint8)
        for j in range(per):
            packed |= buckets[:, j::per] << np.uint8(8 - self.nbits * (j + 1))
        return packed

    def _check_codes(self, codes: Any) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[1] != self.code_size or codes.dtype != np.uint8:
            raise RetrError(f"decoding: expected uint8 codes of shape (n, {self.code_size}), "
                            f"got {codes.shape} {codes.dtype}")
        return codes

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """float32 (n, dim): centroid + decompressed residual, L2-normalised, one row at a time in a compiled
        loop (``retr.kernels.decode_residuals``: numpy's gathers took 2 microseconds a 384-d row and held the GIL)."""
        from retr.kernels import decode_residuals

        c = self._need_trained()
        ids = self.centroid_ids(codes)
        if len(ids) and ids.max() >= len(c):
            raise RetrError(f"decoding: centroid ids must lie in 0..{len(c) - 1}")
        out = np.empty((len(ids), c.shape[1]), dtype=np.float32)
        if len(ids):
            decode_residuals(ids, np.asarray(codes)[:, self.id_size :], c, self.byte_table(), out)
        return out

    def faiss_pq(self) -> Any:
        """A FAISS ``ProductQuantizer`` holding the codebooks (``residual=pq``), made once: it encodes residuals."""
        if self._pq is None:
            import faiss

            m, _, dsub = self.codebooks.shape
            self._pq = faiss.ProductQuantizer(m * dsub, m, PQ_BITS)
            set_pq_codebooks(self._pq, self.codebooks, "residual PQ codebooks")
        return self._pq

    def byte_table(self) -> np.ndarray:
        """float32 (residual bytes, 256, values a byte): what byte ``j`` of a residual decodes to when it is ``b``
        (PQ: a codeword; bits: 8 / nbits bucket weights, the first in the most significant bits)."""
        if self._table is None:
            if self.residual == "pq":
                table = self.codebooks
            else:
                per, dim = 8 // self.nbits, len(self.weights)
                weights = np.pad(self.weights, ((0, -dim % per), (0, 0)))  # (bytes * per, levels)
                byte = np.arange(256)
                buckets = (byte[:, None] >> (8 - self.nbits * (np.arange(per) + 1))) & ((1 << self.nbits) - 1)
                rows = np.arange(len(weights)).reshape(-1, 1, per)  # (bytes, 1, per)
                table = weights[rows, buckets[None]]  # (bytes, 256, per)
            self._table = np.ascontiguousarray(table, dtype=np.float32)
        return self._table

    def torch_decoder(self, device: str) -> Callable[[Any], Any]:
        """``decode`` in torch on ``device``: uint8 code tensors (..., code_size) -> float32 (..., dim), unit rows.

        The same arithmetic as ``decode`` (bits unpacked most significant first, as ``np.packbits``
        packed them), so a GPU scores PLAID's codes tile by tile without a decompressed copy.
        """
        import torch

        c = self._need_trained()
        centroids = torch.from_numpy(c).to(device)
        dim, width = c.shape[1], self.id_size
        if self.residual == "pq":
            books = torch.from_numpy(self.codebooks).to(device)  # (m, 256, dim / m)
            sub = torch.arange(len(books), device=device)
        else:
            levels = 1 << self.nbits
            table = torch.from_numpy(self.weights).to(device).reshape(-1)  # weights[dim, bucket] flattened
            base = torch.arange(dim, device=device) * levels
            shifts = torch.arange(8 - self.nbits, -1, -self.nbits, device=device, dtype=torch.uint8)

        def decode(codes: Any) -> Any:
            lead, rows = codes.shape[:-1], codes.reshape(-1, codes.shape[-1])
            ids = self.torch_centroid_ids(rows)
            packed = rows[:, width:]
            if self.residual == "pq":
                residual = books[sub, packed.long()].reshape(len(rows), dim)
            else:
                buckets = ((packed.unsqueeze(-1) >> shifts) & (levels - 1)).reshape(len(rows), -1)[:, :dim]
                residual = table[base + buckets.long()]
            vectors = torch.nn.functional.normalize(centroids[ids] + residual, dim=-1)
            return vectors.reshape(*lead, dim)

        return decode

    def torch_centroid_ids(self, codes: Any) -> Any:
        """Long centroid ids of uint8 code tensors (..., code_size), read as ``centroid_ids`` reads them."""
        return sum(codes[..., i].long() << (8 * i) for i in range(self.id_size))

    def save(self, directory: Path) -> None:
        self._need_trained()
        directory = Path(directory)
        save_array(directory / CENTROIDS_FILE, self.centroids)
        if self.residual == "pq":
            save_array(directory / CODEBOOKS_FILE, self.codebooks)
        else:
            save_array(directory / CUTOFFS_FILE, self.cutoffs)
            save_array(directory / WEIGHTS_FILE, self.weights)

    @classmethod
    def load(cls, directory: Path, config: dict[str, Any] | None = None) -> ResidualQuantizer:
        directory = Path(directory)
        config = dict(config or {})
        centroids = load_array(directory / CENTROIDS_FILE, mmap=False)
        if config.get("residual", "bits") == "pq":
            q = cls(**config)
            codebooks = load_array(directory / CODEBOOKS_FILE, mmap=False)
            ok = (codebooks.ndim == 3 and codebooks.dtype == np.float32
                  and codebooks.shape[:2] == (q.m, 1 << PQ_BITS) and q.m * codebooks.shape[2] == centroids.shape[1])
            q.codebooks = codebooks
        else:
            cutoffs = load_array(directory / CUTOFFS_FILE, mmap=False)
            weights = load_array(directory / WEIGHTS_FILE, mmap=False)
            if weights.ndim == 2:
                config.setdefault("nbits", int(np.log2(max(weights.shape[1], 1))))
            q = cls(**config)
            levels = 1 << q.nbits
            ok = (cutoffs.shape == (centroids.shape[1], levels - 1) and weights.shape == (centroids.shape[1], levels)
                  and cutoffs.dtype == np.float32 and weights.dtype == np.float32)
            q.cutoffs, q.weights = cutoffs, weights
        if not ok or centroids.ndim != 2 or centroids.dtype != np.float32 or len(centroids) == 0:
            raise RetrError(f"{directory}: residual quantizer arrays have the wrong shape or type; rebuild it")
        q.centroids = centroids
        return q


def _train_pq(residuals: np.ndarray, m: int, seed: int) -> np.ndarray:
    """(m, 256, dim / m) float32 codebooks of a faiss ProductQuantizer trained on the residuals."""
    import faiss

    dim = residuals.shape[1]
    if len(residuals) < 1 << PQ_BITS:
        raise RetrError(f"residual quantizer with residual=pq needs at least {1 << PQ_BITS} training vectors, "
                        f"got {len(residuals)}")
    pq = faiss.ProductQuantizer(dim, m, PQ_BITS)
    pq.cp.seed = seed
    pq.train(np.ascontiguousarray(residuals))
    return pq_codebooks(pq)
