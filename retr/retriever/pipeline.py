"""The Retriever: an encoder, an index of the same kind and a docstore, built, saved and opened as one."""

from __future__ import annotations

import datetime
import itertools
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from retr.errors import RetrError
from retr.eval.datasets import CHECK_BLOCK, Document, IdSet
from retr.progress import progress_bar
from retr.protocols import Encoder, Index
from retr.registry import ENCODERS, INDEXES, Spec, create_index
from retr.storage import StringArray, StringArrayWriter, atomic_directory, read_manifest, write_manifest
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


def _store_documents(corpus: Iterable[Document | dict | str], ids: StringArrayWriter,
                     texts: StringArrayWriter) -> None:
    """Stream the corpus into the id and text stores, a block at a time, refusing duplicate ids."""
    seen, docs = IdSet(), _documents(corpus)
    while block := list(itertools.islice(docs, CHECK_BLOCK)):
        start = len(ids)
        duplicate = seen.add([d.id for d in block], range(start, start + len(block)))
        if duplicate is not None:
            raise RetrError(f"duplicate document id {duplicate[0]!r} (documents {duplicate[1] + 1} and "
                            f"{duplicate[2] + 1}); document ids must be unique")
        ids.append([d.id for d in block])
        texts.append([d.content for d in block])
    if not len(ids):
        raise RetrError("the corpus is empty")


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


class Retriever:
    """Search a collection: ``search(query, k)`` and ``search_batch(queries, k)`` return ``Hit`` lists.

    Build one with ``Retriever.build(corpus, encoder="dense:MODEL", index="hnsw")`` (optionally
    saving it with ``out=``) or open a saved one with ``retr.open_index(path)``.
    """

    def __init__(self, encoder: Encoder, index: Index, docstore: Docstore, path: Path | None = None) -> None:
        _check_pair(encoder, index)
        if len(index) != len(docstore):
            raise RetrError(f"index holds {len(index)} documents, docstore {len(docstore)}: rebuild the index")
        self.encoder, self.index, self.docstore, self.path = encoder, index, docstore, path
        self.build_seconds = 0.0

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
        plus what the index type keeps in memory (an HNSW graph, FAISS inverted lists).
        """
        encoder = ENCODERS.create(encoder) if isinstance(encoder, (str, Spec)) else encoder
        if index is None:
            index = DEFAULT_INDEX.get(encoder.kind, "flat")
        index = create_index(index, encoder.kind) if isinstance(index, (str, Spec)) else index
        _check_pair(encoder, index)
        chunk_size = chunk_size or CHUNK_DOCS.get(encoder.kind, DEFAULT_CHUNK)
        start = time.perf_counter()
        if out is None:
            retriever = cls._build(corpus, encoder, index, None, store_text, chunk_size, seed)
        else:
            out = Path(out)
            with atomic_directory(out) as tmp:
                retriever = cls._build(corpus, encoder, index, tmp, store_text, chunk_size, seed)
                retriever._write(tmp)
            retriever.path = out.absolute()
            if hasattr(index, "relocate"):  # files it reopens by path (Lucene) moved with the directory
                index.relocate(retriever.path / INDEX_DIR)
        retriever.build_seconds = time.perf_counter() - start
        return retriever

    @classmethod
    def _build(cls, corpus: Iterable[Document | dict | str], encoder: Encoder, index: Index, directory: Path | None,
               store_text: bool, chunk_size: int, seed: int) -> "Retriever":
        """The streaming build; with ``directory``, stores are written there (index/, docstore/)."""
        folder = (lambda name: None) if directory is None else (lambda name: directory / name)
        for name in (DOCSTORE_DIR, INDEX_DIR, SCRATCH_DIR):
            if folder(name) is not None:
                folder(name).mkdir()
        ids = StringArrayWriter(folder(DOCSTORE_DIR), "ids")
        texts = StringArrayWriter(folder(DOCSTORE_DIR if store_text else SCRATCH_DIR), "texts")
        _store_documents(corpus, ids, texts)
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
        docstore = Docstore(ids.finish(), texts.finish() if store_text else None)
        if directory is not None:
            shutil.rmtree(folder(SCRATCH_DIR))
        return cls(encoder, index, docstore)

    def save(self, out: Path | str) -> Path:
        """Write the index directory atomically; an existing index at ``out`` is replaced only on success."""
        out = Path(out)
        with atomic_directory(out) as tmp:
            self._write(tmp)
        self.path = out.absolute()
        return self.path

    def _write(self, directory: Path) -> None:
        """Index, docstore and manifest into ``directory`` (files staged there already are only closed)."""
        (directory / INDEX_DIR).mkdir(exist_ok=True)
        self.index.save(directory / INDEX_DIR)
        self.docstore.save(directory / DOCSTORE_DIR)
        write_manifest(directory, {
            "retr_version": _version(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "encoder": {"name": self.encoder.name, "kind": self.encoder.kind,
                        "dim": self.encoder.dim, "settings": self.encoder.config()},
            "index": {"name": self.index.name, "settings": self.index.config()},
            "num_docs": len(self.docstore),
            "texts": self.docstore.texts is not None,
        })

    def search(self, query: str, k: int = 10) -> list[Hit]:
        return self.search_batch([query], k)[0]

    def search_batch(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        """Top ``k`` hits for each query, best first."""
        check_queries(queries, k)
        if not queries:
            return []
        k_eff = min(k, len(self.docstore))
        encoder = getattr(self.index, "query_encoder", None) or self.encoder  # JPQ trains its own query side
        scores, ids = self.index.search(encoder.encode_queries(list(queries)), k_eff)
        return [self._hits(s, i) for s, i in zip(scores, ids)]

    def _hits(self, scores: np.ndarray, ids: np.ndarray) -> list[Hit]:
        texts = self.docstore.texts
        return [
            Hit(self.docstore.ids[int(i)], float(s), texts[int(i)] if texts is not None else None)
            for s, i in zip(scores, ids) if i >= 0
        ]

    def __len__(self) -> int:
        return len(self.docstore)

    def __repr__(self) -> str:
        return f"Retriever({self.name}, {len(self)} documents{', ' + str(self.path) if self.path else ''})"


def use_device(index: Index, device: str | None) -> None:
    """Score ``index``'s exact stages on ``device`` (``retr.scoring``); a clear error if its type cannot."""
    from retr.scoring import check_device

    device = check_device(device)
    if hasattr(index, "use_device"):
        index.use_device(device)
    elif device != "cpu":
        raise RetrError(f"a {index.name} index searches on the CPU only; devices serve flat, maxsim, muvera, "
                        "plaid, and the refine / rerank stages of pq, opq, ivfpq and bebr")


def open_index(path: Path | str, encoder: Encoder | Spec | str | None = None, verify: bool = True,
               device: str | None = None) -> Retriever:
    """Open a saved index; the manifest alone rebuilds its encoder and index.

    ``encoder`` may name the query encoder explicitly; it must match the one the index
    was built with. ``verify=False`` skips the checksums (sizes are still checked).
    ``device`` ('cpu', 'cuda', 'cuda:1', ...) is where the exact scoring stages run.
    """
    path = Path(path)
    manifest = read_manifest(path, verify=verify)
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
    index = INDEXES.get(idx_meta["name"]).load(path / INDEX_DIR, idx_meta["settings"], manifest["num_docs"])
    dim = getattr(index, "dim", None)
    if enc_meta.get("dim") is not None and dim is not None and dim != enc_meta["dim"]:
        raise RetrError(f"index {path} holds {dim}-d vectors, its manifest says {enc_meta['dim']}: rebuild it")
    use_device(index, device)
    docstore = Docstore.load(path / DOCSTORE_DIR, manifest.get("texts", False))
    return Retriever(built, index, docstore, path.absolute())


def _version() -> str:
    from retr import __version__

    return __version__
