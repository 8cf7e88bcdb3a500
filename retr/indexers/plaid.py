"""PLAID: late-interaction search over ColBERTv2 residual-compressed token vectors.

Each document token is stored as one code row, a centroid id and a compressed residual
(``retr.quantizers.residual``: per-dimension bits, or residual PQ with ``residual=pq,m=...``),
never as floats; the codes are one memory-mapped ``.npy``. An inverted list maps each centroid to
the documents holding a token assigned to it (CSR arrays). A query runs in four stages:

1. candidate generation: each query token's ``nprobe`` best centroids, and the union of
   their documents;
2. centroid interaction with pruning: ``sum_i max_j <q_i, C[id_j]>`` over the tokens
   whose centroid scores at least ``t_cs`` for some query token; best ``ndocs`` kept;
3. centroid interaction without pruning on those; best ``ndocs / 4`` kept;
4. residuals of those documents decompressed, exact MaxSim, best ``k``.

``ndocs`` is raised to ``4 k`` when ``k`` is large, so stage 4 always sees ``k`` documents.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from retr.errors import RetrError
from retr.indexers.maxsim import as_token_matrices, maxsim_batch, token_rows, top_k
from retr.progress import progress_bar
from retr.quantizers.residual import ResidualQuantizer
from retr.storage import load_array, save_array

CODES_FILE, OFFSETS_FILE = "codes.npy", "offsets.npy"
IVF_OFFSETS_FILE, IVF_DOCS_FILE = "ivf_offsets.npy", "ivf_docs.npy"
QUANTIZER_DIR = "residual"


def _centroid_scores(qc: np.ndarray, cids: np.ndarray, seg: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
    """sum_i max_j qc[i, cids_j] per document segment (cids: centroid ids); pruned tokens (keep False) count 0."""
    n_docs = len(seg) - 1
    if keep is not None:
        kept_per_doc = np.add.reduceat(keep.astype(np.int64), seg[:-1]) if len(keep) else np.zeros(n_docs, np.int64)
        kept_per_doc[np.diff(seg) == 0] = 0
        cids = cids[keep]
        seg = np.concatenate([[0], np.cumsum(kept_per_doc)])
    out = np.zeros(n_docs, dtype=np.float32)
    lengths = np.diff(seg)
    nonempty = np.flatnonzero(lengths > 0)
    if len(nonempty):
        best = np.maximum.reduceat(qc[:, cids], seg[:-1][nonempty], axis=1)  # (q_len, docs)
        out[nonempty] = best.sum(0)
    return out


class PlaidIndex:
    """ColBERTv2 residual compression searched with PLAID's centroid interaction and pruning."""

    name = "plaid"
    kind = "multi"

    def __init__(self, nbits: int = 2, n_centroids: int = 0, nprobe: int = 2, t_cs: float = 0.45,
                 ndocs: int = 256, seed: int = 42, residual: str = "bits", m: int = 0) -> None:
        if nprobe < 1 or ndocs < 1:
            raise RetrError("plaid needs nprobe >= 1 and ndocs >= 1")
        self.nbits, self.n_centroids, self.nprobe, self.t_cs, self.ndocs, self.seed = (
            int(nbits), int(n_centroids), int(nprobe), float(t_cs), int(ndocs), int(seed))
        self.residual, self.m = residual, int(m)
        self.quantizer = ResidualQuantizer(nbits=self.nbits, n_centroids=self.n_centroids, seed=self.seed,
                                           residual=residual, m=self.m)
        self._codes = np.zeros((0, 0), dtype=np.uint8)  # (tokens, code_size), as the quantizer encodes them
        self._ids = np.zeros(0, dtype=np.int32)  # each token's centroid id, read from the codes (memory only)
        self._offsets = np.zeros(1, dtype=np.int64)
        self._ivf_offsets = np.zeros(1, dtype=np.int64)
        self._ivf_docs = np.zeros(0, dtype=np.int32)

    def config(self) -> dict[str, Any]:
        return {"nbits": self.nbits, "n_centroids": self.n_centroids, "nprobe": self.nprobe,
                "t_cs": self.t_cs, "ndocs": self.ndocs, "seed": self.seed, "residual": self.residual, "m": self.m}

    @property
    def dim(self) -> int | None:
        return self.quantizer.dim

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def add(self, reps: Any) -> None:
        docs = as_token_matrices(reps, self.dim, f"adding to a {self.name} index")
        if not docs:
            return
        lengths = np.array([len(d) for d in docs], dtype=np.int64)
        flat = np.concatenate(docs)
        if len(flat) == 0 and not self.quantizer.trained:
            raise RetrError("adding to a plaid index: the documents have no token vectors to train centroids on")
        if not self.quantizer.trained:  # later adds reuse the centroids trained on the first
            self.quantizer.train(flat)
        codes = self.quantizer.encode(flat) if len(flat) else np.zeros((0, self.quantizer.code_size), np.uint8)
        self._codes = codes if len(self._codes) == 0 else np.concatenate([np.asarray(self._codes), codes])
        self._ids = np.concatenate([self._ids, self.quantizer.centroid_ids(codes)])
        self._offsets = np.concatenate([self._offsets, self._offsets[-1] + np.cumsum(lengths)])
        self._build_ivf()

    def _build_ivf(self) -> None:
        """centroid -> sorted unique doc ids, as CSR (ivf_offsets, ivf_docs)."""
        n_c = len(self.quantizer.centroids)
        doc_of_token = np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self._offsets))
        pairs = np.unique(self._ids.astype(np.int64) * max(len(self), 1) + doc_of_token)
        cents, docs = pairs // max(len(self), 1), pairs % max(len(self), 1)
        self._ivf_offsets = np.concatenate([[0], np.cumsum(np.bincount(cents, minlength=n_c))]).astype(np.int64)
        self._ivf_docs = docs.astype(np.int32)

    def _search_one(self, query: np.ndarray, k: int, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        qc = query @ centroids.T  # (q_len, n_centroids)
        n_c = qc.shape[1]
        probe = min(self.nprobe, n_c)
        best = np.argpartition(-qc, probe - 1, axis=1)[:, :probe] if probe < n_c else np.tile(np.arange(n_c), (len(qc), 1))
        cents = np.unique(best)
        lists = [self._ivf_docs[self._ivf_offsets[c] : self._ivf_offsets[c + 1]] for c in cents]
        cand = np.unique(np.concatenate(lists)).astype(np.int64) if lists else np.zeros(0, np.int64)
        if len(cand) == 0:
            return np.zeros(0, np.float32), cand
        ndocs = max(self.ndocs, 4 * k)
        # stage 2: centroid interaction with pruning
        rows, seg = token_rows(self._offsets, cand)
        cids = self._ids[rows]
        keep = (qc.max(0) >= self.t_cs)[cids]
        approx = _centroid_scores(qc, cids, seg, keep)
        if len(cand) > ndocs:
            cand = np.sort(cand[top_k(approx[None], ndocs)[1][0]])
            rows, seg = token_rows(self._offsets, cand)
            cids = self._ids[rows]
        # stage 3: centroid interaction without pruning
        final = max(k, ndocs // 4)
        if len(cand) > final:
            approx = _centroid_scores(qc, cids, seg, None)
            cand = np.sort(cand[top_k(approx[None], final)[1][0]])
            rows, seg = token_rows(self._offsets, cand)
        # stage 4: decompress and score exactly
        tokens = self.quantizer.decode(np.asarray(self._codes[rows]))
        return maxsim_batch([query], tokens, seg)[0], cand

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self) == 0 or not self.quantizer.trained:
            raise RetrError("the index is empty: add documents before searching")
        qs = as_token_matrices(queries, self.dim, f"searching a {self.name} index")
        scores = np.full((len(qs), k), -np.inf, dtype=np.float32)
        ids = np.full((len(qs), k), -1, dtype=np.int64)
        centroids = np.asarray(self.quantizer.centroids, dtype=np.float32)
        with progress_bar(total=len(qs), desc=f"searching {self.name}", unit="query") as bar:
            for row, query in enumerate(qs):
                exact, cand = self._search_one(query, k, centroids)
                if len(cand):
                    s, order = top_k(exact[None], k)
                    found = order[0] >= 0
                    scores[row, found], ids[row, found] = s[0, found], cand[order[0, found]]
                bar.update(1)
        return scores, ids

    def save(self, directory: Path) -> None:
        if not self.quantizer.trained:
            raise RetrError("cannot save an empty plaid index: add documents first")
        save_array(directory / CODES_FILE, np.asarray(self._codes, dtype=np.uint8))
        save_array(directory / OFFSETS_FILE, self._offsets)
        save_array(directory / IVF_OFFSETS_FILE, self._ivf_offsets)
        save_array(directory / IVF_DOCS_FILE, self._ivf_docs)
        (directory / QUANTIZER_DIR).mkdir()
        self.quantizer.save(directory / QUANTIZER_DIR)

    @classmethod
    def load(cls, directory: Path, config: dict[str, Any], count: int) -> PlaidIndex:
        index = cls(**config)
        q = ResidualQuantizer.load(directory / QUANTIZER_DIR, index.quantizer.config())
        codes = load_array(directory / CODES_FILE)
        offsets = load_array(directory / OFFSETS_FILE)
        ivf_offsets, ivf_docs = load_array(directory / IVF_OFFSETS_FILE), load_array(directory / IVF_DOCS_FILE)
        n_c = len(q.centroids)
        ok = (
            codes.ndim == 2 and codes.dtype == np.uint8 and codes.shape[1] == q.code_size
            and offsets.ndim == 1 and offsets.dtype == np.int64 and len(offsets) == count + 1
            and offsets[0] == 0 and offsets[-1] == len(codes)
            and ivf_offsets.dtype == np.int64 and ivf_offsets.shape == (n_c + 1,)
            and ivf_offsets[0] == 0 and ivf_offsets[-1] == len(ivf_docs)
            and ivf_docs.ndim == 1 and ivf_docs.dtype == np.int32
        )
        if not ok:
            raise RetrError(
                f"{directory}: plaid arrays have the wrong shape or type, or do not match the manifest's "
                f"{count} documents; rebuild the index"
            )
        index.quantizer = q
        index._codes, index._offsets = codes, offsets
        index._ids = q.centroid_ids(codes)
        index._ivf_offsets, index._ivf_docs = ivf_offsets, ivf_docs
        return index
