"""Multi-vector benchmark: retr's exact MaxSim, PLAID-style and MUVERA indexes against PyLate and fastembed.

One run, on one set of token vectors: Cranfield encoded once with retr's
ColBERTEncoder("all-MiniLM-L6-v2") (zero-shot, 384-d; the embedding cache is used when warm).
It measures:

1. exact MaxSim (``maxsim``, float16 tokens): the reference top-100 of every query, latency,
   and exhaustive MaxSim throughput as a fraction of this machine's memory bandwidth
   (a large numpy copy, measured in the same run);
2. PLAID-style (``plaid``: 1 and 2 bits per dimension, residual PQ) and MUVERA (``muvera``,
   flat and hnsw inner index, several candidate counts): index size, bytes per token, build
   time, latency (ms/query, all queries in one call and one query per call), recall@10/@100
   of the exact top-10/top-100;
3. the Pearson correlation of FDE inner products with Chamfer (MaxSim) scores;
4. peers on the same vectors, through bench/peers_multivector.py in a separate environment
   (``--peers-python``, or $RETR_BENCH_PEERS_PYTHON): PyLate's PLAID index (fast-plaid, CPU)
   and fastembed's MUVERA (numpy postprocessor, exhaustive FDE search, numpy MaxSim rerank).

Ratios are against retr's exact index from the same run. Timing: one warm-up call, then the
best of ``--repeats`` calls; single-query latency over the first ``--single`` queries. The
tables are printed and written to bench/results/multivector.md.

    .venv/bin/python bench/multivector.py [--data ../shared/data] [--peers-python /work/benchvenv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from common import dir_bytes, md_table, ratio, timed, write_results

from retr.indexers.maxsim import QUERY_GROUP, maxsim_batch

REPO = Path(__file__).resolve().parent.parent
MODEL = "all-MiniLM-L6-v2"
K = 100
PLAID_SPECS = ("plaid:nbits=1", "plaid:nbits=2", "plaid:residual=pq,m=64")
MUVERA_SPECS = ("muvera:inner=flat", "muvera:inner=hnsw,inner_ef_search=256")
CANDIDATES = (100, 200, 400)
Row = list[Any]


@dataclass
class Result:
    """One system's measurements; ``ids`` is its (nq, K) top-K."""

    name: str
    ids: np.ndarray
    batch_s: float  # seconds per query, all queries in one call
    single_s: float  # seconds per query, one query per call
    index_bytes: int
    token_bytes: float | None = None  # bytes per token of the stored token representation
    build_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def best_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Best of ``repeats`` calls after one warm-up call."""
    fn()
    return min(timed(fn) for _ in range(repeats))


def recall(ids: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean share of the exact top-k found in the top-k of ``ids``."""
    return float(np.mean([len(set(a[:k]) & set(e[:k])) / k for a, e in zip(ids, exact)]))


def memory_bandwidth(repeats: int, nbytes: int = 1 << 30) -> float:
    """Bytes/s moved by a large numpy copy (read + write), best of ``repeats``."""
    src = np.ones(nbytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    seconds = best_seconds(lambda: np.copyto(dst, src), repeats)
    return 2 * nbytes / seconds


def encode(data: Path, n_docs: int, n_queries: int) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """Cranfield's document and query token vectors (the first ``n_docs`` / ``n_queries``; 0: all), and the seconds it took."""
    import retr
    from retr.retriever.colbert import ColBERTEncoder

    ds = retr.load_dataset(data / "cranfield")
    encoder = ColBERTEncoder(MODEL)
    start = time.perf_counter()
    docs = encoder.encode_documents([d.content for d in ds.corpus[: n_docs or None]])
    queries = encoder.encode_queries(list(ds.queries.values())[: n_queries or None])
    return docs, queries, time.perf_counter() - start


def measure(name: str, index: Any, queries: list[np.ndarray], single: int, repeats: int) -> Result:
    """Latency, size on disk and top-K of a built retr index."""
    ids = index.search(queries, K)[1]
    batch = best_seconds(lambda: index.search(queries, K), repeats) / len(queries)
    few = queries[:single]
    one = best_seconds(lambda: [index.search([q], K) for q in few], repeats) / len(few)
    with tempfile.TemporaryDirectory(prefix="retr-mv-size-") as tmp:
        index.save(Path(tmp))
        size = dir_bytes(Path(tmp))
    return Result(name, ids, batch, one, size)


def built(spec: str, docs: list[np.ndarray]) -> tuple[Any, float]:
    from retr import INDEXES

    index = INDEXES.create(spec)
    start = time.perf_counter()
    index.add(docs)
    return index, time.perf_counter() - start


def exact_section(docs: list[np.ndarray], queries: list[np.ndarray], args: argparse.Namespace,
                  bandwidth: float) -> tuple[Result, list[str], np.ndarray]:
    """The exact index (the reference), its throughput against memory bandwidth, and all (nq, n_docs) scores."""
    index, build_s = built("maxsim", docs)
    res = measure("retr maxsim (exact, float16)", index, queries, args.single, args.repeats)
    res.build_s, res.token_bytes = build_s, 2.0 * index.dim
    tokens = np.asarray(index._tokens)
    flops = 2.0 * np.mean([len(q) for q in queries]) * tokens.size  # per query
    groups = -(-len(queries) // QUERY_GROUP)  # a batch streams the tokens once per group of queries
    lines = []
    for label, seconds, per_query in (("one query per call", res.single_s, tokens.nbytes),
                                      ("all queries in one call", res.batch_s, tokens.nbytes * groups / len(queries))):
        lines.append(f"exhaustive MaxSim, {label}: {per_query / seconds / 1e9:.2f} GB/s of token reads = "
                     f"{per_query / seconds / bandwidth:.1%} of memory bandwidth; "
                     f"{flops / seconds / 1e9:.1f} GFLOP/s")
    scores = maxsim_batch(queries, tokens, index._offsets)
    ranked = -np.sort(-scores, axis=1)
    gap = (ranked[:, 9] - ranked[:, 10]) / ranked[:, 9]
    lines.append(f"exact scores, gap between the 10th and 11th document relative to the 10th score: median "
                 f"{np.median(gap):.2e}, 10th percentile {np.percentile(gap, 10):.2e} (what a compressed score "
                 "may err by without changing the top 10)")
    return res, lines, scores


def plaid_results(docs: list[np.ndarray], queries: list[np.ndarray], args: argparse.Namespace) -> list[Result]:
    out = []
    n_tokens = sum(len(d) for d in docs)
    for spec in args.plaid:
        index, build_s = built(spec, docs)
        res = measure(f"retr {spec}", index, queries, args.single, args.repeats)
        q = index.quantizer
        res.build_s, res.token_bytes = build_s, float(q.code_size)
        res.extra = {"tables_per_token": q.table_bytes / n_tokens, "centroids": len(q.centroids)}
        out.append(res)
        print(f"{spec}: done", flush=True)
    return out


def muvera_results(docs: list[np.ndarray], queries: list[np.ndarray], args: argparse.Namespace) -> list[Result]:
    out = []
    for spec in MUVERA_SPECS:
        index, build_s = built(spec, docs)
        for depth in args.candidates:
            index.candidates = depth  # the FDE index is built once; candidates only matter at search
            res = measure(f"retr {spec},candidates={depth}", index, queries, args.single, args.repeats)
            res.build_s, res.token_bytes = build_s, 2.0 * index.dim
            res.extra = {"candidates": depth}
            out.append(res)
        print(f"{spec}: done", flush=True)
    return out


def fde_correlation(docs: list[np.ndarray], queries: list[np.ndarray], chamfer: np.ndarray) -> list[str]:
    """Pearson correlation of <fde(q), fde(d)> with Chamfer(q, d): over all pairs, and per query (mean)."""
    from retr.indexers.fde import FDE

    fde = FDE(docs[0].shape[1])
    ip = fde.encode(queries, query=True) @ fde.encode(docs, query=False).T
    overall = float(np.corrcoef(ip.ravel(), chamfer.ravel())[0, 1])
    per_query = float(np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(ip, chamfer)]))
    return [(f"FDE (r_reps 20, k_sim 5, d_proj 16: {fde.width} dims) inner product vs Chamfer, Pearson r: "
             f"{overall:.4f} over all {ip.size} query-document pairs, {per_query:.4f} per query (mean)")]


def run_peers(python: str, docs: list[np.ndarray], queries: list[np.ndarray], args: argparse.Namespace,
              work: Path) -> tuple[list[Result], str]:
    """PyLate and fastembed in their own environment, on the same vectors (dumped to a .npz)."""
    if not python or not Path(python).is_file():
        return [], ("peers skipped: no benchmark environment (give --peers-python or set RETR_BENCH_PEERS_PYTHON "
                    "to a python with pylate and fastembed installed)")
    vectors, results = work / "vectors.npz", work / "peers.npz"
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    np.savez(vectors, tokens=np.concatenate(docs), offsets=offsets, queries=np.stack(queries))
    command = [python, str(REPO / "bench" / "peers_multivector.py"), str(vectors), str(results),
               "--repeats", str(args.repeats), "--single", str(args.single),
               "--queries", str(args.peer_queries), "--candidates", *map(str, args.candidates)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return [], f"peers failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}"
    data = np.load(results, allow_pickle=False)
    meta = json.loads(str(data["meta"]))
    n_tokens = int(offsets[-1])
    out = []
    for name, m in meta.items():
        res = Result(name, data[f"ids/{name}"], m["batch_s"], m["single_s"], m["index_bytes"],
                     build_s=m["build_s"], extra={**m, "bytes_per_token_all": m["index_bytes"] / n_tokens})
        out.append(res)
    return out, "peers: " + "; ".join(f"{name}: {m['settings']}" for name, m in meta.items())


def table(results: Sequence[Result], base: Result, exact_ids: np.ndarray, n_tokens: int) -> str:
    rows = []
    for r in results:
        token = f"{r.token_bytes:.0f}" if r.token_bytes is not None else "–"
        tables = f"{r.extra['tables_per_token']:.1f}" if "tables_per_token" in r.extra else "–"
        rows.append([r.name, len(r.ids), token, tables, f"{r.index_bytes / n_tokens:.1f}", f"{r.index_bytes / 1e6:.1f}",
                     ratio(r.index_bytes, base.index_bytes),
                     f"{r.build_s:.1f}" if r.build_s is not None else "–",
                     f"{r.batch_s * 1e3:.2f}", ratio(r.batch_s, base.batch_s),
                     f"{r.single_s * 1e3:.2f}", ratio(r.single_s, base.single_s),
                     f"{recall(r.ids, exact_ids, 10):.3f}", f"{recall(r.ids, exact_ids, 100):.3f}"])
    header = ["system", "queries", "code B/token", "tables B/token", "index B/token", "index MB", "× exact", "build s",
              "batch ms/q", "× exact", "single ms/q", "× exact", "R@10", "R@100"]
    return md_table(header, rows)


def verdicts(retr_results: Sequence[Result], peers: Sequence[Result], exact_ids: np.ndarray) -> list[str]:
    """For each peer: the fastest retr system with at least its recall@10 and recall@100 on the same queries."""
    lines = []
    for peer in peers:
        n = len(peer.ids)
        need10, need100 = recall(peer.ids, exact_ids, 10), recall(peer.ids, exact_ids, 100)
        ok = [r for r in retr_results
              if recall(r.ids[:n], exact_ids, 10) >= need10 - 1e-9 and recall(r.ids[:n], exact_ids, 100) >= need100 - 1e-9]
        if not ok:
            lines.append(f"- {peer.name} (R@10 {need10:.3f}, R@100 {need100:.3f} on the first {n} queries): "
                         "no retr system reaches its recall.")
            continue
        for mode in ("batch_s", "single_s"):
            best = min(ok, key=lambda r: getattr(r, mode))
            mine, theirs = getattr(best, mode), getattr(peer, mode)
            word = "faster" if mine < theirs else "SLOWER"
            lines.append(f"- {peer.name} (R@10 {need10:.3f}, R@100 {need100:.3f} on the first {n} queries), "
                         f"{mode[:-2]}: retr is {word} — "
                         f"{best.name} {mine * 1e3:.2f} ms/q vs {theirs * 1e3:.2f} ms/q ({theirs / mine:.2f}×).")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--peers-python", default=os.environ.get("RETR_BENCH_PEERS_PYTHON", ""))
    parser.add_argument("--docs", type=int, default=0, help="the first N documents only (0: all; for a smoke run)")
    parser.add_argument("--queries", type=int, default=0, help="the first N queries only (0: all)")
    parser.add_argument("--plaid", nargs="+", default=list(PLAID_SPECS))
    parser.add_argument("--candidates", type=int, nargs="+", default=list(CANDIDATES))
    parser.add_argument("--single", type=int, default=50, help="queries timed one per call")
    parser.add_argument("--peer-queries", type=int, default=50,
                        help="the first N queries go to the peers (PyLate's CPU search is slow)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    os.environ["RETR_PROGRESS"] = "0"
    load = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="retr-bench-mv-"))
    try:

        docs, queries, encode_s = encode(args.data, args.docs, args.queries)
        docs = [d for d in docs if len(d)]
        n_tokens = sum(len(d) for d in docs)
        print(f"{len(docs)} documents, {n_tokens} tokens, {len(queries)} queries; encoded in {encode_s:.1f} s",
              flush=True)
        bandwidth = memory_bandwidth(args.repeats)
        exact, throughput, chamfer = exact_section(docs, queries, args, bandwidth)
        exact_ids = exact.ids
        peers, peer_note = run_peers(args.peers_python, docs, queries, args, work)
        print(peer_note, flush=True)
        plaid = plaid_results(docs, queries, args)
        muvera = muvera_results(docs, queries, args)
        correlation = fde_correlation(docs, queries, chamfer)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    pylate = [p for p in peers if p.name.startswith("PyLate")]
    fastembed = [p for p in peers if p.name.startswith("fastembed")]
    sections = [
        (f"## Cranfield, {len(docs)} documents, {n_tokens} token vectors ({docs[0].shape[1]}-d), "
         f"{len(queries)} queries of {len(queries[0])} tokens"),
        (f"Token vectors: retr ColBERTEncoder({MODEL!r}) zero-shot, on this machine's CPU: {encode_s:.1f} s "
         "(a few seconds means they came from the embedding cache). Recall@k: share of the exact MaxSim top-k "
         f"(retr maxsim) found in the top-k. Memory bandwidth (1 GiB numpy copy, read + write): "
         f"{bandwidth / 1e9:.1f} GB/s."),
        "### Index size and latency (ratios vs retr exact maxsim)",
        ("code B/token: bytes of one stored token (float16 for exact and MUVERA's rerank store; centroid id + "
         "residual for PLAID); tables B/token: centroids and cut-offs/codebooks, amortised over the tokens; "
         "index B/token: everything on disk over the tokens."),
        table([exact, *plaid, *pylate], exact, exact_ids, n_tokens),
        "### MUVERA: recall vs candidates reranked by exact MaxSim (at least 100)",
        table(muvera + fastembed, exact, exact_ids, n_tokens),
        "### Exhaustive MaxSim throughput and FDE fidelity",
        "\n".join(f"- {line}" for line in throughput + correlation),
        "### Against the peers at equal recall (retr systems with at least the peer's R@10 and R@100)",
        peer_note,
        "\n".join(verdicts([exact, *plaid, *muvera], peers, exact_ids)) or "(no peer results)",
    ]
    for s in sections:
        print(s + "\n", flush=True)
    write_results("multivector", "retr multi-vector benchmark", sections, load)


if __name__ == "__main__":
    main()
