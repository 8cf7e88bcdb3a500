"""An on-disk cache of encodings keyed by encoder identity and text hash.

Each encoder (model + settings + role) gets a folder of shards. A shard is a folder of three
``.npy`` files (text hashes, row offsets, rows) written under a temporary name and renamed
into place, so an interrupted encoding keeps every shard it finished and a re-run encodes
only what is missing. A shard is written by a background thread while the next chunk encodes
(one write in flight; its encodings are served from memory until the files are in place, and
the process waits for it at exit). Shards are memory-mapped; the hashes of all shards are
indexed once per process (24 bytes a text), so a build that asks for its texts a chunk at a
time reads only the rows it needs and never holds the whole cache.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from retr.errors import RetrError
from retr.hashindex import HashIndex, hash_keys
from retr.progress import progress_bar
from retr.storage import GrowingArray, load_array, release_pages, save_array

SHARD_FILES = ("keys.npy", "offsets.npy", "rows.npy")
SHIFT = 32  # a cached text's location: shard number << SHIFT | row in the shard
QUERY_MIN_WRITE = 32  # query batches smaller than this are encoded without being stored
_OPEN: dict[tuple[str, str], "EmbeddingCache"] = {}
_LOCK = threading.Lock()
_WRITER: ThreadPoolExecutor | None = None  # one thread writes every cache's shards; joined at interpreter exit


def _writer() -> ThreadPoolExecutor:
    global _WRITER
    with _LOCK:
        if _WRITER is None:
            _WRITER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retr-cache-writer")
        return _WRITER


def cache_root() -> Path | None:
    """``$RETR_CACHE_DIR``, else ``~/.cache/retr``; ``RETR_CACHE_DIR=off`` disables caching."""
    value = os.environ.get("RETR_CACHE_DIR")
    if value and value.lower() in ("0", "off", "none", "false"):
        return None
    return Path(value) if value else Path.home() / ".cache" / "retr"


def flush_caches() -> None:
    """Wait until every shard write queued so far is in place (another process may then read them)."""
    if _WRITER is not None:
        _WRITER.submit(lambda: None).result()


def open_cache(key: str, role: str = "d") -> "EmbeddingCache":
    """The process's one cache object for ``key`` under the current cache root (its index is built once).

    Query encodings (``role="q"``) are stored only from batches of ``QUERY_MIN_WRITE`` texts: an
    evaluation's query set is worth keeping, a service's one-query requests are not (each would
    write a shard).
    """
    root = cache_root()
    with _LOCK:
        cache = _OPEN.get((str(root), key))
        if cache is None:
            cache = _OPEN[(str(root), key)] = EmbeddingCache(key, root, QUERY_MIN_WRITE if role == "q" else 1)
        return cache


class EmbeddingCache:
    """Encodings of one encoder (one ``key``), looked up by text.

    An encoding is a (rows, dim) matrix: one row for a dense vector, one per token for
    multi-vector encoders, (terms, 2) [term id, weight] pairs for sparse ones.
    """

    def __init__(self, key: str, root: Path | None = None, min_write: int = 1) -> None:
        self.folder = None if root is None else root / "embeddings" / key
        self.min_write = min_write
        self._shards: list[tuple[np.ndarray, Any]] = []  # (offsets, rows mapped), or (offsets, matrices) while written
        self._where = HashIndex()  # text hash -> shard << SHIFT | row
        self._loaded = False
        self._lock = threading.Lock()
        self._pending: Future | None = None  # the shard write in flight

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self.folder is None or not self.folder.is_dir():
            return
        for shard in sorted(p for p in self.folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                keys, offsets, rows = (load_array(shard / name) for name in SHARD_FILES)
            except Exception:  # noqa: BLE001 - a damaged shard is skipped; its texts are encoded again
                continue
            if keys.ndim == 2 and keys.shape[1] == 16 and len(offsets) == len(keys) + 1 and offsets[-1] == len(rows):
                self._index(np.asarray(keys), offsets, rows)

    def _index(self, keys: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> None:
        shard = len(self._shards)
        self._shards.append((offsets, rows))
        self._where.add(np.asarray(keys), (shard << SHIFT) | np.arange(len(keys), dtype=np.int64))

    def _get(self, where: int) -> np.ndarray:
        offsets, rows = self._shards[where >> SHIFT]
        row = where & ((1 << SHIFT) - 1)
        if isinstance(rows, list):  # a shard being written: its matrices, in memory
            return rows[row]
        return rows[int(offsets[row]) : int(offsets[row + 1])]

    def encode(
        self, texts: Sequence[str], encode: Callable[[Sequence[str]], Any], ragged: bool = False,
        desc: str = "encoding", chunk: int = 4096,
    ) -> Any:
        """Encodings of ``texts``: cached ones read back, the rest computed by ``encode`` and stored.

        ``encode`` returns an (n, dim) array, or with ``ragged`` a list of (rows, dim)
        arrays; the result has the same form. Missing texts are encoded ``chunk`` at a time,
        each chunk written as one shard (in the background), so an interruption loses at most two chunks:
        the one being written and the one encoding.
        """
        keys = hash_keys(texts)
        with self._lock:
            self._load()
            positions = self._where.find(keys)
        self._release()  # what earlier calls read is unmapped: a build streams, RSS stays flat
        results: list[np.ndarray | None] = [None] * len(texts)
        missing: dict[bytes, list[int]] = {}
        for i in np.flatnonzero(positions < 0).tolist():
            missing.setdefault(keys[i].tobytes(), []).append(i)
        todo = list(missing.values())
        bar_desc = f"{desc} ({len(texts) - sum(map(len, todo))} cached)" if len(todo) < len(texts) else desc
        with progress_bar(total=len(todo), desc=bar_desc, unit="text") as bar:
            for start in range(0, len(todo), chunk):
                batch = todo[start : start + chunk]
                out = encode([texts[where[0]] for where in batch])
                block = None if ragged else np.ascontiguousarray(out, dtype=np.float32)  # one row per text
                matrices = [np.asarray(m, dtype=np.float32) for m in out] if ragged else list(block[:, None, :])
                for where, matrix in zip(batch, matrices):
                    for i in where:
                        results[i] = matrix
                self._write(keys[[where[0] for where in batch]], matrices, block)
                bar.update(len(batch))
        for i in np.flatnonzero(positions >= 0).tolist():
            results[i] = self._get(int(positions[i]))
        if ragged:
            return results
        stacked = np.stack([r[0] for r in results]) if results else np.zeros((0, 0), np.float32)
        self._release()  # the rows just copied: a training sample is held once, not also as mapped pages
        return stacked

    def _release(self) -> None:
        """Drop the pages of every shard from the resident set (``release_pages``); the page cache keeps them."""
        with self._lock:
            for _, rows in self._shards:
                if not isinstance(rows, list):
                    release_pages(rows)

    def flush(self) -> None:
        """Wait for the shard write in flight (its files are in place when this returns)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _write(self, keys: np.ndarray, matrices: list[np.ndarray], block: np.ndarray | None = None) -> None:
        """Serve the new encodings from memory at once and write them as a shard in the background.

        The matrices themselves are served and written (no concatenated copy: 4.6 GB of token rows at 200K
        pypi-summaries documents, 2 s of the encoding thread on a 16-core machine); they are made read-only,
        as the cached rows read back from a shard are. ``block``: the matrices are its rows, written at once."""
        if self.folder is None or len(matrices) < self.min_write:
            return
        offsets = np.zeros(len(matrices) + 1, dtype=np.int64)
        np.cumsum([len(m) for m in matrices], out=offsets[1:])
        for matrix in matrices if block is None else (block,):
            matrix.flags.writeable = False
        self.flush()  # one write in flight: memory holds at most two chunks' encodings
        with self._lock:
            self._index(np.asarray(keys), offsets, matrices)
            shard = len(self._shards) - 1
        self._pending = _writer().submit(self._store, shard, keys, offsets, [block] if block is not None else matrices)

    def _store(self, shard: int, keys: np.ndarray, offsets: np.ndarray, blocks: list[np.ndarray]) -> None:
        """Write a shard's files under a temporary name (the rows one block after another), rename it into place
        and serve it from the maps."""
        name = uuid.uuid4().hex
        tmp = self.folder / f".{name}.tmp"
        try:
            tmp.mkdir(parents=True)
            save_array(tmp / SHARD_FILES[0], keys)
            save_array(tmp / SHARD_FILES[1], offsets)
            rows = GrowingArray(np.float32, blocks[0].shape[1:], tmp / SHARD_FILES[2])
            for block in blocks:
                rows.append(block)
            rows.close()
            os.rename(tmp, self.folder / name)
            mapped = load_array(self.folder / name / SHARD_FILES[2])
        except (OSError, RetrError):
            shutil.rmtree(tmp, ignore_errors=True)
            return  # a cache that cannot be written is only slower; this process keeps serving it from memory
        with self._lock:
            self._shards[shard] = (offsets, mapped)
