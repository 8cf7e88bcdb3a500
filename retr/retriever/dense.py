"""Dense bi-encoder: one vector per text from any sentence-transformers model."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from retr.errors import RetrError
from retr.retriever.batching import id_batches, pad_rows, tokenized_batches
from retr.retriever.cache import EmbeddingCache, open_cache
from retr.retriever.models import model_fingerprint, model_inference, quiet_model_libraries, resolve_model


DTYPES = ("float32", "float16", "bfloat16")


def open_sentence_transformer(resolved: str, device: str | None, dtype: str = "float32") -> Any:
    """A sentence-transformers model computing in ``dtype`` whatever its checkpoint stores: transformers >= 5 loads
    weights in their stored dtype, so a float16 checkpoint would otherwise compute in float16 under ``float32``."""
    try:
        import torch
        import transformers
        from packaging.version import Version
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise RetrError("dense encoders need sentence-transformers: pip install 'retr[dense]'") from None
    quiet_model_libraries()
    key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    try:
        model = SentenceTransformer(resolved, device=device, model_kwargs={key: getattr(torch, dtype)})
    except (OSError, ValueError) as exc:
        raise RetrError(
            f"cannot load model {resolved!r}: {exc}. Give a local model folder or a Hugging Face name"
        ) from None
    return model.to(getattr(torch, dtype))  # modules besides the transformer (dense layers) too


@functools.lru_cache(maxsize=4)
def load_sentence_transformer(resolved: str, device: str | None, dtype: str = "float32") -> Any:
    """Load once per process; the same model serves every encoder that names it."""
    return open_sentence_transformer(resolved, device, dtype)


def features_of(model: Any) -> Any:
    """The model's text-to-features call: ``preprocess`` in sentence-transformers >= 6 (where ``tokenize``
    warns that it is deprecated), ``tokenize`` before."""
    return getattr(model, "preprocess", None) or model.tokenize


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
        device: str = "", dtype: str = "float32",
    ) -> None:
        if dtype not in DTYPES:
            raise RetrError(f"dense: dtype is one of {', '.join(DTYPES)}, got {dtype!r}")
        self.model, self.dtype = model, dtype
        self.normalize, self.batch_size, self.max_length = bool(normalize), int(batch_size), int(max_length)
        self.query_prefix, self.doc_prefix, self.device = query_prefix, doc_prefix, device
        self._resolved = resolve_model(model)
        self._st: Any = None
        self._padded: bool | None = None  # batches padded from token ids give the model's own features (first batch)
        self._layout: dict[str, Any] = {}  # the model's features: None for a tensor, else the value (its modality)
        self._dim: int | None = None  # known from the first encodings: a build read from the cache loads no model

    def config(self) -> dict[str, Any]:
        return {"model": self.model, "normalize": self.normalize, "max_length": self.max_length,
                "query_prefix": self.query_prefix, "doc_prefix": self.doc_prefix, "dtype": self.dtype}

    @property
    def st(self) -> Any:
        if self._st is None:
            self._st = load_sentence_transformer(self._resolved, self.device or None, self.dtype)
            if self.max_length:
                self._st.max_seq_length = self.max_length
        return self._st

    @property
    def dim(self) -> int:
        if self._dim is not None:
            return self._dim
        st = self.st
        dim = st.get_embedding_dimension() if hasattr(st, "get_embedding_dimension") else st.get_sentence_embedding_dimension()
        if dim is None:
            raise RetrError(f"model {self.model!r} does not say its embedding dimension")
        return int(dim)

    def _max_seq_length(self) -> int:
        """The token limit of the encodings: the one set, else the model folder's (so a build whose texts are all
        cached loads no model, and starts no GPU), else the loaded model's."""
        if self.max_length:
            return self.max_length
        if self._st is None:
            try:
                stated = json.loads((Path(self._resolved) / "sentence_bert_config.json").read_text())["max_seq_length"]
            except (OSError, ValueError, KeyError, TypeError):
                stated = None
            if isinstance(stated, int):
                return stated
        return int(self.st.max_seq_length)

    def _cache(self, role: str) -> EmbeddingCache:
        settings = f"{self.normalize}-{self._max_seq_length()}-{self.query_prefix if role == 'q' else self.doc_prefix}"
        settings += "" if self.dtype == "float32" else f"-{self.dtype}"
        key = f"dense-{model_fingerprint(self._resolved)}-{role}-{model_fingerprint(settings)}"
        return open_cache(key, role)

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        """What ``SentenceTransformer.encode`` computes (its tokenizer, modules and normalisation), in batches cut by
        token count, the tokenizer a batch ahead in a thread and one copy back to the host at the end."""
        import torch

        st = self.st
        done = []
        with model_inference(st.device):
            for batch, features in self._batches(texts):
                vectors = st.forward(features)["sentence_embedding"]
                if self.normalize:
                    vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
                done.append((batch, vectors.float()))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for batch, vectors in done:
            out[batch] = vectors.cpu().numpy()
        return out

    def _batches(self, texts: Sequence[str]) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        """(positions, the model's features on its device) per batch.

        With a Hugging Face tokenizer the texts are tokenized once, by its Rust backend, and each batch is
        padded from the ids: the model's own ``preprocess`` spends most of its time in Python, which on a
        GPU leaves the model waiting for its input. The padded features are compared with ``preprocess``'s
        on the first batch, and ``preprocess`` serves every batch where they differ (a model with prompts
        or its own kind of inputs).
        """
        import torch

        st = self.st
        preprocess = features_of(st)
        tokenizer = getattr(st, "tokenizer", None)
        if not callable(tokenizer):  # the model's own kind of tokenizer: batches ordered by characters
            return tokenized_batches(texts, self.batch_size, lambda batch: preprocess([texts[i] for i in batch]),
                                     st.device, lambda window: np.fromiter(map(len, window), dtype=np.int64))

        def features(rows: list[list[int]], batch: np.ndarray) -> dict[str, Any]:
            if self._padded is False:
                return preprocess([texts[i] for i in batch])
            padded = pad_rows(rows, max(map(len, rows)), tokenizer.pad_token_id or 0)
            ids, mask = (torch.from_numpy(a) for a in padded)
            built = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
            if self._padded is None:
                reference = preprocess([texts[i] for i in batch])
                self._padded = all(not hasattr(v, "shape") or (k in built and torch.equal(built[k], v))
                                   for k, v in reference.items())
                self._layout = {k: None if hasattr(v, "shape") else v for k, v in reference.items()}
                if not self._padded:
                    return reference
            return {k: built[k] if v is None else v for k, v in self._layout.items()}

        return id_batches(texts, self.batch_size, tokenizer, st.max_seq_length, features, st.device)

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        texts = [self.doc_prefix + t for t in texts]
        return self._known(self._cache("d").encode(texts, self._encode, desc="encoding documents"))

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        texts = [self.query_prefix + t for t in texts]
        return self._known(self._cache("q").encode(texts, self._encode, desc="encoding queries"))

    def _known(self, vectors: np.ndarray) -> np.ndarray:
        if vectors.ndim == 2 and len(vectors):
            self._dim = int(vectors.shape[1])
        return vectors
