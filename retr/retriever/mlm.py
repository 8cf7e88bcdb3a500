"""Masked-language-model checkpoints as vocabulary-space encoders (SPLADE, SLIM).

Any BERT-style ``*ForMaskedLM`` checkpoint (Hub name or local path) maps each token's
contextual vector through its MLM head to one logit per vocabulary entry; both SPLADE
and SLIM weight a term by ``log(1 + ReLU(logit))``. The model loads once per process.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from retr.errors import RetrError
from retr.retriever.batching import id_batches, pad_rows
from retr.retriever.models import model_inference, quiet_model_libraries


@dataclass
class MaskedLM:
    tokenizer: Any
    model: Any
    device: str
    vocab: tuple[str, ...]  # term of each output column


@functools.lru_cache(maxsize=4)
def load_mlm(resolved: str, device: str, dtype: str = "float32") -> MaskedLM:
    """Tokenizer and masked-LM model (eval mode) of a checkpoint."""
    try:
        import torch
        from transformers import AutoModelForMaskedLM, AutoTokenizer
    except ImportError:
        raise RetrError("sparse encoders need torch and transformers: pip install 'retr[dense]'") from None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    quiet_model_libraries()
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved)
        model = AutoModelForMaskedLM.from_pretrained(resolved).to(device=device, dtype=getattr(torch, dtype)).eval()
    except (OSError, ValueError) as exc:
        raise RetrError(
            f"cannot load masked-LM model {resolved!r}: {exc}. Give a local folder or a Hugging Face name "
            "of a checkpoint with an MLM head"
        ) from None
    vocab = [""] * model.config.vocab_size
    for term, i in tokenizer.get_vocab().items():
        if i < len(vocab):
            vocab[i] = term
    vocab = [term or f"[id{i}]" for i, term in enumerate(vocab)]  # ids the tokenizer never emits
    if any(" " in term for term in vocab):
        raise RetrError(f"{resolved!r}: vocabulary terms contain spaces, which a pretokenized Lucene index cannot hold")
    return MaskedLM(tokenizer, model, device, tuple(vocab))


def saturate(logits: Any) -> Any:
    """``log(1 + ReLU(x))``: monotone, so it commutes with max-pooling and top-k (apply it after them)."""
    import torch

    return torch.log1p(torch.relu(logits.float()))


def vocab_logits(
    mlm: MaskedLM, texts: Sequence[str], max_length: int, batch_size: int,
) -> Iterator[tuple[list[int], Any, Any]]:
    """Per batch: (positions in ``texts``, MLM logits (B, T, V), attention mask (B, T) as bool).

    Texts are batched by token count, so little is padded, and tokenized a batch ahead in a thread
    (``retr.retriever.batching``); runs under ``torch.inference_mode``.
    """
    import torch

    def features(rows: list[list[int]], batch: np.ndarray) -> dict[str, Any]:
        ids, mask = pad_rows(rows, max(map(len, rows)), mlm.tokenizer.pad_token_id or 0)
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}

    for batch, enc in id_batches(texts, batch_size, mlm.tokenizer, max_length, features, mlm.device):
        with model_inference(mlm.device):
            logits = mlm.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
            yield batch.tolist(), logits, enc["attention_mask"].bool()
