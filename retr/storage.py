"""The on-disk index: a directory with ``manifest.json`` and the files it lists.

Writes go to a hidden sibling directory that is renamed into place at the end, so a
crash or a bad input never leaves a half-written index under the final name, and an
existing index stays as it was until the new one is complete. Every file's size and
BLAKE2 checksum are recorded, and checked when the index is opened.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from retr.errors import RetrError

FORMAT = "retr-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


@contextlib.contextmanager
def atomic_directory(
    target: Path | str, overwrite: bool = True, marker: str = MANIFEST, what: str = "a retr index",
) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces ``target`` if the block succeeds.

    An existing ``target`` is replaced only if it holds ``marker`` (it is ``what``: an
    index, an adapter, a checkpoint), so a mistyped path never deletes other data.
    """
    target = Path(target).absolute()
    if target.exists() and not overwrite:
        raise RetrError(f"{target} exists; pass overwrite to replace it")
    if target.exists() and not (target / marker).is_file():
        raise RetrError(f"{target} exists and is not {what}; refusing to replace it (choose another output)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


def checksum(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Record every file under ``directory`` with size and checksum, then the manifest."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel = path.relative_to(directory).as_posix()
        if rel != MANIFEST:
            files[rel] = {"bytes": path.stat().st_size, "blake2b": checksum(path)}
    body = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest, "files": files}
    (directory / MANIFEST).write_text(json.dumps(body, indent=2, sort_keys=False) + "\n")


def read_manifest(directory: Path | str, verify: bool = True) -> dict[str, Any]:
    """Load and check the manifest; ``verify`` also checks every file's checksum."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise RetrError(f"no index at {directory}: build one with `retr index`")
    if not path.is_file():
        raise RetrError(f"{directory} has no {MANIFEST}: it is not a retr index")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RetrError(f"{path} is corrupt ({exc}); rebuild the index") from None
    if manifest.get("format") != FORMAT:
        raise RetrError(f"{path} is not a retr index manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise RetrError(
            f"{directory} has format version {manifest.get('format_version')}, this retr "
            f"reads {FORMAT_VERSION}; rebuild the index with this version"
        )
    for rel, meta in manifest.get("files", {}).items():
        file = directory / rel
        if not file.is_file():
            raise RetrError(f"index {directory} is missing {rel}; rebuild it")
        if file.stat().st_size != meta["bytes"]:
            raise RetrError(
                f"index {directory}: {rel} has {file.stat().st_size} bytes, the manifest says "
                f"{meta['bytes']} (truncated or changed); rebuild it"
            )
        if verify and checksum(file) != meta["blake2b"]:
            raise RetrError(f"index {directory}: {rel} fails its checksum (corrupt); rebuild it")
    return manifest


def save_array(path: Path, array: np.ndarray) -> None:
    np.save(path, np.ascontiguousarray(array), allow_pickle=False)


def load_array(path: Path, mmap: bool = True) -> np.ndarray:
    """Open a ``.npy`` file memory-mapped; object arrays are refused (no pickle)."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise RetrError(f"cannot read {path}: {exc}; rebuild the index") from None


class StringArray:
    """Many strings as one UTF-8 blob plus int64 offsets: compact, memory-mapped, no pickle."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray) -> None:
        self._blob, self._offsets = blob, offsets
        self._bytes = memoryview(blob).cast("B") if len(blob) else memoryview(b"")  # fast slicing, no copies

    @classmethod
    def from_strings(cls, strings: list[str]) -> "StringArray":
        encoded = [s.encode("utf-8") for s in strings]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        return cls(blob, offsets)

    def save(self, directory: Path, stem: str) -> None:
        save_array(directory / f"{stem}.bytes.npy", self._blob)
        save_array(directory / f"{stem}.offsets.npy", self._offsets)

    @classmethod
    def load(cls, directory: Path, stem: str) -> "StringArray":
        blob = load_array(directory / f"{stem}.bytes.npy")
        offsets = load_array(directory / f"{stem}.offsets.npy")
        if offsets.ndim != 1 or len(offsets) == 0 or offsets[-1] != len(blob):
            raise RetrError(f"{directory}/{stem}: offsets do not match the data; rebuild the index")
        return cls(blob, offsets)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        start, end = self._offsets[i : i + 2].tolist()
        return str(self._bytes[start:end], "utf-8")

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))
