"""An on-disk cache of encodings keyed by encoder identity and text hash.

Each encoder gets a folder; each flush writes one shard (text hashes + vectors) through
a temporary file and a rename, so an interrupted encoding keeps every shard it
finished and a re-run encodes only what is missing.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from retr.progress import progress_bar


def cache_root() -> Path | None:
    """``$RETR_CACHE_DIR``, else ``~/.cache/retr``; ``RETR_CACHE_DIR=off`` disables caching."""
    value = os.environ.get("RETR_CACHE_DIR")
    if value and value.lower() in ("0", "off", "none", "false"):
        return None
    return Path(value) if value else Path.home() / ".cache" / "retr"


def text_hashes(texts: Sequence[str]) -> np.ndarray:
    """(n, 16) uint8: BLAKE2 of each text."""
    out = np.empty((len(texts), 16), dtype=np.uint8)
    for i, text in enumerate(texts):
        out[i] = np.frombuffer(hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest(), dtype=np.uint8)
    return out


class EmbeddingCache:
    """Encodings of one encoder (one ``key``), looked up by text.

    An encoding is a (rows, dim) matrix: one row for a dense vector, one per token for
    multi-vector encoders. Each shard holds text hashes, row offsets and the rows.
    """

    def __init__(self, key: str, root: Path | None = None) -> None:
        root = root if root is not None else cache_root()
        self.folder = None if root is None else root / "embeddings" / key

    def _shards(self) -> list[Path]:
        if self.folder is None or not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob("*.npz") if not p.name.startswith("."))

    def encode(
        self, texts: Sequence[str], encode: Callable[[Sequence[str]], Any], ragged: bool = False,
        desc: str = "encoding", chunk: int = 512, flush_every: int = 16384,
    ) -> Any:
        """Encodings of ``texts``: cached ones read back, the rest computed by ``encode`` and stored.

        ``encode`` returns an (n, dim) array, or with ``ragged`` a list of (rows, dim)
        arrays; the result has the same form.
        """
        keys = [h.tobytes() for h in text_hashes(texts)]
        found = self._read(set(keys))
        missing: dict[bytes, int] = {}
        for i, key in enumerate(keys):
            if key not in found:
                missing.setdefault(key, i)
        todo = list(missing.items())
        pending: list[tuple[bytes, np.ndarray]] = []
        bar_desc = f"{desc} ({len(keys) - len(todo)} cached)" if found else desc
        with progress_bar(total=len(todo), desc=bar_desc, unit="text") as bar:
            for start in range(0, len(todo), chunk):
                batch = todo[start : start + chunk]
                out = encode([texts[i] for _, i in batch])
                matrices = [np.asarray(m, dtype=np.float32) for m in out] if ragged else \
                    list(np.asarray(out, dtype=np.float32)[:, None, :])
                for (key, _), matrix in zip(batch, matrices):
                    found[key] = matrix
                    pending.append((key, matrix))
                bar.update(len(batch))
                if len(pending) >= flush_every:
                    self._write(pending)
                    pending = []
        if pending:
            self._write(pending)
        if ragged:
            return [found[key] for key in keys]
        return np.stack([found[key][0] for key in keys])

    def _read(self, wanted: set[bytes]) -> dict[bytes, np.ndarray]:
        found: dict[bytes, np.ndarray] = {}
        for shard in self._shards():
            try:
                with np.load(shard, allow_pickle=False) as data:
                    shard_keys, offsets, rows = data["keys"], data["offsets"], data["rows"]
            except (OSError, ValueError, KeyError):
                continue  # a damaged shard is skipped; its texts are encoded again
            for i, key in enumerate(shard_keys):
                if (kb := key.tobytes()) in wanted:
                    found[kb] = rows[offsets[i] : offsets[i + 1]]
        return found

    def _write(self, pending: list[tuple[bytes, np.ndarray]]) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        tmp = self.folder / f".{name}.tmp.npz"
        keys = np.frombuffer(b"".join(k for k, _ in pending), dtype=np.uint8).reshape(-1, 16)
        offsets = np.zeros(len(pending) + 1, dtype=np.int64)
        np.cumsum([len(m) for _, m in pending], out=offsets[1:])
        np.savez(tmp, keys=keys, offsets=offsets, rows=np.concatenate([m for _, m in pending]))
        os.replace(tmp, self.folder / f"{name}.npz")
