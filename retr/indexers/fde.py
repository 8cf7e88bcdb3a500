"""MUVERA fixed dimensional encodings (Dhulipala et al., 2024): one vector per token set.

Each of ``r_reps`` repetitions draws ``k_sim`` Gaussian hyperplanes; a token's SimHash
bits pick one of ``B = 2**k_sim`` buckets. Tokens are projected to ``d_proj`` dimensions
with a random ±1/sqrt(d_proj) matrix (none when ``d_proj`` equals the token width).
A query's block for bucket b is the SUM of its projected tokens there; a document's is
their AVERAGE, and an empty document bucket takes the token whose SimHash bits are
nearest (Hamming) to the bucket's. The blocks, concatenated (``r_reps * B * d_proj``
values), give ``<fde(q), fde(d)>`` ~ Chamfer(q, d) = sum_i max_j <q_i, d_j>.
An optional count-sketch (``final_dim``) shortens the encoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from retr.errors import RetrError


@dataclass
class FDE:
    """The random draws of one encoding: same settings and seed, same encoding."""

    dim: int
    r_reps: int = 20
    k_sim: int = 5
    d_proj: int = 16
    final_dim: int = 0
    fill_empty: bool = True
    seed: int = 42
    hyperplanes: np.ndarray = field(init=False, repr=False)
    projections: np.ndarray = field(init=False, repr=False)
    sketch_index: np.ndarray | None = field(default=None, init=False, repr=False)
    sketch_sign: np.ndarray | None = field(default=None, init=False, repr=False)
    _planes: np.ndarray = field(init=False, repr=False)  # (dim, r_reps * k_sim): one product for all repetitions
    _proj: np.ndarray | None = field(default=None, init=False, repr=False)  # (dim, r_reps * d_proj); None: identity

    def __post_init__(self) -> None:
        if self.r_reps < 1 or not 0 <= self.k_sim <= 16 or self.d_proj < 1 or self.final_dim < 0:
            raise RetrError("muvera needs r_reps >= 1, 0 <= k_sim <= 16, d_proj >= 1, final_dim >= 0")
        if self.d_proj > self.dim:
            raise RetrError(f"muvera d_proj={self.d_proj} exceeds the token width {self.dim}")
        rng = np.random.default_rng(self.seed)
        self.hyperplanes = rng.standard_normal((self.r_reps, self.dim, self.k_sim)).astype(np.float32)
        if self.d_proj == self.dim:
            proj = np.broadcast_to(np.eye(self.dim, dtype=np.float32), (self.r_reps, self.dim, self.dim))
        else:
            signs = rng.integers(0, 2, (self.r_reps, self.dim, self.d_proj)) * 2 - 1
            proj = signs.astype(np.float32) / np.sqrt(self.d_proj)
        self.projections = proj
        self._planes = np.ascontiguousarray(self.hyperplanes.transpose(1, 0, 2).reshape(self.dim, -1))
        if self.d_proj != self.dim:
            self._proj = np.ascontiguousarray(proj.transpose(1, 0, 2).reshape(self.dim, -1))
        if self.final_dim:
            self.sketch_index = rng.integers(0, self.final_dim, self.width_before_sketch)
            self.sketch_sign = (rng.integers(0, 2, self.width_before_sketch) * 2 - 1).astype(np.float32)

    @property
    def buckets(self) -> int:
        return 1 << self.k_sim

    @property
    def width_before_sketch(self) -> int:
        return self.r_reps * self.buckets * self.d_proj

    @property
    def width(self) -> int:
        return self.final_dim or self.width_before_sketch

    def bucket_ids(self, tokens: np.ndarray) -> np.ndarray:
        """(n, r_reps) bucket of each token in each repetition: its SimHash bits read as an integer."""
        bits = (tokens @ self._planes).reshape(len(tokens), self.r_reps, self.k_sim) > 0
        return bits.astype(np.int64) @ (1 << np.arange(self.k_sim, dtype=np.int64))

    def project(self, tokens: np.ndarray) -> np.ndarray:
        """(n, r_reps, d_proj) each token's projection in each repetition."""
        if self._proj is None:
            return np.broadcast_to(tokens[:, None, :], (len(tokens), self.r_reps, self.dim))
        return (tokens @ self._proj).reshape(len(tokens), self.r_reps, self.d_proj)

    def encode(self, token_sets: Sequence[np.ndarray], query: bool) -> np.ndarray:
        """(len(token_sets), width) float32 encodings of queries (sums) or documents (averages)."""
        out = np.zeros((len(token_sets), self.width), dtype=np.float32)
        for i, tokens in enumerate(token_sets):
            out[i] = self._encode_one(np.asarray(tokens, dtype=np.float32), query)
        return out

    def _encode_one(self, tokens: np.ndarray, query: bool) -> np.ndarray:
        n, R, B = len(tokens), self.r_reps, self.buckets
        blocks = np.zeros((R, B, self.d_proj), dtype=np.float32)
        if n:
            ids = self.bucket_ids(tokens)  # (n, R)
            projected = self.project(tokens)  # (n, R, d_proj)
            flat = (np.arange(R)[None, :] * B + ids).ravel()
            np.add.at(blocks.reshape(R * B, -1), flat, projected.reshape(n * R, -1))
            if not query:
                counts = np.bincount(flat, minlength=R * B).reshape(R, B)
                blocks /= np.maximum(counts, 1)[..., None]
                if self.fill_empty and (counts == 0).any():
                    self._fill(blocks, counts, ids, projected)
        encoding = blocks.ravel()
        if self.final_dim:
            encoding = np.bincount(self.sketch_index, weights=encoding * self.sketch_sign, minlength=self.final_dim)
        return encoding.astype(np.float32, copy=False)

    def _fill(self, blocks: np.ndarray, counts: np.ndarray, ids: np.ndarray, projected: np.ndarray) -> None:
        """Empty bucket b of repetition r <- the token whose bucket id is nearest to b in Hamming distance."""
        xor = ids[:, :, None] ^ np.arange(self.buckets)[None, None, :]  # (n, R, B)
        hamming = np.unpackbits(xor.astype(">u2").view(np.uint8).reshape(*xor.shape, 2), axis=-1).sum(-1)
        nearest = hamming.argmin(axis=0)  # (R, B): first token at least distance
        r_idx, b_idx = np.nonzero(counts == 0)
        blocks[r_idx, b_idx] = projected[nearest[r_idx, b_idx], r_idx]


def chamfer(query: np.ndarray, doc: np.ndarray) -> float:
    """Chamfer similarity sum_i max_j <q_i, d_j>, the score FDE inner products approximate."""
    return float((query @ doc.T).max(axis=1).sum())
