"""retr as a LangChain retriever (``pip install 'retr[langchain]'``).

    from retr.adapters.langchain import RetrRetriever
    docs = RetrRetriever.from_index("indexes/cranfield", k=4).invoke("shock waves")
    docs = RetrRetriever.from_url("http://127.0.0.1:8080", index="cranfield").invoke("shock waves")

Each hit becomes a ``Document`` with the hit's text, its id as the document id, and ``id`` and
``score`` in the metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retr.errors import RetrError

try:
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever
except ImportError:  # pragma: no cover - the message is the point
    raise RetrError("the LangChain adapter needs langchain-core: pip install 'retr[langchain]'") from None


class RetrRetriever(BaseRetriever):
    """Any retr retriever (a local index, a fusion, a ``RemoteIndex``) as a LangChain ``BaseRetriever``."""

    retriever: Any
    k: int = 4

    @classmethod
    def from_index(cls, path: Path | str, k: int = 4, device: str | None = None) -> "RetrRetriever":
        from retr.retriever.pipeline import open_index

        return cls(retriever=open_index(path, device=device), k=k)

    @classmethod
    def from_url(cls, url: str, index: str | None = None, k: int = 4) -> "RetrRetriever":
        from retr.serve.client import RemoteIndex

        return cls(retriever=RemoteIndex(url, index), k=k)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return [Document(page_content=hit.text or "", id=hit.id, metadata={"id": hit.id, "score": hit.score})
                for hit in self.retriever.search(query, self.k)]
