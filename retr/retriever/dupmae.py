"""DupMAE (RetroMAE v2, Xiao & Liu, arXiv 2211.08769): [CLS] plus reduced bag-of-words, one dense vector.

From any BERT-style masked-LM checkpoint (Hub name or local path, e.g. one written by
``retr.retriever.dupmae_pretrain``), a text's representation is the concatenation of

- ``e_CLS``: the last layer's [CLS] vector (hidden size), and
- ``e_OT``: the ordinary tokens' vocabulary-space embeddings — each token's MLM-head logits
  through ReLU — max-pooled over the tokens into one |V|-dim vector, then reduced to
  ``reduced_dim`` dimensions by splitting it into ``reduced_dim`` contiguous chunks
  (the last padded with zeros) and max-pooling each chunk.

Ordinary tokens are all but [CLS], [SEP] and padding. The score of the paper is the inner
product of the concatenations; ``normalize`` chooses how the halves are scaled first:
``none`` (the paper's raw concatenation), ``halves`` (each half L2-normalised, the whole
divided by sqrt(2): a unit vector whose inner product is the mean of the two halves'
cosines, so cosine filters apply) or ``whole`` (the concatenation L2-normalised).
``part=cls`` / ``part=bow`` keep one half alone, for ablations.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from retr.errors import RetrError
from retr.retriever.cache import EmbeddingCache, open_cache
from retr.retriever.mlm import MaskedLM, load_mlm
from retr.retriever.models import model_fingerprint, model_inference, resolve_model

PARTS, NORMALIZE, POOLS = ("both", "cls", "bow"), ("none", "halves", "whole"), ("max", "sum")


def reduce_vocab(vectors: Any, reduced_dim: int, pool: str = "max") -> Any:
    """(n, V) -> (n, reduced_dim): split V into ``reduced_dim`` contiguous chunks of ceil(V / reduced_dim), pool each.

    Padding is 0, which never wins a max over ReLU outputs (>= 0). Torch or numpy in, the same out.
    """
    n, vocab = vectors.shape
    chunk = -(-vocab // reduced_dim)
    pad = chunk * reduced_dim - vocab
    if isinstance(vectors, np.ndarray):
        padded = np.pad(vectors, ((0, 0), (0, pad))).reshape(n, reduced_dim, chunk)
        return padded.max(axis=2) if pool == "max" else padded.sum(axis=2)
    import torch.nn.functional as F

    padded = F.pad(vectors, (0, pad)).reshape(n, reduced_dim, chunk)
    return padded.amax(dim=2) if pool == "max" else padded.sum(dim=2)


def ordinary_bow(logits: Any, ordinary: Any, token_pool: str = "max") -> Any:
    """(B, T, V) MLM logits and (B, T) ordinary-token mask -> (B, V): pooled ReLU(logits) over ordinary tokens."""
    import torch

    weights = torch.relu(logits.float()).masked_fill(~ordinary.unsqueeze(-1), 0.0)
    return weights.amax(dim=1) if token_pool == "max" else weights.sum(dim=1)


def combine(cls: np.ndarray, bow: np.ndarray, part: str, normalize: str) -> np.ndarray:
    """The final vectors from the two halves, scaled as ``normalize`` says."""
    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    if part == "cls":
        out = cls if normalize == "none" else unit(cls)
    elif part == "bow":
        out = bow if normalize == "none" else unit(bow)
    elif normalize == "halves":
        out = np.concatenate([unit(cls), unit(bow)], axis=1) / np.sqrt(2.0)
    else:
        out = np.concatenate([cls, bow], axis=1)
        out = unit(out) if normalize == "whole" else out
    return np.ascontiguousarray(out, dtype=np.float32)


class DupMAEEncoder:
    """Texts to DupMAE vectors (kind ``dense``; dim = hidden + ``reduced_dim``) for any dense index.

    ``reduced_dim=0`` uses the model's hidden size (the paper reduces 30,522 to 768 for
    BERT-base, its hidden size). ``token_pool`` / ``chunk_pool``: ``max`` as the paper, or
    ``sum``. Encodings are cached on disk by model, settings and text.
    """

    name = "dupmae"
    kind = "dense"

    def __init__(
        self, model: str = "splade-tiny", reduced_dim: int = 0, part: str = "both", normalize: str = "halves",
        token_pool: str = "max", chunk_pool: str = "max", max_length: int = 256, batch_size: int = 8,
        device: str = "",
    ) -> None:
        if part not in PARTS or normalize not in NORMALIZE or token_pool not in POOLS or chunk_pool not in POOLS:
            raise RetrError(f"dupmae: part is one of {PARTS}, normalize one of {NORMALIZE}, "
                            f"token_pool / chunk_pool one of {POOLS}")
        if reduced_dim < 0 or max_length < 2 or batch_size < 1:
            raise RetrError("dupmae needs reduced_dim >= 0 (0 = hidden size), max_length >= 2, batch_size >= 1")
        self.model, self.reduced_dim, self.part, self.normalize = model, int(reduced_dim), part, normalize
        self.token_pool, self.chunk_pool = token_pool, chunk_pool
        self.max_length, self.batch_size, self.device = int(max_length), int(batch_size), device
        self._resolved = resolve_model(model)

    def config(self) -> dict[str, Any]:
        return {"model": self.model, "reduced_dim": self.reduced_dim, "part": self.part, "normalize": self.normalize,
                "token_pool": self.token_pool, "chunk_pool": self.chunk_pool, "max_length": self.max_length}

    @property
    def mlm(self) -> MaskedLM:
        return load_mlm(self._resolved, self.device)

    @property
    def hidden(self) -> int:
        return int(self.mlm.model.config.hidden_size)

    @property
    def bow_dim(self) -> int:
        if self.reduced_dim > len(self.mlm.vocab):
            raise RetrError(f"dupmae: reduced_dim {self.reduced_dim} exceeds the vocabulary ({len(self.mlm.vocab)})")
        return self.reduced_dim or self.hidden

    @property
    def dim(self) -> int:
        return {"both": self.hidden + self.bow_dim, "cls": self.hidden, "bow": self.bow_dim}[self.part]

    def _cache(self, role: str) -> EmbeddingCache:
        digest = hashlib.blake2b(json.dumps(self.config(), sort_keys=True).encode(), digest_size=8).hexdigest()
        return open_cache(f"dupmae-{model_fingerprint(self._resolved)}-{role}-{digest}", role)

    def halves(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The raw halves: [CLS] vectors (n, hidden) and reduced bag-of-words vectors (n, bow_dim)."""
        mlm, bow_dim = self.mlm, self.bow_dim
        cls_out = np.zeros((len(texts), self.hidden), np.float32)
        bow_out = np.zeros((len(texts), bow_dim), np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            enc = mlm.tokenizer([texts[i] for i in batch], truncation=True, max_length=self.max_length,
                                padding="longest", return_tensors="pt", return_special_tokens_mask=True)
            ordinary = enc["attention_mask"].bool() & ~enc["special_tokens_mask"].bool()
            with model_inference(mlm.device):
                out = mlm.model(input_ids=enc["input_ids"].to(mlm.device),
                                attention_mask=enc["attention_mask"].to(mlm.device), output_hidden_states=True)
                bow = ordinary_bow(out.logits, ordinary.to(mlm.device), self.token_pool)
                cls_out[batch] = out.hidden_states[-1][:, 0].float().cpu().numpy()
                bow_out[batch] = reduce_vocab(bow, bow_dim, self.chunk_pool).cpu().numpy()
        return cls_out, bow_out

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        return combine(*self.halves(texts), self.part, self.normalize)

    def encode_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self._cache("d").encode(texts, self._encode, desc="encoding documents")

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._cache("q").encode(texts, self._encode, desc="encoding queries")
