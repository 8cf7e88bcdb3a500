"""The Retriever: an encoder, an index of the same kind and a docstore, built, saved and opened as one."""

from __future__ import annotations

import contextlib
import datetime
import itertools
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from retr.errors import RetrError
from retr.eval.datasets import CHECK_BLOCK, Document, IdSet
from retr.progress import progress_bar
from retr.protocols import Encoder, Index
from retr.registry import ENCODERS, INDEXES, Spec, create_index
from retr.retriever.cache import flush_caches
from retr.scoring.device import check_device
from retr.segments import (
    SEGMENT, STAGING_PREFIX, LiveIds, Segment, Segments, Strings, clean, generation_manifest, read_tombstones,
    segment_entries, segment_name, spawn, tombstone_name, write_tombstones,
)
from retr.storage import (
    MANIFEST, ReaderHold, StringArray, StringArrayWriter, atomic_directory, file_entries, read_manifest, writer_lock,
    write_manifest,
)
from retr.threads import prefetch

INDEX_DIR, DOCSTORE_DIR, SCRATCH_DIR = "index", "docstore", "scratch"
DEFAULT_INDEX = {"dense": "flat", "multi": "maxsim", "sparse": "lucene", "multi-sparse": "slim", "text": "lucene"}
# documents encoded and added at once: bounds a build's memory (token matrices are large, hence smaller chunks)
CHUNK_DOCS = {"multi": 2048, "multi-sparse": 2048}
DEFAULT_CHUNK = 16384


@dataclass(frozen=True)
class Hit:
    """One search result: the document's id, its score, and its text when the index stores texts."""

    id: str
    score: float
    text: str | None = None


class Docstore:
    """Internal id -> document id, and optionally -> text (title and text as indexed)."""

    def __init__(self, ids: StringArray, texts: StringArray | None = None) -> None:
        self.ids, self.texts = ids, texts

    @classmethod
    def from_documents(cls, docs: Sequence[Document], store_text: bool = True) -> "Docstore":
        ids = StringArray.from_strings([d.id for d in docs])
        return cls(ids, StringArray.from_strings([d.content for d in docs]) if store_text else None)

    def save(self, directory: Path) -> None:
        directory.mkdir(exist_ok=True)
        self.ids.save(directory, "ids")
        if self.texts is not None:
            self.texts.save(directory, "texts")

    @classmethod
    def load(cls, directory: Path, store_text: bool) -> "Docstore":
        return cls(StringArray.load(directory, "ids"), StringArray.load(directory, "texts") if store_text else None)

    def __len__(self) -> int:
        return len(self.ids)


def check_queries(queries: Sequence[str], k: int) -> None:
    """A clear error for a single string, an empty query or k < 1 (every retriever's search_batch)."""
    if isinstance(queries, str):
        raise RetrError("search_batch takes a list of queries; use search() for one")
    if k < 1:
        raise RetrError(f"k must be at least 1, got {k}")
    for i, query in enumerate(queries):
        if not isinstance(query, str) or not query.strip():
            raise RetrError(f"query {i} is empty: give some text to search for")


def _check_pair(encoder: Encoder, index: Index) -> None:
    if encoder.kind != index.kind:
        raise RetrError(
            f"encoder {encoder.name!r} makes {encoder.kind} representations but index {index.name!r} "
            f"holds {index.kind}; pick an index for {encoder.kind} (e.g. {DEFAULT_INDEX.get(encoder.kind, '?')})"
        )


def _documents(corpus: Iterable[Document | dict | str]) -> Iterator[Document]:
    """Each item as a Document (BEIR-style dicts and plain strings converted); a text-less one is an error."""
    for i, item in enumerate(corpus):
        if isinstance(item, Document):
            doc = item
        elif isinstance(item, dict):
            doc = Document(str(item.get("_id", item.get("id", i))), item.get("text", ""), item.get("title", ""))
        else:
            doc = Document(str(i), str(item))
        if not doc.content:
            raise RetrError(f"document {doc.id!r} has no text")
        yield doc


def _store_documents(corpus: Iterable[Document | dict | str], ids: StringArrayWriter, texts: StringArrayWriter,
                     live: LiveIds | None = None, replace: bool = False) -> list[int]:
    """Stream the corpus into the id and text stores, a block at a time, refusing duplicate ids.

    With ``live`` (the ids already in the index), an id found there is an error unless
    ``replace``; then the slots it replaces are returned.
    """
    seen, docs, replaced = IdSet(), _documents(corpus), []
    while block := list(itertools.islice(docs, CHECK_BLOCK)):
        start = len(ids)
        duplicate = seen.add([d.id for d in block], range(start, start + len(block)))
        if duplicate is not None:
            raise RetrError(f"duplicate document id {duplicate[0]!r} (documents {duplicate[1] + 1} and "
                            f"{duplicate[2] + 1}); document ids must be unique")
        if live is not None:
            found = live.find([d.id for d in block])
            if not replace and (found >= 0).any():
                raise RetrError(f"document id {block[int(np.argmax(found >= 0))].id!r} is already in the index; "
                                "use update to replace a document")
            replaced.extend(found[found >= 0].tolist())
        ids.append([d.id for d in block])
        texts.append([d.content for d in block])
    if not len(ids):
        raise RetrError("the corpus is empty")
    return replaced


def _sample(texts: StringArrayWriter, size: int, seed: int) -> list[str]:
    """``size`` texts drawn uniformly without replacement (seeded), in corpus order, read in one pass."""
    n = len(texts)
    picks = np.sort(np.random.default_rng(seed).choice(n, size, replace=False)) if size < n else np.arange(n)
    out: list[str] = []
    step = 1 << 16
    for start in range(0, n, step):
        inside = picks[(picks >= start) & (picks < start + step)]
        if len(inside):
            block = texts.read(start, min(n, start + step))
            out.extend(block[i - start] for i in inside.tolist())
    return out


def _build_segment(corpus: Iterable[Document | dict | str], encoder: Encoder, index: Index, directory: Path | None,
                   store_text: bool, chunk_size: int, seed: int, live: LiveIds | None = None,
                   replace: bool = False) -> tuple[Segment, list[int]]:
    """The streaming build of one segment; with ``directory``, its stores are written there (index/, docstore/).

    Returns the segment and, with ``live``, the slots of the documents it replaces.
    """
    folder = (lambda name: None) if directory is None else (lambda name: directory / name)
    if directory is not None:
        directory.mkdir()
        for name in (DOCSTORE_DIR, INDEX_DIR, SCRATCH_DIR):
            folder(name).mkdir()
    ids = StringArrayWriter(folder(DOCSTORE_DIR), "ids")
    texts = StringArrayWriter(folder(DOCSTORE_DIR if store_text else SCRATCH_DIR), "texts")
    replaced = _store_documents(corpus, ids, texts, live, replace)
    n = len(ids)
    if directory is not None and hasattr(index, "stage"):
        index.stage(folder(INDEX_DIR))
    wanted = index.training_size(n) if hasattr(index, "training_size") and not index.trained else 0
    if wanted:
        index.train(encoder.encode_documents(_sample(texts, min(wanted, n), seed)), n)
    chunks = (encoder.encode_documents(texts.read(s, min(n, s + chunk_size))) for s in range(0, n, chunk_size))
    with progress_bar(total=n, desc=f"indexing with {encoder.name}@{index.name}", unit="doc") as bar:
        for start, reps in zip(range(0, n, chunk_size), prefetch(chunks)):
            index.add(reps)
            bar.update(min(chunk_size, n - start))
    flush_caches()  # the encodings on disk before the build returns: a build in another process reuses them
    docstore = Docstore(ids.finish(), texts.finish() if store_text else None)
    if directory is not None:
        shutil.rmtree(folder(SCRATCH_DIR))
        index.save(folder(INDEX_DIR))  # close the files staged there
        docstore.save(folder(DOCSTORE_DIR))
    return Segment(index, docstore, staged=directory), replaced


class Retriever:
    """Search a collection: ``search(query, k)`` and ``search_batch(queries, k)`` return ``Hit`` lists.

    Build one with ``Retriever.build(corpus, encoder="dense:MODEL", index="hnsw")`` (optionally
    saving it with ``out=``) or open a saved one with ``retr.open_index(path)``. Change it with
    ``add``, ``delete``, ``update`` and ``compact``; on disk, ``commit`` publishes the changes
    (``retr.segments`` says how).
    """

    def __init__(self, encoder: Encoder, index: Index | Segments, docstore: Docstore | None = None,
                 path: Path | None = None) -> None:
        if not isinstance(index, Segments):
            if docstore is None:
                raise RetrError("a Retriever over one index needs its docstore")
            index = Segments([Segment(index, docstore)])
        for segment in index.segments:
            _check_pair(encoder, segment.index)
            if len(segment.index) != segment.slots:
                raise RetrError(f"index holds {len(segment.index)} documents, docstore {segment.slots}: "
                                "rebuild the index")
        self.encoder, self.index, self.path = encoder, index, path
        self.build_seconds = 0.0
        self.generation = 0  # the committed generation this retriever reads (0: never saved)
        self.store_text = all(s.docstore.texts is not None for s in index.segments)
        self.settings = {"chunk_size": 0, "seed": 42}
        self._docstore: Docstore | None = None
        self._hold: ReaderHold | None = None
        self._writer: contextlib.ExitStack | None = None
        self._live: LiveIds | None = None
        self.shards: list[Retriever] | None = None  # the shards of a sharded index searched as one
        self._device = "cpu"  # where new segments score (open_index's device)

    @property
    def docstore(self) -> Docstore:
        """Slot -> document id and text, over every segment."""
        if self._docstore is None:
            parts = [s.docstore for s in self.index.segments]
            self._docstore = parts[0] if len(parts) == 1 else Docstore(
                Strings([p.ids for p in parts]), Strings([p.texts for p in parts]) if self.store_text else None)
        return self._docstore

    @property
    def name(self) -> str:
        encoder = ENCODERS.describe(self.encoder.name, self.encoder.config())
        index = {k: v for k, v in self.index.config().items() if not (k == "kind" and v == self.encoder.kind)}
        return f"{encoder}@{INDEXES.describe(self.index.name, index)}"

    @classmethod
    def build(
        cls, corpus: Iterable[Document | dict | str], encoder: Encoder | Spec | str = "dense",
        index: Index | Spec | str | None = None, out: Path | str | None = None, store_text: bool = True,
        chunk_size: int = 0, seed: int = 42,
    ) -> "Retriever":
        """Encode and index ``corpus`` (Documents, BEIR-style dicts or plain strings; a list or any iterable).

        The build streams: documents go to the docstore first (on disk under ``out``), an index
        that trains does so on a seeded uniform sample of them, then the corpus is encoded and
        added ``chunk_size`` documents at a time (default by kind: 16,384, or 2,048 for token
        matrices), the next chunk encoding while the index adds the last. With ``out``,
        arrays are written to the index directory as they grow, so memory stays at a few chunks
        plus what the index type keeps in memory (an HNSW graph, FAISS inverted lists). The
        build holds the index's writer lock: a second writer of ``out`` fails at once.
        """
        encoder = ENCODERS.create(encoder) if isinstance(encoder, (str, Spec)) else encoder
        if index is None:
            index = DEFAULT_INDEX.get(encoder.kind, "flat")
        index = create_index(index, encoder.kind) if isinstance(index, (str, Spec)) else index
        _check_pair(encoder, index)
        size = chunk_size or CHUNK_DOCS.get(encoder.kind, DEFAULT_CHUNK)
        start = time.perf_counter()
        if out is None:
            segment, _ = _build_segment(corpus, encoder, index, None, store_text, size, seed)
            retriever = cls(encoder, Segments([segment]))
        else:
            out = Path(out)
            with writer_lock(out), atomic_directory(out) as tmp:
                segment, _ = _build_segment(corpus, encoder, index, tmp / segment_name(1), store_text, size, seed)
                segment.name, segment.staged = segment_name(1), None
                retriever = cls(encoder, Segments([segment]))
                retriever._write(tmp, 1)
            retriever._placed(out.absolute(), 1)
        retriever.settings = {"chunk_size": chunk_size, "seed": seed}
        retriever.build_seconds = time.perf_counter() - start
        return retriever

    def save(self, out: Path | str) -> Path:
        """Write the index directory atomically; an existing index at ``out`` is replaced only on success."""
        out = Path(out)
        if self._writer is not None:
            raise RetrError("this retriever has uncommitted changes: commit() them before saving a copy")
        with writer_lock(out), atomic_directory(out) as tmp:
            for number, segment in enumerate(self.index.segments, start=1):
                folder = tmp / segment_name(number)
                (folder / INDEX_DIR).mkdir(parents=True)
                segment.index.save(folder / INDEX_DIR)
                segment.docstore.save(folder / DOCSTORE_DIR)
                segment.name, segment.staged, segment.changed = segment_name(number), None, True
            self._write(tmp, 1)
        self._placed(out.absolute(), 1)
        return self.path

    def _write(self, directory: Path, generation: int, files: dict[str, Any] | None = None) -> None:
        """Tombstones of changed segments and the manifest of ``generation`` (every file listed when ``files`` is None)."""
        new_files = []
        for segment in self.index.segments:
            if segment.changed:
                segment.tombstones = None
                if segment.removed:
                    segment.tombstones = tombstone_name(segment.name, generation)
                    write_tombstones(directory / segment.tombstones, segment.deleted)
                    new_files.append(directory / segment.tombstones)
                segment.changed = False
        if files is not None:
            files.update(file_entries(directory, new_files))
        manifest = {
            "retr_version": _version(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "generation": generation,
            "encoder": {"name": self.encoder.name, "kind": self.encoder.kind,
                        "dim": self.encoder.dim, "settings": self.encoder.config()},
            "index": {"name": self.index.name, "settings": self.index.config()},
            "num_docs": len(self.index),
            "texts": self.store_text,
            "segments": [{"name": s.name, "docs": s.slots, "deleted": s.removed, "tombstones": s.tombstones}
                         for s in self.index.segments],
        }
        write_manifest(directory, manifest, files)
        saved = generation_manifest(directory, generation)
        saved.parent.mkdir(exist_ok=True)
        shutil.copyfile(directory / MANIFEST, saved)

    def _placed(self, path: Path, generation: int) -> None:
        """The index now lives at ``path`` in ``generation``: reopen what reads files by path, hold the generation."""
        self.path, self.generation = path, generation
        for segment in self.index.segments:
            if hasattr(segment.index, "relocate"):  # files it reopens by path (Lucene) moved with the directory
                segment.index.relocate(path / segment.name / INDEX_DIR)
        if self._hold is not None:
            self._hold.release()
        self._hold = ReaderHold(path, generation)

    # ---- changes -------------------------------------------------------------------------------------

    def add(self, docs: Iterable[Document | dict | str]) -> int:
        """Add documents as a new segment; an id already in the index is an error (use ``update``). Returns the count."""
        return self._add(docs, replace=False)

    def update(self, docs: Iterable[Document | dict | str]) -> int:
        """Replace the documents with these ids (delete, then add), adding those not in the index yet."""
        return self._add(docs, replace=True)

    def delete(self, ids: Iterable[str], missing_ok: bool = False) -> int:
        """Delete documents by id (tombstones until ``compact``); an unknown id is an error unless ``missing_ok``."""
        ids = [str(i) for i in ids]
        self._begin()
        slots = self._live.find(ids)
        missing = [i for i, s in zip(ids, slots) if s < 0]
        if missing and not missing_ok:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise RetrError(f"no document with id {', '.join(map(repr, missing[:5]))}{more} in the index; "
                            "nothing was deleted")
        self._delete_slots(np.unique(slots[slots >= 0]))
        return int((slots >= 0).sum())

    def compact(self, retrain: bool = False) -> None:
        """Rewrite the live documents as one segment (tombstones gone, BM25 statistics exact again), and commit.

        The documents are encoded again from the docstore (the embedding cache makes that a read).
        An index that trains keeps its codec unless ``retrain``: then it trains on a sample of
        the live documents, exactly as a fresh build of them would.
        """
        if not self.store_text:
            raise RetrError("compacting re-encodes the stored texts, and this index was built without them "
                            "(store_text=False); rebuild it from the corpus instead")
        self._begin()
        live = self._live_documents()
        first = self.index.first
        index = create_index(Spec(first.name, None, first.config()), self.encoder.kind) if retrain else spawn(first)
        segment, _ = self._new_segment(live, index)
        self.index.segments[:] = [segment]
        self._changed()
        self.commit()

    def commit(self) -> int:
        """Publish the changes as the next generation (one atomic rename) and release the writer lock.

        Returns the generation. In memory (no path) changes apply at once and this does nothing.
        """
        if self._writer is None or self.path is None:
            return self.generation
        try:
            committed = read_manifest(self.path, verify=False)["files"]
            names = {s.name for s in self.index.segments if s.name is not None}
            files = {rel: meta for rel, meta in committed.items() if rel.split("/", 1)[0] in names
                     and not rel.split("/", 1)[1].startswith("deleted-")}  # the kept segments' own files
            for segment in self.index.segments:
                if segment.tombstones is not None and not segment.changed:
                    files[segment.tombstones] = committed[segment.tombstones]
            number = max([int(SEGMENT.match(p.name).group(1)) for p in self.path.iterdir() if SEGMENT.match(p.name)],
                         default=0)
            for segment in self.index.segments:
                if segment.name is None:
                    number += 1
                    segment.name = segment_name(number)
                    os.rename(segment.staged, self.path / segment.name)
                    segment.staged = None
                    files.update(file_entries(self.path, [p for p in (self.path / segment.name).rglob("*")
                                                          if p.is_file()]))
                    segment.changed = True
            generation = self.generation + 1
            self._write(self.path, generation, files)
            self._placed(self.path, generation)
            clean(self.path, read_manifest(self.path, verify=False))
        finally:
            self._end()
        return self.generation

    def apply(self, change: Any) -> tuple[Any, int]:
        """Run ``change(self)`` and commit it; on any failure roll it back. Returns its result and the generation."""
        try:
            done = change(self)
            return done, self.commit()
        except BaseException:
            self.rollback()
            raise

    def rollback(self) -> None:
        """Drop the uncommitted changes (reopening the committed generation) and release the writer lock."""
        if self._writer is None:
            return
        self._end()
        self._live = None
        if self.path is not None:
            reopened = open_index(self.path, self.encoder)
            self.index, self.generation, self._docstore = reopened.index, reopened.generation, None
            self._hold, reopened._hold = reopened._hold, None

    def _begin(self) -> None:
        """Start a change: take the writer lock, check nobody committed since this was opened, clean leftovers."""
        if self._writer is not None:
            return
        if self.shards is not None:
            raise RetrError(f"{self.path} is a sharded index: change it shard by shard (open {self.path}/shard-NNN)")
        if self.path is not None:
            stack = contextlib.ExitStack()
            stack.enter_context(writer_lock(self.path))
            current = read_manifest(self.path, verify=False)
            if current.get("generation") != self.generation:
                stack.close()
                raise RetrError(f"{self.path} changed since it was opened (generation {self.generation}, now "
                                f"{current.get('generation')}); open it again to change it")
            clean(self.path, current)
            self._writer = stack
        else:
            self._writer = contextlib.ExitStack()
        if self._live is None:
            self._live = LiveIds(self.index.segments)

    def _end(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.path is None:
            return
        for segment in self.index.segments:
            if segment.staged is not None:
                shutil.rmtree(segment.staged, ignore_errors=True)

    def _add(self, docs: Iterable[Document | dict | str], replace: bool) -> int:
        self._begin()
        segment, replaced = self._new_segment(docs, spawn(self.index.first), self._live, replace)
        self._delete_slots(np.asarray(replaced, dtype=np.int64))
        first_slot = self.index.slots
        self.index.segments.append(segment)
        self._live.add(list(segment.docstore.ids), first_slot)
        self._changed()
        return segment.slots

    def _new_segment(self, docs: Iterable[Document | dict | str], index: Index, live: LiveIds | None = None,
                     replace: bool = False) -> tuple[Segment, list[int]]:
        staged = None if self.path is None else self.path / f"{STAGING_PREFIX}{uuid.uuid4().hex[:8]}"
        try:
            size = self.settings["chunk_size"] or CHUNK_DOCS.get(self.encoder.kind, DEFAULT_CHUNK)
            segment, replaced = _build_segment(docs, self.encoder, index, staged, self.store_text, size,
                                               self.settings["seed"], live, replace)
        except BaseException:
            if staged is not None:
                shutil.rmtree(staged, ignore_errors=True)
            raise
        if self._device != "cpu":
            use_device(segment.index, self._device)
        return segment, replaced

    def _delete_slots(self, slots: np.ndarray) -> None:
        start = 0
        for segment in self.index.segments:
            inside = slots[(slots >= start) & (slots < start + segment.slots)] - start
            if len(inside):
                segment.delete(inside)
            start += segment.slots
        if len(slots):
            self._changed()

    def _changed(self) -> None:
        self._docstore = None
        self.index = Segments(self.index.segments)  # indexes' joined searchers rebuilt for the new segment list
        if self.path is None:
            self._writer = None  # in memory: nothing to commit

    def _live_documents(self) -> Iterator[Document]:
        """The live documents, in slot order, as the docstore holds them (content as indexed)."""
        for segment in self.index.segments:
            ids, texts = segment.docstore.ids, segment.docstore.texts
            for i in range(segment.slots):
                if segment.deleted is None or not segment.deleted[i]:
                    yield Document(ids[i], texts[i])

    # ---- search --------------------------------------------------------------------------------------

    def search(self, query: str, k: int = 10) -> list[Hit]:
        return self.search_batch([query], k)[0]

    def search_batch(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        """Top ``k`` hits for each query, best first."""
        check_queries(queries, k)
        if not queries:
            return []
        k_eff = min(k, len(self.index))
        if k_eff == 0:
            return [[] for _ in queries]
        encoder = getattr(self.index, "query_encoder", None) or self.encoder  # JPQ trains its own query side
        scores, ids = self.index.search(encoder.encode_queries(list(queries)), k_eff)
        return [self._hits(s, i) for s, i in zip(scores, ids)]

    def _hits(self, scores: np.ndarray, ids: np.ndarray) -> list[Hit]:
        docstore = self.docstore
        texts = docstore.texts
        return [
            Hit(docstore.ids[int(i)], float(s), texts[int(i)] if texts is not None else None)
            for s, i in zip(scores, ids) if i >= 0
        ]

    def close(self) -> None:
        """Release the generation this retriever holds (and any uncommitted change)."""
        if self._writer is not None:
            self.rollback()
        if self._hold is not None:
            self._hold.release()
            self._hold = None
        for shard in self.shards or []:
            shard.close()

    def __len__(self) -> int:
        return len(self.index)

    def __repr__(self) -> str:
        return f"Retriever({self.name}, {len(self)} documents{', ' + str(self.path) if self.path else ''})"


def use_device(index: Index, device: str | None) -> None:
    """Score ``index``'s exact stages on ``device`` (``retr.scoring``); a clear error if its type cannot."""
    device = check_device(device)
    if hasattr(index, "use_device"):
        index.use_device(device)
    elif device != "cpu":
        raise RetrError(f"a {index.name} index searches on the CPU only; devices serve flat, maxsim, muvera, "
                        "plaid, and the refine / rerank stages of pq, opq, ivfpq and bebr")


def open_index(path: Path | str, encoder: Encoder | Spec | str | None = None, verify: bool = True,
               device: str | None = None, ray: str | bool | None = None) -> Retriever:
    """Open a saved index at its committed generation; the manifest alone rebuilds its encoder and index.

    ``encoder`` may name the query encoder explicitly; it must match the one the index
    was built with. ``verify=False`` skips the checksums (sizes are still checked).
    ``device`` ('cpu', 'cuda', 'cuda:1', ...) is where the exact scoring stages run. The
    retriever holds its generation (its files stay) until ``close()`` or until it is freed.
    A sharded index (``retr.shards``) is searched here in threads, or on Ray with ``ray``
    (True, 'auto' or an address): one actor per shard.
    """
    path = Path(path).absolute()
    from retr.shards import RayShardedRetriever, is_sharded, open_sharded_locally

    top = read_manifest(path, verify=False)
    if is_sharded(top):
        if ray:
            return RayShardedRetriever(path, top, ray, encoder, device)  # type: ignore[return-value]
        return open_sharded_locally(path, top, encoder, verify, device)
    if ray:
        raise RetrError(f"{path} is not a sharded index; search it without ray")
    for _ in range(100):  # a writer may commit between reading the manifest and holding its generation
        manifest = read_manifest(path, verify=verify)
        hold = ReaderHold(path, int(manifest.get("generation", 0)))
        if read_manifest(path, verify=False).get("generation") == manifest.get("generation"):
            break
        hold.release()
    else:
        raise RetrError(f"{path} changes faster than it can be opened; try again")
    enc_meta, idx_meta = manifest["encoder"], manifest["index"]
    built = ENCODERS.create(Spec(enc_meta["name"], None, enc_meta["settings"]))
    if encoder is not None:
        asked = ENCODERS.create(encoder) if isinstance(encoder, (str, Spec)) else encoder
        if asked.name != built.name or asked.config() != built.config():
            raise RetrError(
                f"index {path} was built with encoder {Spec(built.name, None, built.config())}, "
                f"not {Spec(asked.name, None, asked.config())}; search it with its own encoder or rebuild it"
            )
        if enc_meta.get("dim") is not None and asked.dim != enc_meta["dim"]:
            raise RetrError(f"encoder makes {asked.dim}-d vectors, index {path} holds {enc_meta['dim']}-d")
        built = asked
    segments = []
    for entry in segment_entries(manifest, path):
        folder = path / entry["name"]
        index = INDEXES.get(idx_meta["name"]).load(folder / INDEX_DIR, idx_meta["settings"], entry["docs"])
        dim = getattr(index, "dim", None)
        if enc_meta.get("dim") is not None and dim is not None and dim != enc_meta["dim"]:
            raise RetrError(f"index {path} holds {dim}-d vectors, its manifest says {enc_meta['dim']}: rebuild it")
        docstore = Docstore.load(folder / DOCSTORE_DIR, manifest.get("texts", False))
        deleted = None
        if entry.get("tombstones"):
            deleted = read_tombstones(path / entry["tombstones"], entry["docs"])
            if int(deleted.sum()) != entry.get("deleted"):
                raise RetrError(f"index {path}: {entry['tombstones']} deletes {int(deleted.sum())} documents, the "
                                f"manifest says {entry.get('deleted')}; the index is corrupt")
        segments.append(Segment(index, docstore, deleted, entry["name"], entry.get("tombstones")))
    retriever = Retriever(built, Segments(segments), path=path)
    retriever.generation, retriever._hold = int(manifest.get("generation", 0)), hold
    retriever.store_text = bool(manifest.get("texts", False))
    retriever.index.use_device(check_device(device))
    retriever._device = check_device(device)
    return retriever


def _version() -> str:
    from retr import __version__

    return __version__
