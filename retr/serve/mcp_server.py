"""retr as an MCP server (``retr serve --mcp INDEX``, stdio): search as a tool for agents (``pip install 'retr[mcp]'``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retr.errors import RetrError
from retr.serve.app import Limits, Served


def mcp_server(indexes: dict[str, Path], limits: Limits = Limits(), device: str | None = None) -> Any:
    """An MCP server with two tools: ``search`` (query, k, index) and ``list_indexes``."""
    try:
        from mcp.server.mcpserver import MCPServer
        from mcp.server.mcpserver.exceptions import ToolError
    except ImportError:
        raise RetrError("the MCP server needs the mcp package (2.x): pip install 'retr[mcp]'") from None
    served = Served(indexes, device)
    first = next(iter(served.retrievers))
    server = MCPServer(name="retr", instructions="Search document collections indexed with retr. "
                                                 f"Indexes: {', '.join(served.retrievers)}.")

    @server.tool(description="Search an index; returns the best documents with id, score and text.")
    def search(query: str, k: int = 10, index: str | None = None) -> list[dict[str, Any]]:
        name = index or first
        if name not in served.retrievers:
            raise ToolError(f"no index named {name!r}; served: {', '.join(served.retrievers)}")
        if not query.strip() or len(query) > limits.max_query_chars:
            raise ToolError(f"the query must be non-empty and at most {limits.max_query_chars} characters")
        if not 1 <= k <= limits.max_k:
            raise ToolError(f"k must be between 1 and {limits.max_k}, got {k}")
        try:
            hits = served.retrievers[name].search(query, k)
        except RetrError as exc:
            raise ToolError(str(exc)) from None
        return [{"id": h.id, "score": h.score, "text": h.text} for h in hits]

    @server.tool(description="The indexes served: name, documents, encoder and index type.")
    def list_indexes() -> list[dict[str, Any]]:
        return [served.summary(name) for name in served.retrievers]

    return server
