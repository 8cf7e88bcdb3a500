"""Distributed encoding and sharded search on Ray, against the single-process engine, on pypi-summaries.

1. Encoding: ``retr index`` (one process) vs ``retr index --shards 8 --ray local`` (Ray Data feeding a
   pool of encoder actors, one per GPU or one per 4 CPUs), both writing a dense flat index, the
   embedding cache off: documents/s end to end, and the mean GPU utilisation while each runs
   (``nvidia-smi`` sampled every 0.5 s, where there is one).
2. Search: the same corpus in 1, 2, 4 and 8 shards (built from the embedding cache), searched
   locally (all shards in one process, threads) and on Ray (one actor per shard, scatter-gather):
   queries/s for a batch of queries and for one query at a time, and Ray's overhead per query
   (one-at-a-time latency on Ray minus local).

Every figure is appended to a JSON-lines file as it is measured; the report is written to
bench/results/distributed.md.

    python bench/distributed.py --size 794232 --shards 1,2,4,8 [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import md_table, ratio, read_records, write_results  # noqa: E402
from scale import corpus_slice, queries  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


class GpuSampler:
    """Mean GPU utilisation (%) while it runs, from nvidia-smi; None without a GPU."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True) if shutil.which("nvidia-smi") else None

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True).stdout.split()
            if out:
                self.samples.append(sum(float(v) for v in out) / len(out))

    def __enter__(self) -> "GpuSampler":
        if self._thread:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def retr_index(args: list[str], cache: str) -> float:
    env = {**os.environ, "RETR_CACHE_DIR": cache, "RETR_PROGRESS": "0", "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "retr.cli", "index", *args], check=True, env=env)
    return time.perf_counter() - start


def search_speed(retriever: Any, qs: list[str], single: int) -> tuple[float, float]:
    retriever.search_batch(qs[:10], 10)
    start = time.perf_counter()
    retriever.search_batch(qs, 10)
    batch = len(qs) / (time.perf_counter() - start)
    start = time.perf_counter()
    for q in qs[:single]:
        retriever.search(q, 10)
    return batch, single / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=794_232)
    parser.add_argument("--shards", default="1,2,4,8")
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--single", type=int, default=200)
    parser.add_argument("--json", type=Path, default=Path("bench/results/raw/distributed.json"))
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--steps", default="encode,search", help="encode (both ways), encode-ray, search")
    parser.add_argument("--report", type=Path, nargs="*")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    if args.report is None:
        import retr

        work = args.work or Path(tempfile.mkdtemp(prefix="retr-distributed-", dir="."))
        work.mkdir(parents=True, exist_ok=True)
        corpus, cache = corpus_slice(args.size, work), str(work / "cache")
        encoder = f"dense:{args.model},batch_size=512"
        args.json.parent.mkdir(parents=True, exist_ok=True)

        def emit(record: dict[str, Any]) -> None:
            record.update(size=args.size, cpus=os.cpu_count())
            with open(args.json, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)

        counts = [int(s) for s in args.shards.split(",")]
        if "encode" in args.steps.split(","):
            with GpuSampler() as gpu:
                seconds = retr_index(["--corpus", str(corpus), "--encoder", encoder, "--out", str(work / "s1")], cache)
            emit({"what": "encode", "how": "retr index (one process)", "seconds": seconds,
                  "docs_per_s": args.size / seconds, "gpu_util": gpu.mean})
        if {"encode", "encode-ray"} & set(args.steps.split(",")):
            with GpuSampler() as gpu:
                seconds = retr_index(["--corpus", str(corpus), "--encoder", encoder, "--out", str(work / "ray"),
                                      "--shards", str(max(counts)), "--ray", "local"], "off")
            emit({"what": "encode", "how": f"Ray Data, {max(counts)} shards", "seconds": seconds,
                  "docs_per_s": args.size / seconds, "gpu_util": gpu.mean})
            shutil.rmtree(work / "ray")
        qs = queries(args.queries)
        for count in counts if "search" in args.steps.split(",") else []:
            path = work / f"s{count}"
            if not (path / "manifest.json").exists():
                retr_index(["--corpus", str(corpus), "--encoder", encoder, "--out", str(path), "--shards", str(count)],
                           cache)
            local = retr.open_index(path)
            batch, single = search_speed(local, qs, args.single)
            local.close()
            emit({"what": "search", "shards": count, "how": "local", "batch_qps": batch, "single_qps": single})
            if count > 1:
                served = retr.open_index(path, ray=True)
                batch_ray, single_ray = search_speed(served, qs, args.single)
                served.close()
                emit({"what": "search", "shards": count, "how": "ray", "batch_qps": batch_ray,
                      "single_qps": single_ray, "overhead_ms": (1 / single_ray - 1 / single) * 1e3})
        paths = [args.json]
    else:
        paths = args.report
    records = read_records(paths)
    encode = [r for r in records if r["what"] == "encode"]
    search = [r for r in records if r["what"] == "search"]
    base = next((r["docs_per_s"] for r in encode if r["how"].startswith("retr index")), 0)
    machines = sorted({f"{r.get('cpus')} CPU cores" for r in records})
    sections = [
        f"Records: {', '.join(str(p) for p in paths)} (measured on a machine with {', '.join(machines)}"
        " and, where GPU utilisation is given, one NVIDIA H200); all-MiniLM-L6-v2, batch 512.",
        "### Encoding a dense flat index (embedding cache off)",
        md_table(["documents", "how", "seconds", "documents/s", "vs one process", "mean GPU utilisation"],
                 [[f"{r['size']:,}", r["how"], f"{r['seconds']:.1f}", f"{r['docs_per_s']:,.0f}",
                   ratio(r["docs_per_s"], base), "–" if r["gpu_util"] is None else f"{r['gpu_util']:.0f}%"]
                  for r in encode]),
        "### Sharded search (dense flat, k=10)",
        md_table(["shards", "where", "batch queries/s", "one at a time q/s", "Ray overhead per query ms"],
                 [[r["shards"], r["how"], f"{r['batch_qps']:,.0f}", f"{r['single_qps']:,.1f}",
                   f"{r['overhead_ms']:.2f}" if "overhead_ms" in r else "–"] for r in search]),
        "Local: every shard's segments searched in one process, one after another (each scorer uses every "
        "core), merged exactly. Ray: one actor per shard on the same machine; the driver encodes the query "
        "once, scatters the vector, gathers each shard's top k and fetches the winners' ids and texts from "
        "their shards. Per-query overhead: one-at-a-time latency on Ray minus local, same shard count.",
    ]
    write_results("distributed", "Distributed encoding and sharded search on Ray", sections, load)


if __name__ == "__main__":
    main()
