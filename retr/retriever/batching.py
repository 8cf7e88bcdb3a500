"""Batches cut by token count, prepared ahead in a thread: the input side every transformer encoder shares.

A batch is padded to its longest text, so what a model computes is (texts x longest). Each text is
tokenized once, by the tokenizer's Rust backend (every core, without the GIL), the texts are ordered
by token count and cut into batches of at most ``batch_size`` texts and at most ``batch_size`` x the
mean count padded tokens (short texts go many to a batch, long ones few), and each batch is padded
from the ids. Ordering by characters instead, as sentence-transformers does, computes about three
tokens for every real one on short web texts (pypi-summaries: 31% of the computed tokens are real),
since characters per token vary with the text; and a tokenizer call per batch spends most of its time
in Python. Batches are prepared one or two ahead of the model in a background thread, and on a GPU
their tensors are pinned so the copy to the device is asynchronous."""

from __future__ import annotations

import itertools
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from retr.threads import prefetch

AHEAD = 2  # batches tokenized ahead of the model


def _backend(tokenizer: Any, max_length: int) -> Callable[[list[str]], list] | None:
    """A fast tokenizer's Rust batch call (every core, without the GIL, no token ids copied into Python until
    asked for), set to add special tokens and truncate at ``max_length`` without padding; None for a tokenizer
    without a Rust backend."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # fast: no character offsets

    def call(texts: list[str]) -> list:
        backend.no_padding()  # the tokenizer's own next call sets its truncation and padding again
        backend.enable_truncation(max_length)
        return encode(texts)

    return call


def token_ids(tokenizer: Any, max_length: int) -> Callable[[list[str]], list[list[int]]]:
    """Token ids of texts, special tokens added and truncated at ``max_length``, unpadded: what the tokenizer's
    own call gives, from its Rust backend where it has one (several times faster than the call's Python)."""
    backend = _backend(tokenizer, max_length)
    if backend is None:
        return lambda texts: tokenizer(texts, truncation=True, max_length=max_length, return_attention_mask=False,
                                       return_token_type_ids=False)["input_ids"]
    return lambda texts: [encoding.ids for encoding in backend(texts)]


def pad_rows(rows: Sequence[Sequence[int]], width: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, attention mask) of shape (len(rows), width) as int64: each row's ids, then ``pad_id``."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    mask = (np.arange(width) < lengths[:, None]).astype(np.int64)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    ids[mask.astype(bool)] = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
    return ids, mask


def length_order(lengths: np.ndarray) -> np.ndarray:
    """Positions, longest first (stable), so similar lengths share a batch."""
    return np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")


def cut_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Positions of ``lengths`` (token counts) in batches, longest first: each at most ``batch_size`` texts and
    at most ``batch_size`` x the mean count padded tokens (one text where a single one is longer)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = length_order(lengths)
    budget = batch_size * max(1.0, float(lengths.mean())) if len(lengths) else 0.0
    batches, start = [], 0
    while start < len(order):
        longest = max(1, int(lengths[order[start]]))  # the batch's padded length: its first text's
        size = int(min(batch_size, max(1, budget // longest), len(order) - start))
        batches.append(order[start : start + size])
        start += size
    return batches


def tokenized_batches(
    texts: Sequence[str], batch_size: int, tokenize: Callable[[np.ndarray], dict[str, Any]], device: Any,
    count: Callable[[list[str]], np.ndarray],
) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
    """(positions in ``texts``, ``tokenize(positions)`` already on ``device``) per batch, longest texts first.

    ``count`` gives all the texts' token counts, once, in the thread (``id_batches`` tokenizes them there
    and pads each batch from the ids).
    """
    pin = str(device).startswith("cuda")

    def produce() -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        for batch in cut_batches(count(list(texts)), batch_size):
            features = tokenize(batch)
            if pin:
                features = {k: v.pin_memory() if hasattr(v, "pin_memory") else v for k, v in features.items()}
            yield batch, features

    for batch, features in prefetch(produce(), depth=AHEAD):
        yield batch, {k: v.to(device, non_blocking=True) if hasattr(v, "to") else v for k, v in features.items()}


def id_batches(
    texts: Sequence[str], batch_size: int, tokenizer: Any, max_length: int,
    features: Callable[[list[list[int]], np.ndarray], dict[str, Any]], device: Any,
) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
    """``tokenized_batches`` with each text tokenized once (``token_ids``): ``features(ids of the batch's texts,
    their positions)`` makes a batch's model inputs, padded from the ids (``pad_rows``)."""
    rows: list[list[int]] = []

    def count(window: list[str]) -> np.ndarray:
        rows.extend(token_ids(tokenizer, max_length)(window))
        return np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))

    return tokenized_batches(texts, batch_size, lambda batch: features([rows[i] for i in batch], batch), device, count)


def to_host(*tensors: Any) -> Callable[[], list[np.ndarray]]:
    """Start copying tensors to the host without waiting for them; the returned call waits and gives numpy arrays.

    On a GPU the copies go into pinned memory behind the work already queued, and an event marks their end:
    an encoder queues the next batch before it waits for this one's rows, so the GPU never waits on the host.
    """
    import torch

    if not tensors or tensors[0].device.type != "cuda":
        return lambda: [t.cpu().numpy() for t in tensors]
    host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors]
    for target, tensor in zip(host, tensors):
        target.copy_(tensor, non_blocking=True)
    done = torch.cuda.Event()
    done.record()

    def wait() -> list[np.ndarray]:
        done.synchronize()
        return [target.numpy() for target in host]

    return wait

