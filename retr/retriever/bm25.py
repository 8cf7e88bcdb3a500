"""BM25's side of the encoder protocol: texts pass through; Lucene's analyser and BM25 do the rest."""

from __future__ import annotations

from typing import Any, Sequence


class BM25Text:
    """The identity encoder of kind ``text`` that a Lucene BM25 index takes."""

    name = "bm25"
    kind = "text"
    dim = None

    def config(self) -> dict[str, Any]:
        return {}

    def encode_documents(self, texts: Sequence[str]) -> list[str]:
        return list(texts)

    def encode_queries(self, texts: Sequence[str]) -> list[str]:
        return list(texts)
