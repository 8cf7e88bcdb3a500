"""Recall@10 of the exact ranking and queries/s as search settings vary, on one index ``scale.py --keep`` built.

Each setting is written onto the opened index (``nprobe``, ``ndocs``, ``candidates``, ...: the names of its
config) before the same saved queries are searched again, so one build serves the whole sweep:

    python bench/depth.py --index runs/scale/idx-plaid-100000 --queries runs/scale/queries-colbert \\
        --exact runs/scale/search-maxsim-100000-cpu.json --sweep nprobe=64,ndocs=1024 nprobe=128,ndocs=4096

Prints one markdown row per setting and appends JSON records to ``--json``; ``--report FILES`` renders
bench/results/depth.md from such records (a record's ``note`` says what differs from the code that made the others).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from common import RENDERED, machine_label, md_table, read_records, write_results
from scale import K, load_queries, machine, recall

from retr import open_index
from retr.registry import Spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index")
    parser.add_argument("--queries", help="a queries folder scale.py saved")
    parser.add_argument("--exact", help="a scale.py search result of the exact reference")
    parser.add_argument("--sweep", nargs="+", help="settings, each name=value[,name=value]")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--single", type=int, default=10, help="queries timed one at a time")
    parser.add_argument("--json", default="")
    parser.add_argument("--report", nargs="*", help="render bench/results/depth.md from these JSON files")
    args = parser.parse_args()
    if args.report:
        report(args.report)
        return
    if not (args.index and args.queries and args.exact and args.sweep):
        parser.error("--index, --queries, --exact and --sweep are needed to measure")
    sweep(args)


def sweep(args: argparse.Namespace) -> None:
    exact = json.loads(Path(args.exact).read_text())["ids"]
    retriever = open_index(args.index, verify=False, device=args.device)
    index = retriever.index
    targets = [s.index for s in index.segments] if hasattr(index, "segments") else [index]  # settings go to each
    reps = load_queries(Path(args.queries), len(exact))
    print(f"{index.name}, {len(index):,} documents, {len(reps)} queries, {args.device}\n")
    print("| settings | recall@10 of exact | q/s (batch) | q/s (one at a time) |\n|---|---|---|---|")
    for sweep in args.sweep:
        settings = Spec.parse(f"{index.name}:{sweep}").settings
        for name, value in settings.items():
            if name not in index.config():
                raise SystemExit(f"{index.name} has no setting {name!r}")
            for target in targets:
                setattr(target, name, value)
        index.search(reps[:2], K)  # warm up
        start = time.perf_counter()
        _, ids = index.search(reps, K)
        batch_qps = len(reps) / (time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(args.single):
            index.search(reps[i : i + 1], K)
        single_qps = args.single / (time.perf_counter() - start) if args.single else None
        got = recall(np.asarray(ids).tolist(), exact)
        print(f"| {sweep} | {got:.3f} | {batch_qps:,.1f} | {single_qps or 0:,.1f} |", flush=True)
        if args.json:
            record = {"index": index.name, "size": len(index), "settings": settings, "device": args.device,
                      "recall": got, "batch_qps": batch_qps, "single_qps": single_qps, "machine": machine()}
            with open(args.json, "a") as fh:
                fh.write(json.dumps(record) + "\n")


def report(paths: list[str]) -> None:
    records = read_records(paths)
    header = ["index", "documents", "settings", "device", "recall@10 of exact", "q/s (batch)", "q/s (one at a time)",
              "machine", "note"]
    rows = [[r["index"], f"{r['size']:,}", ",".join(f"{k}={v}" for k, v in r["settings"].items()), r["device"],
             f"{r['recall']:.3f}", f"{r['batch_qps']:,.1f}", f"{r['single_qps']:,.1f}" if r["single_qps"] else "–",
             machine_label(r["machine"]), r.get("note", "")] for r in records]
    write_results("depth", "Recall and speed as search settings vary (one build each, bench/depth.py)",
                  ["## Measurements\n\n" + md_table(header, rows)], os.getloadavg()[0], RENDERED)


if __name__ == "__main__":
    main()
