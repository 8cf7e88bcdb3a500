"""retr as a LlamaIndex retriever (``pip install 'retr[llamaindex]'``).

    from retr.adapters.llamaindex import RetrLlamaRetriever
    nodes = RetrLlamaRetriever.from_index("indexes/cranfield", k=4).retrieve("shock waves")
    nodes = RetrLlamaRetriever.from_url("http://127.0.0.1:8080", index="cranfield").retrieve("shock waves")

Each hit becomes a ``NodeWithScore`` over a ``TextNode`` whose id is the document id, with ``id`` and
``score`` in its metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retr.errors import RetrError

try:
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
except ImportError:  # pragma: no cover - the message is the point
    raise RetrError("the LlamaIndex adapter needs llama-index-core: pip install 'retr[llamaindex]'") from None


class RetrLlamaRetriever(BaseRetriever):
    """Any retr retriever (a local index, a fusion, a ``RemoteIndex``) as a LlamaIndex ``BaseRetriever``."""

    def __init__(self, retriever: Any, k: int = 4) -> None:
        super().__init__()
        self.retriever, self.k = retriever, k

    @classmethod
    def from_index(cls, path: Path | str, k: int = 4, device: str | None = None) -> "RetrLlamaRetriever":
        from retr.retriever.pipeline import open_index

        return cls(open_index(path, device=device), k)

    @classmethod
    def from_url(cls, url: str, index: str | None = None, k: int = 4) -> "RetrLlamaRetriever":
        from retr.serve.client import RemoteIndex

        return cls(RemoteIndex(url, index), k)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return [NodeWithScore(node=TextNode(id_=hit.id, text=hit.text or "", metadata={"id": hit.id, "score": hit.score}),
                              score=hit.score)
                for hit in self.retriever.search(query_bundle.query_str, self.k)]
