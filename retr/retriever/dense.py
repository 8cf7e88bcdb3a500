"""Dense bi-encoder: one vector per text from any sentence-transformers model."""

from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np

from retr.errors import RetrError
from retr.retriever.cache import EmbeddingCache
from retr.retriever.models import model_fingerprint, resolve_model


@functools.lru_cache(maxsize=4)
def load_sentence_transformer(resolved: str, device: str | None) -> Any:
    """Load once per process; the same model serves every encoder that names it."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise RetrError("dense encoders need sentence-transformers: pip install 'retr[dense]'") from None
    try:
        return SentenceTransformer(resolved, device=device)
    except (OSError, ValueError) as exc:
        raise RetrError(
            f"cannot load model {resolved!r}: {exc}. Give a local model folder or a Hugging Face name"
        ) from None


class DenseEncoder:
    """Texts to L2-normalised vectors (so inner product = cosine) with a sentence-transformers model.

    ``query_prefix`` / ``doc_prefix`` carry instructions for models trained with them
    (E5's ``query: ``, BGE's retrieval instruction). Encodings are cached on disk by
    model, settings and text.
    """

    name = "dense"
    kind = "dense"

    def __init__(
        self, model: str = "sentence-transformers/all-MiniLM-L6-v2", normalize: bool = True,
        batch_size: int = 64, max_length: int = 0, query_prefix: str = "", doc_prefix: str = "",
        device: str = "",
    ) -> None:
        self.model = model
        self.normalize, self.batch_size, self.max_length = bool(normalize), int(batch_size), int(max_length)
        self.query_prefix, self.doc_prefix, self.device = query_prefix, doc_prefix, device
        self._resolved = resolve_model(model)
        self._st: Any = None

    def config(self) -> dict[str, Any]:
        return {"model": self.model, "normalize": self.normalize, "max_length": self.max_length,
                "query_prefix": self.query_prefix, "doc_prefix": self.doc_prefix}

    @property
    def st(self) -> Any:
        if self._st is None:
            self._st = load_sentence_transformer(self._resolved, self.device or None)
            if self.max_length:
                self._st.max_seq_length = self.max_length
        return self._st

    @property
    def dim(self) -> int:
        st = self.st
        dim = st.get_embedding_dimension() if hasattr(st, "get_embedding_dimension") else st.get_sentence_embedding_dimension()
        if dim is None:
            raise RetrError(f"model {self.model!r} does not say its embedding dimension")
        return int(dim)

    def _cache(self, role: str) -> EmbeddingCache:
        settings = f"{self.normalize}-{self.st.max_seq_length}-{self.query_prefix if role == 'q' else self.doc_prefix}"
        key = f"dense-{model_fingerprint(self._resolved)}-{role}-{model_fingerprint(settings)}"
        return EmbeddingCache(key)

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.st.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=self.normalize,
            convert_to_numpy=True, show_progress_bar=False,
        )

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        texts = [self.doc_prefix + t for t in texts]
        return self._cache("d").encode(texts, self._encode, desc="encoding documents")

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        texts = [self.query_prefix + t for t in texts]
        return self._cache("q").encode(texts, self._encode, desc="encoding queries")
