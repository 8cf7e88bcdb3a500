"""Multi-vector benchmark: retr's exact MaxSim, PLAID-style and MUVERA indexes against PyLate and fastembed.

One run, on one set of token vectors: Cranfield encoded once with retr's
ColBERTEncoder("all-MiniLM-L6-v2") (zero-shot, 384-d; the embedding cache is used when warm).
It measures:

1. exact MaxSim (``maxsim``, float16 tokens, and ``maxsim:dtype=float32``): the reference
   top-100 of every query, latency, and exhaustive MaxSim throughput as a fraction of this
   machine's memory bandwidth (a large numpy copy) and of its float32 matrix-product rate
   (a product of the same shapes), both measured in the same run;
2. PLAID-style (``plaid``: 1 and 2 bits per dimension, residual PQ) and MUVERA (``muvera``,
   flat and hnsw inner index, several candidate counts): index size, bytes per token, build
   time, latency (ms/query, all queries in one call and one query per call), recall@10/@100
   of the exact top-10/top-100, nDCG@10 against Cranfield's judgements;
3. the Pearson correlation of FDE inner products with Chamfer (MaxSim) scores;
4. peers on the same vectors, through bench/peers_multivector.py in a separate environment
   (``--peers-python``, or $RETR_BENCH_PEERS_PYTHON): PyLate's PLAID index (fast-plaid, CPU)
   and fastembed's MUVERA (numpy postprocessor, exhaustive FDE search, numpy MaxSim rerank);
5. the bytes-per-token frontier: recall@10 of exhaustive MaxSim over tokens reconstructed from
   PLAID's codes, faiss scalar quantizers, and an entropy-coded transform code.

Ratios are against retr's exact index from the same run. Timing: one warm-up call, then the
best of ``--repeats`` calls; single-query latency over the first ``--single`` queries. The
tables are printed and written to bench/results/multivector.md.

    .venv/bin/python bench/multivector.py [--data ../shared/data] [--peers-python PEERS_VENV/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from common import best_seconds, dir_bytes, matmul_rate, md_table, ratio, tradeoff_charts, write_results

from retr.scoring.maxsim import QUERY_GROUP, maxsim_batch, top_k

REPO = Path(__file__).resolve().parent.parent
MODEL = "all-MiniLM-L6-v2"
K = 100
PLAID_SPECS = ("plaid:nbits=1", "plaid:nbits=2", "plaid:residual=pq,m=64", "plaid:residual=pq,m=96")
MUVERA_SPECS = ("muvera:inner=flat", "muvera:inner=flat,dtype=float32", "muvera:inner=hnsw,inner_ef_search=256")
CANDIDATES = (100, 200, 400, 800)
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


def recall(ids: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean share of the exact top-k found in the top-k of ``ids``."""
    return float(np.mean([len(set(a[:k]) & set(e[:k])) / k for a, e in zip(ids, exact)]))


def memory_bandwidth(repeats: int, nbytes: int = 1 << 30) -> float:
    """Bytes/s moved by a large numpy copy (read + write), best of ``repeats``."""
    src = np.ones(nbytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    seconds = best_seconds(lambda: np.copyto(dst, src), repeats)
    return 2 * nbytes / seconds


@dataclass
class Collection:
    """Token vectors of Cranfield's documents and queries, with the ids and judgements to score runs."""

    docs: list[np.ndarray]
    queries: list[np.ndarray]
    doc_ids: list[str]
    query_ids: list[str]
    qrels: dict[str, dict[str, int]]
    encode_s: float

    def ndcg(self, ids: np.ndarray) -> float:
        """nDCG@10 of a (nq, k) top-k over the first nq queries (rank order gives the scores)."""
        from retr import evaluate_run

        qids = self.query_ids[: len(ids)]
        run = {q: {self.doc_ids[d]: -float(rank) for rank, d in enumerate(row[:10]) if d >= 0}
               for q, row in zip(qids, ids)}
        return evaluate_run({q: self.qrels[q] for q in qids}, run, ["ndcg@10"])["ndcg@10"]


def encode(data: Path, n_docs: int, n_queries: int) -> Collection:
    """Cranfield's document and query token vectors (the first ``n_docs`` / ``n_queries``; 0: all), timed."""
    import retr
    from retr.retriever.colbert import ColBERTEncoder

    ds = retr.load_dataset(data / "cranfield")
    corpus = ds.corpus[: n_docs or None]
    query_ids = list(ds.queries)[: n_queries or None]
    encoder = ColBERTEncoder(MODEL)
    start = time.perf_counter()
    docs = encoder.encode_documents([d.content for d in corpus])
    queries = encoder.encode_queries([ds.queries[q] for q in query_ids])
    seconds = time.perf_counter() - start
    keep = [i for i, d in enumerate(docs) if len(d)]
    return Collection([docs[i] for i in keep], queries, [corpus[i].id for i in keep], query_ids, ds.qrels, seconds)


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


def exact_section(col: Collection, args: argparse.Namespace,
                  bandwidth: float) -> tuple[list[Result], list[str], np.ndarray]:
    """The exact index (the reference) with float16 and float32 tokens, its throughput against memory
    bandwidth and against the machine's matrix-product rate, and all (nq, n_docs) scores."""
    out = []
    for spec, label in (("maxsim", "float16"), ("maxsim:dtype=float32", "float32")):
        index, build_s = built(spec, col.docs)
        res = measure(f"retr {spec} (exact, {label})", index, col.queries, args.single, args.repeats)
        res.build_s, res.token_bytes = build_s, float(index.store.dtype.itemsize * index.dim)
        out.append(res)
    tokens = np.asarray(index.store.tokens.array)
    q_len = np.mean([len(q) for q in col.queries])
    flops = 2.0 * q_len * tokens.size  # per query
    groups = -(-len(col.queries) // QUERY_GROUP)  # a batch streams the tokens once per group of queries
    peak = {"one query per call": matmul_rate(int(q_len), tokens.shape[1], args.repeats),
            "all queries in one call": matmul_rate(int(q_len * min(QUERY_GROUP, len(col.queries))),
                                                   tokens.shape[1], args.repeats)}
    lines = []
    for res in out:
        nbytes = res.token_bytes * len(tokens)
        for label, seconds, per_query in (("one query per call", res.single_s, nbytes),
                                          ("all queries in one call", res.batch_s, nbytes * groups / len(col.queries))):
            lines.append(f"{res.name}, {label}: {per_query / seconds / 1e9:.2f} GB/s of token reads = "
                         f"{per_query / seconds / bandwidth:.1%} of memory bandwidth; {flops / seconds / 1e9:.1f} "
                         f"GFLOP/s = {flops / seconds / peak[label]:.0%} of the float32 matrix product of the same "
                         f"shapes ({peak[label] / 1e9:.1f} GFLOP/s)")
    scores = maxsim_batch(col.queries, tokens, index.store.offsets.array)
    ranked = -np.sort(-scores, axis=1)
    gap = (ranked[:, 9] - ranked[:, 10]) / ranked[:, 9]
    lines.append(f"exact scores, gap between the 10th and 11th document relative to the 10th score: median "
                 f"{np.median(gap):.2e}, 10th percentile {np.percentile(gap, 10):.2e} (what a compressed score "
                 "may err by without changing the top 10)")
    return out, lines, scores


def plaid_results(col: Collection, args: argparse.Namespace) -> list[Result]:
    """Each PLAID spec, with its codes decompressed too (``decoded``: the tokens stage 4 scores)."""
    out = []
    n_tokens = sum(len(d) for d in col.docs)
    for spec in args.plaid:
        index, build_s = built(spec, col.docs)
        res = measure(f"retr {spec}", index, col.queries, args.single, args.repeats)
        q = index.quantizer
        res.build_s, res.token_bytes = build_s, float(q.code_size)
        res.extra = {"tables_per_token": q.table_bytes / n_tokens, "centroids": len(q.centroids),
                     "decoded": q.decode(np.asarray(index.codes)), "quantizer": q}
        out.append(res)
        print(f"{spec}: done", flush=True)
    return out


def muvera_results(col: Collection, args: argparse.Namespace) -> list[Result]:
    out = []
    for spec in MUVERA_SPECS:
        index, build_s = built(spec, col.docs)
        for depth in args.candidates:
            index.candidates = depth  # the FDE index is built once; candidates only matter at search
            res = measure(f"retr {spec},candidates={depth}", index, col.queries, args.single, args.repeats)
            res.build_s, res.token_bytes = build_s, float(index._store.store.dtype.itemsize * index.dim)
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


def entropy_bytes(symbols: np.ndarray) -> float:
    """Bytes per row an ideal per-column arithmetic coder needs: the sum of the columns' empirical entropies / 8."""
    bits = 0.0
    for column in symbols.T:
        counts = np.unique(column, return_counts=True)[1]
        p = counts / counts.sum()
        bits -= float((p * np.log2(p)).sum())
    return bits / 8


def rate_frontier(col: Collection, plaid: Sequence[Result], exact_ids: np.ndarray) -> str:
    """Recall@10 of the exact top-10 when every token is reconstructed from its code and all documents are
    scored exhaustively: the ceiling of any index over those codes, against bytes per token."""
    import faiss

    flat = np.concatenate(col.docs)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in col.docs])]).astype(np.int64)
    dim = flat.shape[1]
    candidates: list[tuple[str, float, np.ndarray]] = [
        (f"{r.name} (centroid id + residual)", r.token_bytes, r.extra["decoded"]) for r in plaid]
    for bits, qtype in ((8, faiss.ScalarQuantizer.QT_8bit), (6, faiss.ScalarQuantizer.QT_6bit),
                        (4, faiss.ScalarQuantizer.QT_4bit)):
        sq = faiss.ScalarQuantizer(dim, qtype)
        sq.train(flat)
        candidates.append((f"faiss scalar quantizer, {bits} bits per dimension", dim * bits / 8,
                           sq.decode(sq.compute_codes(flat))))
    # transform coding: PLAID's centroids, residuals rotated onto their principal axes, one uniform step,
    # entropy-coded (near the rate-distortion optimum at these rates)
    quantizer = plaid[0].extra["quantizer"]
    base = quantizer.centroids[quantizer.assign(flat)]
    residual = flat - base
    mean = residual.mean(0)
    axes = np.linalg.eigh(np.cov(residual, rowvar=False))[1]
    rotated = (residual - mean) @ axes
    for step in (0.05, 0.025, 0.0125, 0.00625):
        symbols = np.round(rotated / step)
        decoded = base + mean + (symbols * step) @ axes.T
        candidates.append((f"centroid id + entropy-coded PCA residual, step {step}",
                           quantizer.id_size + entropy_bytes(symbols.astype(np.int32)), decoded))
    rows = []
    for name, nbytes, decoded in candidates:
        decoded = decoded / np.linalg.norm(decoded, axis=1, keepdims=True)
        ids = top_k(maxsim_batch(col.queries, decoded, offsets), 10)[1]
        rows.append([name, f"{nbytes:.1f}", f"{2 * dim / nbytes:.1f}×", f"{recall(ids, exact_ids, 10):.3f}",
                     f"{col.ndcg(ids):.4f}"])
        print(f"frontier: {name}: done", flush=True)
    return md_table(["code", "B/token", "smaller than float16", "R@10 (exhaustive, decoded)", "nDCG@10"], rows)


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


def table(results: Sequence[Result], base: Result, col: Collection) -> str:
    exact_ids, n_tokens = base.ids, sum(len(d) for d in col.docs)
    rows = []
    for r in results:
        token = f"{r.token_bytes:.0f}" if r.token_bytes is not None else "–"
        tables = f"{r.extra['tables_per_token']:.1f}" if "tables_per_token" in r.extra else "–"
        rows.append([r.name, len(r.ids), token, tables, f"{r.index_bytes / n_tokens:.1f}", f"{r.index_bytes / 1e6:.1f}",
                     ratio(r.index_bytes, base.index_bytes),
                     f"{r.build_s:.1f}" if r.build_s is not None else "–",
                     f"{r.batch_s * 1e3:.2f}", ratio(r.batch_s, base.batch_s),
                     f"{r.single_s * 1e3:.2f}", ratio(r.single_s, base.single_s),
                     f"{recall(r.ids, exact_ids, 10):.3f}", f"{recall(r.ids, exact_ids, 100):.3f}",
                     f"{col.ndcg(r.ids):.4f}", f"{col.ndcg(r.ids) - col.ndcg(exact_ids[: len(r.ids)]):+.4f}"])
    header = ["system", "queries", "code B/token", "tables B/token", "index B/token", "index MB", "× exact", "build s",
              "batch ms/q", "× exact", "single ms/q", "× exact", "R@10", "R@100", "nDCG@10", "Δ exact"]
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


def charts(records: list[dict[str, Any]]) -> str:
    """The trade-off charts (and raw/multivector.json): every system but the float32 and HNSW variants of maxsim and
    MUVERA, which sit on their float16 flat points (same recall; only bytes or speed differ, as the tables show)."""
    drawn = [r for r in records if not (r["name"].startswith(("muvera", "maxsim"))
                                        and ("hnsw" in r["name"] or "float32" in r["name"]))]
    return tradeoff_charts("multivector", drawn, "recall@10", "recall@10 of the exact top 10 against index bytes per "
                           "token", cost="bytes_per_token")


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
    parser.add_argument("--charts", action="store_true",
                        help="only redraw the charts from bench/results/raw/multivector.json")
    args = parser.parse_args(argv)
    if args.charts:
        charts(json.loads((REPO / "bench" / "results" / "raw" / "multivector.json").read_text()))
        return

    os.environ["RETR_PROGRESS"] = "0"
    load = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="retr-bench-mv-"))
    try:
        col = encode(args.data, args.docs, args.queries)
        docs, queries = col.docs, col.queries
        n_tokens = sum(len(d) for d in docs)
        print(f"{len(docs)} documents, {n_tokens} tokens, {len(queries)} queries; encoded in {col.encode_s:.1f} s",
              flush=True)
        bandwidth = memory_bandwidth(args.repeats)
        exacts, throughput, chamfer = exact_section(col, args, bandwidth)
        exact = exacts[0]
        exact_ids = exact.ids
        peers, peer_note = run_peers(args.peers_python, docs, queries, args, work)
        print(peer_note, flush=True)
        plaid = plaid_results(col, args)
        muvera = muvera_results(col, args)
        correlation = fde_correlation(docs, queries, chamfer)
        frontier = rate_frontier(col, plaid, exact_ids)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    pylate = [p for p in peers if p.name.startswith("PyLate")]
    fastembed = [p for p in peers if p.name.startswith("fastembed")]
    sections = [
        (f"## Cranfield, {len(docs)} documents, {n_tokens} token vectors ({docs[0].shape[1]}-d), "
         f"{len(queries)} queries of {len(queries[0])} tokens"),
        (f"Token vectors: retr ColBERTEncoder({MODEL!r}) zero-shot, on this machine's CPU: {col.encode_s:.1f} s "
         "(a few seconds means they came from the embedding cache). Recall@k: share of the exact MaxSim top-k "
         "(retr maxsim, float16 tokens) found in the top-k; nDCG@10 against Cranfield's judgements, Δ exact its "
         "difference from exact MaxSim's on the same queries. Memory bandwidth (1 GiB numpy copy, read + write): "
         f"{bandwidth / 1e9:.1f} GB/s."),
        "### Index size and latency (ratios vs retr exact maxsim)",
        ("code B/token: bytes of one stored token (float16 or float32 for exact and MUVERA's rerank store; "
         "centroid id + residual for PLAID); tables B/token: centroids and cut-offs/codebooks, amortised over the tokens; "
         "index B/token: everything on disk over the tokens."),
        table([*exacts, *plaid, *pylate], exact, col),
        "### MUVERA: recall vs candidates reranked by exact MaxSim (at least 100)",
        table(muvera + fastembed, exact, col),
        "### Exhaustive MaxSim throughput and FDE fidelity",
        "\n".join(f"- {line}" for line in throughput + correlation),
        "### Against the peers at equal recall (retr systems with at least the peer's R@10 and R@100)",
        peer_note,
        "\n".join(verdicts([*exacts, *plaid, *muvera], peers, exact_ids)) or "(no peer results)",
        "### Bytes per token against recall@10 of the exact top-10 (exhaustive MaxSim over reconstructed tokens)",
        ("The ceiling of any index scoring these codes: every token reconstructed, every document scored. "
         "The entropy-coded rows count the bytes an ideal arithmetic coder needs per token (the sum of the "
         "rotated components' empirical entropies) plus the centroid id: a bound on transform coding, not a "
         "stored format."),
        frontier,
    ]
    n_tokens = sum(len(d) for d in docs)
    records = [{"dataset": "cranfield", "name": r.name.replace("retr ", ""), "bytes_per_token": r.index_bytes / n_tokens,
                "recall@10": recall(r.ids, exact_ids, 10), "ndcg@10": col.ndcg(r.ids), "qps": 1 / r.batch_s}
               for r in [*exacts, *plaid, *muvera, *peers]]
    sections.append(charts(records))
    for s in sections:
        print(s + "\n", flush=True)
    write_results("multivector", "retr multi-vector benchmark", sections, load)


if __name__ == "__main__":
    main()
