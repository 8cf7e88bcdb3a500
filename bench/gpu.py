"""GPU search benchmark: retr's exact MaxSim and PLAID codes on the GPU against FastPlaid, on the same token vectors.

One run on a GPU machine. For each slice of pypi-summaries (its first N documents) the documents and
500 queries are encoded once with retr's ColBERT encoder (zero-shot MiniLM, 384-d; the embedding
cache serves later runs) and every system searches those same vectors:

- retr ``maxsim`` on the GPU (float16 tokens in length tiers), and on the CPU for reference;
- retr ``plaid`` codes scored on the GPU tile by tile (2 and 4 bits, residual PQ);
- FastPlaid (PyLate's PLAID engine) at nbits 2 and 4, its defaults otherwise;
- dense flat on the GPU against FAISS's flat search on all CPU cores, at the largest slice.

Recall@10 is measured against exact float32 MaxSim (inner product for dense). Queries/s one
query per call and all queries in one call, and how far the one-query answers equal the batched ones
(retr replays a CUDA graph for one query); build seconds; bytes per token; peak GPU memory.
Every result is appended to ``--json`` as it is measured; ``--report`` writes bench/results/gpu.md.

    python bench/gpu.py --sizes 100000,400000 --model PATH --json runs/gpu.json
    python bench/gpu.py --report runs/gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RENDERED, matmul_rate, md_table, read_records, write_results  # noqa: E402
from scale import corpus_slice, machine, maxsim_rows, queries  # noqa: E402

K = 10
GPU_MEMORY = 139 * 2**30  # an H200's memory, for the largest corpus that fits
RUNS = ("Compare systems within one run (`run`: records carry the number of the bench run that measured "
        "them, `--run N`). Queries/s one at a time are mostly per-call overhead on the host and moved "
        "between runs on machines of the same kind (retr maxsim 415 then 225 q/s, FastPlaid nbits=4 157 then "
        "208 then 185 q/s at 100K); batched rates and recall held. Run 1: PLAID on the GPU scored every code; run 2: "
        "centroid interaction over every document, the best `ndocs` decoded and scored exactly; run 3: a single "
        "query's scan replays a captured CUDA graph, small length tiers join the next one (fewer blocks), and "
        "the exact rerank scores every (query, candidate) pair of a batch at once. 'one-at-a-time top 10 = "
        "batched': the share of the top 10 a one-query call returns that the batched call also returns "
        "(float16 sums in another order can swap near-ties).")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def synced(fn: Callable[[], Any]) -> Callable[[], Any]:
    import torch

    def run() -> Any:
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return out

    return run


def rates(search: Callable[[list[Any]], np.ndarray], qs: list[Any],
          single: int) -> tuple[float, float, np.ndarray, float]:
    """(q/s one query per call, q/s all in one call, ids of all, share of the one-at-a-time top 10 that the
    batched call also returns) after a warm-up call. The share checks that one code path answers both:
    retr replays a captured CUDA graph for one query and launches kernels one by one for a batch."""
    search(qs[:1])
    start = time.perf_counter()
    one_ids = [search([q])[0] for q in qs[:single]]
    one = min(single, len(qs)) / (time.perf_counter() - start)
    seconds, ids = timed(synced(lambda: search(qs)))
    return one, len(qs) / seconds, ids, recall(np.array(one_ids), ids[: len(one_ids)])


def recall(ids: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a[:K]) & set(e[:K]) - {-1}) / K for a, e in zip(ids, exact)]))


def gpu_memory() -> tuple[Callable[[], None], Callable[[], float | None]]:
    import torch

    cuda = torch.cuda.is_available()

    def reset() -> None:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak() -> float | None:
        return torch.cuda.max_memory_allocated() / 2**30 if cuda else None

    return reset, peak


def run_size(size: int, args: argparse.Namespace, emit: Callable[[dict[str, Any]], None]) -> None:
    import torch

    from retr import INDEXES, iter_corpus
    from retr.retriever.colbert import ColBERTEncoder
    from retr.scoring import TorchTokens

    work = Path(args.work)
    encoder = ColBERTEncoder(args.model, batch_size=256)
    docs = encoder.encode_documents([d.content for d in iter_corpus(corpus_slice(size, work))])
    qs = encoder.encode_queries(queries(args.queries))
    tokens = np.concatenate(docs)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    n_tokens = len(tokens)
    reset, peak = gpu_memory()
    exact_scorer = TorchTokens(tokens, offsets, args.device, dtype="float32")
    exact = exact_scorer.search(qs, K)[1]
    del exact_scorer
    base = {"size": size, "tokens": n_tokens, "queries": len(qs), "machine": machine()}

    def emit_system(name: str, build_s: float, measured: tuple[float, float, np.ndarray, float],
                    bytes_per_token: float, memory: float | None, **extra: Any) -> None:
        one, batch, ids, agree = measured
        emit({**base, "system": name, "build_s": build_s, "single_qps": one, "batch_qps": batch,
              "recall": recall(ids, exact), "single_agrees": agree, "bytes_per_token": bytes_per_token,
              "gpu_gib": memory, "fits_h200_tokens": GPU_MEMORY / bytes_per_token, **extra})

    muvera = [args.muvera] if args.muvera and size <= args.muvera_max else []
    for spec in ("maxsim", *args.plaid_specs, *muvera):
        reset()
        build_s, index = timed(lambda: _built(INDEXES, spec, docs))
        start = time.perf_counter()
        index.use_device(args.device)
        index.search(qs[:1], K)  # moves (and tiers) the store once
        build_s += time.perf_counter() - start
        per_token = 2 * index.dim if spec.startswith(("maxsim", "muvera")) else index.quantizer.code_size
        fde = {"fde_bytes_per_doc": index._inner.quantizer.code_size} if spec.startswith("muvera") else {}
        own_depth = getattr(index, "ndocs", None)
        depths = args.plaid_ndocs if spec.startswith("plaid") and own_depth is None and args.plaid_ndocs else [0]
        for ndocs in depths:  # PLAID's search depth varies on one build
            if ndocs:
                index.ndocs = ndocs
            measured = rates(lambda q: index.search(q, K)[1], qs, args.single)
            name = f"{spec},ndocs={ndocs}" if ndocs else spec
            emit_system(f"retr {name} (GPU)", build_s, measured, per_token, peak(), **fde)
        if args.cpu_queries and spec in (args.cpu_reference, "maxsim", args.muvera):
            index.use_device("cpu")
            settings = args.cpu_plaid if spec.startswith("plaid") and args.cpu_plaid else [""]
            for setting in settings:  # PLAID's CPU search settings ("NPROBE:NDOCS") vary on one build too
                name = spec
                if setting:
                    index.nprobe, index.ndocs = (int(v) for v in setting.split(":"))
                    name = f"{spec},nprobe={index.nprobe},ndocs={index.ndocs}"
                measured = rates(lambda q: index.search(q, K)[1], qs[: args.cpu_queries], min(args.single, 20))
                one, batch, ids, _ = measured
                extra: dict[str, Any] = {"note": f"recall over {len(ids)} queries"}
                if spec == "maxsim":  # useful MaxSim FLOP/s against this machine's float32 matrix-product rate
                    flops = 2.0 * np.mean([len(q) for q in qs]) * n_tokens * index.dim * batch
                    peak_flops = matmul_rate(maxsim_rows(qs[: args.cpu_queries]), index.dim)
                    extra.update(maxsim_gflops=flops / 1e9, matmul_gflops=peak_flops / 1e9)
                    extra["note"] += f"; {flops / 1e9:,.0f} GFLOP/s = {flops / peak_flops:.0%} of float32 matmul"
                emit_system(f"retr {name} (CPU, {os.cpu_count()} cores)", build_s, measured, per_token, None, **extra)
        del index
    for nbits in args.fastplaid_nbits:
        folder = work / f"fastplaid-{size}-{nbits}"
        shutil.rmtree(folder, ignore_errors=True)
        try:
            from fast_plaid import search as fp_search
        except ImportError:
            emit({**base, "system": f"FastPlaid nbits={nbits}", "error": "fast-plaid is not installed"})
            break
        reset()
        torch_docs = [torch.from_numpy(d) for d in docs]
        build_s, fp = timed(lambda: _fastplaid(fp_search, folder, torch_docs, nbits))
        def search_fp(batch: list[Any]) -> np.ndarray:
            qt = torch.from_numpy(np.stack(batch))
            hits = fp.search(queries_embeddings=qt, top_k=K, show_progress=False)
            return np.array([[h[0] for h in row] + [-1] * (K - len(row)) for row in hits])

        measured = rates(search_fp, qs, args.single)
        size_bytes = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        emit_system(f"FastPlaid nbits={nbits} (GPU)", build_s, measured, size_bytes / n_tokens, peak())
        del fp


def _built(indexes: Any, spec: str, docs: list[np.ndarray]) -> Any:
    """The index as a build makes it: trained on a seeded sample of the documents, then every document added."""
    index = indexes.create(spec)
    if hasattr(index, "training_size"):
        size = index.training_size(len(docs))
        picks = np.sort(np.random.default_rng(42).choice(len(docs), size, replace=False))
        index.train([docs[i] for i in picks], len(docs))
    index.add(docs)
    return index


def _fastplaid(module: Any, folder: Path, docs: list[Any], nbits: int) -> Any:
    fp = module.FastPlaid(index=str(folder), device="cuda")  # FastPlaid's own device name
    fp.create(documents_embeddings=docs, nbits=nbits)
    return fp


def dense(size: int, args: argparse.Namespace, emit: Callable[[dict[str, Any]], None]) -> None:
    """Dense flat on the GPU against FAISS flat on every CPU core, same vectors."""
    import faiss

    from retr import iter_corpus
    from retr.retriever.dense import DenseEncoder
    from retr.scoring import NumpyDense, TorchDense

    encoder = DenseEncoder(args.model, batch_size=512)
    vectors = encoder.encode_documents([d.content for d in iter_corpus(corpus_slice(size, Path(args.work)))])
    qs = encoder.encode_queries(queries(args.queries))
    exact = NumpyDense(vectors).search(qs, K)[1]
    base = {"size": size, "queries": len(qs), "machine": machine()}
    for name, scorer in ((f"FAISS flat (CPU, {faiss.omp_get_max_threads()} threads)", NumpyDense(vectors)),
                         ("retr flat (GPU, float32)", TorchDense(vectors, args.device))):
        build_s, _ = timed(synced(lambda: scorer.search(qs[:1], K)))
        one, batch, ids, _ = rates(lambda q: scorer.search(np.stack(q), K)[1], list(qs), args.single)
        emit({**base, "system": name, "build_s": build_s, "single_qps": one, "batch_qps": batch,
              "recall": recall(ids, exact), "bytes_per_token": 4 * vectors.shape[1], "kind": "dense"})


def agreement(record: dict[str, Any]) -> str:
    """How much of the one-query-per-call top 10 the batched call returns, where that was measured."""
    if "single_agrees" not in record or record["system"].startswith("FastPlaid"):
        return ""
    return f"one-at-a-time top 10 = batched: {record['single_agrees']:.3f}"


def report(paths: list[str]) -> None:
    records = read_records(paths)
    rows = []
    for r in records:
        if "error" in r:
            rows.append([r.get("run", 1), f"{r['size']:,}", r["system"], "error: " + r["error"][:60]] + ["–"] * 7)
            continue
        rows.append([r.get("run", 1), f"{r['size']:,}", r["system"], f"{r['recall']:.4f}", f"{r['single_qps']:,.1f}",
                     f"{r['batch_qps']:,.1f}", f"{r['bytes_per_token']:,.0f}",
                     "–" if r.get("gpu_gib") is None else f"{r['gpu_gib']:.2f}", f"{r['build_s']:.1f}",
                     "–" if r.get("kind") == "dense" else f"{r['fits_h200_tokens'] / 1e9:.2f}B",
                     "; ".join(filter(None, [r.get("note", ""), agreement(r)]))])
    header = ["run", "documents", "system", "recall@10 of exact", "q/s one at a time", "q/s batched", "bytes/token (vector)",
              "peak GPU GiB", "build s", "tokens fitting 139 GB", "note"]
    write_results("gpu", "GPU search: exact MaxSim and PLAID codes vs FastPlaid", ["## Measurements\n\n" +
                  md_table(header, rows), RUNS], os.getloadavg()[0], RENDERED)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,400000")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--single", type=int, default=200, help="queries timed one per call")
    parser.add_argument("--cpu-queries", type=int, default=64, help="queries for the CPU reference rows")
    parser.add_argument("--plaid", default="plaid:nbits=2,plaid:nbits=4,plaid:residual=pq,m=96")
    parser.add_argument("--plaid-ndocs", type=int, nargs="*", default=[],
                        help="PLAID search depths measured on the GPU for each plaid build (default: its own)")
    parser.add_argument("--cpu-plaid", nargs="*", default=[],
                        help="PLAID CPU search settings NPROBE:NDOCS measured on the CPU reference build")
    parser.add_argument("--cpu-reference", default="plaid:nbits=4", help="the compressed spec also run on the CPU")
    parser.add_argument("--fastplaid-nbits", type=int, nargs="*", default=[2, 4])
    parser.add_argument("--muvera", default="muvera:inner=pq,inner_M=1280,candidates=1000")
    parser.add_argument("--muvera-max", type=int, default=100000, help="largest slice MUVERA is built on")
    parser.add_argument("--dense-size", type=int, default=794232)
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--device", default="cuda", help="torch:cpu runs the GPU code on the CPU (a smoke test)")
    parser.add_argument("--work", default="runs/gpu")
    parser.add_argument("--json", default="runs/gpu.json")
    parser.add_argument("--run", type=int, default=0,
                        help="this run's number, kept with its records (default: one more than --json holds)")
    parser.add_argument("--report", nargs="*")
    args = parser.parse_args()
    if args.report:
        report(args.report)
        return
    args.plaid_specs = [s.strip() for s in args.plaid.replace(",plaid", ";plaid").split(";") if s.strip()]
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if not args.run:
        held = read_records([args.json]) if os.path.exists(args.json) else []
        args.run = 1 + max((r.get("run", 1) for r in held), default=0)

    def emit(record: dict[str, Any]) -> None:
        record["run"] = args.run
        print(json.dumps({k: v for k, v in record.items() if k != "machine"}), flush=True)
        with open(args.json, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    if args.dense_size:
        dense(args.dense_size, args, emit)
    for size in [int(s) for s in args.sizes.split(",") if s]:
        run_size(size, args, emit)


if __name__ == "__main__":
    main()
