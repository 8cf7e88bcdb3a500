"""MUVERA: multi-vector search as one single-vector search, then exact MaxSim reranking.

Documents' token sets become fixed dimensional encodings (``retr.indexers.fde``) held
by any dense index (``inner``: flat, hnsw, ivf, pq, ivfpq, ...); a query's encoding retrieves
``candidates`` documents, which are rescored by exact MaxSim over the stored token
vectors (float16, or ``dtype=float32`` to skip widening them at query time, as in ``maxsim``)
on the device the index was opened on. An inner index that trains (PQ: the paper's FDE
compression) trains on the encodings of a sample of the corpus.
Settings of the inner index are passed with an ``inner_`` prefix:
``muvera:inner=hnsw,inner_ef_search=256,candidates=200``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from retr.errors import RetrError
from retr.indexers.faiss_index import check_finite
from retr.indexers.fde import FDE
from retr.indexers.maxsim import ExactMultiVectorIndex, as_token_matrices, release_maps
from retr.progress import progress_bar
from retr.registry import INDEXES

FDE_DIR = "fde"
ENCODE_CHUNK = 1024  # documents encoded per step (bounds the (docs, width) block in memory)
TRAIN_BYTES = 1 << 30  # float32 encodings the inner index trains on, at most (training_size)
MIN_TRAIN = 39 << 8  # but never fewer than 39 points for each of a PQ sub-quantizer's 256 codewords


class MuveraIndex:
    """Fixed dimensional encodings in a dense index, candidates reranked by exact MaxSim."""

    name = "muvera"
    kind = "multi"

    def __init__(
        self, r_reps: int = 20, k_sim: int = 5, d_proj: int = 16, final_dim: int = 0, fill_empty: bool = True,
        seed: int = 42, inner: str = "flat", candidates: int = 100, rerank: bool = True, dtype: str = "float16",
        **inner_settings: Any,
    ) -> None:
        unknown = [key for key in inner_settings if not key.startswith("inner_")]
        if unknown:
            raise RetrError(f"muvera has no setting {', '.join(unknown)} (inner index settings start with inner_)")
        if candidates < 1:
            raise RetrError("muvera needs candidates >= 1")
        self.fde_settings = {"r_reps": int(r_reps), "k_sim": int(k_sim), "d_proj": int(d_proj),
                             "final_dim": int(final_dim), "fill_empty": bool(fill_empty), "seed": int(seed)}
        self.inner_name, self.candidates, self.rerank = inner, int(candidates), bool(rerank)
        self._inner = INDEXES.create(inner, **{k[len("inner_"):]: v for k, v in inner_settings.items()})
        if self._inner.kind != "dense":
            raise RetrError(f"muvera's inner index must hold dense vectors; {inner!r} holds {self._inner.kind}")
        self._store = ExactMultiVectorIndex(dtype)
        self._fde: FDE | None = None

    def config(self) -> dict[str, Any]:
        inner = {f"inner_{k}": v for k, v in INDEXES.changed(self.inner_name, self._inner.config()).items()}
        return {**self.fde_settings, "inner": self.inner_name, "candidates": self.candidates,
                "rerank": self.rerank, **self._store.config(), **inner}

    @property
    def dim(self) -> int | None:
        return self._store.dim

    def fde(self) -> FDE:
        if self._fde is None:
            if self.dim is None:
                raise RetrError("the index is empty: add documents before searching")
            self._fde = FDE(self.dim, **self.fde_settings)
        return self._fde

    def __len__(self) -> int:
        return len(self._store)

    @property
    def trained(self) -> bool:
        return getattr(self._inner, "trained", True)

    def training_size(self, n: int) -> int:
        """The inner index's sample (0 when it does not train: flat, hnsw), at most ``TRAIN_BYTES`` of encodings.

        The paper's 10,240-d encodings make PQ's own sample of 256 points a codeword 2.7 GB; the cap
        keeps ~100 a codeword (FAISS's guidance: 39 to 256) and takes the build's peak with it.
        """
        wanted = self._inner.training_size(n) if hasattr(self._inner, "training_size") else 0
        s = self.fde_settings
        width = s["final_dim"] or s["r_reps"] * (1 << s["k_sim"]) * s["d_proj"]
        return min(wanted, max(MIN_TRAIN, TRAIN_BYTES // (4 * width)))

    def empty(self) -> "MuveraIndex":
        """A new empty index of the same settings: same FDE projections, the inner index's training kept."""
        from retr.segments import spawn

        new = MuveraIndex(**self.config())
        new._inner, new._fde = spawn(self._inner), self._fde
        return new

    def train(self, reps: Any, n: int) -> None:
        """Train the inner index on the encodings of a sample of the corpus (``n`` documents in all)."""
        what = f"training a {self.name} index"
        docs = as_token_matrices(reps, self.dim, what, finite=False)  # checked a chunk at a time by _encode
        if self._fde is None and docs:
            self._fde = FDE(docs[0].shape[1], **self.fde_settings)
        self._inner.train(self._encode(docs, what), n)

    def stage(self, directory: Path) -> None:
        self._store.stage(directory)
        if hasattr(self._inner, "stage"):
            (directory / FDE_DIR).mkdir(exist_ok=True)
            self._inner.stage(directory / FDE_DIR)

    def relocate(self, directory: Path) -> None:
        if hasattr(self._inner, "relocate"):
            self._inner.relocate(Path(directory) / FDE_DIR)

    def use_device(self, device: str) -> None:
        self._store.use_device(device)
        if hasattr(self._inner, "use_device"):
            self._inner.use_device(device)

    def _encode(self, docs: list[np.ndarray], what: str = "") -> np.ndarray:
        """The documents' FDEs, ``ENCODE_CHUNK`` at a time; each chunk's cache pages released once encoded
        (a training sample read through the cache's maps would otherwise stay resident beside its FDEs:
        a 100K build peaked at 3.59 GiB, 1.62 after). With ``what``, each chunk is checked for NaN first."""
        fde = self.fde() if self.dim is not None else self._fde
        encoded = np.zeros((len(docs), fde.width), dtype=np.float32)
        with progress_bar(total=len(docs), desc="encoding FDEs", unit="doc") as bar:
            for start in range(0, len(docs), ENCODE_CHUNK):
                part = docs[start : start + ENCODE_CHUNK]
                if what:
                    for i, doc in enumerate(part, start):
                        check_finite(doc, f"{what}: item {i}")
                encoded[start : start + ENCODE_CHUNK] = fde.encode(part, query=False)
                release_maps(part)
                bar.update(len(part))
        return encoded

    def add(self, reps: Any) -> None:
        what = f"adding to a {self.name} index"
        docs = as_token_matrices(reps, self.dim, what, finite=False)
        self._store.add(docs, what)  # checked there, before anything is added
        self._inner.add(self._encode(docs))

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self) == 0:
            raise RetrError("the index is empty: add documents before searching")
        qs = as_token_matrices(queries, self.dim, f"searching a {self.name} index")
        depth = max(k, self.candidates) if self.rerank else k
        fde_scores, candidates = self._inner.search(self.fde().encode(qs, query=True), depth)
        if not self.rerank:
            return fde_scores, candidates
        return self._store.rerank(qs, candidates, k)

    def save(self, directory: Path) -> None:
        self._store.save(directory)
        (directory / FDE_DIR).mkdir(exist_ok=True)
        self._inner.save(directory / FDE_DIR)

    @classmethod
    def load(cls, directory: Path, config: dict[str, Any], count: int) -> "MuveraIndex":
        index = cls(**config)
        index._store = ExactMultiVectorIndex.load(directory, index._store.config(), count)
        inner_config = {k[len("inner_"):]: v for k, v in config.items() if k.startswith("inner_")}
        index._inner = INDEXES.get(index.inner_name).load(directory / FDE_DIR, inner_config, count)
        return index
