"""SLIM's two-stage search: pooled sparse vectors on an inverted index, then late-interaction refinement.

The exact score is ``S(q, d) = sum_i max_j <q_i, d_j>`` over sparse token vectors. With
non-negative weights it is bounded above by ``<sum_i q_i, max_j d_j>`` (documents
max-pooled per term) and below by the same product over each query token's single
heaviest term; the first stage ranks by ``fusion_weight * upper + (1 - fusion_weight)
* lower``, both linear in the max-pooled document vector, so an ordinary impact index
(``inner``: lucene, or the exhaustive csr) serves it. The ``candidates`` it returns are
rescored with the exact score from the stored token vectors (CSR arrays: uint16 term
ids, float16 weights, memory-mapped). Inner-index settings take an ``inner_`` prefix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from retr.errors import RetrError
from retr.scoring import token_rows, top_k
from retr.registry import INDEXES, Spec, create_index
from retr.sparse import CsrArrays, SparseVectors, align, as_sparse, pool, quantize, top_terms
from retr.storage import StringArray, load_array, save_array

INNER_DIR, OFFSETS_FILE = "first-stage", "offsets.npy"


def late_interaction(query: Any, doc_tokens: Any, doc_offsets: np.ndarray) -> np.ndarray:
    """(n_docs,) ``sum_i max_j <q_i, d_j>`` of one query's sparse token rows against each document's rows."""
    lengths = np.diff(doc_offsets)
    scores = np.zeros(len(lengths), dtype=np.float32)
    nonempty = np.flatnonzero(lengths > 0)
    if len(nonempty) and query.shape[0]:
        sims = (query @ doc_tokens.T).toarray().astype(np.float32)  # (query tokens, document tokens)
        best = np.maximum.reduceat(sims, doc_offsets[:-1][nonempty], axis=1)
        scores[nonempty] = best.sum(axis=0)
    return scores


def first_stage_queries(queries: SparseVectors, fusion_weight: float) -> Any:
    """One vector per query: the fused upper (all terms) and lower (each token's top term) bound vectors."""
    upper = pool(queries.matrix, queries.offsets, "sum")
    if fusion_weight >= 1:
        return upper
    lower = pool(top_terms(queries.matrix, 1), queries.offsets, "sum")
    return (fusion_weight * upper + (1 - fusion_weight) * lower).tocsr()


class SlimIndex:
    """Sparse token vectors: max-pooled into an impact index, candidates refined by sparse late interaction."""

    name = "slim"
    kind = "multi-sparse"

    def __init__(
        self, inner: str = "lucene", candidates: int = 100, fusion_weight: float = 0.99, scale: float = 100.0,
        refine: bool = True, **inner_settings: Any,
    ) -> None:
        unknown = [key for key in inner_settings if not key.startswith("inner_")]
        if unknown:
            raise RetrError(f"slim has no setting {', '.join(unknown)} (inner index settings start with inner_)")
        if candidates < 1 or not 0 <= fusion_weight <= 1 or scale < 0:
            raise RetrError("slim needs candidates >= 1, 0 <= fusion_weight <= 1 and scale >= 0")
        self.inner_name, self.candidates, self.refine = inner, int(candidates), bool(refine)
        self.fusion_weight, self.scale = float(fusion_weight), float(scale)
        self._inner = create_index(Spec(inner, None, {k[len("inner_"):]: v for k, v in inner_settings.items()}),
                                   "sparse")
        if self._inner.kind != "sparse":
            raise RetrError(f"slim's inner index must hold sparse vectors; {inner!r} holds {self._inner.kind}")
        self._token_blocks: list[CsrArrays] = []  # every document token's sparse vector, joined on first use
        self._offsets = np.zeros(1, dtype=np.int64)
        self._vocab: list[str] | None = None

    def config(self) -> dict[str, Any]:
        inner = {f"inner_{k}": v for k, v in INDEXES.changed(self.inner_name, self._inner.config()).items()
                 if k != "kind"}
        return {"inner": self.inner_name, "candidates": self.candidates, "fusion_weight": self.fusion_weight,
                "scale": self.scale, "refine": self.refine, **inner}

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def add(self, reps: Any) -> None:
        vectors = as_sparse(reps, f"adding to a {self.name} index", grouped=True)
        if self._vocab is None:
            self._vocab = list(vectors.vocab)
        tokens = CsrArrays.of(align(vectors, self._vocab), weights=np.float16)
        self._token_blocks.append(tokens)
        self._offsets = np.concatenate([self._offsets, self._offsets[-1] + vectors.offsets[1:]])
        pooled = quantize(pool(tokens.rows(), vectors.offsets, "max"), self.scale)
        self._inner.add(SparseVectors(pooled, self._vocab))

    def stage(self, directory: Path) -> None:
        if hasattr(self._inner, "stage"):
            (directory / INNER_DIR).mkdir(exist_ok=True)
            self._inner.stage(directory / INNER_DIR)

    def relocate(self, directory: Path) -> None:
        if hasattr(self._inner, "relocate"):
            self._inner.relocate(Path(directory) / INNER_DIR)

    @property
    def _tokens(self) -> CsrArrays:
        if len(self._token_blocks) > 1:
            self._token_blocks = [CsrArrays.join(self._token_blocks)]
        return self._token_blocks[0]

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self) == 0:
            raise RetrError("the index is empty: add documents before searching")
        qs = as_sparse(queries, f"searching a {self.name} index", grouped=True)
        q_tokens = align(qs, self._vocab)
        fused = quantize(first_stage_queries(SparseVectors(q_tokens, self._vocab, qs.offsets), self.fusion_weight),
                         self.scale)
        depth = max(k, self.candidates) if self.refine else k
        first_scores, candidates = self._inner.search(SparseVectors(fused, self._vocab), depth)
        if not self.refine:
            return first_scores, candidates
        scores = np.full((len(qs), k), -np.inf, dtype=np.float32)
        ids = np.full((len(qs), k), -1, dtype=np.int64)
        for row, cand in enumerate(candidates):
            cand = cand[cand >= 0]
            if not len(cand):
                continue
            rows, sub_offsets = token_rows(self._offsets, cand)
            query = q_tokens[qs.offsets[row] : qs.offsets[row + 1]]
            exact = late_interaction(query, self._tokens.rows(rows), sub_offsets)
            s, order = top_k(exact[None, :], k)
            found = order[0] >= 0
            scores[row, found], ids[row, found] = s[0, found], cand[order[0, found]]
        return scores, ids

    def save(self, directory: Path) -> None:
        self._tokens.save(directory, "tokens")
        save_array(directory / OFFSETS_FILE, self._offsets)
        StringArray.from_strings(self._vocab or []).save(directory, "vocab")
        (directory / INNER_DIR).mkdir(exist_ok=True)
        self._inner.save(directory / INNER_DIR)

    @classmethod
    def load(cls, directory: Path, config: dict[str, Any], count: int) -> "SlimIndex":
        index = cls(**config)
        index._vocab = list(StringArray.load(directory, "vocab"))
        index._offsets = load_array(directory / OFFSETS_FILE)
        if index._offsets.ndim != 1 or len(index._offsets) != count + 1:
            raise RetrError(f"{directory}: offsets describe {len(index._offsets) - 1} documents, the manifest {count}")
        index._token_blocks = [CsrArrays.load(directory, "tokens", int(index._offsets[-1]), len(index._vocab))]
        inner_config = {**index._inner.config(), **{k[len("inner_"):]: v for k, v in config.items()
                                                    if k.startswith("inner_")}}
        index._inner = INDEXES.get(index.inner_name).load(directory / INNER_DIR, inner_config, count)
        return index
