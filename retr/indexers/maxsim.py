"""Exact late-interaction search: every document's token vectors, scored by MaxSim.

``S(q, d) = sum_i max_j <q_i, d_j>``. All token vectors live in one (N_tok, dim) matrix;
document ``i`` owns rows ``offsets[i]:offsets[i+1]``. Both are ``.npy`` files, written as
the build adds documents and memory-mapped on load. Search is exhaustive, so it is the
reference for approximate multi-vector indexes (PLAID, MUVERA); it runs on the scorer of the
device the index was opened on (``retr.scoring``: numpy on the CPU, torch on a GPU).

Tokens are float16 by default (``dtype=float16``). On the CPU the products run in float32,
each chunk of tokens widened first by faiss's SIMD float16 decoder; for one query at a time
that is still most of the work, and ``dtype=float32`` doubles the storage to skip it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from retr.errors import RetrError
from retr.indexers.faiss_index import check_finite
from retr.scoring import token_scorer
from retr.storage import GrowingArray, load_array, memory_map_of, release_pages

TOKENS_FILE, OFFSETS_FILE = "tokens.npy", "offsets.npy"
DTYPES = ("float16", "float32")


def as_token_matrices(reps: Any, dim: int | None, what: str, finite: bool = True) -> list[np.ndarray]:
    """A list of float32 (tokens, dim) matrices, or a clear error.

    ``finite=False`` leaves the NaN / infinity check to the caller: it reads every row, which pages in
    all of a memory-mapped sample at once (``stack_tokens`` checks it a block at a time instead)."""
    if isinstance(reps, np.ndarray) and reps.ndim == 2:
        raise RetrError(f"{what}: expected a list of (tokens, dim) matrices (multi-vector), got one matrix")
    out = []
    for i, rep in enumerate(reps):
        x = np.asarray(rep, dtype=np.float32)
        if x.ndim != 2:
            raise RetrError(f"{what}: item {i} has shape {x.shape}, expected (tokens, dim)")
        if dim is None:
            dim = x.shape[1]
        if x.shape[1] != dim:
            raise RetrError(f"{what}: item {i} has dimension {x.shape[1]}, the index holds dimension {dim}")
        if finite:
            check_finite(x, f"{what}: item {i}")
        out.append(x)
    return out


def check_documents(rows: np.ndarray, lengths: np.ndarray, what: str) -> None:
    """A clear error naming the first document whose rows (``rows``: the documents' token rows concatenated,
    ``lengths`` rows each) hold NaN or infinity: one check of the whole block, not one call per document."""
    try:
        check_finite(rows, what)
    except RetrError:
        row = int(np.flatnonzero(~np.isfinite(rows).all(axis=1))[0])
        item = int(np.searchsorted(np.cumsum(lengths), row, side="right"))
        raise RetrError(f"{what}: item {item}: vectors contain NaN or infinity") from None


def stack_tokens(docs: list[np.ndarray], block: int = 4096, dtype: type = np.float32, what: str = "") -> np.ndarray:
    """The documents' token rows as one (tokens, dim) matrix of ``dtype``, copied ``block`` documents at a time.

    Rows read from the embedding cache are memory-mapped; the pages each block read are dropped from
    the resident set once copied (``release_pages``), so a large training sample costs its copy only,
    not the copy and every page mapped to make it. With ``what``, each document is checked for NaN and
    infinity as it is copied (a clear error naming ``what``).
    """
    if not docs:
        return np.zeros((0, 0), dtype)
    out = np.empty((sum(len(d) for d in docs), docs[0].shape[1]), dtype=dtype)
    at = 0
    for start in range(0, len(docs), block):
        part = docs[start : start + block]
        for i, doc in enumerate(part, start):
            if what:
                check_finite(doc, f"{what}: item {i}")
            out[at : at + len(doc)] = doc
            at += len(doc)
        release_maps(part)
    return out


def release_maps(docs: list[np.ndarray]) -> None:
    """Drop the pages of the memory maps ``docs`` were read through (rows from the embedding cache) from the
    resident set: a consumer that streams through a sample a block at a time then holds one block's pages."""
    for mapping in {id(m): m for m in map(memory_map_of, docs) if m is not None}.values():
        release_pages(mapping)


class TokenStore:
    """Token vectors of many documents as one growing (N_tok, dim) matrix and its document offsets."""

    def __init__(self, dtype: str = "float16") -> None:
        if dtype not in DTYPES:
            raise RetrError(f"token store: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.dtype = np.dtype(dtype)
        self.tokens = GrowingArray(self.dtype)
        self.offsets = GrowingArray(np.int64, ())
        self.offsets.append(np.zeros(1, dtype=np.int64))
        self._end = 0

    @property
    def dim(self) -> int | None:
        return None if self.tokens.shape is None else int(self.tokens.shape[0])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def stage(self, directory: Path) -> None:
        """Write the arrays to ``directory`` as documents are added (an empty store only)."""
        if len(self):
            raise RetrError("a token store can be staged on disk only before documents are added")
        self.tokens = self.tokens.staged(directory / TOKENS_FILE)
        self.offsets = GrowingArray(np.int64, (), directory / OFFSETS_FILE)
        self.offsets.append(np.zeros(1, dtype=np.int64))

    def add(self, docs: list[np.ndarray], what: str = "") -> None:
        """Append documents' token matrices; with ``what``, they are checked for NaN and infinity first."""
        if not docs:
            return
        lengths = np.array([len(d) for d in docs], dtype=np.int64)
        rows = np.concatenate(docs)
        if what:
            check_documents(rows, lengths, what)
        self.tokens.append(rows)  # cast to the store's dtype by the array (``as_rows``)
        self.offsets.append(self._end + np.cumsum(lengths))
        self._end += int(lengths.sum())

    def save(self, directory: Path) -> None:
        self.tokens.save(directory / TOKENS_FILE)
        self.offsets.save(directory / OFFSETS_FILE)

    @classmethod
    def load(cls, directory: Path, dtype: str, count: int) -> "TokenStore":
        store = cls(dtype)
        tokens, offsets = load_array(directory / TOKENS_FILE), load_array(directory / OFFSETS_FILE)
        if tokens.ndim != 2 or tokens.dtype != store.dtype or offsets.ndim != 1 or offsets.dtype != np.int64:
            raise RetrError(f"{directory}: token or offset arrays have the wrong shape or type; rebuild the index")
        if len(offsets) != count + 1 or offsets[0] != 0 or offsets[-1] != len(tokens):
            raise RetrError(
                f"{directory}: offsets describe {len(offsets) - 1} documents and {offsets[-1]} tokens, "
                f"the manifest says {count} documents and the file holds {len(tokens)} tokens; rebuild it"
            )
        store.tokens, store.offsets, store._end = GrowingArray.of(tokens), GrowingArray.of(offsets), len(tokens)
        return store


class ExactMultiVectorIndex:
    """Exhaustive MaxSim over float16 (or float32) token vectors: exact late-interaction search."""

    name = "maxsim"
    kind = "multi"

    def __init__(self, dtype: str = "float16") -> None:
        self.store = TokenStore(dtype)
        self.device = "cpu"
        self._scorer: Any = None

    def config(self) -> dict[str, Any]:
        return {"dtype": self.store.dtype.name}

    @property
    def dim(self) -> int | None:
        return self.store.dim

    def __len__(self) -> int:
        return len(self.store)

    def stage(self, directory: Path) -> None:
        self.store.stage(directory)

    def use_device(self, device: str) -> None:
        self.device, self._scorer = device, None

    def add(self, reps: Any, what: str = "") -> None:
        """Add documents' token matrices (checked for NaN and infinity; an error names ``what``, else this index)."""
        what = what or f"adding to a {self.name} index"
        self.store.add(as_token_matrices(reps, self.dim, what, finite=False), what)
        self._scorer = None

    def scorer(self) -> Any:
        if self._scorer is None:
            self._scorer = token_scorer(self.store.tokens.array, self.store.offsets.array, self.device)
        return self._scorer

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self) == 0:
            raise RetrError("the index is empty: add documents before searching")
        qs = as_token_matrices(queries, self.dim, f"searching a {self.name} index")
        return self.scorer().search(qs, k)

    def rerank(self, queries: list[np.ndarray], candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top ``k`` of each query among its candidate documents (a first stage's; -1 ignored)."""
        return self.scorer().rerank(queries, candidates, k)

    def save(self, directory: Path) -> None:
        self.store.save(directory)

    @classmethod
    def load(cls, directory: Path, config: dict[str, Any], count: int) -> "ExactMultiVectorIndex":
        index = cls(**config)
        index.store = TokenStore.load(directory, index.store.dtype.name, count)
        return index
