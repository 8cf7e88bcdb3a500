"""`retr serve` under load: 1, 8 and 32 concurrent clients against a dense HNSW and a BM25 index, over loopback.

For each index it starts ``retr serve`` as a subprocess on a free 127.0.0.1 port, then for each
client count runs that many client threads (one keep-alive connection each, one query a request,
queries from pypi-summaries' query file) for ``--seconds`` or ``--max-requests``, whichever comes
first, and records requests/s, p50/p95/p99 latency and errors; then the same again while one writer
adds documents through ``POST /documents`` (10 a request, committed each time). The baseline, measured
in the same run, is the in-process ``open_index(...).search_batch`` throughput over the same queries;
the table gives served requests/s as a ratio of it. A screenshot of the search page (headless
Chromium) is written beside the results. Everything stops by itself; nothing leaves the machine.

    python bench/serve.py --size 100000 [--seconds 30] [--clients 1,8,32]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import md_table, ratio, read_records, write_results  # noqa: E402
from scale import corpus_slice, queries  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
KEY = "bench-key"
K = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(indexes: dict[str, Path], port: int) -> subprocess.Popen:
    args = [sys.executable, "-m", "retr.cli", "serve", *[f"{n}={p}" for n, p in indexes.items()], "--port", str(port),
            "--workers", "4"]
    proc = subprocess.Popen(args, env={**os.environ, "RETR_PROGRESS": "0", "RETR_API_KEY": KEY},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if json.loads(r.read())["status"] == "ok":
                    return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"retr serve exited: {proc.stderr.read()[-2000:]}")
            time.sleep(1)
    proc.kill()
    raise SystemExit("retr serve did not come up in 10 minutes")


def load(port: int, index: str, qs: list[str], clients: int, seconds: float, max_requests: int,
         writer_docs: list[dict[str, str]] | None) -> dict[str, Any]:
    """``clients`` threads searching for ``seconds`` (and one writer adding ``writer_docs`` when given)."""
    stop = time.perf_counter() + seconds
    latencies: list[float] = []
    errors, done, lock = [0], [0], threading.Lock()
    writes: list[float] = []

    def client(seed: int) -> None:
        rng = random.Random(seed)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.perf_counter() < stop:
            with lock:
                if done[0] >= max_requests:
                    return
                done[0] += 1
            body = json.dumps({"query": rng.choice(qs), "k": K, "index": index})
            start = time.perf_counter()
            try:
                conn.request("POST", "/search", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            with lock:
                latencies.append(time.perf_counter() - start) if ok else None
                errors[0] += 0 if ok else 1

    def writer() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        for start in range(0, len(writer_docs), 10):
            if time.perf_counter() >= stop:
                return
            body = json.dumps({"index": index, "documents": writer_docs[start : start + 10]})
            begin = time.perf_counter()
            conn.request("POST", "/documents", body, {"Content-Type": "application/json",
                                                      "Authorization": f"Bearer {KEY}"})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                with lock:
                    errors[0] += 1
            writes.append(time.perf_counter() - begin)
            time.sleep(0.5)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    if writer_docs is not None:
        threads.append(threading.Thread(target=writer))
    begin = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - begin
    lat = np.array(latencies) * 1e3
    return {"index": index, "clients": clients, "writer": writer_docs is not None, "requests": len(latencies),
            "errors": errors[0], "seconds": elapsed, "rps": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
            "p95_ms": float(np.percentile(lat, 95)) if len(lat) else None,
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
            "writes": len(writes), "write_p50_ms": float(np.median(writes) * 1e3) if writes else None}


def screenshot(port: int, path: Path) -> bool:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return False
    if not Path("/usr/bin/chromium").exists():
        return False
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1100, "height": 760})
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("#index option", state="attached")
        page.fill("#q", "fast json parser")
        page.keyboard.press("Enter")
        page.wait_for_selector("#hits li")
        page.screenshot(path=str(path))
        browser.close()
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--max-requests", type=int, default=20_000, help="per run, whatever the time")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--indexes", default="hnsw,bm25")
    parser.add_argument("--keep", type=Path, nargs="*", default=[], help="JSON-lines records of earlier runs to add")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    import retr
    from retr.eval.datasets import Corpus

    start_load = os.getloadavg()[0]
    work = args.work or Path(tempfile.mkdtemp(prefix="retr-serve-bench-", dir="."))
    work.mkdir(parents=True, exist_ok=True)
    corpus = corpus_slice(args.size + 5000, work)
    docs = list(Corpus(corpus))
    base, extra = docs[: args.size], docs[args.size :]
    qs = queries(500)
    specs = {"hnsw": (f"dense:{args.model}", "hnsw"), "bm25": ("bm25", "lucene")}
    specs = {name: specs[name] for name in args.indexes.split(",")}
    records = read_records(args.keep)
    run = os.urandom(4).hex()  # ids the writer adds are new to the index, however often the bench reuses it
    baselines: dict[str, float] = {}
    for name, (encoder, index) in specs.items():
        path = work / name
        if not (path / "manifest.json").exists():
            retr.Retriever.build(base, encoder, index, out=path).close()
        local = retr.open_index(path)
        local.search_batch(qs[:20], K)
        begin = time.perf_counter()
        local.search_batch(qs, K)
        baselines[name] = len(qs) / (time.perf_counter() - begin)
        local.close()
        del local
        port = free_port()
        server = start_server({name: path}, port)
        try:
            if name == "hnsw":
                shot = screenshot(port, RESULTS / "serve-page.png")
                print("screenshot:", "bench/results/serve-page.png" if shot else "skipped (no playwright/chromium)")
            for with_writer in (False, True):
                for clients in [int(c) for c in args.clients.split(",")]:
                    new = [{"id": f"w{run}-{clients}-{d.id}", "text": d.content} for d in extra] if with_writer else None
                    record = load(port, name, qs, clients, args.seconds, args.max_requests, new)
                    record["in_process_qps"] = baselines[name]
                    records.append(record)
                    print(json.dumps(record), flush=True)
        finally:
            server.terminate()
            server.wait(timeout=60)
    def ms(value: float | None) -> str:
        return "–" if value is None else f"{value:.1f}"

    rows = [[r["index"], r["clients"], "yes" if r["writer"] else "no", r["requests"], f"{r['rps']:.1f}",
             ms(r["p50_ms"]), ms(r["p95_ms"]), ms(r["p99_ms"]), r["errors"],
             r["writes"] if r["writer"] else "–", f"{r['write_p50_ms']:.0f}" if r["write_p50_ms"] else "–",
             f"{r['in_process_qps']:.1f}", ratio(r["rps"], r["in_process_qps"])] for r in records]
    header = ["index", "clients", "writer", "requests", "requests/s", "p50 ms", "p95 ms", "p99 ms", "errors",
              "writes (10 docs)", "write p50 ms", "in-process q/s (batched)", "served / in-process"]
    raw = RESULTS / "raw" / "serve.json"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(records, indent=1) + "\n")
    write_results("serve", "retr serve under load (loopback)", [
        f"### {args.size:,} pypi-summaries documents, {args.seconds:g} s a run, one query a request, k={K}",
        md_table(header, rows),
        "Clients and server share this machine's cores. The in-process baseline is `search_batch` over 500 "
        "queries at once (the best case: one encoder batch); a served request carries one query, so the "
        "ratio is what HTTP, JSON and per-request encoding cost. The writer adds 10 documents a request "
        "(`POST /documents`, each committed) every 0.5 s while the clients search.",
        "![the search page](serve-page.png)"], start_load)


if __name__ == "__main__":
    main()
