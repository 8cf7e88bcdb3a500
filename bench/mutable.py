"""Changing an index vs rebuilding it: pypi-summaries, every index type, through the Python API.

For each index type it builds an index of the first N documents, then measures

1. adding 1% more documents (a new segment, committed): seconds and bytes written, against
   building the index of all N + 1% documents from scratch (the rebuild a read-only index needs);
2. deleting 1% of the documents (tombstones, committed): seconds and bytes written;
3. search speed (queries/s, the queries batched) with 1 segment, with 10 segments (nine more adds
   of 0.1%), and after ``compact`` (one segment again; its seconds too), and the recall@10 of the
   compacted index against a fresh build of the same live documents.

Encodings come from retr's embedding cache (``--warm`` fills it first), so times are index times
plus reading the cache, for the build and the change alike.

    python bench/mutable.py --size 100000 --types bm25,flat,hnsw,ivfpq+refine,pq,bebr --json runs/mutable.json
    python bench/mutable.py --report runs/mutable.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_label, md_table, ratio, read_records, write_results  # noqa: E402
from scale import TYPES, corpus_slice, encoder_spec, machine, queries  # noqa: E402

K = 10
# SLIM (two stages over sparse token vectors) changes like any other type; scale.py has no exact reference for it
KINDS = {**TYPES, "slim": ("slim", "slim", "")}


def written(before: dict[str, int], root: Path) -> int:
    """Bytes in files under ``root`` that are new or changed since ``before`` (path -> size)."""
    now = {str(p): p.stat().st_size for p in root.rglob("*") if p.is_file()}
    return sum(size for path, size in now.items() if before.get(path) != size)


def snapshot(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def qps(retriever: Any, qs: list[str]) -> float:
    retriever.search_batch(qs[:10], K)
    start = time.perf_counter()
    retriever.search_batch(qs, K)
    return len(qs) / (time.perf_counter() - start)


def ids(retriever: Any, qs: list[str]) -> list[set[str]]:
    return [{h.id for h in hits} for hits in retriever.search_batch(qs, K)]


def measure(name: str, size: int, model: str, work: Path, qs: list[str], device: str) -> dict[str, Any]:
    import retr
    from retr.eval.datasets import Corpus

    family, index, _ = KINDS[name]
    encoder = encoder_spec(family, model)
    extra = max(1, size // 100)
    docs = list(Corpus(corpus_slice(size + 2 * extra, work)))
    base, added, spare = docs[:size], docs[size : size + extra], docs[size + extra :]
    retr.ENCODERS.create(encoder).encode_documents([d.content for d in docs])  # every encoding in the cache first
    path = work / f"{name}-index"
    shutil.rmtree(path, ignore_errors=True)
    record: dict[str, Any] = {"type": name, "index": index, "size": size, "added": extra,
                              "device": device, "machine": machine()}
    start = time.perf_counter()
    retr.Retriever.build(base, encoder, index, out=path).close()
    record["build_s"] = time.perf_counter() - start
    retriever = retr.open_index(path, device=device)  # new segments score on the same device
    record["index_bytes"] = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    record["qps_1_segment"] = qps(retriever, qs)

    before, start = snapshot(path), time.perf_counter()
    retriever.add(added)
    retriever.commit()
    record["add_s"], record["add_bytes"] = time.perf_counter() - start, written(before, path)
    start = time.perf_counter()
    rebuilt = retr.Retriever.build(base + added, encoder, index, out=work / f"{name}-rebuild")
    record["rebuild_s"] = time.perf_counter() - start
    record["rebuild_bytes"] = sum(p.stat().st_size for p in (work / f"{name}-rebuild").rglob("*") if p.is_file())
    rebuilt.close()
    shutil.rmtree(work / f"{name}-rebuild")

    before, start = snapshot(path), time.perf_counter()
    gone = [d.id for d in base[::100]]
    retriever.delete(gone)
    retriever.commit()
    record["delete_s"], record["delete_bytes"] = time.perf_counter() - start, written(before, path)

    step = max(1, extra // 10)
    for i in range(8):  # 10 segments in all
        retriever.add(spare[i * step : (i + 1) * step])
        retriever.commit()
    record["segments"] = len(retriever.index.segments)
    record["qps_10_segments"] = qps(retriever, qs)

    start = time.perf_counter()
    retriever.compact()
    record["compact_s"] = time.perf_counter() - start
    record["qps_compacted"] = qps(retriever, qs)
    live = [d for d in base if d.id not in set(gone)] + added + spare[: 8 * step]
    retr.Retriever.build(live, encoder, index, out=work / f"{name}-fresh").close()
    fresh = retr.open_index(work / f"{name}-fresh", device=device)
    a, b = ids(retriever, qs), ids(fresh, qs)
    record["agreement_with_fresh"] = sum(len(x & y) for x, y in zip(a, b)) / sum(len(y) for y in b)
    retriever.close()
    fresh.close()
    shutil.rmtree(path)
    shutil.rmtree(work / f"{name}-fresh")
    return record


def report(records: list[dict[str, Any]]) -> list[str]:
    rows = []
    for r in records:
        rows.append([r["type"], f"`{r['index']}`", f"{r['size']:,}", f"{r['add_s']:.1f}", f"{r['rebuild_s']:.1f}",
                     ratio(r["rebuild_s"], r["add_s"]), f"{r['add_bytes'] / 2**20:.1f}",
                     f"{r['rebuild_bytes'] / 2**20:.1f}", f"{r['delete_s']:.2f}", f"{r['delete_bytes'] / 2**10:.0f}",
                     f"{r['qps_1_segment']:.0f}", f"{r['qps_10_segments']:.0f}", f"{r['compact_s']:.1f}",
                     f"{r['qps_compacted']:.0f}", f"{r['agreement_with_fresh']:.3f}",
                     machine_label(r["machine"], gpu=r.get("device", "cpu") != "cpu")])
    header = ["type", "index", "docs", "add 1% s", "rebuild s", "rebuild / add", "add MiB written",
              "rebuild MiB", "delete 1% s", "delete KiB written", "q/s 1 segment", "q/s 10 segments", "compact s",
              "q/s compacted", "top-10 overlap with a fresh build", "search on"]
    return ["### Adding 1% vs rebuilding, deleting 1%, segments and compaction", md_table(header, rows),
            "Add and delete include the commit (manifest, checksums of the new files, fsync). q/s: "
            f"{K} hits, queries batched, one process. The overlap compares the compacted index with a fresh "
            "build of the same live documents (1.0 for exact types; approximate types that keep their "
            "codec differ by their usual recall). Rows differ in size (docs) and machine: compare each add with "
            "the rebuild of its own row. A new segment of a trained type writes its own copy of the shared codec "
            "(BEBR's model, PLAID's centroids), which is most of its bytes at 1%."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--types", default="bm25,flat,hnsw,ivfpq+refine,pq,bebr")
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--json", type=Path, default=Path("bench/results/raw/mutable.json"))
    parser.add_argument("--work", type=Path, default=None, help="folder for indexes (default: a temporary one)")
    parser.add_argument("--device", default="cpu", help="where exact scoring stages run (cuda for multi-vector)")
    parser.add_argument("--report", type=Path, nargs="*", help="only render these JSON-lines files")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    if args.report is None:
        work = args.work or Path(tempfile.mkdtemp(prefix="retr-mutable-", dir="."))
        work.mkdir(parents=True, exist_ok=True)
        qs = queries(args.queries)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        for name in args.types.split(","):
            record = measure(name, args.size, args.model, work, qs, args.device)
            with open(args.json, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)
        paths = [args.json]
    else:
        paths = args.report
    records = read_records(paths)
    write_results("mutable", "Changing an index: add, delete, segments, compaction vs rebuilding", report(records), load)


if __name__ == "__main__":
    main()
