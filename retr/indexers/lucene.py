"""BM25 on a Lucene index built and searched by Anserini through Pyserini.

The Lucene directory lives inside the retr index directory (``lucene/``). Documents
are indexed under their internal id, one thread by default so Lucene's document order,
and with it the order of tied scores, is the corpus order (as Pyserini's BEIR runs).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from retr.errors import RetrError
from retr.indexers._jvm import ensure_jvm

LUCENE_DIR = "lucene"


class LuceneBM25Index:
    """Lucene inverted index over analysed text, ranked by BM25 (Pyserini's BEIR defaults)."""

    name = "lucene"
    kind = "text"

    def __init__(self, k1: float = 0.9, b: float = 0.4, threads: int = 1) -> None:
        if k1 < 0 or not 0 <= b <= 1:
            raise RetrError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self.k1, self.b, self.threads = float(k1), float(b), int(threads)
        self._work: Path | None = None  # staging area for an index being built
        self._count = 0
        self._built: Path | None = None
        self._searcher: Any = None

    def config(self) -> dict[str, Any]:
        return {"k1": self.k1, "b": self.b, "threads": self.threads}

    def __len__(self) -> int:
        return self._count

    def add(self, texts: Sequence[str]) -> None:
        """Index ``texts`` now (appending to what is there), under ids continuing from ``len(self)``."""
        if self._work is None:
            if self._built is not None:
                raise RetrError("this Lucene index was opened from disk and is read-only; rebuild it to add documents")
            self._work = Path(tempfile.mkdtemp(prefix="retr-lucene-"))
        staged = self._work / f"docs-{self._count}"
        staged.mkdir()
        with open(staged / "docs.jsonl", "w", encoding="utf-8") as fh:
            for i, text in enumerate(texts, start=self._count):
                fh.write(json.dumps({"id": str(i), "contents": text}) + "\n")
        ensure_jvm()
        from jnius import autoclass

        out = self._work / LUCENE_DIR
        args = ["-collection", "JsonCollection", "-generator", "DefaultLuceneDocumentGenerator",
                "-input", str(staged), "-index", str(out), "-threads", str(self.threads), "-quiet"]
        autoclass("io.anserini.index.IndexCollection").main(args + (["-append"] if self._count else []))
        shutil.rmtree(staged)
        self._count += len(texts)
        self._built, self._searcher = out, None

    def _directory(self) -> Path:
        if self._built is None:
            raise RetrError("the index is empty: add documents before searching")
        return self._built

    def save(self, directory: Path) -> None:
        shutil.copytree(self._directory(), directory / LUCENE_DIR)

    @classmethod
    def load(cls, directory: Path, config: dict[str, Any], count: int) -> "LuceneBM25Index":
        index = cls(**config)
        index._built, index._count = directory / LUCENE_DIR, count
        return index

    def _open(self) -> Any:
        if self._searcher is None:
            ensure_jvm()
            from pyserini.search.lucene import LuceneSearcher

            self._searcher = LuceneSearcher(str(self._directory()))
            self._searcher.set_bm25(self.k1, self.b)
        return self._searcher

    def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        searcher = self._open()
        qids = [str(i) for i in range(len(queries))]
        hits = searcher.batch_search(list(queries), qids, k=k, threads=os.cpu_count() or 1)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        for row, qid in enumerate(qids):
            found = hits.get(qid, [])
            ids[row, : len(found)] = [int(h.docid) for h in found]
            scores[row, : len(found)] = [h.score for h in found]
        return scores, ids

    def __del__(self) -> None:
        if getattr(self, "_work", None) is not None:
            shutil.rmtree(self._work, ignore_errors=True)
