"""``retr serve``: saved indexes behind HTTP (FastAPI), a search page, and the limits that keep the service up.

Endpoints (OpenAPI at ``/docs``):

- ``GET /search?q=...&k=10&index=NAME`` and ``POST /search`` (``{"query": ...}`` or ``{"queries": [...]}``,
  ``k``, ``index`` or ``indexes`` + ``fusion`` (rrf | linear), ``filter``): hits with id, score and text;
- ``GET /indexes``, ``GET /indexes/{name}``: what is served (encoder, index, documents, size);
- ``POST /documents`` (add), ``PUT /documents`` (update: replace by id), ``DELETE /documents`` (by id): each
  change is committed before the answer; they need ``Authorization: Bearer KEY`` where KEY is the value of
  the environment variable ``RETR_API_KEY`` (or the one ``--api-key-env`` names): without it writes are off;
- ``GET /health``; ``GET /``: the search page.

Every index is opened once, at start. A write runs on a writer of its own (its own encoder, so
searches never wait for documents being encoded), one at a time per index; after its commit the
index is opened again at the new generation and later searches use it, while searches already
running finish on the generation they started with. Searches run in a pool of worker threads (one slow query does
not hold up the others) under a time limit; query encoding is serialised per encoder (tokenizers
are not thread-safe), scoring is not. Bad requests get a 4xx JSON ``{"error": ...}`` saying what
was wrong or which limit was hit; nothing a client sends reaches a traceback.
"""


import asyncio
import concurrent.futures
import hmac
import os
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Sequence

from retr.errors import RetrError

FUSIONS = ("rrf", "linear")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; each is refused with a 4xx naming the limit."""

    max_body_bytes: int = 1 << 20
    max_query_chars: int = 2048
    max_k: int = 1000
    max_batch: int = 64
    timeout_s: float = 30.0
    workers: int = 4


class Served:
    """The indexes a service holds, opened once, each with a lock around its query encoder."""

    def __init__(self, indexes: dict[str, Path], device: str | None = None, ray: str | bool | None = None) -> None:
        from retr.retriever.pipeline import open_index

        if not indexes:
            raise RetrError("give at least one index directory to serve")
        self.paths = {name: Path(path) for name, path in indexes.items()}
        self.device = device
        self.retrievers = {name: open_index(path, device=device, ray=ray if _sharded(path) else None)
                           for name, path in self.paths.items()}
        for retriever in self.retrievers.values():
            _serialise_query_encoding(retriever)
            retriever.search("warm up", 1)  # load the model, open the files, start the JVM: before the first client
        self._writers: dict[str, Any] = {}
        self._write_locks = {name: threading.Lock() for name in self.paths}

    def change(self, name: str, apply: Any) -> dict[str, Any]:
        """Apply one change to index ``name`` with its writer, commit it, and serve the new generation."""
        from retr.retriever.pipeline import open_index

        with self._write_locks[name]:
            writer = self._writers.get(name)
            if writer is None or writer.generation != self.retrievers[name].generation:
                writer = self._writers[name] = open_index(self.paths[name])
            changed, generation = writer.apply(apply)
            reader = open_index(self.paths[name], encoder=self.retrievers[name].encoder, device=self.device)
            self.retrievers[name] = reader
            return {"index": name, "changed": changed, "generation": generation, "documents": len(reader)}

    def summary(self, name: str) -> dict[str, Any]:
        from retr.storage import read_manifest

        manifest = read_manifest(self.paths[name], verify=False)
        files = manifest.pop("files")
        return {"name": name, "retriever": self.retrievers[name].name, "documents": manifest["num_docs"],
                "generation": manifest.get("generation"), "segments": len(manifest.get("segments", [])),
                "encoder": manifest["encoder"], "index": manifest["index"], "texts": manifest.get("texts", False),
                "created": manifest.get("created"), "bytes": sum(f["bytes"] for f in files.values())}


def _sharded(path: Path) -> bool:
    from retr.shards import is_sharded
    from retr.storage import read_manifest

    return is_sharded(read_manifest(path, verify=False))


def _serialise_query_encoding(retriever: Any) -> None:
    """Wrap the encoder's ``encode_queries`` in a lock shared by every index using that encoder object."""
    encoder = getattr(getattr(retriever, "index", None), "query_encoder", None) or retriever.encoder
    if getattr(encoder, "_serve_lock", None) is None:
        lock, encode = threading.Lock(), encoder.encode_queries

        def locked(texts: Sequence[str]) -> Any:
            with lock:
                return encode(texts)

        encoder._serve_lock, encoder.encode_queries = lock, locked


class Refused(Exception):
    """A request the service turns down: its HTTP status and the reason, sent as ``{"error": ...}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes is refused (413), whether declared or streamed in chunks."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await _send_error(send, 413, f"request body of {int(declared)} bytes is over the limit of {self.limit} "
                                         "bytes")
            return
        if declared:
            await self.app(scope, receive, send)
            return
        buffered, size = [], 0  # a body of unknown length (chunked) is read here, at most ``limit`` bytes of it
        while True:
            message = await receive()
            buffered.append(message)
            size += len(message.get("body", b""))
            if size > self.limit:
                await _send_error(send, 413, f"request body is over the limit of {self.limit} bytes")
                return
            if message["type"] != "http.request" or not message.get("more_body"):
                break

        async def replay() -> dict:
            return buffered.pop(0) if buffered else await receive()

        await self.app(scope, replay, send)


async def _send_error(send: Any, status: int, message: str) -> None:
    import json

    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def parse_index_args(items: Sequence[str]) -> dict[str, Path]:
    """``NAME=PATH`` or ``PATH`` (named after its folder) -> {name: path}; names must differ."""
    out: dict[str, Path] = {}
    for item in items:
        name, eq, path = item.partition("=")
        name, path = (name, path) if eq else (Path(item).name, item)
        if not name or name in out:
            raise RetrError(f"index name {name!r} is empty or given twice; use NAME=PATH to name them apart")
        out[name] = Path(path)
    return out


def search_request_model() -> Any:
    """The JSON body of ``POST /search`` (a pydantic model; built on first use so importing retr needs no pydantic)."""
    from pydantic import BaseModel, Field

    class SearchRequest(BaseModel):
        query: str | None = Field(None, description="one query")
        queries: list[str] | None = Field(None, description="several queries, answered in order")
        k: int = Field(10, description="hits per query")
        index: str | None = Field(None, description="index to search (default: the first served)")
        indexes: list[str] | None = Field(None, description="several indexes, their hits fused")
        fusion: Literal["rrf", "linear"] = Field("rrf", description="how several indexes' hits are fused")
        filter: str | None = Field(None, description="relevance filter: adapter, cosine:threshold=T, topk:k=N")
        filter_depth: int = Field(100, description="candidates per query the filter looks at")

    return SearchRequest


def document_request_models() -> tuple[Any, Any]:
    """The JSON bodies of the write endpoints (pydantic models, built on first use)."""
    from pydantic import BaseModel, Field

    class NewDocument(BaseModel):
        id: str = Field(..., min_length=1, description="document id, unique in the index")
        text: str = Field(..., min_length=1, description="the document's text")
        title: str = Field("", description="an optional title, indexed before the text")

    class Documents(BaseModel):
        index: str | None = Field(None, description="index to change (default: the first served)")
        documents: list[NewDocument] = Field(..., min_length=1, description="documents to add or replace")

    class Deletion(BaseModel):
        index: str | None = Field(None, description="index to change (default: the first served)")
        ids: list[str] = Field(..., min_length=1, description="ids of the documents to delete")
        missing_ok: bool = Field(False, description="ignore ids not in the index (else nothing is deleted)")

    return Documents, Deletion


def create_app(indexes: dict[str, Path], limits: Limits = Limits(), device: str | None = None,
               api_key_env: str = "RETR_API_KEY", ray: str | bool | None = None) -> Any:
    """The FastAPI application serving ``indexes`` ({name: directory}); writes need the key in ``$api_key_env``.

    Sharded indexes are served from Ray actors when ``ray`` is given (True, 'auto' or an address).
    """
    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    served = Served(indexes, device, ray)
    pool = concurrent.futures.ThreadPoolExecutor(limits.workers, thread_name_prefix="retr-search")
    writes = concurrent.futures.ThreadPoolExecutor(max(1, len(indexes)), thread_name_prefix="retr-write")
    first = next(iter(served.retrievers))
    SearchRequest = search_request_model()
    Documents, Deletion = document_request_models()
    api_key = os.environ.get(api_key_env) or None

    app = FastAPI(title="retr", description="Search retr indexes over HTTP.", version=_version(), debug=False)

    @app.exception_handler(Refused)
    async def refused(_: Request, exc: Refused) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}"
                             for e in exc.errors())
        return JSONResponse({"error": f"invalid request: {problems}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RetrError)
    async def user_error(_: Request, exc: RetrError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); the service keeps running"},
                            status_code=500)

    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)

    def check(queries: list[str], k: int, names: list[str], filter_spec: str | None) -> None:
        if not queries:
            raise Refused(400, "give a query: 'query' (or q=) or a non-empty 'queries' list")
        if len(queries) > limits.max_batch:
            raise Refused(413, f"{len(queries)} queries is over the batch limit of {limits.max_batch}")
        for i, text in enumerate(queries):
            if not isinstance(text, str) or not text.strip():
                raise Refused(400, f"query {i} is empty: give some text to search for")
            if len(text) > limits.max_query_chars:
                raise Refused(413, f"query {i} has {len(text)} characters, over the limit of {limits.max_query_chars}")
        if not 1 <= k <= limits.max_k:
            raise Refused(400, f"k must be between 1 and {limits.max_k}, got {k}")
        for name in names:
            if name not in served.retrievers:
                raise Refused(404, f"no index named {name!r}; served: {', '.join(served.retrievers)}")
        if filter_spec is not None and ":" in filter_spec and "=" not in filter_spec.split(":", 1)[1].split(",")[0]:
            raise Refused(400, "a filter here takes no path: use 'adapter' (the index's own), 'cosine:threshold=T' "
                               "or 'topk:k=N'")

    def retriever_for(names: list[str], fusion: str, k: int, filter_spec: str | None, depth: int) -> Any:
        retriever: Any = served.retrievers[names[0]]
        if len(names) > 1:
            from retr.retriever.fusion import FusedRetriever

            retriever = FusedRetriever([served.retrievers[n] for n in names], fusion, depth=max(k, 100))
        if filter_spec is not None:
            from retr.retriever.relevance_filter import FilteredRetriever

            retriever = FilteredRetriever(retriever, filter_spec, depth)
        return retriever

    async def answer(queries: list[str], k: int, names: list[str], fusion: str, filter_spec: str | None,
                     depth: int) -> dict[str, Any]:
        check(queries, k, names, filter_spec)
        start = time.perf_counter()
        retriever = retriever_for(names, fusion, k, filter_spec, depth)
        work = asyncio.get_running_loop().run_in_executor(pool, retriever.search_batch, queries, k)
        try:
            results = await asyncio.wait_for(work, limits.timeout_s)
        except asyncio.TimeoutError:
            raise Refused(504, f"the search took longer than the limit of {limits.timeout_s:g} s") from None
        took = (time.perf_counter() - start) * 1e3
        return {"index": names[0] if len(names) == 1 else names, "k": k, "took_ms": round(took, 2),
                "results": [{"query": q, "hits": [{"id": h.id, "score": h.score, "text": h.text} for h in hits]}
                            for q, hits in zip(queries, results)]}

    @app.get("/search", summary="Search with query parameters (repeat q for several queries)")
    async def search_get(q: list[str] = Query(default=[]), k: int = 10, index: str | None = None,
                         filter: str | None = None, filter_depth: int = 100) -> dict[str, Any]:
        return await answer(q, k, [index or first], "rrf", filter, filter_depth)

    @app.post("/search", summary="Search: one query or a batch, one index or several fused")
    async def search_post(request: SearchRequest) -> dict[str, Any]:  # type: ignore[valid-type]  (a runtime model)
        if request.query is not None and request.queries is not None:
            raise Refused(400, "give 'query' or 'queries', not both")
        queries = [request.query] if request.query is not None else list(request.queries or [])
        names = request.indexes or [request.index or first]
        return await answer(queries, request.k, names, request.fusion, request.filter, request.filter_depth)

    def authorise(request: Request) -> None:
        if api_key is None:
            raise Refused(403, f"writes are off: start retr serve with the environment variable {api_key_env} set "
                               "to a key, and send it as 'Authorization: Bearer KEY'")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            raise Refused(401, "a write needs 'Authorization: Bearer KEY' with the service's key")

    async def write(request: Request, name: str | None, apply: Any) -> dict[str, Any]:
        authorise(request)
        name = name or first
        if name not in served.retrievers:
            raise Refused(404, f"no index named {name!r}; served: {', '.join(served.retrievers)}")
        return await asyncio.get_running_loop().run_in_executor(writes, served.change, name, apply)

    def documents_of(body: Any) -> list[Any]:
        from retr.eval.datasets import Document

        if len(body.documents) > limits.max_batch * 16:
            raise Refused(413, f"{len(body.documents)} documents is over the limit of {limits.max_batch * 16} "
                               "a request")
        return [Document(d.id, d.text, d.title) for d in body.documents]

    @app.post("/documents", summary="Add documents (a new segment, committed); an existing id is an error")
    async def add_documents(body: Documents, request: Request) -> dict[str, Any]:  # type: ignore[valid-type]
        docs = documents_of(body)
        return await write(request, body.index, lambda w: w.add(docs))

    @app.put("/documents", summary="Replace documents by id (others are added), committed")
    async def update_documents(body: Documents, request: Request) -> dict[str, Any]:  # type: ignore[valid-type]
        docs = documents_of(body)
        return await write(request, body.index, lambda w: w.update(docs))

    @app.delete("/documents", summary="Delete documents by id, committed")
    async def delete_documents(body: Deletion, request: Request) -> dict[str, Any]:  # type: ignore[valid-type]
        return await write(request, body.index, lambda w: w.delete(body.ids, missing_ok=body.missing_ok))

    @app.get("/indexes", summary="The indexes served")
    async def list_indexes() -> list[dict[str, Any]]:
        return [served.summary(name) for name in served.retrievers]

    @app.get("/indexes/{name}", summary="One index: encoder, index type and settings, documents, size")
    async def one_index(name: str) -> dict[str, Any]:
        if name not in served.retrievers:
            raise Refused(404, f"no index named {name!r}; served: {', '.join(served.retrievers)}")
        return served.summary(name)

    @app.get("/health", summary="Liveness, and what is served")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "indexes": list(served.retrievers)}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return resources.files("retr.serve").joinpath("page.html").read_text(encoding="utf-8")

    app.state.served, app.state.limits = served, limits
    return app


def _version() -> str:
    from retr import __version__

    return __version__
