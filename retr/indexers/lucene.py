"""Lucene inverted indexes built and searched by Anserini through Pyserini.

One index type for both kinds of term representation:

- ``text``: Lucene analyses the texts and ranks by BM25 (Pyserini's BEIR defaults).
- ``sparse``: integer term weights (SPLADE impacts, SLIM's pooled vectors) indexed
  pretokenized as a ``JsonVectorCollection`` with ``-impact``; a query is its own
  integer weights and a document scores ``sum_t q_t * d_t`` (Anserini's impact search).

The Lucene directory lives inside the retr index directory (``lucene/``). Documents are
indexed under their internal id, one thread by default so Lucene's document order, and
with it the order of tied scores, is the corpus order (as Pyserini's BEIR runs).
"""

from __future__ import annotations

import json
import os
import threading
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from retr.errors import RetrError
from retr.indexers._jvm import ensure_jvm
from retr.sparse import SparseVectors, as_sparse, is_integer

LUCENE_DIR, STAGED_DIR = "lucene", "staged"


class LuceneIndex:
    """Lucene inverted index: BM25 over analysed text, or impact scoring over integer term weights."""

    name = "lucene"
    kinds = ("text", "sparse")

    def __init__(self, kind: str = "text", k1: float = 0.9, b: float = 0.4, threads: int = 1) -> None:
        if kind not in self.kinds:
            raise RetrError(f"a lucene index holds text (BM25) or sparse term weights (impacts), not {kind!r}")
        if k1 < 0 or not 0 <= b <= 1:
            raise RetrError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.kind, self.k1, self.b, self.threads = kind, float(k1), float(b), int(threads)
        self._work: Path | None = None  # staging area for an index being built
        self._temporary = False  # the staging area is a temporary directory of ours (an in-memory build)
        self._count = 0
        self._built: Path | None = None
        self._searcher: Any = None
        self._lock = threading.Lock()  # one Anserini call at a time (it runs each batch on its own thread pool)

    def config(self) -> dict[str, Any]:
        bm25 = {"k1": self.k1, "b": self.b} if self.kind == "text" else {}
        return {"kind": self.kind, **bm25, "threads": self.threads}

    def __len__(self) -> int:
        return self._count

    def _documents(self, reps: Any) -> tuple[list[dict[str, Any]], int]:
        """Anserini JSON documents for ``reps``, under ids continuing from ``len(self)``."""
        if self.kind == "text":
            texts: Sequence[str] = reps
            return [{"id": str(i), "contents": t} for i, t in enumerate(texts, start=self._count)], len(texts)
        vectors = as_sparse(reps, "adding to a lucene impact index")
        if not is_integer(vectors.matrix):
            raise RetrError("a lucene impact index stores integer weights: quantise them (e.g. splade's scale=100)")
        docs = [{"id": str(i), "contents": "", "vector": {t: int(w) for t, w in vector.items()}}
                for i, vector in enumerate(vectors.to_dicts(), start=self._count)]
        return docs, len(vectors)

    def stage(self, directory: Path) -> None:
        """Build the Lucene directory inside ``directory`` (an index being written) instead of a temporary one."""
        if self._count:
            raise RetrError("a lucene index can be staged on disk only before documents are added")
        self._work = directory

    def relocate(self, directory: Path) -> None:
        """The index directory it was staged in now lives at ``directory`` (renamed into place)."""
        self._work, self._temporary, self._searcher = None, False, None
        self._built = Path(directory) / LUCENE_DIR

    def add(self, reps: Any) -> None:
        """Stage ``reps`` (Anserini JSON documents appended to one file) under ids continuing from ``len(self)``.

        Lucene indexes the staged file in one pass when the index is first searched or saved:
        one writer over the whole corpus in corpus order, whatever the chunks were.
        """
        if self._work is None:
            if self._built is not None:
                raise RetrError("this Lucene index was opened from disk and is read-only; rebuild it to add documents")
            self._work, self._temporary = Path(tempfile.mkdtemp(prefix="retr-lucene-")), True
        docs, count = self._documents(reps)
        (self._work / STAGED_DIR).mkdir(exist_ok=True)
        with open(self._work / STAGED_DIR / "docs.jsonl", "a", encoding="utf-8") as fh:
            fh.writelines(json.dumps(doc) + "\n" for doc in docs)
        self._count += count
        self._built, self._searcher = None, None

    def _directory(self) -> Path:
        if self._built is None:
            if self._work is None or not (self._work / STAGED_DIR).is_dir():
                raise RetrError("the index is empty: add documents before searching")
            self._index_staged()
        return self._built

    def _index_staged(self) -> None:
        """One Anserini IndexCollection run over the staged documents (replacing any earlier build)."""
        ensure_jvm()
        from jnius import autoclass

        out = self._work / LUCENE_DIR
        shutil.rmtree(out, ignore_errors=True)
        collection = (["-collection", "JsonCollection"] if self.kind == "text"
                      else ["-collection", "JsonVectorCollection", "-impact", "-pretokenized"])
        args = collection + ["-generator", "DefaultLuceneDocumentGenerator", "-input", str(self._work / STAGED_DIR),
                             "-index", str(out), "-threads", str(self.threads), "-quiet"]
        autoclass("io.anserini.index.IndexCollection").main(args)
        self._built = out

    def save(self, directory: Path) -> None:
        built = self._directory()
        if Path(directory).absolute() != built.parent.absolute():  # not built in place
            shutil.copytree(built, directory / LUCENE_DIR)
        else:  # staged in the index being written: the staged documents are not part of it
            shutil.rmtree(Path(directory) / STAGED_DIR, ignore_errors=True)

    @classmethod
    def load(cls, directory: Path, config: dict[str, Any], count: int) -> "LuceneIndex":
        index = cls(**config)
        index._built, index._count = directory / LUCENE_DIR, count
        return index

    def _open(self) -> Any:
        if self._searcher is None:
            ensure_jvm()
            if self.kind == "text":
                from pyserini.search.lucene import LuceneSearcher

                self._searcher = LuceneSearcher(str(self._directory()))
                self._searcher.set_bm25(self.k1, self.b)
            else:
                from jnius import autoclass

                self._searcher = autoclass("io.anserini.search.SimpleImpactSearcher")(str(self._directory()))
        return self._searcher

    def _java_queries(self, queries: Any) -> Any:
        """The queries as Anserini takes them: strings, or a list of term -> Integer maps."""
        if self.kind == "text":
            return list(queries)
        from pyserini.pyclass import JArrayList, JHashMap, JInt

        vectors: SparseVectors = as_sparse(queries, "searching a lucene impact index")
        if not is_integer(vectors.matrix):
            raise RetrError("a lucene impact index needs integer query weights: quantise them like the documents")
        out = JArrayList()
        for vector in vectors.to_dicts():
            jquery = JHashMap()
            for term, weight in vector.items():
                jquery.put(term, JInt(int(weight)))
            out.add(jquery)
        return out

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            return self._run(self._open(), queries, k, lambda hit: int(hit.docid))

    @classmethod
    def search_segments(cls, indexes: list["LuceneIndex"], queries: Any, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """BM25 over several segments as one collection, ids as slots (segment after segment).

        A Lucene ``IndexSearcher`` over a ``MultiReader`` of the segments' directories gives BM25 the
        statistics of all of them (document frequencies, lengths), so the scores equal one index of
        the same documents; queries are analysed as Anserini's searcher does (its English analyzer,
        bag of words). Impact indexes need no statistics (None: each segment is searched alone).
        """
        first = indexes[0]
        if first.kind != "text":
            return None
        key = tuple(str(index._directory()) for index in indexes)
        with first._lock:
            if getattr(first, "_joined", (None,))[0] != key:
                first._joined = (key, *cls._joined_searcher(first, key, [len(i) for i in indexes]))
            _, searcher, generator, analyzer, slots = first._joined
            scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
            ids = np.full((len(queries), k), -1, dtype=np.int64)
            for row, query in enumerate(queries):
                top = searcher.search(generator.buildQuery("contents", analyzer, query), int(k)).scoreDocs
                hits = [(-float(d.score), int(slots[d.doc]), float(d.score)) for d in top]
                hits.sort()  # score descending, ties by slot (corpus order)
                ids[row, : len(hits)] = [h[1] for h in hits]
                scores[row, : len(hits)] = [h[2] for h in hits]
            return scores, ids

    @staticmethod
    def _joined_searcher(first: "LuceneIndex", directories: tuple[str, ...], sizes: list[int]) -> tuple[Any, ...]:
        """A BM25 IndexSearcher over a MultiReader of ``directories``, the query side, and Lucene doc -> slot."""
        ensure_jvm()
        from jnius import autoclass

        fs, paths = autoclass("org.apache.lucene.store.FSDirectory"), autoclass("java.nio.file.Paths")
        opener = autoclass("org.apache.lucene.index.DirectoryReader")
        readers = [opener.open(fs.open(paths.get(directory))) for directory in directories]
        searcher = autoclass("org.apache.lucene.search.IndexSearcher")(
            autoclass("org.apache.lucene.index.MultiReader")(*readers), signature="(Lorg/apache/lucene/index/IndexReader;)V")
        searcher.setSimilarity(autoclass("org.apache.lucene.search.similarities.BM25Similarity")(first.k1, first.b))
        slots, base = [], 0
        for reader, size in zip(readers, sizes):  # each document's slot, from the id it was indexed under
            stored = reader.storedFields()
            slots.append(base + np.array([int(stored.document(d).get("id")) for d in range(reader.maxDoc())]))
            base += size
        generator = autoclass("io.anserini.search.query.BagOfWordsQueryGenerator")()
        analyzer = autoclass("io.anserini.analysis.DefaultEnglishAnalyzer").newDefaultInstance()
        return searcher, generator, analyzer, np.concatenate(slots)

    def _run(self, searcher: Any, queries: Any, k: int, slot: Any) -> tuple[np.ndarray, np.ndarray]:
        """One Anserini batch search; ``slot`` maps a hit to the id returned."""
        jqueries = self._java_queries(queries)
        n = len(queries)
        qids = [str(i) for i in range(n)]
        threads = os.cpu_count() or 1
        if self.kind == "text":
            hits = searcher.batch_search(jqueries, qids, k=k, threads=threads)
        else:
            from pyserini.pyclass import JArrayList

            jqids = JArrayList()
            for qid in qids:
                jqids.add(qid)
            found = searcher.batch_search(jqueries, jqids, int(k), int(threads))
            hits = {entry.getKey(): entry.getValue() for entry in found.entrySet().toArray()}
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        ids = np.full((n, k), -1, dtype=np.int64)
        for row, qid in enumerate(qids):
            row_hits = hits.get(qid, [])
            ids[row, : len(row_hits)] = [slot(h) for h in row_hits]
            scores[row, : len(row_hits)] = [h.score for h in row_hits]
        return scores, ids

    def __del__(self) -> None:
        if getattr(self, "_temporary", False) and self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)
