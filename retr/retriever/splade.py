"""SPLADE: one sparse vocabulary-space vector per text from a masked-language model.

``w_t = max_i log(1 + ReLU(logit_{i,t}))`` over the text's tokens ``i`` (SPLADE v2's
max pooling), optionally capped to the ``max_terms`` heaviest terms, then quantised to
integer impacts ``round(scale * w)`` so a Lucene impact index can store them as term
frequencies (queries are quantised the same way; ``scale=0`` keeps float weights for
the exhaustive ``csr`` index). Encodings are cached on disk by model, settings and text.
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
from retr.sparse import SparseVectors, from_pairs, quantize, to_pairs, top_terms


class SpladeEncoder:
    """Texts to SPLADE term-weight vectors (kind ``sparse``) for inverted or exhaustive sparse indexes."""

    name = "splade"
    kind = "sparse"
    dim = None

    def __init__(
        self, model: str = "naver/splade-cocondenser-ensembledistil", max_length: int = 256, max_terms: int = 0,
        scale: float = 100.0, batch_size: int = 8, device: str = "", dtype: str = "float32",
    ) -> None:
        if max_length < 2 or max_terms < 0 or scale < 0 or batch_size < 1:
            raise RetrError("splade needs max_length >= 2, max_terms >= 0 (0 = no cap), scale >= 0, batch_size >= 1")
        self.model, self.max_length, self.max_terms = model, int(max_length), int(max_terms)
        if dtype not in ("float32", "float16", "bfloat16"):
            raise RetrError(f"splade: dtype is float32, float16 or bfloat16, got {dtype!r}")
        self.scale, self.batch_size, self.device, self.dtype = float(scale), int(batch_size), device, dtype
        self._resolved = resolve_model(model)

    def config(self) -> dict[str, Any]:
        return {"model": self.model, "max_length": self.max_length, "max_terms": self.max_terms, "scale": self.scale,
                "dtype": self.dtype}

    @property
    def mlm(self) -> MaskedLM:
        return load_mlm(self._resolved, self.device, self.dtype)

    def _cache(self, role: str) -> EmbeddingCache:
        digest = hashlib.blake2b(json.dumps(self.config(), sort_keys=True).encode(), digest_size=8).hexdigest()
        return open_cache(f"splade-{model_fingerprint(self._resolved)}-{role}-{digest}", role)

    def _encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        from scipy.sparse import csr_matrix

        out: list[np.ndarray] = [np.zeros((0, 2), np.float32)] * len(texts)
        for batch, logits, mask in vocab_logits(self.mlm, texts, self.max_length, self.batch_size):
            best = logits.masked_fill(~mask.unsqueeze(-1), 0.0).max(dim=1).values  # padding never wins
            weights = saturate(best)
            rows, terms = weights.nonzero(as_tuple=True)  # only the nonzero weights leave the device
            values = weights[rows, terms].cpu().numpy()
            starts = np.zeros(len(batch) + 1, dtype=np.int64)
            np.cumsum(np.bincount(rows.cpu().numpy(), minlength=len(batch)), out=starts[1:])
            pooled = csr_matrix((values, terms.cpu().numpy().astype(np.int32), starts), shape=tuple(weights.shape))
            pooled = quantize(top_terms(pooled, self.max_terms), self.scale)
            for i, pairs in zip(batch, to_pairs(pooled)):
                out[i] = pairs
        return out

    def _vectors(self, texts: Sequence[str], role: str, desc: str) -> SparseVectors:
        rows = self._cache(role).encode(texts, self._encode, ragged=True, desc=desc)
        vocab = self.mlm.vocab
        return SparseVectors(from_pairs(rows, len(vocab)), vocab)

    def encode_documents(self, texts: Sequence[str]) -> SparseVectors:
        return self._vectors(texts, "d", "encoding documents")

    def encode_queries(self, texts: Sequence[str]) -> SparseVectors:
        return self._vectors(texts, "q", "encoding queries")
