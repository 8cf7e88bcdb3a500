"""Indexes that change: immutable segments, tombstones and generations (Lucene's model).

An index directory holds segments, each written once and never changed::

    INDEX/manifest.json                   the committed generation: its segments in order, their tombstones
    INDEX/seg-000001/index/ docstore/     a segment: an ordinary index of one index type, and its docstore
    INDEX/seg-000001/deleted-000004.npy   the segment's tombstones as of generation 4 (a packed bitmap)
    INDEX/.generations/gen-000004.json    each generation's manifest, kept while a reader holds it
    INDEX/.readers/gen-000004.lock        a shared fcntl lock per generation, held by the readers of it

A change (``Retriever.add / delete / update / compact``) writes new segments and tombstone
files beside the old ones and then commits: one ``rename`` of ``manifest.json``. A reader
reads the manifest once, so it sees a whole generation and keeps it while it is open; the
next commit removes the files that neither the new generation nor any held one names.

Documents live in *slots*: segment after segment, deleted ones included, so a slot never
moves until compaction writes one new segment of the live documents.
"""

from __future__ import annotations

import bisect
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from retr.errors import RetrError
from retr.hashindex import HashIndex, hash_keys
from retr.protocols import Index
from retr.scoring.topk import merge_top_k
from retr.storage import MANIFEST, READERS_DIR, held_generations, inside, load_array, save_array

SEGMENT = re.compile(r"^seg-(\d{6})$")
GENERATIONS_DIR = ".generations"
STAGING_PREFIX = ".staging-"


def segment_name(number: int) -> str:
    return f"seg-{number:06d}"


def tombstone_name(segment: str, generation: int) -> str:
    return f"{segment}/deleted-{generation:06d}.npy"


@dataclass
class Segment:
    """One immutable part of an index: its index, docstore and tombstones (``deleted``, a bool per slot)."""

    index: Index
    docstore: Any  # retr.retriever.pipeline.Docstore
    deleted: np.ndarray | None = None
    name: str | None = None  # seg-NNNNNN once committed
    tombstones: str | None = None  # the committed tombstone file, relative to the index directory
    staged: Path | None = None  # where an uncommitted segment is being written
    changed: bool = False  # tombstones changed since the last commit

    @property
    def slots(self) -> int:
        return len(self.docstore)

    @property
    def removed(self) -> int:
        return 0 if self.deleted is None else int(self.deleted.sum())

    @property
    def live(self) -> int:
        return self.slots - self.removed

    def delete(self, local: np.ndarray) -> None:
        if self.deleted is None:
            self.deleted = np.zeros(self.slots, dtype=bool)
        else:
            self.deleted = self.deleted.copy()  # the committed bitmap may be shared with a reader
        self.deleted[local] = True
        self.changed = True


def write_tombstones(path: Path, deleted: np.ndarray) -> None:
    save_array(path, np.packbits(deleted))


def read_tombstones(path: Path, slots: int) -> np.ndarray:
    packed = load_array(path, mmap=False)
    if packed.dtype != np.uint8 or packed.ndim != 1 or len(packed) != (slots + 7) // 8:
        raise RetrError(f"{path} does not hold tombstones for {slots} documents; the index is corrupt")
    return np.unpackbits(packed, count=slots).astype(bool)


class Strings:
    """Several string arrays read as one, by slot (the docstores of an index's segments)."""

    def __init__(self, parts: Sequence[Any]) -> None:
        self.parts = list(parts)
        self._starts = np.cumsum([0] + [len(p) for p in self.parts]).tolist()

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, i: int) -> str:
        if not 0 <= i < len(self):
            raise IndexError(i)
        part = bisect.bisect_right(self._starts, i) - 1
        return self.parts[part][i - self._starts[part]]

    def __iter__(self):
        for part in self.parts:
            yield from part


class Segments:
    """The ``Index`` protocol over an index's segments: live documents only, ids are slots.

    Every segment is searched deep enough that tombstones never push a live document out of
    its top k (``_live_top``), deleted slots are dropped, and the lists are merged exactly by
    score, ties by slot. An index type whose scores need statistics of the whole
    collection (Lucene's BM25) searches its segments together (``search_segments``).
    Attributes the protocol does not name come from the first segment's index.
    """

    def __init__(self, segments: list[Segment]) -> None:
        if not segments:
            raise RetrError("an index needs at least one segment")
        self.segments = segments

    @property
    def first(self) -> Index:
        return self.segments[0].index

    @property
    def name(self) -> str:
        return self.first.name

    @property
    def kind(self) -> str:
        return self.first.kind

    def config(self) -> dict[str, Any]:
        return self.first.config()

    def __len__(self) -> int:
        return sum(s.live for s in self.segments)

    @property
    def slots(self) -> int:
        return sum(s.slots for s in self.segments)

    def __getattr__(self, name: str) -> Any:
        if name == "segments":
            raise AttributeError(name)
        return getattr(self.first, name)

    def use_device(self, device: str) -> None:
        from retr.retriever.pipeline import use_device

        for segment in self.segments:
            use_device(segment.index, device)

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        parts = [s for s in self.segments if s.live]
        if not parts:
            raise RetrError("the index is empty: every document was deleted; add documents before searching")
        if len(self.segments) == 1 and not self.segments[0].removed:
            return self.first.search(queries, min(k, self.segments[0].slots))
        bases = np.cumsum([0] + [s.slots for s in self.segments])[:-1]
        base_of = {id(s): int(b) for s, b in zip(self.segments, bases)}
        joined = getattr(type(self.first), "search_segments", None)
        if joined is not None:
            indexes = [s.index for s in self.segments]
            deleted = np.concatenate([s.deleted if s.deleted is not None else np.zeros(s.slots, bool)
                                      for s in self.segments])
            found = _live_top(lambda depth: joined(indexes, queries, depth), k, self.slots, int(deleted.sum()),
                              len(self), deleted)
            if found is not None:
                return merge_top_k([found[0]], [found[1]], k)

        def one(segment: Segment) -> tuple[np.ndarray, np.ndarray]:
            scores, ids = _live_top(lambda depth: segment.index.search(queries, depth), k, segment.slots,
                                    segment.removed, segment.live, segment.deleted)
            return scores, np.where(ids >= 0, ids + base_of[id(segment)], -1)

        found = [one(segment) for segment in parts]  # one after another: each scorer uses every core itself
        return merge_top_k([f[0] for f in found], [f[1] for f in found], k)


def _live_top(search: Any, k: int, slots: int, removed: int, live: int,
              deleted: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The top ``k`` live documents from ``search(depth)``, which ranks every slot, deleted ones included.

    Asks for k plus up to k more first; only when a query's list then holds fewer than k live
    documents does it ask again for k plus every deleted one, so the answer is exact while a few
    deletes cost almost nothing. (``search`` may answer None: not applicable.)
    """
    full = min(slots, k + removed)
    depth = min(full, k + min(removed, k))
    while True:
        found = search(depth)
        if found is None:
            return None
        scores, ids = found if deleted is None else _drop(*found, deleted)
        exhausted = (found[1] >= 0).sum(axis=1) < depth  # the index had no more to give
        if depth >= full or (((ids >= 0).sum(axis=1) >= min(k, live)) | exhausted).all():
            return scores, ids
        depth = full


def _drop(scores: np.ndarray, ids: np.ndarray, deleted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores and ids with the deleted slots turned into padding (-inf, -1)."""
    gone = ids >= 0
    gone[gone] = deleted[ids[gone]]
    return np.where(gone, -np.inf, scores).astype(np.float32), np.where(gone, -1, ids)


def generation_manifest(directory: Path, generation: int) -> Path:
    return directory / GENERATIONS_DIR / f"gen-{generation:06d}.json"


def referenced(manifest: dict[str, Any]) -> set[str]:
    """The segments and files a generation needs (relative paths)."""
    names = set(manifest.get("files", {}))
    names.update(s["name"] for s in manifest.get("segments", []))
    return names


def clean(directory: Path, current: dict[str, Any]) -> None:
    """Remove what no generation still needs: leftovers of a dead writer, generations no reader holds.

    Run by the writer, under the writer lock, before and after each commit.
    """
    keep = referenced(current)
    held = held_generations(directory) - {current.get("generation")}
    kept_generations = {current.get("generation")}
    for generation in held:
        saved = generation_manifest(directory, generation)
        if saved.is_file():
            keep |= referenced(json.loads(saved.read_text()))
            kept_generations.add(generation)
    for entry in directory.iterdir():
        name = entry.name
        if name in (MANIFEST, READERS_DIR, GENERATIONS_DIR):
            continue
        if SEGMENT.match(name) and entry.is_dir() and not entry.is_symlink():
            if name not in keep:
                shutil.rmtree(entry)
                continue
            for file in entry.iterdir():  # tombstone files of generations gone
                rel = f"{name}/{file.name}"
                if file.name.startswith("deleted-") and rel not in keep:
                    file.unlink()
        elif name.startswith((STAGING_PREFIX, f".{MANIFEST}.")):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    folder = directory / GENERATIONS_DIR
    for saved in folder.glob("gen-*.json") if folder.is_dir() else []:
        if int(saved.stem.split("-")[1]) not in kept_generations:
            saved.unlink()


def segment_entries(manifest: dict[str, Any], directory: Path) -> list[dict[str, Any]]:
    """The manifest's segment list, checked: names of the form seg-NNNNNN, inside the index, sizes as integers."""
    entries = manifest.get("segments")
    if not isinstance(entries, list) or not entries:
        raise RetrError(f"{directory}/{MANIFEST} lists no segments; the index is corrupt, rebuild it")
    for entry in entries:
        if not isinstance(entry, dict) or not SEGMENT.match(str(entry.get("name"))) \
                or not isinstance(entry.get("docs"), int) or entry["docs"] < 0:
            raise RetrError(f"{directory}/{MANIFEST}: bad segment entry {entry!r}; the index is corrupt, rebuild it")
        inside(directory, entry["name"])
        if entry.get("tombstones") is not None:
            inside(directory, str(entry["tombstones"]))
            if not str(entry["tombstones"]).startswith(entry["name"] + "/"):
                raise RetrError(f"{directory}/{MANIFEST}: tombstones {entry['tombstones']!r} outside their segment")
    return entries


def spawn(index: Index) -> Index:
    """A new, empty index of the same type and settings for a new segment, sharing any trained codec."""
    return index.empty() if hasattr(index, "empty") else type(index)(**index.config())


class LiveIds:
    """Document id -> slot for the live documents of an index (``retr.hashindex``, 24 bytes an id).

    A re-added id has a larger slot than its deleted predecessor, and ``find`` answers the
    largest, so the lookup stays right across deletes and adds without rebuilding it.
    """

    def __init__(self, segments: Sequence[Segment]) -> None:
        self._index = HashIndex()
        start = 0
        for segment in segments:
            ids = segment.docstore.ids
            for block in range(0, len(ids), 1 << 16):
                stop = min(len(ids), block + (1 << 16))
                self._index.add(hash_keys([ids[i] for i in range(block, stop)]), np.arange(start + block, start + stop))
            start += segment.slots
        self._segments = segments

    def add(self, ids: Sequence[str], first_slot: int) -> None:
        self._index.add(hash_keys(list(ids)), np.arange(first_slot, first_slot + len(ids)))

    def find(self, ids: Sequence[str]) -> np.ndarray:
        """The live slot of each id, -1 for ids not in the index (never added, or deleted)."""
        slots = self._index.find(hash_keys(list(ids)))
        deleted = np.concatenate([s.deleted if s.deleted is not None else np.zeros(s.slots, bool)
                                  for s in self._segments]) if any(s.deleted is not None for s in self._segments) \
            else None
        if deleted is not None:
            slots[(slots >= 0) & deleted[np.maximum(slots, 0)]] = -1
        return slots
