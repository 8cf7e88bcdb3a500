"""Foundation benchmark: does retr match the engines it wraps, and what does the wrapping cost?

For each dataset (BEIR layout: corpus.jsonl, queries.jsonl, qrels/test.tsv) one run measures:

1. Equivalence (nDCG@10, Recall@100 and mean top-10 overlap, runs of depth 1000):
   - retr BM25 (Lucene) vs Pyserini called directly: IndexCollection over the raw corpus.jsonl
     (empty documents included), LuceneSearcher with BM25(k1=0.9, b=0.4), batch_search.
   - retr dense all-MiniLM-L6-v2 (flat, hnsw) vs SentenceTransformer.encode + exhaustive numpy search.
2. Speed, as ratios against a baseline measured in the same run (no absolute expectations):
   - index build time and size on disk: Pyserini IndexCollection (baseline) vs retr bm25 and
     bm25s; retr flat / hnsw built from precomputed embeddings vs the same FAISS index built directly.
   - BM25 queries/s at k=10 and k=1000: Pyserini batch_search threads=2 (baseline), the same
     plus reading every hit's docid and score, a Pyserini search() loop, retr search_batch
     with and without texts in its hits, bm25s (tokenize + retrieve), each with its nDCG@10.
   - dense queries/s on precomputed query embeddings: numpy exhaustive (baseline), retr flat, hnsw.
   - document encoding docs/s on the first 500 cranfield documents: SentenceTransformer.encode
     (baseline), retr DenseEncoder with an empty cache, then with that cache warm.

Timing: each call is warmed up once, then repeated until >= 1 s has passed; the best of 3 such
windows is reported, the windows of the systems compared in one table interleaved (encoding:
best of 2 interleaved rounds, each with a fresh cache). Embedding
caches live in a fresh temporary directory, so encoding is really done. The tables are printed
and written to bench/results/foundation.md.

    .venv/bin/python bench/foundation.py [--datasets cranfield cacm] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from common import best_windows, dir_bytes, md_table, ratio, seconds_per_call, timed, write_results

REPO = Path(__file__).resolve().parent.parent
MODEL = "all-MiniLM-L6-v2"
K1, B, DEPTH, THREADS, KS = 0.9, 0.4, 1000, 2, (10, 1000)
Run = dict[str, dict[str, float]]
Row = list[Any]
Evaluate = Callable[[Run], dict[str, float]]


# ---------------------------------------------------------------- helpers


def topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top ``k`` of each row, best first."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return np.take_along_axis(part_scores, order, axis=1), np.take_along_axis(part, order, axis=1)


def matrix_run(qids: Sequence[str], doc_ids: Sequence[str], scores: np.ndarray, ids: np.ndarray) -> Run:
    return {q: {doc_ids[int(i)]: float(s) for s, i in zip(sr, ir) if i >= 0} for q, sr, ir in zip(qids, scores, ids)}


def top10_overlap(a: Run, b: Run) -> float:
    """Mean share of each query's top 10 (trec_eval order) that the two runs have in common."""
    from retr.eval.metrics import cut

    ca, cb = cut(a, 10), cut(b, 10)
    return float(np.mean([len(set(ca[q]) & set(cb.get(q, {}))) / max(1, len(ca[q])) for q in ca]))


def equivalence_row(label: str, got: dict[str, float], ref: dict[str, float], got_run: Run, ref_run: Run) -> Row:
    cells = [label]
    for m in ("ndcg@10", "recall@100"):
        cells += [f"{got[m]:.4f}", f"{ref[m]:.4f}", f"{abs(got[m] - ref[m]):.4f}"]
    return cells + [f"{top10_overlap(got_run, ref_run):.4f}"]


@dataclass
class System:
    """A searcher under test: ``search(k)`` answers all queries; ``to_run`` turns its answer into a run."""

    name: str
    search: Callable[[int], Any]
    to_run: Callable[[Any], Run]


def speed_rows(systems: Sequence[System], n_queries: int, quality: dict[str, float] | None = None) -> list[Row]:
    """q/s at each k, the first system being the baseline; with ``quality``, an nDCG@10 column."""
    seconds = best_windows({(i, k): (lambda s=s, k=k: s.search(k)) for i, s in enumerate(systems) for k in KS})
    qps = {key: n_queries / value for key, value in seconds.items()}
    rows = []
    for i, s in enumerate(systems):
        cells = [s.name] + ([f"{quality[s.name]:.4f}"] if quality is not None else [])
        for k in KS:
            cells += [f"{qps[i, k]:.0f}", ratio(qps[i, k], qps[0, k])]
        rows.append(cells)
    return rows


def build_row(name: str, seconds: float, size: int, index_part: int, base: tuple[float, int]) -> Row:
    return [name, f"{seconds:.4f}", ratio(seconds, base[0]), size, ratio(size, base[1]), index_part]


# ---------------------------------------------------------------- BM25


def stage_raw_corpus(corpus_file: Path, folder: Path) -> tuple[Path, int]:
    """The raw corpus.jsonl as Anserini JsonCollection documents, empty ones included; and their count."""
    folder.mkdir()
    count = 0
    with open(corpus_file, encoding="utf-8") as src, open(folder / "docs.jsonl", "w", encoding="utf-8") as dst:
        for line in filter(str.strip, src):
            r = json.loads(line)
            title, text = r.get("title") or "", r.get("text") or ""
            contents = f"{title} {text}".strip() if title else text.strip()
            dst.write(json.dumps({"id": str(r["_id"]), "contents": contents}) + "\n")
            count += 1
    return folder, count


def index_collection(staged: Path, out: Path) -> Path:
    from jnius import autoclass

    args = ["-collection", "JsonCollection", "-generator", "DefaultLuceneDocumentGenerator",
            "-input", str(staged), "-index", str(out), "-threads", "1", "-quiet"]
    autoclass("io.anserini.index.IndexCollection").main(args)
    return out


def pyserini_systems(searcher: Any, qids: list[str], texts: list[str]) -> list[System]:
    def read(hits: dict[str, list[Any]]) -> Run:
        return {q: {h.docid: h.score for h in hits[q]} for q in qids}

    def batch(k: int) -> Any:
        return searcher.batch_search(texts, qids, k=k, threads=THREADS)

    return [
        System("Pyserini batch_search (threads=2)", batch, read),
        System("Pyserini batch_search + read docid/score", lambda k: read(batch(k)), lambda run: run),
        System("Pyserini search() loop", lambda k: [searcher.search(t, k) for t in texts],
               lambda res: {q: {h.docid: h.score for h in hits} for q, hits in zip(qids, res)}),
    ]


def retr_system(name: str, retriever: Any, qids: list[str], texts: list[str]) -> System:
    return System(name, lambda k: retriever.search_batch(texts, k),
                  lambda res: {q: {h.id: h.score for h in hits} for q, hits in zip(qids, res)})


def bm25s_index(docs: Sequence[Any]) -> Any:
    import bm25s

    model = bm25s.BM25(k1=K1, b=B)
    model.index(bm25s.tokenize([d.content for d in docs], stopwords="en", show_progress=False), show_progress=False)
    return model


def bm25s_system(model: Any, doc_ids: list[str], qids: list[str], texts: list[str], threads: int) -> System:
    import bm25s

    def search(k: int) -> Any:
        tokens = bm25s.tokenize(texts, stopwords="en", show_progress=False)
        return model.retrieve(tokens, k=k, show_progress=False, n_threads=threads)

    return System(f"bm25s tokenize + retrieve (n_threads={threads})", search,
                  lambda res: matrix_run(qids, doc_ids, res[1], res[0]))


def bm25_section(ds: Any, work: Path, evaluate: Evaluate) -> tuple[Row, str, list[Row], list[Row]]:
    """Equivalence row (and a document-count note), build rows and q/s rows for BM25."""
    import retr
    from pyserini.search.lucene import LuceneSearcher

    qids = list(ds.queries)
    texts = [ds.queries[q] for q in qids]
    staged, raw_count = stage_raw_corpus(ds.path / "corpus.jsonl", work / "pyserini-input")
    counter = itertools.count()
    pyserini_s = seconds_per_call(lambda: index_collection(staged, work / f"pyserini-{next(counter)}"))
    searcher = LuceneSearcher(str(work / "pyserini-0"))
    searcher.set_bm25(K1, B)
    retr_s = seconds_per_call(lambda: retr.Retriever.build(ds.corpus, "bm25"))
    retriever = retr.Retriever.build(ds.corpus, "bm25", out=work / "retr-bm25")
    ids_only = retr.Retriever.build(ds.corpus, "bm25", store_text=False)
    bm25s_s = seconds_per_call(lambda: bm25s_index(ds.corpus))
    model = bm25s_index(ds.corpus)
    model.save(str(work / "bm25s"), show_progress=False)

    doc_ids = [d.id for d in ds.corpus]
    systems = [*pyserini_systems(searcher, qids, texts), retr_system("retr bm25 search_batch", retriever, qids, texts),
               retr_system("retr bm25 search_batch (store_text=False)", ids_only, qids, texts),
               *(bm25s_system(model, doc_ids, qids, texts, n) for n in (1, THREADS))]
    runs = {s.name: s.to_run(s.search(DEPTH)) for s in systems}
    scores = {name: evaluate(run) for name, run in runs.items()}
    ref, mine = systems[0].name, systems[3].name
    equivalence = equivalence_row("BM25: retr lucene vs Pyserini direct",
                                  scores[mine], scores[ref], runs[mine], runs[ref])
    note = (f"Lucene documents: retr {len(retriever)}, Pyserini {searcher.num_docs} "
            f"(raw corpus.jsonl documents {raw_count})")

    base = (pyserini_s, dir_bytes(work / "pyserini-0"))
    build = [build_row("Pyserini IndexCollection (baseline)", *base, base[1], base),
             build_row("retr Retriever.build(bm25)", retr_s, dir_bytes(work / "retr-bm25"),
                       dir_bytes(work / "retr-bm25" / "index"), base),
             build_row("bm25s tokenize + index", bm25s_s, dir_bytes(work / "bm25s"), dir_bytes(work / "bm25s"), base)]
    speed = speed_rows(systems, len(qids), {name: s["ndcg@10"] for name, s in scores.items()})
    return equivalence, note, build, speed


# ---------------------------------------------------------------- dense


def st_encode(st: Any, texts: list[str]) -> np.ndarray:
    """SentenceTransformer called directly, with retr's dense defaults (batch 64, normalised)."""
    return np.asarray(st.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False), np.float32)


def faiss_direct(name: str, embeddings: np.ndarray) -> Any:
    """The FAISS index retr's ``name`` index wraps, with retr's default settings, built directly."""
    import faiss

    dim = embeddings.shape[1]
    if name == "flat":
        index = faiss.IndexFlatIP(dim)
    else:
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 200
    index.add(embeddings)
    return index


def retr_index(name: str, embeddings: np.ndarray) -> Any:
    import retr

    index = retr.INDEXES.create(name)
    index.add(embeddings)
    return index


def dense_section(ds: Any, work: Path, st: Any, evaluate: Evaluate) -> tuple[list[Row], list[Row], list[Row]]:
    """Equivalence rows, build rows and q/s rows for dense retrieval."""
    import faiss
    import retr

    qids = list(ds.queries)
    texts = [ds.queries[q] for q in qids]
    doc_ids = [d.id for d in ds.corpus]
    D, Q = st_encode(st, [d.content for d in ds.corpus]), st_encode(st, texts)
    ref_run = matrix_run(qids, doc_ids, *topk(Q @ D.T, DEPTH))
    ref = evaluate(ref_run)

    equivalence, build, indexes = [], [], {}
    for name in ("flat", "hnsw"):
        out = work / f"retr-{name}"
        system = retr_system(name, retr.Retriever.build(ds.corpus, f"dense:{MODEL}", name, out=out), qids, texts)
        got_run = system.to_run(system.search(DEPTH))
        label = f"dense: retr {name} vs ST + numpy"
        equivalence.append(equivalence_row(label, evaluate(got_run), ref, got_run, ref_run))
        faiss.write_index(faiss_direct(name, D), str(work / f"faiss-{name}.index"))
        base = (seconds_per_call(lambda: faiss_direct(name, D)), (work / f"faiss-{name}.index").stat().st_size)
        build += [build_row(f"FAISS {name} built directly (baseline)", *base, base[1], base),
                  build_row(f"retr {name} .add(embeddings)", seconds_per_call(lambda: retr_index(name, D)),
                            dir_bytes(out), dir_bytes(out / "index"), base)]
        indexes[name] = retr_index(name, D)

    systems = [System("numpy Q @ D.T + argpartition (baseline)", lambda k: topk(Q @ D.T, k), lambda r: {}),
               *(System(f"retr {n} .search(qemb, k)", lambda k, i=i: i.search(Q, k), lambda r: {})
                 for n, i in indexes.items())]
    return equivalence, build, speed_rows(systems, len(qids))


def encoding_rows(texts: list[str], st: Any, work: Path, rounds: int = 2) -> list[Row]:
    """docs/s: SentenceTransformer.encode vs retr DenseEncoder with an empty, then the warm, cache."""
    import retr

    encoder = retr.ENCODERS.create(f"dense:{MODEL}")
    direct = lambda: st_encode(st, texts)  # noqa: E731
    st.encode(texts[:64], batch_size=64, show_progress_bar=False)  # load and warm both models,
    encoder._encode(texts[:64])  # without touching retr's cache
    best = {"direct": float("inf"), "cold": float("inf"), "warm": float("inf")}
    for r in range(rounds):  # interleaved, so a busy machine slows all three alike
        os.environ["RETR_CACHE_DIR"] = str(work / f"encoding-cache-{r}")  # fresh and empty
        for key, fn in (("direct", direct), ("cold", lambda: encoder.encode_documents(texts)),
                        ("warm", lambda: encoder.encode_documents(texts))):
            best[key] = min(best[key], timed(fn))
    n, base = len(texts), best["direct"]
    return [["SentenceTransformer.encode (baseline)", f"{n / base:.1f}", "1.00×"],
            ["retr DenseEncoder.encode_documents, empty cache", f"{n / best['cold']:.1f}", ratio(base, best["cold"])],
            ["retr DenseEncoder.encode_documents, warm cache", f"{n / best['warm']:.1f}", ratio(base, best["warm"])]]


# ---------------------------------------------------------------- main


def bench_dataset(path: Path, work: Path, st: Any) -> str:
    import retr

    ds = retr.load_dataset(path)
    evaluate = lambda run: retr.evaluate_run(ds.qrels, run, ("ndcg@10", "recall@100"))  # noqa: E731
    os.environ["RETR_CACHE_DIR"] = str(work / "cache")
    bm25_eq, note, bm25_build, bm25_speed = bm25_section(ds, work, evaluate)
    dense_eq, dense_build, dense_speed = dense_section(ds, work, st, evaluate)
    eq_header = ["comparison", "nDCG@10 retr", "nDCG@10 ref", "|Δ|",
                 "R@100 retr", "R@100 ref", "|Δ|", "top-10 overlap"]
    k_cols = [c for k in KS for c in (f"q/s k={k}", "× base")]
    return "\n\n".join([
        f"## {ds.name} ({len(ds.corpus)} documents, {len(ds.queries)} judged queries)",
        "### Equivalence (runs of depth 1000)", md_table(eq_header, [bm25_eq, *dense_eq]), note,
        "### Index build and size (BM25 rows vs Pyserini IndexCollection; each retr dense index vs "
        "the same FAISS index built directly; dense sizes: retr directory incl. docstore vs FAISS file)",
        md_table(["system", "build s", "× base", "size bytes", "× base", "index part bytes"],
                 bm25_build + dense_build),
        "### BM25 queries/s (baseline: Pyserini batch_search, threads=2)",
        md_table(["system", "nDCG@10", *k_cols], bm25_speed),
        "### Dense queries/s on precomputed query embeddings (baseline: numpy exhaustive)",
        md_table(["system", *k_cols], dense_speed),
    ])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["cranfield", "cacm"])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args(argv)

    os.environ["RETR_PROGRESS"] = "0"
    load = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="retr-bench-"))
    try:
        import retr
        from retr.indexers._jvm import ensure_jvm
        from retr.retriever.models import resolve_model

        ensure_jvm()
        import bm25s  # noqa: F401  (it sets its logger to DEBUG on import; quieten it after)

        logging.getLogger("bm25s").setLevel(logging.WARNING)
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(resolve_model(MODEL))
        sections = []
        for name in args.datasets:
            (work / name).mkdir()
            sections.append(bench_dataset(args.data / name, work / name, st))
            print(sections[-1] + "\n", flush=True)
        source = "cranfield" if "cranfield" in args.datasets else args.datasets[0]
        texts = [d.content for d in retr.load_dataset(args.data / source).corpus[:500]]
        sections.append("\n\n".join([
            f"## Document encoding, first {len(texts)} documents of {source} (baseline: SentenceTransformer.encode)",
            md_table(["system", "docs/s", "× base"], encoding_rows(texts, st, work)),
        ]))
        print(sections[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    write_results("foundation", "retr foundation benchmark", sections, load)


if __name__ == "__main__":
    main()
