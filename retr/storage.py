"""The on-disk index: a directory with ``manifest.json`` and the files it lists.

Writes go to a hidden sibling directory that is renamed into place at the end, so a
crash or a bad input never leaves a half-written index under the final name, and an
existing index stays as it was until the new one is complete. Every file's size and
BLAKE2 checksum are recorded, and checked when the index is opened.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import mmap
import os
import shutil
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from retr.errors import RetrError

FORMAT = "retr-index"
FORMAT_VERSION = 3  # 3: segments and generations; 2: flat vectors as vectors.npy, growing arrays
MANIFEST = "manifest.json"
PIECE_BYTES = 1 << 25  # files are checksummed by 32 MiB pieces, hashed on every core


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


class IndexLocked(RetrError):
    """Another process is writing the index."""


@contextlib.contextmanager
def writer_lock(target: Path | str) -> Iterator[None]:
    """Hold the one-writer lock of the index at ``target`` (fcntl, exclusive, not waited for).

    The lock file sits beside the index (``.NAME.lock``), so it outlives a rebuild that replaces
    the directory; the kernel releases it when the holder dies, so a killed writer never
    leaves the index locked.
    """
    target = Path(target).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target.parent / f".{target.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise IndexLocked(f"{target} is being written by another process (retr index / add / delete / "
                              "update / compact); wait for it to finish, then try again") from None
        yield
    finally:
        os.close(fd)


READERS_DIR = ".readers"


class ReaderHold:
    """A reader's claim on one generation: a shared fcntl lock the writer tests before removing its files."""

    def __init__(self, directory: Path, generation: int) -> None:
        folder = directory / READERS_DIR
        folder.mkdir(exist_ok=True)
        path = folder / f"gen-{generation:06d}.lock"
        while True:  # a writer may remove a stale hold file between our open and our lock: lock the file on disk
            self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_SH)
            if path.exists() and os.fstat(self._fd).st_ino == os.stat(path).st_ino:
                break
            os.close(self._fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.release()


def held_generations(directory: Path) -> set[int]:
    """Generations some reader still holds (their lock cannot be taken exclusively); stale hold files removed."""
    held = set()
    folder = directory / READERS_DIR
    for lock in folder.glob("gen-*.lock") if folder.is_dir() else []:
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            lock.unlink()
        except OSError:
            held.add(int(lock.stem.split("-")[1]))
        finally:
            os.close(fd)
    return held


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


def checksum(path: Path, chunk: int = 1 << 22) -> str:
    """BLAKE2b of the whole file, read in order (manifests without ``piece_bytes``)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _piece_digest(path: Path, start: int, size: int, chunk: int = 1 << 22) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        fh.seek(start)
        while size > 0 and (block := fh.read(min(chunk, size))):
            h.update(block)
            size -= len(block)
    return h.digest()


def piece_checksums(paths: list[Path], piece: int) -> list[str]:
    """Each file's BLAKE2b over the BLAKE2b digests of its ``piece``-byte pieces, every piece of every file hashed
    side by side (hashlib lets go of the GIL): a 2.3 GB index took 7.8 s to hash in order on a 16-core machine."""
    jobs = [(i, path, start, min(piece, size - start)) for i, (path, size) in
            enumerate((path, path.stat().st_size) for path in paths) for start in range(0, max(size, 1), piece)]
    with ThreadPoolExecutor(max(1, min(len(jobs), os.cpu_count() or 1))) as pool:
        digests = list(pool.map(lambda job: _piece_digest(*job[1:]), jobs))
    parts: list[list[bytes]] = [[] for _ in paths]
    for (i, *_), digest in zip(jobs, digests):
        parts[i].append(digest)
    return [hashlib.blake2b(b"".join(p), digest_size=16).hexdigest() for p in parts]


def file_entries(directory: Path, paths: Iterable[Path] | None = None) -> dict[str, dict[str, Any]]:
    """Size and checksum of each file (every file under ``directory`` by default), by relative path."""
    chosen = sorted(paths if paths is not None else (p for p in directory.rglob("*") if p.is_file()))
    chosen = [path for path in chosen if path.relative_to(directory).as_posix() != MANIFEST]
    return {path.relative_to(directory).as_posix(): {"bytes": path.stat().st_size, "blake2b": digest,
                                                     "piece_bytes": PIECE_BYTES}
            for path, digest in zip(chosen, piece_checksums(chosen, PIECE_BYTES))}


def write_manifest(directory: Path, manifest: dict[str, Any], files: dict[str, dict[str, Any]] | None = None) -> None:
    """Write the manifest, listing ``files`` (default: every file under ``directory``) with sizes and checksums.

    The manifest is written beside its final name and renamed over it, so a reader sees the
    old manifest or the new one, whole.
    """
    files = file_entries(directory) if files is None else files
    body = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest, "files": files}
    tmp = directory / f".{MANIFEST}.{uuid.uuid4().hex[:8]}"
    with open(tmp, "w") as fh:
        fh.write(json.dumps(body, indent=2, sort_keys=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, directory / MANIFEST)
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def inside(directory: Path, rel: str) -> Path:
    """``directory / rel`` for a path a manifest names; refused unless it stays inside, through no symlink."""
    parts = Path(rel).parts
    if not rel or Path(rel).is_absolute() or any(p in ("..", ".", "") for p in parts) or "\\" in rel:
        raise RetrError(f"index {directory}: the manifest names {rel!r}, a path outside the index; refusing to open it")
    path = directory
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise RetrError(f"index {directory}: {path.relative_to(directory)} is a symbolic link; an index holds "
                            "plain files only (copy the files instead of linking them)")
    return path


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
    if directory.is_symlink():
        raise RetrError(f"{directory} is a symbolic link; open the index at its real path")
    files = manifest.get("files", {})
    if not isinstance(files, dict):
        raise RetrError(f"{path} is corrupt (its file list is not a mapping); rebuild the index")
    pieces: dict[int, list[tuple[str, Path]]] = {}  # piece size (0: the whole file in order) -> files to verify
    for rel, meta in files.items():
        file = inside(directory, rel)
        if not isinstance(meta, dict) or not isinstance(meta.get("bytes"), int):
            raise RetrError(f"{path} is corrupt (entry {rel!r}); rebuild the index")
        if not file.is_file():
            raise RetrError(f"index {directory} is missing {rel}; rebuild it")
        if file.stat().st_size != meta["bytes"]:
            raise RetrError(
                f"index {directory}: {rel} has {file.stat().st_size} bytes, the manifest says "
                f"{meta['bytes']} (truncated or changed); rebuild it"
            )
        if not isinstance(meta.get("piece_bytes", 0), int) or meta.get("piece_bytes", 0) < 0:
            raise RetrError(f"{path} is corrupt (entry {rel!r}); rebuild the index")
        pieces.setdefault(meta.get("piece_bytes", 0), []).append((rel, file))
    for piece, entries in pieces.items() if verify else ():
        digests = piece_checksums([f for _, f in entries], piece) if piece else [checksum(f) for _, f in entries]
        for (rel, _), digest in zip(entries, digests):
            if digest != files[rel]["blake2b"]:
                raise RetrError(f"index {directory}: {rel} fails its checksum (corrupt); rebuild it")
    return manifest


def save_array(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as ``.npy``; a large (memory-mapped) array is copied a block at a time.

    An array memory-mapped from ``path`` itself is already there and is left as it is.
    """
    if isinstance(array, np.memmap) and array.filename and Path(array.filename).absolute() == Path(path).absolute():
        return
    array = np.asarray(array)
    if array.nbytes <= COPY_BLOCK or array.ndim == 0:
        np.save(path, np.ascontiguousarray(array), allow_pickle=False)
        return
    out = GrowingArray(array.dtype, array.shape[1:], path)
    step = max(1, COPY_BLOCK // max(1, array[:1].nbytes))
    for start in range(0, len(array), step):
        out.append(array[start : start + step])
    out.close()


def load_array(path: Path, mmap: bool = True) -> np.ndarray:
    """Open a ``.npy`` file memory-mapped; object arrays are refused (no pickle)."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise RetrError(f"cannot read {path}: {exc}; rebuild the index") from None


def memory_map_of(array: Any) -> mmap.mmap | None:
    """The mmap an array's memory lies in (an ``np.memmap`` or any view of one), else None."""
    while array is not None:
        mapping = getattr(array, "_mmap", None)  # np.memmap's own mmap object, shared by its slices
        if mapping is not None:
            return mapping
        array = getattr(array, "base", None)
    return None


def release_pages(array: np.ndarray | mmap.mmap) -> None:
    """Drop a memory-mapped array's pages from this process's resident set (Linux ``MADV_DONTNEED``).

    The mapping is shared and file-backed, so nothing is lost: the OS page cache keeps the pages and
    a later read maps them back. Streaming through a large map then holds resident only what was read
    since the last release, not everything ever read. Given an array, the whole map it lies in is released.
    A no-op for arrays in memory and elsewhere.
    """
    mapping = array if isinstance(array, mmap.mmap) else memory_map_of(array)
    if mapping is not None and hasattr(mapping, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        with contextlib.suppress(ValueError, OSError):  # a closed map, or a platform that refuses
            mapping.madvise(mmap.MADV_DONTNEED)


COPY_BLOCK = 1 << 26  # bytes copied at once when an array is written block by block
HEADER_BYTES = 128  # a .npy header reserved at the start of a growing file, rewritten when it is closed


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A version 1.0 ``.npy`` header of exactly ``HEADER_BYTES`` bytes (the format pads it with spaces)."""
    body = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)})
    size = HEADER_BYTES - 10  # magic (6), version (2), header length (2)
    if len(body) + 1 > size:
        raise RetrError(f"array shape {shape} is too large for a .npy header of {HEADER_BYTES} bytes")
    return b"\x93NUMPY\x01\x00" + size.to_bytes(2, "little") + (body.ljust(size - 1) + "\n").encode("latin1")


def as_rows(rows: Any, dtype: np.dtype) -> np.ndarray:
    """``rows`` as a C-contiguous array of ``dtype``. float32 to float16, the cast of every float16 store, is done by
    torch when it is loaded (SIMD, every core: 4x numpy's on 2 cores, bitwise the same rounding)."""
    if (dtype == np.float16 and isinstance(rows, np.ndarray) and rows.dtype == np.float32 and rows.size
            and "torch" in sys.modules):
        torch = sys.modules["torch"]
        return torch.from_numpy(np.ascontiguousarray(rows)).to(torch.float16).numpy()
    return np.ascontiguousarray(rows, dtype=dtype)


class GrowingArray:
    """An array that grows by appending rows: held in memory, or written to a ``.npy`` file as it grows.

    On disk, rows go straight to the file after a reserved header, so memory stays at one
    appended block whatever the total; ``array`` closes the header and memory-maps the file.
    An existing file this class wrote can be opened again to append more rows. The row
    shape is fixed by the first rows appended when it is not given.
    """

    def __init__(self, dtype: Any, shape: tuple[int, ...] | None = None, path: Path | None = None) -> None:
        self.dtype, self.shape, self.path = np.dtype(dtype), shape, path
        self._rows = 0
        self._blocks: list[np.ndarray] = []
        self._file: Any = None
        self._view: np.ndarray | None = None

    @classmethod
    def of(cls, array: np.ndarray) -> "GrowingArray":
        """An existing array (a loaded, memory-mapped one, say) that later rows are appended to in memory."""
        grown = cls(array.dtype, array.shape[1:])
        grown._rows, grown._view = len(array), array
        grown._blocks = [array] if len(array) else []
        return grown

    def staged(self, path: Path) -> "GrowingArray":
        """The same (empty) array, written to ``path`` as it grows."""
        if self._rows:
            raise RetrError("an array can be staged on disk only before rows are added")
        return GrowingArray(self.dtype, self.shape, path)

    @classmethod
    def reopen(cls, path: Path) -> "GrowingArray":
        """Append to a ``.npy`` file (one written with a ``HEADER_BYTES`` header, by this class)."""
        array = load_array(path)
        if array.offset != HEADER_BYTES or array.ndim == 0:
            raise RetrError(f"{path} was not written as a growing array; rebuild the index")
        grown = cls(array.dtype, array.shape[1:], path)
        grown._rows, grown._view = len(array), array
        return grown

    def __len__(self) -> int:
        return self._rows

    def append(self, rows: Any) -> None:
        block = as_rows(rows, self.dtype)
        if self.shape is None:
            self.shape = block.shape[1:]
        if block.shape[1:] != tuple(self.shape):
            raise RetrError(f"appending rows of shape {block.shape[1:]} to an array of rows {tuple(self.shape)}")
        if not len(block):
            return
        if self.path is not None and self._file is None and self._view is not None and not self.path.exists():
            self.path, self._blocks = None, [self._view]  # closed, then moved away (renamed into place): go on in memory
        self._view = None
        self._rows += len(block)
        if self.path is None:
            self._blocks.append(block)
            return
        if self._file is None:
            exists = self.path.exists()
            self._file = open(self.path, "r+b" if exists else "wb")
            if exists:
                self._file.seek(0, os.SEEK_END)
            else:
                self._file.write(_npy_header(self.dtype, (0, *self.shape)))
        self._file.write(block.data)

    def close(self) -> None:
        """Write the final header (on disk) and memory-map the file, which is then a complete ``.npy``.

        The mapping stays valid when the file's directory is renamed afterwards (an index put
        into place), so the array can still be searched.
        """
        if self.path is None or (self._file is None and self._view is not None):
            return
        if self._file is None:
            self._file = open(self.path, "r+b" if self.path.exists() else "wb")
        self._file.seek(0)
        self._file.write(_npy_header(self.dtype, (self._rows, *(self.shape or ()))))
        self._file.close()
        self._file = None
        self._view = load_array(self.path)

    @property
    def array(self) -> np.ndarray:
        """Every row: the concatenated blocks, or the file memory-mapped."""
        if self._view is None:
            if self.path is not None:
                self.close()
            else:
                empty = np.zeros((0, *(self.shape or ())), dtype=self.dtype)
                self._view = np.concatenate(self._blocks) if len(self._blocks) > 1 else (
                    self._blocks[0] if self._blocks else empty)
                self._blocks = [self._view] if len(self._view) else []
        return self._view

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a new array; read from the file (not mapped) while it is being written."""
        if self._file is None:  # in memory, or closed and memory-mapped
            return np.array(self.array[start:stop])
        self._file.flush()
        row_bytes = self.dtype.itemsize * int(np.prod(self.shape or (), dtype=np.int64))
        count = max(0, min(stop, self._rows) - start)
        with open(self.path, "rb") as fh:
            fh.seek(HEADER_BYTES + start * row_bytes)
            data = fh.read(count * row_bytes)
        return np.frombuffer(data, dtype=self.dtype).reshape(count, *(self.shape or ())).copy()

    def save(self, path: Path) -> None:
        """Write every row to ``path``: closing the file when it is already there, else copying."""
        if self.path is not None and Path(path).absolute() == self.path.absolute():
            self.close()
        else:
            save_array(path, self.array)


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


class StringArrayWriter:
    """Strings appended in blocks to a UTF-8 blob and its offsets, in memory or straight to ``.npy`` files."""

    def __init__(self, directory: Path | None, stem: str) -> None:
        path = (lambda suffix: None) if directory is None else (lambda suffix: directory / f"{stem}.{suffix}.npy")
        self.directory, self.stem = directory, stem
        self._blob = GrowingArray(np.uint8, (), path("bytes"))
        self._offsets = GrowingArray(np.int64, (), path("offsets"))
        self._offsets.append(np.zeros(1, dtype=np.int64))
        self._end = 0

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def append(self, strings: list[str]) -> None:
        encoded = [s.encode("utf-8") for s in strings]
        ends = self._end + np.cumsum([len(b) for b in encoded], dtype=np.int64)
        self._blob.append(np.frombuffer(b"".join(encoded), dtype=np.uint8))
        self._offsets.append(ends)
        self._end = int(ends[-1]) if len(ends) else self._end

    def read(self, start: int, stop: int) -> list[str]:
        """Strings ``start:stop``, read back without memory-mapping the blob."""
        offsets = self._offsets.rows(start, stop + 1)
        data = self._blob.rows(int(offsets[0]), int(offsets[-1])).tobytes()
        base = int(offsets[0])
        return [data[a - base : b - base].decode("utf-8") for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]

    def finish(self) -> StringArray:
        """The complete array (files closed and memory-mapped when on disk)."""
        return StringArray(self._blob.array, self._offsets.array)
