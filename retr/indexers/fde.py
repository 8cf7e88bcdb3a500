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

GROUP_TOKENS = 1 << 13  # tokens encoded together (bounds the (tokens, r_reps, buckets) distance table)
_POPCOUNT = np.array([bin(i).count("1") for i in range(1 << 16)], dtype=np.uint8)


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
    _sketch_matrix: object = field(default=None, init=False, repr=False)

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
        """(len(token_sets), width) float32 encodings of queries (sums) or documents (averages).

        Vectorised over all the texts of a group (at most ``GROUP_TOKENS`` tokens): bucket sums by
        ``np.bincount``, the Hamming-nearest token of each empty bucket by a segment minimum.
        """
        out = np.zeros((len(token_sets), self.width), dtype=np.float32)
        start = 0
        while start < len(token_sets):
            end, tokens = start + 1, len(token_sets[start])
            while end < len(token_sets) and tokens + len(token_sets[end]) <= GROUP_TOKENS:
                tokens += len(token_sets[end])
                end += 1
            out[start:end] = self._encode_group([np.asarray(t, dtype=np.float32) for t in token_sets[start:end]], query)
            start = end
        return out

    def _encode_group(self, sets: list[np.ndarray], query: bool) -> np.ndarray:
        n, R, B, P = len(sets), self.r_reps, self.buckets, self.d_proj
        lengths = np.array([len(t) for t in sets], dtype=np.int64)
        blocks = np.zeros((n * R * B, P), dtype=np.float32)
        total = int(lengths.sum())
        if total:
            tokens = np.concatenate([t for t in sets if len(t)])
            ids = self.bucket_ids(tokens)  # (T, R)
            projected = np.ascontiguousarray(self.project(tokens))  # (T, R, P)
            doc = np.repeat(np.arange(n), lengths)
            flat = ((doc[:, None] * R + np.arange(R)[None, :]) * B + ids).ravel()  # block of each (token, r)
            rows = projected.reshape(total * R, P)
            for p in range(P):
                blocks[:, p] = np.bincount(flat, weights=rows[:, p], minlength=n * R * B)
            if not query:
                counts = np.bincount(flat, minlength=n * R * B)
                blocks /= np.maximum(counts, 1)[:, None]
                if self.fill_empty and (counts == 0).any():
                    self._fill(blocks.reshape(n, R, B, P), counts.reshape(n, R, B), ids, projected, lengths)
        encoding = blocks.reshape(n, R * B * P)
        if self.final_dim:
            encoding = np.asarray(encoding @ self._sketch(), dtype=np.float32)
        return encoding

    def _fill(self, blocks: np.ndarray, counts: np.ndarray, ids: np.ndarray, projected: np.ndarray,
              lengths: np.ndarray) -> None:
        """Empty bucket b of repetition r <- the document's first token whose bucket id is nearest to b (Hamming)."""
        R, B = self.r_reps, self.buckets
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        local = np.arange(len(ids)) - np.repeat(starts, lengths)
        shift = int(lengths.max()).bit_length()  # a key: distance above the token's place in its document
        kind = np.int32 if shift + 5 < 31 else np.int64
        hamming = _POPCOUNT[ids[:, :, None] ^ np.arange(B)[None, None, :]].astype(kind)  # (T, R, B)
        key = (hamming << shift) | local.astype(kind)[:, None, None]  # least distance, then first token
        docs = np.flatnonzero(lengths > 0)
        best = np.minimum.reduceat(key.reshape(len(ids), R * B), starts[docs], axis=0)  # (docs with tokens, R * B)
        token = (best & ((1 << shift) - 1)) + starts[docs][:, None]
        empty = counts[docs].reshape(len(docs), R * B) == 0
        d_idx, rb = np.nonzero(empty)
        blocks[docs[d_idx], rb // B, rb % B] = projected[token[d_idx, rb], rb // B]

    def _sketch(self) -> object:
        """The count-sketch as a sparse (width before sketch, final_dim) matrix of signs."""
        from scipy.sparse import csr_matrix

        if self._sketch_matrix is None:
            n = self.width_before_sketch
            self._sketch_matrix = csr_matrix((self.sketch_sign, (np.arange(n), self.sketch_index)),
                                             shape=(n, self.final_dim), dtype=np.float32)
        return self._sketch_matrix


def chamfer(query: np.ndarray, doc: np.ndarray) -> float:
    """Chamfer similarity sum_i max_j <q_i, d_j>, the score FDE inner products approximate."""
    return float((query @ doc.T).max(axis=1).sum())
