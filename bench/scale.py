"""Scale benchmark: every index type built and searched on growing slices of pypi-summaries (794,232 documents).

For each slice size and index type it runs ``retr index`` as a user does (a subprocess over the
corpus file) and measures the build's seconds and peak RSS (``wait4``), the index's bytes per
document, then searches it in a second process (query representations precomputed, so no model
is loaded there) for queries/s and that process's peak RSS, and the recall@10 of the exact
ranking of the same encoder (flat for dense, exhaustive MaxSim for ColBERT, exact sparse dot
products for SPLADE). Every record is appended to a JSON file as it is measured (a run cut short
keeps what it finished; runs on several machines merge), and ``--report`` renders all records into
bench/results/scale.md with the fitted growth of each figure (a power law in n) and its
extrapolation to MS MARCO's 8.8M passages.

    python bench/scale.py --sizes 100000,794232 --types flat,hnsw,ivfpq,pq,bebr --json runs/scale.json
    python bench/scale.py --report runs/scale-gpu.json runs/scale-cpu.json

Encodings come from retr's embedding cache (``--warm`` fills it first, timed separately), so build
times are index times plus reading the cache; ``--model`` names the encoder model (a path on a
machine without the packaged one).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RENDERED, machine_label, matmul_rate, md_table, read_records, write_results  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("RETR_DATA", REPO.parent / "shared" / "data")) / "pypi-summaries"
MSMARCO = 8_841_823
K = 10
TYPES: dict[str, tuple[str, str, str]] = {  # name -> (encoder family, index spec, exact reference type)
    "bm25": ("bm25", "lucene", ""),
    "flat": ("dense", "flat", "flat"),
    "hnsw": ("dense", "hnsw", "flat"),
    "ivfpq": ("dense", "ivfpq:M=48,nprobe=16", "flat"),
    "ivfpq+refine": ("dense", "ivfpq:M=48,refine=400", "flat"),
    "pq": ("dense", "pq:M=48", "flat"),
    "pq+refine": ("dense", "pq:M=48,refine=200", "flat"),
    "bebr": ("dense", "bebr:u=4", "flat"),
    "maxsim": ("colbert", "maxsim", "maxsim"),
    "plaid": ("colbert", "plaid:nbits=4", "maxsim"),
    "muvera": ("colbert", "muvera:k_sim=4,d_proj=32,fill_empty=false,inner=pq,inner_M=1280,candidates=4000", "maxsim"),
    "splade": ("splade", "lucene", "splade-csr"),
    "splade-csr": ("splade", "csr", "splade-csr"),
}


def encoder_spec(family: str, model: str) -> str:
    return {"bm25": "bm25", "dense": f"dense:{model}", "colbert": f"colbert:{model}",
            "splade": "splade:splade-tiny", "slim": "slim:splade-tiny"}[family]


def machine() -> dict[str, Any]:
    info = {"cpus": len(os.sched_getaffinity(0)), "platform": platform.machine()}
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def corpus_slice(size: int, work: Path) -> Path:
    """The first ``size`` documents of the corpus as a .jsonl file (written once)."""
    path = work / f"pypi-{size}.jsonl"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        with gzip.open(DATA / "corpus.jsonl.gz", "rt", encoding="utf-8") as src, open(tmp, "w") as dst:
            for i, line in enumerate(src):
                if i == size:
                    break
                dst.write(line)
        tmp.rename(path)
    return path


def queries(count: int) -> list[str]:
    with open(DATA / "queries.jsonl", encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh][:count]


# Runs a module as ``python -m`` would and, at exit, writes its own peak RSS (VmHWM: this process image's
# high-water mark; ru_maxrss would also count the parent's memory copied at fork)
PEAK = ("import atexit, os, runpy, sys\n"
        "def peak():\n"
        "    with open(os.environ['RETR_BENCH_PEAK'], 'w') as fh:\n"
        "        fh.write(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])\n"
        "atexit.register(peak)\n"
        "sys.argv = sys.argv[1:]\n"
        "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n")


def peak_rss_gib() -> float:
    """This process's peak RSS so far (VmHWM), GiB."""
    with open("/proc/self/status") as fh:
        return int(next(line for line in fh if line.startswith("VmHWM")).split()[1]) / 2**20


def run_measured(module: list[str], log: Path, env: dict[str, str]) -> tuple[float, float, int]:
    """(seconds, peak RSS in GiB, exit code) of ``python -m MODULE ARGS...`` run to completion."""
    peak_file = log.with_suffix(".peak")
    start = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.call([sys.executable, "-c", PEAK, *module], stdout=out, stderr=subprocess.STDOUT,
                               env={**env, "RETR_BENCH_PEAK": str(peak_file)})
    seconds = time.perf_counter() - start
    peak = int(peak_file.read_text()) / 2**20 if peak_file.exists() else float("nan")
    return seconds, peak, code


def save_queries(family: str, model: str, texts: list[str], work: Path) -> Path:
    """The queries' representations, computed once per encoder and saved for the search processes."""
    folder = work / f"queries-{family}"
    if (folder / "done").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    from retr import ENCODERS

    if family == "bm25":
        (folder / "texts.json").write_text(json.dumps(texts))
    else:
        reps = ENCODERS.create(encoder_spec(family, model)).encode_queries(texts)
        if family == "dense":
            np.save(folder / "dense.npy", reps)
        elif family == "colbert":
            np.save(folder / "tokens.npy", np.concatenate(reps))
            np.save(folder / "offsets.npy", np.concatenate([[0], np.cumsum([len(r) for r in reps])]))
        else:
            from retr.sparse import CsrArrays
            from retr.storage import StringArray

            CsrArrays.of(reps.matrix).save(folder, "q")
            StringArray.from_strings(list(reps.vocab)).save(folder, "vocab")
    (folder / "done").write_text("")
    return folder


def load_queries(folder: Path, count: int) -> Any:
    if (folder / "texts.json").exists():
        return json.loads((folder / "texts.json").read_text())
    if (folder / "dense.npy").exists():
        return np.load(folder / "dense.npy")
    if (folder / "tokens.npy").exists():
        tokens, offsets = np.load(folder / "tokens.npy"), np.load(folder / "offsets.npy")
        return [tokens[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
    from retr.sparse import CsrArrays, SparseVectors
    from retr.storage import StringArray

    vocab = list(StringArray.load(folder, "vocab"))
    return SparseVectors(CsrArrays.load(folder, "q", count, len(vocab)).rows(), vocab)


def maxsim_rows(reps: list[np.ndarray]) -> int:
    """Query tokens exact MaxSim multiplies with a chunk of document tokens at once (a group of queries)."""
    from retr.scoring.maxsim import QUERY_GROUP

    return max(1, int(np.mean([len(q) for q in reps]) * min(QUERY_GROUP, len(reps))))


def search_worker(index_dir: Path, query_dir: Path, count: int, device: str, single: int, out: Path) -> None:
    """In its own process: open the index, search the saved queries, write ids, queries/s and peak RSS."""
    base_rss = peak_rss_gib()
    from retr import open_index

    retriever = open_index(index_dir, verify=False, device=device)
    reps = load_queries(query_dir, count)
    index = retriever.index
    n = len(reps)
    index.search(reps[:2] if not hasattr(reps, "matrix") else reps, K)  # warm up: open files, move to device
    start = time.perf_counter()
    _, ids = index.search(reps, K)
    batch_s = time.perf_counter() - start
    single_s = None
    if single and not hasattr(reps, "matrix"):
        index.search(reps[:1], K)  # warm up the one-query path too (on a GPU it captures its CUDA graph here)
        start = time.perf_counter()
        for i in range(min(single, n)):
            index.search(reps[i : i + 1], K)
        single_s = (time.perf_counter() - start) / min(single, n)
    found = {"ids": ids.tolist(), "batch_qps": n / batch_s, "single_qps": 1 / single_s if single_s else None,
             "search_rss_gib": peak_rss_gib(), "base_rss_gib": base_rss}
    if index.name == "maxsim" and device == "cpu":  # useful FLOP/s against this machine's matrix-product rate
        tokens = len(index.store.tokens.array)
        flops = 2.0 * sum(len(q) for q in reps) * tokens * index.dim / batch_s
        found["matmul_share"] = flops / matmul_rate(maxsim_rows(reps), index.dim)
    out.write_text(json.dumps(found))


def reference_ids(work: Path, reference: str, size: int, count: int) -> list[list[int]] | None:
    """The exact ranking (on the CPU) an earlier run in ``work`` measured for this slice, if it has the same queries."""
    path = work / f"search-{reference}-{size}-cpu.json"
    ids = json.loads(path.read_text())["ids"] if path.exists() else None
    return ids if ids is not None and len(ids) == count else None


def recall(ids: list[list[int]], exact: list[list[int]]) -> float:
    return float(np.mean([len(set(a) & set(e)) / K for a, e in zip(ids, exact)]))


def measure(args: argparse.Namespace) -> None:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RETR_PROGRESS": "0", "PYTHONPATH": os.pathsep.join(
        [str(REPO), str(Path(__file__).resolve().parent), *filter(None, [os.environ.get("PYTHONPATH")])])}
    texts = queries(args.queries)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    host = machine()
    for size in [int(s) for s in args.sizes.split(",")]:
        corpus = corpus_slice(size, work)
        done_ids: dict[str, list[list[int]]] = {}
        for name in filter(None, args.types.split(",")):
            family, index_spec, reference = TYPES[name]
            if family == "colbert" and size > args.multi_max:
                continue
            index_dir = work / f"idx-{name}-{size}"
            shutil.rmtree(index_dir, ignore_errors=True)
            encoder = encoder_spec(family, args.model)
            cmd = ["retr.cli", "index", "--corpus", str(corpus), "--encoder", encoder,
                   "--index", index_spec, "--out", str(index_dir), "--no-texts"]
            build_s, build_rss, code = run_measured(cmd, work / f"build-{name}-{size}.log", env)
            record: dict[str, Any] = {"size": size, "type": name, "encoder": encoder, "index": index_spec,
                                      "machine": host, "build_s": build_s, "build_rss_gib": build_rss}
            if args.note:
                record["note"] = args.note
            if code != 0:
                record["error"] = (work / f"build-{name}-{size}.log").read_text()[-2000:]
                print(json.dumps(record), flush=True)
                with open(out, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
                continue
            files = [f for f in index_dir.rglob("*") if f.is_file() and "docstore" not in f.parts]
            record["index_bytes_per_doc"] = sum(f.stat().st_size for f in files) / size
            record["disk_bytes_per_doc"] = sum(f.stat().st_size for f in index_dir.rglob("*") if f.is_file()) / size
            query_dir = save_queries(family, args.model, texts, work)
            for device in args.devices.split(","):
                if device != "cpu" and name not in ("flat", "maxsim", "plaid", "muvera", "ivfpq+refine", "pq+refine"):
                    continue
                result = work / f"search-{name}-{size}-{device}.json"
                cmd = ["scale", "--search-worker", str(index_dir), str(query_dir), str(len(texts)), device,
                       str(args.single), str(result)]
                _, _, code = run_measured(cmd, work / f"search-{name}-{size}-{device}.log", env)
                if code != 0:
                    record[f"error_{device}"] = (work / f"search-{name}-{size}-{device}.log").read_text()[-2000:]
                    continue
                found = json.loads(result.read_text())
                suffix = "" if device == "cpu" else f"_{device}"
                if "matmul_share" in found:
                    record["matmul_share"] = found["matmul_share"]
                record.update({f"batch_qps{suffix}": found["batch_qps"], f"single_qps{suffix}": found["single_qps"],
                               f"search_rss_gib{suffix}": found["search_rss_gib"],
                               f"search_base_rss_gib{suffix}": found["base_rss_gib"]})
                done_ids[f"{name}{suffix}"] = found["ids"]
                exact = done_ids.get(reference) or reference_ids(work, reference, size, len(texts))
                if exact is not None and f"{name}{suffix}" != reference:
                    record[f"recall{suffix}"] = recall(found["ids"], exact)
            if not args.keep:
                shutil.rmtree(index_dir, ignore_errors=True)
            print(json.dumps(record), flush=True)
            with open(out, "a") as fh:
                fh.write(json.dumps(record) + "\n")


def warm(args: argparse.Namespace) -> None:
    """Fill the embedding cache for the largest slice (timed: the encode rate of each encoder)."""
    from retr import ENCODERS, iter_corpus
    from retr.retriever.cache import flush_caches

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    size = max(int(s) for s in args.sizes.split(","))
    for family in args.warm.split(","):
        limit = min(size, args.multi_max) if family == "colbert" else size
        texts = [d.content for d in iter_corpus(corpus_slice(limit, work))]
        encoder = ENCODERS.create(encoder_spec(family, args.model))
        start = time.perf_counter()
        encoder.encode_documents(texts)
        flush_caches()  # the builds in other processes read it
        seconds = time.perf_counter() - start
        record = {"type": f"encode-{family}", "size": len(texts), "seconds": seconds, "docs_per_s": len(texts) / seconds,
                  "machine": machine()}
        print(json.dumps(record), flush=True)
        with open(args.json, "a") as fh:
            fh.write(json.dumps(record) + "\n")


def fit(sizes: list[float], values: list[float]) -> tuple[float, float] | None:
    """(exponent, value at MS MARCO's size) of a power law through the points, or None."""
    pts = [(s, v) for s, v in zip(sizes, values) if v and v > 0]
    if len(pts) < 2:
        return None
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(np.exp(intercept + slope * np.log(MSMARCO)))


def report(paths: list[str]) -> None:
    records = read_records(paths)
    builds = [r for r in records if "build_s" in r and "error" not in r]
    encodes = [r for r in records if r.get("type", "").startswith("encode-")]
    order = list(TYPES)
    builds.sort(key=lambda r: (order.index(r["type"]), r["size"]))
    header = ["type", "documents", "build s", "build peak RSS GiB", "index B/doc", "disk B/doc (with docstore ids)",
              "q/s (batch)", "q/s (one at a time)", "search peak RSS GiB", "recall@10 of exact", "GPU q/s (batch)",
              "GPU q/s (one)", "machine", "note"]
    rows = []
    for r in builds:
        rows.append([r["type"], f"{r['size']:,}", f"{r['build_s']:.1f}", f"{r['build_rss_gib']:.2f}",
                     f"{r['index_bytes_per_doc']:,.0f}", f"{r['disk_bytes_per_doc']:,.0f}",
                     _num(r.get("batch_qps")), _num(r.get("single_qps")), _num(r.get("search_rss_gib"), 2),
                     _num(r.get("recall"), 3), _num(r.get("batch_qps_cuda")), _num(r.get("single_qps_cuda")),
                     machine_label(r["machine"]), _note(r)])
    sections = ["## Measurements\n\n" + md_table(header, rows)]
    growth = []
    machines = sorted({machine_label(r["machine"]) for r in builds})
    for name in order:
        for host in machines:  # a fit over one machine's sizes and one spec: settings change every figure
            specs: dict[str, dict[int, dict[str, Any]]] = {}  # one record a size: the latest (the current code's)
            for r in builds:
                if r["type"] == name and machine_label(r["machine"]) == host:
                    specs.setdefault(r.get("index", ""), {})[r["size"]] = r
            for spec, series in specs.items():
                if len(series) >= 2:
                    label = name if spec in ("", TYPES[name][1]) else f"{name} `{spec}`"
                    growth.append(_growth(label, host, [series[size] for size in sorted(series)]))
    sections.append("## Fitted growth (power law over one machine's sizes) and MS MARCO (8.8M passages)\n\n" + md_table(
        ["type", "machine", "sizes", "build time", "build peak RSS", "disk", "search peak RSS", "q/s (batch)"], growth))
    if encodes:
        sections.append("## Encoding rate (filling the embedding cache)\n\n" + md_table(
            ["encoder", "documents", "seconds", "docs/s", "machine", "note"],
            [[r["type"], f"{r['size']:,}", f"{r['seconds']:.1f}", f"{r['docs_per_s']:,.0f}",
              machine_label(r["machine"]), r.get("note", "")]
             for r in encodes]))
    write_results("scale", "Scale: index types on growing slices of pypi-summaries", sections, os.getloadavg()[0],
                  RENDERED)


def _growth(name: str, host: str, mine: list[dict[str, Any]]) -> list[str]:
    """One row of fitted growth: each figure's exponent in n and its value at MS MARCO's size."""
    sizes = [r["size"] for r in mine]
    cells = [name, host, ", ".join(f"{n // 1000:,}K" for n in sizes)]
    for key, unit in (("build_s", "min"), ("build_rss_gib", "GiB"), ("disk_bytes_per_doc", "GB"),
                      ("search_rss_gib", "GiB"), ("batch_qps", "q/s")):
        got = fit(sizes, [r.get(key) for r in mine])
        if got is None:
            cells.append("–")
            continue
        slope, value = got
        value = value / 60 if unit == "min" else value * MSMARCO / 1e9 if unit == "GB" else value
        cells.append(f"n^{slope:.2f} → {value:,.1f} {unit}")
    return cells


def _note(record: dict[str, Any]) -> str:
    """The record's note, led by its index spec where it is not the type's current one and by exact MaxSim's
    share of the machine's float32 matrix-product rate."""
    spec = record.get("index", "")
    other = f"`{spec}`" if spec and record["type"] in TYPES and spec != TYPES[record["type"]][1] else ""
    share = record.get("matmul_share")
    lead = f"batched search at {share:.0%} of the float32 matrix-product rate" if share else ""
    return "; ".join(filter(None, [other, lead, record.get("note", "")]))


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--search-worker":
        _, _, index_dir, query_dir, count, device, single, out = sys.argv
        search_worker(Path(index_dir), Path(query_dir), int(count), device, int(single), Path(out))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,200000,400000,794232")
    parser.add_argument("--types", default=",".join(TYPES))
    parser.add_argument("--multi-max", type=int, default=400000, help="largest slice for ColBERT index types")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--single", type=int, default=50, help="queries timed one at a time")
    parser.add_argument("--devices", default="cpu", help="cpu and/or cuda")
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--work", default=str(REPO / "runs" / "scale"))
    parser.add_argument("--json", default=str(REPO / "runs" / "scale.json"))
    parser.add_argument("--warm", default="", help="encoders to fill the cache for first: dense,colbert,splade")
    parser.add_argument("--keep", action="store_true", help="keep the built indexes")
    parser.add_argument("--spec", action="append", default=[], metavar="TYPE=INDEX",
                        help="another index spec for a type (its records say which), e.g. 'muvera=muvera:candidates=4000'")
    parser.add_argument("--note", default="", help="a note written into every record of this run")
    parser.add_argument("--report", nargs="*", help="render bench/results/scale.md from these JSON files")
    args = parser.parse_args()
    for item in args.spec:
        name, _, spec = item.partition("=")
        if name not in TYPES or not spec:
            parser.error(f"--spec wants TYPE=INDEX with TYPE one of {', '.join(TYPES)}; got {item!r}")
        TYPES[name] = (TYPES[name][0], spec, TYPES[name][2])
    if args.report:
        report(args.report)
        return
    if args.warm:
        warm(args)
    measure(args)


if __name__ == "__main__":
    main()
