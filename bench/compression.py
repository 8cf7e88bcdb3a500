"""Compression benchmark: what do PQ, OPQ, IVF-PQ, JPQ and BEBR cost in quality, and what do they buy?

For each dataset (BEIR layout) one run, all-MiniLM-L6-v2 document vectors (embedding cache on):

1. Quality table: bytes per vector (and compression vs float32), nDCG@10 and Recall@100 on the
   HELD-OUT queries (retr's one query split: BLAKE2b(query id) / 2**64 < 0.5 -> held-out), nDCG@10 on
   all queries for the untrained-on-queries rows, queries/s of ``index.search`` on precomputed query
   embeddings (k=100, BEBR's query binarization included), build seconds, and whether the index
   saved and reopened through its manifest returns the identical run.
   Rows: float flat; pq M=8/16/24/48; opq M=16; ivfpq M=48; jpq M=16 (trained on the train queries,
   CPU, default JPQSettings); bebr u=1/2/4 with Hamming and with SDC (one trained model per u, searched
   both ways); bebr u=4 SDC + float rerank of the top 100 (bytes/vector then include the float vector).
2. Speed table (one run, ratios vs float flat): q/s of the bare scans over precomputed codes, k=100:
   FAISS IndexFlatIP on floats (baseline), FAISS IndexBinaryFlat (Hamming), SDC through FAISS's
   lookup-table scan, SDC in numpy (``sdc_scores`` + top-k), at u = 1, 2, 4.

Timing: each call warmed up once, then repeated until >= 1 s has passed, best of 3 interleaved windows
(``bench/foundation.py``'s helpers). Training threads: torch and FAISS use 1 thread (``--threads``) so
runs on a shared 2-core machine are not dominated by oversubscription. Writes bench/results/compression.md.

    .venv/bin/python bench/compression.py [--datasets cranfield cacm] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_windows, md_table, ratio, tradeoff_charts, write_results  # noqa: E402
from foundation import topk  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RECORDS: list[dict[str, Any]] = []  # one per index row: the trade-off chart's points, kept as JSON
MODEL = "all-MiniLM-L6-v2"
HELD_OUT, K = 0.5, 100
PQ_SPECS = ["pq:M=8", "pq:M=16", "pq:M=24", "pq:M=48", "opq:M=16", "ivfpq:M=48,nprobe=8"]
JPQ_M = (16,)
BEBR_U = (1, 2, 4)
Run = dict[str, dict[str, float]]


def to_run(qids: Sequence[str], doc_ids: Any, scores: np.ndarray, ids: np.ndarray) -> Run:
    return {q: {doc_ids[int(i)]: float(s) for s, i in zip(sr, ir) if i >= 0} for q, sr, ir in zip(qids, scores, ids)}


def quality_section(ds: Any, work: Path) -> tuple[list[list[Any]], dict[str, Any]]:
    import retr
    from retr.eval.metrics import evaluate_run
    from retr.quantizers.jpq import JPQSettings, train_jpq
    from retr.retriever.relevance_filter import split_dataset

    held, train = split_dataset(ds, "held-out", HELD_OUT), split_dataset(ds, "train", HELD_OUT)
    hq, aq = list(held.queries), list(ds.queries)
    flat = retr.Retriever.build(ds.corpus, f"dense:{MODEL}", "flat")
    doc_ids = flat.docstore.ids
    q_all = flat.encoder.encode_queries([ds.queries[q] for q in aq])
    q_held = q_all[[aq.index(q) for q in hq]]
    dim = q_all.shape[1]
    rows, built = [], {"flat": flat}

    def row(label: str, retriever: Any, build_s: float, q_emb_held: np.ndarray, q_emb_all: np.ndarray | None,
            extra: int = 0) -> None:
        index = retriever.index
        s, i = index.search(q_emb_held, K)
        held_run = to_run(hq, doc_ids, s, i)
        m = evaluate_run(held.qrels, held_run, ["ndcg@10", "recall@100"])
        all_ndcg = "–"
        if q_emb_all is not None:
            s_a, i_a = index.search(q_emb_all, K)
            all_ndcg = f"{evaluate_run(ds.qrels, to_run(aq, doc_ids, s_a, i_a), ['ndcg@10'])['ndcg@10']:.4f}"
        seconds = best_windows({0: lambda: index.search(q_emb_held, K)})[0]
        path = retriever.save(work / f"idx-{len(rows)}")
        reopened = retr.open_index(path)
        same = to_run(hq, doc_ids, *reopened.index.search(q_emb_held, K)) == held_run
        code = getattr(getattr(index, "quantizer", None), "code_size", 4 * dim) + extra
        RECORDS.append({"dataset": ds.name, "name": label.split(" (")[0], "bytes_per_doc": code,
                        "ndcg@10": m["ndcg@10"], "recall@100": m["recall@100"], "qps": len(hq) / seconds})
        rows.append([label, code, f"{4 * dim / code:.0f}×", f"{m['ndcg@10']:.4f}", f"{m['recall@100']:.4f}",
                     all_ndcg, f"{len(hq) / seconds:.0f}", f"{build_s:.1f}", "yes" if same else "NO"])
        print("  " + " | ".join(str(c) for c in rows[-1]), flush=True)

    row("float flat (IndexFlatIP)", flat, 0.0, q_held, q_all)
    for spec in PQ_SPECS:
        start = time.perf_counter()
        built[spec] = r = retr.Retriever.build(ds.corpus, f"dense:{MODEL}", spec)
        row(spec, r, time.perf_counter() - start, q_held, q_all)
    for m in JPQ_M:
        start = time.perf_counter()
        trained = train_jpq(built[f"pq:M={m}"], train, JPQSettings())
        q_jpq = trained.index.query_encoder.encode_queries([ds.queries[q] for q in hq])
        losses = trained.index.training["epoch_losses"]
        row(f"jpq:M={m} (loss {losses[0]:.3f}→{losses[-1]:.3f})", trained, time.perf_counter() - start, q_jpq, None)
    for u in BEBR_U:
        start = time.perf_counter()
        r = retr.Retriever.build(ds.corpus, f"dense:{MODEL}", f"bebr:u={u},rerank=100")
        seconds = time.perf_counter() - start
        built[f"bebr{u}"] = r
        for mode in ("hamming", "sdc"):
            variant = retr.Retriever(r.encoder, r.index.with_search(mode, rerank=0), r.docstore)
            row(f"bebr:u={u},search={mode}", variant, seconds, q_held, q_all)
        if u == max(BEBR_U):
            row(f"bebr:u={u},search=sdc,rerank=100", r, seconds, q_held, q_all, extra=4 * dim)
    return rows, {"built": built, "q_held": q_held, "doc_vectors": np.asarray(flat.index.store.vectors.array)}


def speed_section(state: dict[str, Any]) -> list[list[Any]]:
    import faiss

    from retr.indexers.binary import hamming_searcher, sdc_searcher
    from retr.quantizers.bebr import sdc_scores

    q, docs = state["q_held"], state["doc_vectors"]
    flat = faiss.IndexFlatIP(docs.shape[1])
    flat.add(docs)
    calls: dict[Any, Any] = {("float", 0): lambda: flat.search(q, K)}
    for u in BEBR_U:
        index = state["built"][f"bebr{u}"].index
        quantizer, codes = index.quantizer, index.codes
        q_codes = quantizer.encode(q)
        q_embed = quantizer.embed(q_codes)
        hamming, sdc = hamming_searcher(codes), sdc_searcher(codes, quantizer.weights)
        table = quantizer.sdc_table()
        calls[("hamming", u)] = lambda h=hamming, c=q_codes: h.search(c, K)
        calls[("sdc-faiss", u)] = lambda s=sdc, e=q_embed: s.search(e, K)
        calls[("sdc-numpy", u)] = lambda c=q_codes, d=codes, t=table: topk(sdc_scores(c, d, t), K)
        calls[("binarize", u)] = lambda x=quantizer, qq=q: x.encode(qq)
    seconds = best_windows(calls)
    qps = {key: len(q) / s for key, s in seconds.items()}
    base = qps[("float", 0)]
    labels = {"hamming": "Hamming, FAISS IndexBinaryFlat", "sdc-faiss": "SDC, FAISS lookup-table scan",
              "sdc-numpy": "SDC, numpy sdc_scores + top-k", "binarize": "query binarization alone (BEBR model)"}
    rows = [["float32, FAISS IndexFlatIP (baseline)", "–", 4 * docs.shape[1], f"{base:.0f}", "1.00×"]]
    for u in BEBR_U:
        size = state["built"][f"bebr{u}"].index.quantizer.code_size
        for kind, label in labels.items():
            rows.append([label, u, size, f"{qps[(kind, u)]:.0f}", ratio(qps[(kind, u)], base)])
    return rows


def bench_dataset(path: Path, work: Path) -> str:
    import retr

    ds = retr.load_dataset(path)
    held = sum(1 for _ in retr.retriever.relevance_filter.split_dataset(ds, "held-out", HELD_OUT).queries)
    print(f"## {ds.name}", flush=True)
    quality, state = quality_section(ds, work)
    speed = speed_section(state)
    return "\n\n".join([
        f"## {ds.name} ({len(state['doc_vectors'])} documents, {len(ds.queries)} judged queries, "
        f"{held} held out, {len(ds.queries) - held} for JPQ training)",
        f"### Compression and quality (held-out queries; k={K}; q/s of index.search on precomputed query embeddings)",
        md_table(["index", "bytes/vector", "× smaller", "nDCG@10", "R@100", "nDCG@10 all queries", "q/s",
                  "build s", "reopened identical"], quality),
        f"### Search speed: SDC vs Hamming vs float (bare scans over precomputed codes, held-out queries, k={K})",
        md_table(["scan", "u", "bytes/vector", "q/s", "× float"], speed),
    ])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["cranfield", "cacm"])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--threads", type=int, default=1, help="torch / FAISS threads")
    args = parser.parse_args(argv)

    os.environ["RETR_PROGRESS"] = "0"
    import faiss
    import torch

    import retr.retriever.relevance_filter  # noqa: F401  (the query split)

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    sections = []
    with tempfile.TemporaryDirectory(prefix="retr-bench-compression-") as tmp:
        for name in args.datasets:
            (Path(tmp) / name).mkdir()
            sections.append(bench_dataset(args.data / name, Path(tmp) / name))
            print(sections[-1] + "\n", flush=True)
    note = (f"All training (JPQ, BEBR) ran on this machine's CPU. Held-out split: "
            f"BLAKE2b(query id) / 2**64 < {HELD_OUT} (retr.retriever.relevance_filter.split_dataset); "
            f"JPQ trains on the other queries only. The quality table's q/s are timed row by row (best of 3 "
            f"windows, not interleaved): on a busy machine compare speeds only inside the speed table, whose "
            f"windows are interleaved.")
    charts = tradeoff_charts("compression", RECORDS, "ndcg@10", "nDCG@10 (held-out queries) against bytes per vector")
    write_results("compression", "retr compression benchmark", [note, *sections, charts], load,
                  f" · {args.threads} thread(s) · {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
