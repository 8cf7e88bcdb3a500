"""The Retriever: an encoder, an index of the same kind and a docstore, built, saved and opened as one."""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from retr.errors import RetrError
from retr.eval.datasets import Document
from retr.protocols import Encoder, Index
from retr.registry import ENCODERS, INDEXES, Spec, create_index
from retr.storage import StringArray, atomic_directory, read_manifest, write_manifest

INDEX_DIR, DOCSTORE_DIR = "index", "docstore"
DEFAULT_INDEX = {"dense": "flat", "multi": "maxsim", "sparse": "lucene", "multi-sparse": "slim", "text": "lucene"}


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
        directory.mkdir()
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


def _as_documents(corpus: Iterable[Document | dict | str]) -> list[Document]:
    docs = []
    for i, item in enumerate(corpus):
        if isinstance(item, Document):
            docs.append(item)
        elif isinstance(item, dict):
            docs.append(Document(str(item.get("_id", item.get("id", i))), item.get("text", ""), item.get("title", "")))
        else:
            docs.append(Document(str(i), str(item)))
    seen: set[str] = set()
    for doc in docs:
        if doc.id in seen:
            raise RetrError(f"duplicate document id {doc.id!r}; document ids must be unique")
        seen.add(doc.id)
        if not doc.content:
            raise RetrError(f"document {doc.id!r} has no text")
    if not docs:
        raise RetrError("the corpus is empty")
    return docs


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
    ) -> "Retriever":
        """Encode and index ``corpus`` (Documents, BEIR-style dicts or plain strings)."""
        docs = _as_documents(corpus)
        encoder = ENCODERS.create(encoder) if isinstance(encoder, (str, Spec)) else encoder
        if index is None:
            index = DEFAULT_INDEX.get(encoder.kind, "flat")
        index = create_index(index, encoder.kind) if isinstance(index, (str, Spec)) else index
        _check_pair(encoder, index)
        start = time.perf_counter()
        index.add(encoder.encode_documents([d.content for d in docs]))
        retriever = cls(encoder, index, Docstore.from_documents(docs, store_text))
        retriever.build_seconds = time.perf_counter() - start
        if out is not None:
            retriever.save(out)
        return retriever

    def save(self, out: Path | str) -> Path:
        """Write the index directory atomically; an existing index at ``out`` is replaced only on success."""
        out = Path(out)
        with atomic_directory(out) as tmp:
            (tmp / INDEX_DIR).mkdir()
            self.index.save(tmp / INDEX_DIR)
            self.docstore.save(tmp / DOCSTORE_DIR)
            write_manifest(tmp, {
                "retr_version": _version(),
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "encoder": {"name": self.encoder.name, "kind": self.encoder.kind,
                            "dim": self.encoder.dim, "settings": self.encoder.config()},
                "index": {"name": self.index.name, "settings": self.index.config()},
                "num_docs": len(self.docstore),
                "texts": self.docstore.texts is not None,
            })
        self.path = out.absolute()
        return self.path

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


def open_index(path: Path | str, encoder: Encoder | Spec | str | None = None, verify: bool = True) -> Retriever:
    """Open a saved index; the manifest alone rebuilds its encoder and index.

    ``encoder`` may name the query encoder explicitly; it must match the one the index
    was built with. ``verify=False`` skips the checksums (sizes are still checked).
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
    docstore = Docstore.load(path / DOCSTORE_DIR, manifest.get("texts", False))
    return Retriever(built, index, docstore, path.absolute())


def _version() -> str:
    from retr import __version__

    return __version__
