"""PLAID: late-interaction search over ColBERTv2 residual-compressed token vectors.

Each document token is stored as one code row, a centroid id and a compressed residual
(``retr.quantizers.residual``: per-dimension bits, or residual PQ with ``residual=pq,m=...``),
never as floats; the codes are one memory-mapped ``.npy``. An inverted list maps each centroid to
the documents holding a token assigned to it (CSR arrays). A query runs in four stages:

1. candidate generation: each query token reads the lists of its ``nprobe`` best centroids;
2. centroid interaction off those lists (``probed_scores``): ``sum_i max_j <q_i, C[id_j]>``
   over each reached document's centroids, a centroid token i did not probe counting as the
   best score it skipped (an upper bound; ``t_cs`` set: centroids scoring below it are not
   probed); best ``ndocs`` kept. PLAID's pruning with ``t_cs`` and its 2-4 probes are
   calibrated for trained ColBERTv2 vectors: on zero-shot MiniLM tokens they kept 0.58-0.79
   of the exact top 10; probing 1 / 256 of the centroids keeps 0.89-0.91 (bench/results/depth.md);
3. centroid interaction over every token of those; best ``ndocs / 4`` kept;
4. residuals of those documents decompressed, exact MaxSim, best ``k``.

``nprobe`` and ``ndocs`` follow the search depth k, the number of centroids and the corpus size unless
set (``search_settings``); ``ndocs`` is at least ``4 k``, so stage 4 always sees ``k`` documents.
The four stages of a query are one compiled call without the GIL (``retr.kernels.plaid_query``), so a
batch's query threads run side by side on every core; the queries' centroid scores are one product a block.
The centroids train on the tokens of a seeded sample of ``16 sqrt(120 n)`` documents (ColBERT's),
on a GPU when there is one, and later chunks of the corpus are only encoded.

On a torch device (``use_device``) the stages change: centroid interaction without pruning runs
over every document, reading each token's centroid id straight off its code row (nothing is
decoded and there is no candidate generation: exhaustive is cheap there), and the best ``ndocs``
(by default 4 times ColBERT's) are decoded tile by tile and scored exactly.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from retr.errors import RetrError
from retr.indexers.maxsim import as_token_matrices, check_documents, stack_tokens
from retr.progress import progress_bar
from retr.quantizers.residual import ResidualQuantizer
from retr.scoring import TorchTokens
from retr.scoring.device import torch_device
from retr.storage import GrowingArray, load_array, save_array

CODES_FILE, OFFSETS_FILE = "codes.npy", "offsets.npy"
IVF_OFFSETS_FILE, IVF_DOCS_FILE = "ivf_offsets.npy", "ivf_docs.npy"
QUANTIZER_DIR = "residual"
# a CPU search probes 1 / PROBE_SHARE of the centroids per query token and keeps CPU_DEPTH times ColBERT's ndocs
# (search_settings; 100K pypi-summaries documents, k=10, 16,384 centroids: 1/512 -> recall@10 0.898, 1/256 -> 0.903,
# 1/128 -> 0.906 at ndocs 1024; ndocs 2048 -> 0.92 at two thirds of the rate: bench/results/depth.md)
PROBE_SHARE = 256
CPU_DEPTH = 4
QC_CELLS = 1 << 25  # query-token x centroid scores computed at once by a CPU search (128 MiB)
# on a torch device ndocs defaults to this many times ColBERT's: decoding more documents costs little there
# (100K pypi-summaries documents, k=10, nbits=4 on an H200: ndocs 256 -> recall@10 0.908, 1024 -> 0.924 at 213 q/s)
DEVICE_DEPTH = 4


def _centroid_scores(qc: np.ndarray, cids: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """sum_i max_j qc[i, cids_j] per document segment (cids: the documents' token centroid ids)."""
    from retr.kernels import centroid_maxsum

    return centroid_maxsum(np.ascontiguousarray(qc.T), cids, seg[:-1], seg[1:])


def probed_scores(qc: np.ndarray, nprobe: int, t_cs: float | None, ivf_offsets: np.ndarray, ivf_docs: np.ndarray,
                  n_docs: int) -> tuple[np.ndarray, np.ndarray]:
    """Centroid interaction read off the inverted lists: (documents reached, their scores).

    Query token i looks up its ``nprobe`` best centroids' lists (only those scoring above ``t_cs``
    when set); a document scores ``sum_i max_j qc[i, C_j]`` over the centroids of its tokens, where
    a centroid token i did not look up counts as the best score it skipped, an upper bound. The work
    is the lists' lengths, never every document: generation and pruning (PLAID's stages 1 and 2) in one pass
    (the compiled ``probe_floors`` and ``probed_totals`` that ``plaid_query`` runs).
    """
    from retr.kernels import probe_floors, probed_totals

    qc = np.ascontiguousarray(qc, dtype=np.float32)
    floors = probe_floors(qc, nprobe, -np.inf if t_cs is None else t_cs)
    total = probed_totals(qc, floors, ivf_offsets, ivf_docs, n_docs)
    reached = np.flatnonzero(total)
    return reached, total[reached] + floors.sum()


def colbert_ndocs(k: int) -> int:
    """ColBERT's PLAID ``ndocs`` for a search of depth ``k``: documents kept after centroid interaction."""
    return 256 if k <= 10 else 1024 if k <= 100 else max(4 * k, 4096)


def search_settings(k: int, n_centroids: int, n_docs: int) -> tuple[int, int]:
    """(nprobe, ndocs) of a CPU search of depth ``k`` over ``n_centroids`` centroids and ``n_docs`` documents.

    Each query token probes 1 / PROBE_SHARE of the centroids (ColBERT's 2 or 4 probes are far
    too few for a zero-shot encoder), so the probes grow with the corpus as the centroids do; ``ndocs``
    is ``CPU_DEPTH`` times ColBERT's while that stays under a quarter of the corpus, else ColBERT's: on a
    small corpus the centroid interaction already ranks most documents, and decoding most of them costs
    more than exact scoring would (Cranfield, 1,398 documents, k=100: 4x ColBERT's ndocs kept recall@100 of
    exact at 0.892 for 168 ms a query, ColBERT's 0.886 for 52 ms).
    """
    ndocs = colbert_ndocs(k)
    return (max(2 if k <= 100 else 4, n_centroids // PROBE_SHARE),
            CPU_DEPTH * ndocs if CPU_DEPTH * ndocs <= n_docs // 4 else ndocs)


def training_docs(n: int) -> int:
    """Documents whose tokens train the centroids: ColBERT's 16 * sqrt(120 * n), at most n."""
    return min(n, int(16 * np.sqrt(120 * n)))


class PlaidIndex:
    """ColBERTv2 residual compression searched with PLAID's centroid interaction and pruning.

    ``nprobe`` and ``ndocs`` left unset follow k, the centroids and the corpus size (``search_settings``);
    ``t_cs`` unset prunes nothing.
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
        what = f"training a {self.name} index"
        # float16: half the memory of the largest thing a build holds (1.35 GB at 100K pypi-summaries documents);
        # the sample's cached rows are read (and checked) a block at a time, not all kept mapped beside their copy
        docs = as_token_matrices(reps, self.dim, what, finite=False)
        flat = stack_tokens(docs, dtype=np.float16, what=what)
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
        what = f"adding to a {self.name} index"
        docs = as_token_matrices(reps, self.dim, what, finite=False)
        if not docs:
            return
        lengths = np.array([len(d) for d in docs], dtype=np.int64)
        flat = np.concatenate(docs)
        check_documents(flat, lengths, what)
        self._scorer = None
        if not self.trained:  # not trained on a sample first: train on these
            self.train(docs, len(docs))
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

    def _search_one(self, query: np.ndarray, qc: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """PLAID's stages for one query (``qc``: its centroid scores), one compiled call (``plaid_query``):
        (exact scores, their documents), best first, at most ``k``."""
        from retr.kernels import plaid_query

        nprobe, t_cs, ndocs = self._settings(k)
        ivf_offsets, ivf_docs = self._lists()
        q = self.quantizer
        return plaid_query(np.ascontiguousarray(query, dtype=np.float32), qc, nprobe,
                           -np.inf if t_cs is None else t_cs, ndocs, max(k, ndocs // 4), k, ivf_offsets, ivf_docs,
                           np.asarray(self._offsets.array), self._ids.array, np.asarray(self._codes.array),
                           q.id_size, q.centroids, q.byte_table())

    def _settings(self, k: int) -> tuple[int, float | None, int]:
        """(nprobe, t_cs, ndocs) of a CPU search of depth ``k``: the index's own, else ``search_settings``."""
        auto_probe, auto_ndocs = search_settings(k, len(self.quantizer.centroids), len(self))
        return self.nprobe or auto_probe, self.t_cs, max(self.ndocs or auto_ndocs, 4 * k)

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self) == 0 or not self.quantizer.trained:
            raise RetrError("the index is empty: add documents before searching")
        qs = as_token_matrices(queries, self.dim, f"searching a {self.name} index")
        if self.device != "cpu":
            return self._search_on_device(qs, k)
        scores = np.full((len(qs), k), -np.inf, dtype=np.float32)
        ids = np.full((len(qs), k), -1, dtype=np.int64)
        if not qs:
            return scores, ids
        centroids = np.asarray(self.quantizer.centroids, dtype=np.float32)
        block = max(1, QC_CELLS // (max(len(q) for q in qs) * len(centroids)))  # queries whose centroid scores fit
        # queries run in threads, each query one compiled call without the GIL (retr.kernels.plaid_query) whose
        # small products use one BLAS thread; the centroid scores of a block of queries are one product on every
        # core. One query (or one core) runs here, without a pool or a BLAS limit to set up (~1 ms each).
        workers = min(os.cpu_count() or 1, len(qs))
        with (progress_bar(total=len(qs), desc=f"searching {self.name}", unit="query") as bar,
              concurrent.futures.ThreadPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool):
            for start in range(0, len(qs), block):
                part = qs[start : start + block]
                qcs = np.split(np.concatenate(part) @ centroids.T, np.cumsum([len(q) for q in part])[:-1])
                with threadpool_limits(1, user_api="blas") if pool else contextlib.nullcontext():
                    found = (pool.map if pool else map)(lambda q, qc: self._search_one(q, qc, k), part, qcs)
                    for row, (s, top) in enumerate(found, start):
                        scores[row, : len(s)], ids[row, : len(s)] = s, top
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
        depth = max(self.ndocs or DEVICE_DEPTH * colbert_ndocs(k), 4 * k)
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
        index._ivf = np.asarray(ivf_offsets), np.asarray(ivf_docs)  # plain views: a memmap's indexing is slow
        return index
