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

``nprobe``, ``t_cs`` and ``ndocs`` follow the search depth k unless set (ColBERT's defaults:
k <= 10: 2 probes, 0.45, 256 documents; k <= 100: 2, 0.45, 1024; deeper: 4, 0.4, 4 k or 4096);
``ndocs`` is at least ``4 k``, so stage 4 always sees ``k`` documents. The centroids train on
the tokens of a seeded sample of ``16 sqrt(120 n)`` documents (ColBERT's), on a GPU when
there is one, and later chunks of the corpus are only encoded.

On a torch device (``use_device``) the stages change: centroid interaction without pruning runs
over every document, reading each token's centroid id straight off its code row (nothing is
decoded and there is no candidate generation: exhaustive is cheap there), and the best ``ndocs``
(by default 4 times ColBERT's) are decoded tile by tile and scored exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from retr.errors import RetrError
from retr.indexers.maxsim import as_token_matrices
from retr.progress import progress_bar
from retr.quantizers.residual import ResidualQuantizer
from retr.scoring import TorchTokens, maxsim_batch, token_rows, top_k
from retr.scoring.device import torch_device
from retr.storage import GrowingArray, load_array, save_array

CODES_FILE, OFFSETS_FILE = "codes.npy", "offsets.npy"
IVF_OFFSETS_FILE, IVF_DOCS_FILE = "ivf_offsets.npy", "ivf_docs.npy"
QUANTIZER_DIR = "residual"
# on a torch device ndocs defaults to this many times ColBERT's: decoding more documents costs little there
# (100K pypi-summaries documents, k=10, nbits=4 on an H200: ndocs 256 -> recall@10 0.908, 1024 -> 0.924 at 213 q/s)
DEVICE_DEPTH = 4


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


def search_settings(k: int) -> tuple[int, float, int]:
    """(nprobe, t_cs, ndocs) for a search of depth ``k``: ColBERT's PLAID defaults, deeper for deeper k."""
    if k <= 10:
        return 2, 0.45, 256
    if k <= 100:
        return 2, 0.45, 1024
    return 4, 0.4, max(4 * k, 4096)


def training_docs(n: int) -> int:
    """Documents whose tokens train the centroids: ColBERT's 16 * sqrt(120 * n), at most n."""
    return min(n, int(16 * np.sqrt(120 * n)))


class PlaidIndex:
    """ColBERTv2 residual compression searched with PLAID's centroid interaction and pruning.

    ``nprobe``, ``t_cs`` and ``ndocs`` left unset follow the search depth k (``search_settings``).
    """

    name = "plaid"
    kind = "multi"

    def __init__(self, nbits: int = 4, n_centroids: int = 0, nprobe: int | None = None, t_cs: float | None = None,
                 ndocs: int | None = None, seed: int = 42, residual: str = "bits", m: int = 0) -> None:
        if (nprobe is not None and nprobe < 1) or (ndocs is not None and ndocs < 1):
            raise RetrError("plaid needs nprobe >= 1 and ndocs >= 1 (or leave them unset: they follow k)")
        self.nbits, self.n_centroids, self.seed = int(nbits), int(n_centroids), int(seed)
        self.nprobe = None if nprobe is None else int(nprobe)
        self.t_cs = None if t_cs is None else float(t_cs)
        self.ndocs = None if ndocs is None else int(ndocs)
        self.residual, self.m = residual, int(m)
        self.quantizer = ResidualQuantizer(nbits=self.nbits, n_centroids=self.n_centroids, seed=self.seed,
                                           residual=residual, m=self.m)
        self._codes = GrowingArray(np.uint8)  # (tokens, code_size), as the quantizer encodes them
        self._ids = GrowingArray(np.int32, ())  # each token's centroid id, read from the codes (memory only)
        self._offsets = GrowingArray(np.int64, ())
        self._offsets.append(np.zeros(1, dtype=np.int64))
        self._end = 0
        self._ivf: tuple[np.ndarray, np.ndarray] | None = None  # centroid -> documents (CSR offsets, doc ids)
        self.device = "cpu"
        self._scorer: Any = None  # on a torch device: the code store in tiers (TorchTokens), and the centroids
        self._centroids: Any = None

    def config(self) -> dict[str, Any]:
        return {"nbits": self.nbits, "n_centroids": self.n_centroids, "nprobe": self.nprobe,
                "t_cs": self.t_cs, "ndocs": self.ndocs, "seed": self.seed, "residual": self.residual, "m": self.m}

    @property
    def dim(self) -> int | None:
        return self.quantizer.dim

    @property
    def trained(self) -> bool:
        return self.quantizer.trained

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @property
    def codes(self) -> np.ndarray:
        """uint8 (tokens, code_size): every document token's code row."""
        return self._codes.array

    @property
    def offsets(self) -> np.ndarray:
        """int64 (documents + 1,): document i owns code rows offsets[i]:offsets[i+1]."""
        return self._offsets.array

    def training_size(self, n: int) -> int:
        return training_docs(n)

    def empty(self) -> PlaidIndex:
        """A new empty index of the same settings sharing these centroids and residual codec (a new segment)."""
        new = PlaidIndex(**self.config())
        new.quantizer = self.quantizer
        return new

    def train(self, reps: Any, n: int) -> None:
        """Centroids from the tokens of a sample of documents (``n`` documents in all)."""
        docs = as_token_matrices(reps, self.dim, f"training a {self.name} index")
        flat = np.concatenate(docs) if docs else np.zeros((0, 0), np.float32)
        if len(flat) == 0:
            raise RetrError("training a plaid index: the documents have no token vectors to train centroids on")
        self.quantizer.train(flat, int(round(len(flat) / max(len(docs), 1) * n)))

    def stage(self, directory: Path) -> None:
        if len(self):
            raise RetrError("a plaid index can be staged on disk only before documents are added")
        self._codes = self._codes.staged(directory / CODES_FILE)
        self._offsets = GrowingArray(np.int64, (), directory / OFFSETS_FILE)
        self._offsets.append(np.zeros(1, dtype=np.int64))

    def use_device(self, device: str) -> None:
        """Search on ``device``: PLAID's four stages on the CPU, centroid interaction over every document
        then exact scoring of the best ``ndocs`` on a torch device (see the module's docstring)."""
        self.device, self._scorer = device, None

    def add(self, reps: Any) -> None:
        docs = as_token_matrices(reps, self.dim, f"adding to a {self.name} index")
        if not docs:
            return
        self._scorer = None
        if not self.trained:  # not trained on a sample first: train on these
            self.train(docs, len(docs))
        lengths = np.array([len(d) for d in docs], dtype=np.int64)
        flat = np.concatenate(docs)
        codes = self.quantizer.encode(flat) if len(flat) else np.zeros((0, self.quantizer.code_size), np.uint8)
        self._codes.append(codes)
        self._ids.append(self.quantizer.centroid_ids(codes))
        self._offsets.append(self._end + np.cumsum(lengths))
        self._end += len(flat)
        self._ivf = None

    def _lists(self) -> tuple[np.ndarray, np.ndarray]:
        """centroid -> sorted unique doc ids, as CSR (ivf_offsets, ivf_docs), built once after the adds."""
        if self._ivf is None:
            n_c, n = len(self.quantizer.centroids), max(len(self), 1)
            doc_of_token = np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self._offsets.array))
            pairs = np.unique(self._ids.array.astype(np.int64) * n + doc_of_token)
            cents, docs = pairs // n, pairs % n
            offsets = np.concatenate([[0], np.cumsum(np.bincount(cents, minlength=n_c))]).astype(np.int64)
            self._ivf = offsets, docs.astype(np.int32)
        return self._ivf

    def _search_one(self, query: np.ndarray, k: int, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        auto_probe, auto_t_cs, auto_ndocs = search_settings(k)
        nprobe = self.nprobe or auto_probe
        t_cs = auto_t_cs if self.t_cs is None else self.t_cs
        ndocs = max(self.ndocs or auto_ndocs, 4 * k)
        ivf_offsets, ivf_docs = self._lists()
        offsets, ids = self._offsets.array, self._ids.array
        qc = query @ centroids.T  # (q_len, n_centroids)
        n_c = qc.shape[1]
        probe = min(nprobe, n_c)
        best = np.argpartition(-qc, probe - 1, axis=1)[:, :probe] if probe < n_c else np.tile(np.arange(n_c), (len(qc), 1))
        lists = [ivf_docs[ivf_offsets[c] : ivf_offsets[c + 1]] for c in np.unique(best)]
        cand = np.unique(np.concatenate(lists)).astype(np.int64) if lists else np.zeros(0, np.int64)
        if len(cand) == 0:
            return np.zeros(0, np.float32), cand
        # stage 2: centroid interaction with pruning
        rows, seg = token_rows(offsets, cand)
        cids = ids[rows]
        keep = (qc.max(0) >= t_cs)[cids]
        approx = _centroid_scores(qc, cids, seg, keep)
        if len(cand) > ndocs:
            cand = np.sort(cand[top_k(approx[None], ndocs)[1][0]])
            rows, seg = token_rows(offsets, cand)
            cids = ids[rows]
        # stage 3: centroid interaction without pruning
        final = max(k, ndocs // 4)
        if len(cand) > final:
            approx = _centroid_scores(qc, cids, seg, None)
            cand = np.sort(cand[top_k(approx[None], final)[1][0]])
            rows, seg = token_rows(offsets, cand)
        # stage 4: decompress and score exactly
        tokens = self.quantizer.decode(np.asarray(self._codes.array[rows]))
        return maxsim_batch([query], tokens, seg)[0], cand

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self) == 0 or not self.quantizer.trained:
            raise RetrError("the index is empty: add documents before searching")
        qs = as_token_matrices(queries, self.dim, f"searching a {self.name} index")
        if self.device != "cpu":
            return self._search_on_device(qs, k)
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

    def _search_on_device(self, qs: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Centroid interaction over every document (read off the codes, nothing decoded), the best ``ndocs``
        decoded and scored exactly; every document scored exactly when ``ndocs`` covers the index."""
        import torch

        if self._scorer is None:
            device = torch_device(self.device)
            self._scorer = TorchTokens(self.codes, self.offsets, self.device, dim=self.dim,
                                       decode=self.quantizer.torch_decoder(device))
            self._centroids = torch.from_numpy(np.asarray(self.quantizer.centroids, np.float32)).to(
                device, dtype=self._scorer.dtype)
        depth = max(self.ndocs or DEVICE_DEPTH * search_settings(k)[2], 4 * k)
        if depth >= len(self):
            return self._scorer.search(qs, k)
        return self._scorer.search_coarse(qs, k, depth, lambda q: q @ self._centroids.T,
                                          self.quantizer.torch_centroid_ids)

    def save(self, directory: Path) -> None:
        if not self.quantizer.trained:
            raise RetrError("cannot save an empty plaid index: add documents first")
        ivf_offsets, ivf_docs = self._lists()
        self._codes.save(directory / CODES_FILE)
        self._offsets.save(directory / OFFSETS_FILE)
        save_array(directory / IVF_OFFSETS_FILE, ivf_offsets)
        save_array(directory / IVF_DOCS_FILE, ivf_docs)
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
        index._codes, index._offsets, index._end = GrowingArray.of(codes), GrowingArray.of(offsets), len(codes)
        index._ids = GrowingArray.of(q.centroid_ids(codes))
        index._ivf = ivf_offsets, ivf_docs
        return index
