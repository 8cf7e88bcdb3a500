"""SLIM: sparsified late interaction (Li et al., SIGIR 2023).

Each contextual token vector goes through the masked-LM head into the vocabulary space,
``log(1 + ReLU(logits))``, and keeps its ``token_terms`` largest entries (top-k
sparsification, 20 in the paper). A text is the set of these sparse token vectors
(kind ``multi-sparse``); the ``slim`` index pools them for first-stage retrieval on an
inverted index and refines candidates with the late-interaction score. As in the
authors' Pyserini encoder, the [CLS] position is dropped. Encodings are cached on disk.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence

import numpy as np

from retr.errors import RetrError
from retr.retriever.cache import EmbeddingCache, open_cache
from retr.retriever.mlm import MaskedLM, load_mlm, saturate, vocab_logits
from retr.retriever.models import model_fingerprint, resolve_model
from retr.sparse import SparseVectors


class SlimEncoder:
    """Texts to sets of top-k sparse token vectors over the MLM vocabulary."""

    name = "slim"
    kind = "multi-sparse"
    dim = None

    def __init__(
        self, model: str = "castorini/slim-msmarco-passage", max_length: int = 256, token_terms: int = 20,
        batch_size: int = 8, device: str = "",
    ) -> None:
        if max_length < 2 or token_terms < 1 or batch_size < 1:
            raise RetrError("slim needs max_length >= 2, token_terms >= 1 and batch_size >= 1")
        self.model, self.max_length, self.token_terms = model, int(max_length), int(token_terms)
        self.batch_size, self.device = int(batch_size), device
        self._resolved = resolve_model(model)

    def config(self) -> dict[str, Any]:
        return {"model": self.model, "max_length": self.max_length, "token_terms": self.token_terms}

    @property
    def mlm(self) -> MaskedLM:
        return load_mlm(self._resolved, self.device)

    def _cache(self, role: str) -> EmbeddingCache:
        digest = hashlib.blake2b(json.dumps(self.config(), sort_keys=True).encode(), digest_size=8).hexdigest()
        return open_cache(f"slim-{model_fingerprint(self._resolved)}-{role}-{digest}", role)

    def _encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Per text a (tokens, 2 * token_terms) float32 array: term ids, then their weights."""
        k = min(self.token_terms, len(self.mlm.vocab))
        out: list[np.ndarray] = [np.zeros((0, 2 * k), np.float32)] * len(texts)
        for batch, logits, mask in vocab_logits(self.mlm, texts, self.max_length, self.batch_size):
            values, ids = logits[:, 1:].topk(k, dim=-1)  # [CLS] dropped
            weights = saturate(values).cpu().numpy()
            ids, keep = ids.cpu().numpy().astype(np.float32), mask[:, 1:].cpu().numpy()
            for row, i in enumerate(batch):
                out[i] = np.concatenate([ids[row], weights[row]], axis=1)[keep[row]]
        return out

    def _vectors(self, texts: Sequence[str], role: str, desc: str) -> SparseVectors:
        from scipy.sparse import csr_matrix

        rows = self._cache(role).encode(texts, self._encode, ragged=True, desc=desc)
        k = self.token_terms
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        tokens = np.concatenate(rows) if len(rows) else np.zeros((0, 2 * k), np.float32)
        ids, weights = tokens[:, :k].astype(np.int32), tokens[:, k:]
        nonzero = weights > 0
        indptr = np.concatenate([[0], np.cumsum(nonzero.sum(axis=1))]).astype(np.int64)
        vocab = self.mlm.vocab
        matrix = csr_matrix((weights[nonzero], ids[nonzero], indptr), shape=(len(tokens), len(vocab)))
        matrix.sort_indices()
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return SparseVectors(matrix, vocab, offsets)

    def encode_documents(self, texts: Sequence[str]) -> SparseVectors:
        return self._vectors(texts, "d", "encoding documents")

    def encode_queries(self, texts: Sequence[str]) -> SparseVectors:
        return self._vectors(texts, "q", "encoding queries")
