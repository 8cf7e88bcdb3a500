"""`retr serve` as clients meet it: a subprocess on a loopback port, used over HTTP, from a browser, LangChain,
LlamaIndex and MCP; answers equal open_index(...).search, bad requests get 4xx and the service keeps serving."""

import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

import retr
from tests.conftest import MODEL
from tests.test_cli import RETR

KEY = "test-key-0f3a"
QUERIES = ["shock wave boundary layer interaction", "heat transfer in hypersonic flow", "flutter of thin panels"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def indexes(cranfield, tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    retr.Retriever.build(cranfield.corpus, f"dense:{MODEL}", out=root / "dense")
    retr.Retriever.build(cranfield.corpus, "bm25", out=root / "bm25")
    return {"dense": root / "dense", "bm25": root / "bm25"}


@pytest.fixture(scope="module")
def server(indexes):
    port = free_port()
    args = [RETR, "serve", f"dense={indexes['dense']}", f"bm25={indexes['bm25']}", "--port", str(port),
            "--max-body-bytes", "20000", "--max-batch", "8", "--max-query-chars", "500", "--max-k", "100"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RETR_PROGRESS": "0", "RETR_API_KEY": KEY})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if json.loads(r.read())["status"] == "ok":
                    break
        except OSError:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail("the server did not come up")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def call(url, path, body=None, method=None, headers=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def hits_of(hits):
    return [(h.id, h.score, h.text) for h in hits]


def test_search_equals_the_index_searched_in_process(server, indexes):
    for name in ("dense", "bm25"):
        local = retr.open_index(indexes[name])
        status, body = call(server, "/search", {"queries": QUERIES, "k": 10, "index": name})
        assert status == 200 and [r["query"] for r in body["results"]] == QUERIES
        for result, expected in zip(body["results"], local.search_batch(QUERIES, 10)):
            assert [(h["id"], h["score"], h["text"]) for h in result["hits"]] == hits_of(expected)
    status, body = call(server, "/search?" + "&".join(f"q={q.replace(' ', '+')}" for q in QUERIES[:2]) + "&k=3")
    assert status == 200 and body["index"] == "dense" and len(body["results"]) == 2
    assert [h["id"] for h in body["results"][0]["hits"]] == [h.id for h in retr.open_index(indexes["dense"]).search(QUERIES[0], 3)]


def test_fusion_across_indexes_equals_in_process_fusion(server, indexes):
    fused = retr.FusedRetriever([retr.open_index(indexes["dense"]), retr.open_index(indexes["bm25"])], "rrf", depth=100)
    status, body = call(server, "/search", {"query": QUERIES[0], "k": 10, "indexes": ["dense", "bm25"]})
    assert status == 200
    assert [(h["id"], h["score"]) for h in body["results"][0]["hits"]] == [(h.id, h.score) for h in fused.search(QUERIES[0], 10)]


@pytest.mark.parametrize("body, status, message", [
    ({"query": "x", "k": 101}, 400, "k must be between 1 and 100"),
    ({"query": "   "}, 400, "query 0 is empty"),
    ({"query": "a" * 501}, 413, "over the limit of 500"),
    ({"queries": ["a"] * 9}, 413, "batch limit of 8"),
    ({"query": "x", "index": "nope"}, 404, "no index named 'nope'"),
    ({"query": "x", "queries": ["y"]}, 400, "not both"),
    ({"query": "x", "k": "ten"}, 422, "k: Input should be a valid integer"),
    ({"query": "x", "filter": "adapter:/etc/passwd"}, 400, "takes no path"),
    ({"query": "x", "fusion": "max", "indexes": ["dense", "bm25"]}, 422, "fusion"),
])
def test_bad_requests_get_a_4xx_that_says_why(server, body, status, message):
    got, answer = call(server, "/search", body)
    assert got == status and message in answer["error"], answer


def test_oversize_and_malformed_bodies_are_refused_and_the_service_keeps_serving(server):
    assert call(server, "/search", raw=b"{not json", method="POST")[0] == 422
    status, answer = call(server, "/search", {"query": "x" * 30_000})
    assert status == 413 and "over the limit of 20000 bytes" in answer["error"]
    chunked = subprocess.run(["curl", "-s", "-X", "POST", server + "/search", "-H", "Content-Type: application/json",
                              "-H", "Transfer-Encoding: chunked", "--data-binary", "@-", "-w", "\n%{http_code}"],
                             input=json.dumps({"query": "y" * 30_000}), capture_output=True, text=True)
    assert chunked.stdout.splitlines()[-1] == "413" and "over the limit" in chunked.stdout
    assert call(server, "/nothing")[0] == 404 and "traceback" not in json.dumps(call(server, "/nothing")[1]).lower()
    status, body = call(server, "/search", {"query": QUERIES[0], "k": 1})
    assert status == 200 and len(body["results"][0]["hits"]) == 1


def test_indexes_health_and_openapi(server):
    status, listing = call(server, "/indexes")
    assert status == 200 and [i["name"] for i in listing] == ["dense", "bm25"]
    assert listing[0]["documents"] == 1398 and listing[0]["index"]["name"] == "flat" and listing[0]["bytes"] > 0
    assert call(server, "/indexes/bm25")[1]["encoder"]["name"] == "bm25"
    assert call(server, "/health")[1] == {"status": "ok", "indexes": ["dense", "bm25"]}
    with urllib.request.urlopen(server + "/openapi.json") as r:
        assert "/search" in json.loads(r.read())["paths"]


def test_the_search_page_in_a_real_browser(server, indexes):
    playwright = pytest.importorskip("playwright.sync_api")
    if not os.path.exists("/usr/bin/chromium"):
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page()
        page.goto(server + "/")
        page.wait_for_selector("#index option", state="attached")
        page.select_option("#index", "bm25")
        page.keyboard.press("/")
        page.keyboard.type(QUERIES[0])
        page.keyboard.press("Enter")
        page.wait_for_selector("#hits li")
        shown = [li.get_attribute("data-id") for li in page.query_selector_all("#hits li")]
        assert shown == [h.id for h in retr.open_index(indexes["bm25"]).search(QUERIES[0], 10)]
        marked = {m.inner_text().lower() for m in page.query_selector_all("#hits li mark")}
        assert marked and marked <= set(QUERIES[0].split())
        assert re.search(r"\d+ hits in \d+ ms", page.inner_text("#status"))  # the request's latency is shown
        float(page.get_attribute("#status", "data-latency"))  # and kept as a number
        page.keyboard.press("ArrowDown")
        assert page.evaluate("document.activeElement.dataset.id") == shown[0]
        browser.close()


def test_langchain_and_llamaindex_adapters_locally_and_over_http(server, indexes):
    from retr.adapters.langchain import RetrRetriever
    from retr.adapters.llamaindex import RetrLlamaRetriever

    expected = retr.open_index(indexes["dense"]).search(QUERIES[1], 4)
    for lc in (RetrRetriever.from_index(indexes["dense"], k=4), RetrRetriever.from_url(server, "dense", k=4)):
        docs = lc.invoke(QUERIES[1])
        assert [(d.id, d.metadata["score"], d.page_content) for d in docs] == hits_of(expected)
    for li in (RetrLlamaRetriever.from_index(indexes["dense"], k=4), RetrLlamaRetriever.from_url(server, "dense", k=4)):
        nodes = li.retrieve(QUERIES[1])
        assert [(n.node.node_id, n.score, n.node.text) for n in nodes] == hits_of(expected)
    with pytest.raises(retr.RetrError, match="answered 404"):
        RetrRetriever.from_url(server, "nope").invoke("x")


def test_mcp_server_exposes_search_as_a_tool(indexes):
    import anyio
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    async def session_calls():
        params = StdioServerParameters(command=RETR, args=["serve", "--mcp", str(indexes["bm25"])],
                                       env={**os.environ, "RETR_PROGRESS": "0", "RETR_API_KEY": KEY})
        async with stdio_client(params) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                await session.initialize()
                tools = [t.name for t in (await session.list_tools()).tools]
                found = await session.call_tool("search", {"query": QUERIES[0], "k": 5})
                refused = await session.call_tool("search", {"query": "x", "k": 0})
                return tools, found, refused

    tools, found, refused = anyio.run(session_calls)
    assert sorted(tools) == ["list_indexes", "search"]
    expected = retr.open_index(indexes["bm25"]).search(QUERIES[0], 5)
    assert [(h["id"], h["score"]) for h in found.structured_content["result"]] == [(h.id, h.score) for h in expected]
    assert refused.is_error and "k must be between 1 and 1000" in refused.content[0].text


def test_writes_need_the_key_and_readers_see_each_commit(server, indexes):
    doc = {"id": "served-1", "text": "a served document about supersonic parachute deployment"}
    body = {"index": "dense", "documents": [doc]}
    assert call(server, "/documents", body, "POST")[0] == 401
    assert call(server, "/documents", body, "POST", {"Authorization": "Bearer wrong"})[0] == 401
    auth = {"Authorization": f"Bearer {KEY}"}
    status, answer = call(server, "/documents", body, "POST", auth)
    assert status == 200 and answer["changed"] == 1 and answer["documents"] == 1399
    assert call(server, "/documents", body, "POST", auth)[0] == 400  # the id exists: that is an update
    query = "supersonic parachute deployment"
    status, found = call(server, "/search", {"query": query, "k": 5, "index": "dense"})
    assert found["results"][0]["hits"][0]["id"] == "served-1"
    assert [(h["id"], h["score"]) for h in found["results"][0]["hits"]] == \
        [(h.id, h.score) for h in retr.open_index(indexes["dense"]).search(query, 5)]
    status, answer = call(server, "/documents", {"index": "dense", "documents": [dict(doc, text="now about ice")]},
                          "PUT", auth)
    assert status == 200 and answer["documents"] == 1399
    status, answer = call(server, "/documents", {"index": "dense", "ids": ["served-1"]}, "DELETE", auth)
    assert status == 200 and answer["changed"] == 1 and answer["documents"] == 1398
    status, error = call(server, "/documents", {"index": "dense", "ids": ["served-1"]}, "DELETE", auth)
    assert status == 400 and "no document with id 'served-1'" in error["error"]
    assert call(server, "/documents", {"index": "dense", "documents": []}, "POST", auth)[0] == 422
    assert call(server, "/indexes/dense")[1]["segments"] >= 2


def test_writes_are_off_without_a_key(indexes, monkeypatch):
    from fastapi.testclient import TestClient

    from retr.serve.app import create_app

    monkeypatch.delenv("RETR_API_KEY", raising=False)
    client = TestClient(create_app({"bm25": indexes["bm25"]}))
    answer = client.post("/documents", json={"documents": [{"id": "x", "text": "y"}]})
    assert answer.status_code == 403 and "writes are off" in answer.json()["error"]
