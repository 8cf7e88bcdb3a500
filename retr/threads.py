"""Overlap a producer with its consumer: the next items are made in a background thread while the caller works.

Used to tokenize the next batches while the model runs on the current one, and to encode the
next chunk of a corpus while the index adds the current one. Torch, tokenizers, FAISS and
numpy release the GIL in their heavy calls, so both threads make progress.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()


def prefetch(items: Iterable[T], depth: int = 1) -> Iterator[T]:
    """Yield ``items`` in order, computing up to ``depth`` of them ahead in a thread; its errors re-raise here."""
    if depth < 1:
        yield from items
        return
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple) -> bool:
        """Hand ``entry`` over unless the consumer has stopped; False once it has."""
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put((_DONE, exc))

    worker = threading.Thread(target=produce, name="retr-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, error = slots.get()
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)
