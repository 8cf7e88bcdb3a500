"""Peer multi-vector engines on token vectors dumped by bench/multivector.py: PyLate's PLAID and fastembed's MUVERA.

Runs in the benchmark environment, not retr's (PyLate pins its own torch), e.g.::

    python3 -m venv PEERS_VENV && PEERS_VENV/bin/pip install 'pylate==1.6.*' fastembed
    PEERS_VENV/bin/python bench/peers_multivector.py VECTORS.npz RESULTS.npz [--queries 50] [--candidates 100 200]

VECTORS.npz holds ``tokens`` (N_tok, dim) float32, ``offsets`` (n_docs + 1,) and ``queries``
(nq, q_len, dim). RESULTS.npz gets, per system, ``ids/<name>`` (nq, k) top-k document ids and
``meta`` (JSON text): build seconds, bytes, batch and single-query seconds per query.
Timing: one warm-up call, then the best of ``--repeats`` calls; single-query latency over the first
``--single`` queries.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

K = 100


def best_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def largest_files(path: Path, n: int = 4) -> str:
    """The ``n`` largest files under ``path``, to show what an index's size is made of."""
    files = sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: -p.stat().st_size)[:n]
    return ", ".join(f"{p.name} {p.stat().st_size / 1e6:.1f} MB" for p in files)


def pylate_plaid(docs: list[np.ndarray], queries: list[np.ndarray], nbits: int, work: Path,
                 repeats: int, n_single: int) -> tuple[dict[str, Any], np.ndarray]:
    """PyLate's PLAID index (fast-plaid backend, CPU) at its default search settings."""
    from pylate import indexes

    folder = work / f"pylate-{nbits}"

    def build() -> Any:
        index = indexes.PLAID(index_folder=str(folder), index_name="plaid", override=True, nbits=nbits,
                              device="cpu", show_progress=False)
        return index.add_documents(documents_ids=[str(i) for i in range(len(docs))], documents_embeddings=docs)

    start = time.perf_counter()
    index = build()
    build_s = time.perf_counter() - start
    found = index(queries, k=K)
    ids = np.full((len(queries), K), -1, dtype=np.int64)
    for row, hits in enumerate(found):
        ids[row, : len(hits)] = [int(h["id"]) for h in hits]
    batch = best_seconds(lambda: index(queries, k=K), repeats) / len(queries)
    few = queries[:n_single]
    single = best_seconds(lambda: [index([q], k=K) for q in few], repeats) / len(few)
    meta = {"build_s": build_s, "index_bytes": dir_bytes(folder), "batch_s": batch, "single_s": single,
            "settings": f"nbits={nbits}, n_ivf_probe=8, n_full_scores=8192; largest files: {largest_files(folder)}"}
    return meta, ids


def maxsim_rerank(query: np.ndarray, cand: np.ndarray, docs: list[np.ndarray]) -> np.ndarray:
    """Candidates re-ordered by exact MaxSim (plain numpy), best first."""
    scores = np.array([(query @ docs[d].T).max(axis=1).sum() for d in cand])
    return cand[np.argsort(-scores, kind="stable")]


def fastembed_muvera(docs: list[np.ndarray], queries: list[np.ndarray], candidates: list[int],
                     repeats: int, n_single: int) -> list[tuple[dict[str, Any], np.ndarray]]:
    """fastembed's MUVERA FDEs (retr's defaults: r_reps 20, k_sim 5, dim_proj 16), exhaustive numpy
    inner-product search over them, candidates reranked by exact MaxSim."""
    from fastembed.postprocess.muvera import Muvera

    muvera = Muvera(dim=docs[0].shape[1], k_sim=5, dim_proj=16, r_reps=20, random_seed=42)
    start = time.perf_counter()
    fdes = np.stack([muvera.process_document(d) for d in docs]).astype(np.float32)
    build_s = time.perf_counter() - start
    size = fdes.nbytes + sum(d.nbytes for d in docs)

    def search(qs: list[np.ndarray], depth: int) -> np.ndarray:
        q_fde = np.stack([muvera.process_query(q) for q in qs]).astype(np.float32)
        scores = q_fde @ fdes.T
        depth = min(max(depth, K), len(docs))  # as retr's muvera: at least K candidates
        cand = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
        return np.stack([maxsim_rerank(q, c, docs)[:K] for q, c in zip(qs, cand)])

    out = []
    few = queries[:n_single]
    for depth in candidates:
        ids = search(queries, depth)
        batch = best_seconds(lambda d=depth: search(queries, d), repeats) / len(queries)
        single = best_seconds(lambda d=depth: [search([q], d) for q in few], repeats) / len(few)
        meta = {"build_s": build_s, "index_bytes": size, "batch_s": batch, "single_s": single,
                "candidates": depth, "settings": "FDE float32 + token vectors float32, numpy search"}
        out.append((meta, ids))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vectors", type=Path)
    parser.add_argument("results", type=Path)
    parser.add_argument("--candidates", type=int, nargs="+", default=[100, 200, 400])
    parser.add_argument("--nbits", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--queries", type=int, default=0, help="search the first N queries only (0: all)")
    parser.add_argument("--single", type=int, default=50, help="queries timed one per call")
    args = parser.parse_args()

    data = np.load(args.vectors, allow_pickle=False)
    tokens, offsets = data["tokens"].astype(np.float32), data["offsets"]
    docs = [tokens[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
    queries = list(data["queries"].astype(np.float32))[: args.queries or None]
    results: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    work = Path(tempfile.mkdtemp(prefix="retr-peers-"))
    try:
        for nbits in args.nbits:
            name = f"PyLate PLAID nbits={nbits}"
            meta[name], results[f"ids/{name}"] = pylate_plaid(docs, queries, nbits, work, args.repeats, args.single)
            print(name, meta[name], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for m, ids in fastembed_muvera(docs, queries, args.candidates, args.repeats, args.single):
        name = f"fastembed MUVERA candidates={m['candidates']}"
        meta[name], results[f"ids/{name}"] = m, ids
        print(name, m, flush=True)
    np.savez(args.results, meta=np.array(json.dumps(meta)), **results)


if __name__ == "__main__":
    main()
