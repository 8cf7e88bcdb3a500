"""``retr serve``: an HTTP service (``app``), a client for it (``client``) and an MCP server (``mcp_server``)."""
