"""A client for a ``retr serve`` URL with the Retriever's search interface, so adapters work over HTTP too."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Sequence

from retr.errors import RetrError
from retr.retriever.pipeline import Hit


class RemoteIndex:
    """``search`` / ``search_batch`` against one index of a running ``retr serve`` (the first served by default)."""

    def __init__(self, url: str, index: str | None = None, timeout: float = 60.0) -> None:
        self.url, self.index, self.timeout = url.rstrip("/"), index, timeout
        self.name = f"{self.url}/{index or ''}"

    def search(self, query: str, k: int = 10) -> list[Hit]:
        return self.search_batch([query], k)[0]

    def search_batch(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        body = {"queries": list(queries), "k": k, **({"index": self.index} if self.index else {})}
        request = urllib.request.Request(f"{self.url}/search", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", exc.reason)
            except (ValueError, AttributeError):
                message = exc.reason
            raise RetrError(f"{self.url} answered {exc.code}: {message}") from None
        except urllib.error.URLError as exc:
            raise RetrError(f"cannot reach {self.url}: {exc.reason}") from None
        return [[Hit(h["id"], h["score"], h.get("text")) for h in result["hits"]] for result in answer["results"]]
