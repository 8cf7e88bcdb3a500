"""Length-sorted batches, tokenized ahead in a thread: the input side every transformer encoder shares.

Texts are ordered longest first and cut into batches, so a batch pads little; the tokenizer
(Hugging Face's fast tokenizers release the GIL) runs one or two batches ahead of the model
in a background thread, and on a GPU its tensors are pinned so the copy to the device is
asynchronous. This is what lets an encoding keep the GPU busy instead of waiting on the CPU.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np

from retr.threads import prefetch

AHEAD = 2  # batches tokenized ahead of the model


def length_order(texts: Sequence[str]) -> np.ndarray:
    """Positions of ``texts``, longest first (stable), so similar lengths share a batch."""
    return np.argsort(-np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts)), kind="stable")


def tokenized_batches(
    texts: Sequence[str], batch_size: int, tokenize: Callable[[list[str]], dict[str, Any]], device: Any,
) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
    """(positions in ``texts``, tokenizer output already on ``device``) per batch, longest texts first."""
    order = length_order(texts)
    pin = str(device).startswith("cuda")

    def produce() -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            features = tokenize([texts[i] for i in batch])
            if pin:
                features = {k: v.pin_memory() if hasattr(v, "pin_memory") else v for k, v in features.items()}
            yield batch, features

    for batch, features in prefetch(produce(), depth=AHEAD):
        yield batch, {k: v.to(device, non_blocking=True) if hasattr(v, "to") else v for k, v in features.items()}
