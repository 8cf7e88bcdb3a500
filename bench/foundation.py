"""Foundation benchmark: does retr match the engines it wraps, and what does the wrapping cost?

For each dataset (BEIR layout: corpus.jsonl, queries.jsonl, qrels/test.tsv) one run measures:

1. Equivalence (nDCG@10, Recall@100, mean top-10 overlap; k=1000):
   - retr BM25 (Lucene) vs Pyserini called directly: IndexCollection over the raw corpus.jsonl
     (empty documents included), LuceneSearcher with BM25(k1=0.9, b=0.4), batch_search.
   - retr dense all-MiniLM-L6-v2 (flat, hnsw) vs SentenceTransformer.encode + exhaustive numpy search.
2. Speed, as ratios against a baseline measured in the same run (no absolute expectations):
   - index build time and size on disk: Pyserini IndexCollection (baseline), retr bm25, bm25s;
     retr flat (baseline) and hnsw built from precomputed embeddings.
   - BM25 queries/s at k=10 and k=1000: Pyserini batch_search threads=2 (baseline), a Pyserini
     search() loop, retr search_batch, bm25s (tokenize + retrieve), with each one's nDCG@10.
   - dense queries/s on precomputed query embeddings: numpy exhaustive (baseline), retr flat, hnsw.
   - document encoding docs/s on the first 500 cranfield documents: SentenceTransformer.encode
     (baseline), retr DenseEncoder with an empty cache, then with the warm cache.

Every system is warmed up with one call, then its whole query set is repeated until >= 1 s
has passed. Embedding caches live in a fresh temporary directory, so encoding is really done.
The tables are printed and written to bench/results/foundation.md.

    .venv/bin/python bench/foundation.py [--datasets cranfield cacm] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MODEL = "all-MiniLM-L6-v2"
K1, B, DEPTH, THREADS = 0.9, 0.4, 1000, 2
Run = dict[str, dict[str, float]]


# ---------------------------------------------------------------- helpers


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def per_second(fn: Callable[[], Any], items: int, min_seconds: float = 1.0) -> float:
    """Items/s of ``fn`` (which handles ``items`` items): one warm-up call, then repeat for >= min_seconds."""
    fn()
    reps, elapsed, start = 0, 0.0, time.perf_counter()
    while elapsed < min_seconds:
        fn()
        reps += 1
        elapsed = time.perf_counter() - start
    return reps * items / elapsed


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}×" if base else "–"


def topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top ``k`` per row, best first."""
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


@dataclass
class System:
    """A searcher under test: ``search(k)`` answers all queries; ``to_run`` makes a trec run of it."""

    name: str
    search: Callable[[int], Any]
    to_run: Callable[[Any], Run]


# ---------------------------------------------------------------- systems


def pyserini_build(corpus_file: Path, work: Path) -> tuple[Path, float]:
    """Lucene index of the raw corpus.jsonl (empty documents included) by Anserini's IndexCollection."""
    from jnius import autoclass

    staged, out = work / "pyserini-input", work / "pyserini-index"
    staged.mkdir()
    with open(corpus_file, encoding="utf-8") as src, open(staged / "docs.jsonl", "w", encoding="utf-8") as dst:
        for line in src:
            if line.strip():
                r = json.loads(line)
                title, text = r.get("title") or "", r.get("text") or ""
                contents = f"{title} {text}".strip() if title else text.strip()
                dst.write(json.dumps({"id": str(r["_id"]), "contents": contents}) + "\n")
    args = ["-collection", "JsonCollection", "-generator", "DefaultLuceneDocumentGenerator",
            "-input", str(staged), "-index", str(out), "-threads", "1", "-quiet"]
    _, seconds = timed(lambda: autoclass("io.anserini.index.IndexCollection").main(args))
    return out, seconds


def pyserini_systems(index_dir: Path, qids: list[str], texts: list[str]) -> tuple[Any, list[System]]:
    from pyserini.search.lucene import LuceneSearcher

    searcher = LuceneSearcher(str(index_dir))
    searcher.set_bm25(K1, B)
    batch = System("Pyserini batch_search (threads=2)",
                   lambda k: searcher.batch_search(texts, qids, k=k, threads=THREADS),
                   lambda hits: {q: {h.docid: h.score for h in hits[q]} for q in qids})
    loop = System("Pyserini search() loop",
                  lambda k: [searcher.search(t, k) for t in texts],
                  lambda res: {q: {h.docid: h.score for h in hits} for q, hits in zip(qids, res)})
    return searcher, [batch, loop]


def retr_system(name: str, retriever: Any, qids: list[str], texts: list[str]) -> System:
    return System(name, lambda k: retriever.search_batch(texts, k),
                  lambda res: {q: {h.id: h.score for h in hits} for q, hits in zip(qids, res)})


def bm25s_system(docs: Sequence[Any], qids: list[str], texts: list[str], threads: int) -> tuple[System, float, Any]:
    """bm25s over the same documents as retr; returns the system, its build seconds and the model."""
    import bm25s

    def build() -> Any:
        model = bm25s.BM25(k1=K1, b=B)
        model.index(bm25s.tokenize([d.content for d in docs], stopwords="en", show_progress=False), show_progress=False)
        return model

    model, seconds = timed(build)
    doc_ids = [d.id for d in docs]

    def search(k: int) -> Any:
        tokens = bm25s.tokenize(texts, stopwords="en", show_progress=False)
        return model.retrieve(tokens, k=k, show_progress=False, n_threads=threads)

    name = f"bm25s (tokenize + retrieve, n_threads={threads})"
    return System(name, search, lambda res: matrix_run(qids, doc_ids, res[1], res[0])), seconds, model


def bm25s_size(model: Any, work: Path) -> int:
    out = work / "bm25s-index"
    model.save(str(out), show_progress=False)
    return dir_bytes(out)


# ---------------------------------------------------------------- sections


def bm25_section(ds: Any, work: Path, evaluate: Callable[[Run], dict[str, float]]) -> tuple[list, list, list]:
    """Equivalence row, build rows and q/s rows for BM25."""
    import retr

    qids = list(ds.queries)
    texts = [ds.queries[q] for q in qids]
    pyserini_dir, pyserini_s = pyserini_build(ds.path / "corpus.jsonl", work)
    searcher, (batch, loop) = pyserini_systems(pyserini_dir, qids, texts)

    retriever, retr_s = timed(lambda: retr.Retriever.build(ds.corpus, "bm25"))
    retriever.save(work / "retr-bm25")
    mine = retr_system("retr bm25 search_batch", retriever, qids, texts)
    b1, b1_s, b1_model = bm25s_system(ds.corpus, qids, texts, threads=1)
    b2, _, _ = bm25s_system(ds.corpus, qids, texts, threads=THREADS)

    runs = {s.name: s.to_run(s.search(DEPTH)) for s in (batch, loop, mine, b1, b2)}
    scores = {name: evaluate(run) for name, run in runs.items()}
    ref, got = scores[batch.name], scores[mine.name]
    equivalence = [_equiv_row("BM25: retr lucene vs Pyserini direct", got, ref, runs[mine.name], runs[batch.name])]
    note = f"Lucene documents: retr {len(retriever)}, Pyserini {searcher.num_docs} (raw corpus lines {_lines(ds.path)})"

    lucene_bytes, retr_bytes, size = dir_bytes(pyserini_dir), dir_bytes(work / "retr-bm25"), bm25s_size(b1_model, work)
    build = [
        ["Pyserini IndexCollection (baseline)", f"{pyserini_s:.2f}", "1.00×", lucene_bytes, "1.00×", lucene_bytes],
        ["retr Retriever.build(bm25)", f"{retr_s:.2f}", ratio(retr_s, pyserini_s), retr_bytes,
         ratio(retr_bytes, lucene_bytes), dir_bytes(work / "retr-bm25" / "index")],
    ]
    build.append(["bm25s tokenize + index", f"{b1_s:.2f}", ratio(b1_s, pyserini_s), size, ratio(size, lucene_bytes), size])

    speed = []
    base = {k: per_second(lambda k=k: batch.search(k), len(qids)) for k in (10, DEPTH)}
    for s in (batch, loop, mine, b1, b2):
        qps = {k: base[k] if s is batch else per_second(lambda k=k: s.search(k), len(qids)) for k in (10, DEPTH)}
        speed.append([s.name, f"{scores[s.name]['ndcg@10']:.4f}",
                      f"{qps[10]:.0f}", ratio(qps[10], base[10]), f"{qps[DEPTH]:.0f}", ratio(qps[DEPTH], base[DEPTH])])
    return equivalence + [note], build, speed


def dense_section(ds: Any, work: Path, st: Any, evaluate: Callable[[Run], dict[str, float]]) -> tuple[list, list, list]:
    """Equivalence rows, build rows and q/s rows for dense retrieval."""
    import retr

    qids = list(ds.queries)
    texts = [ds.queries[q] for q in qids]
    doc_ids = [d.id for d in ds.corpus]
    encode = lambda xs: st.encode(xs, batch_size=64, normalize_embeddings=True, show_progress_bar=False)  # noqa: E731
    D, Q = np.asarray(encode([d.content for d in ds.corpus]), np.float32), np.asarray(encode(texts), np.float32)

    def numpy_search(k: int) -> tuple[np.ndarray, np.ndarray]:
        return topk(Q @ D.T, k)

    ref_run = matrix_run(qids, doc_ids, *numpy_search(DEPTH))
    ref = evaluate(ref_run)
    equivalence, build, speed = [], [], []
    indexes: dict[str, Any] = {}
    for name in ("flat", "hnsw"):
        out = work / f"retr-dense-{name}"
        retriever = retr.Retriever.build(ds.corpus, f"dense:{MODEL}", name, out=out)
        run = retr_system(name, retriever, qids, texts)
        got_run = run.to_run(run.search(DEPTH))
        equivalence.append(_equiv_row(f"dense: retr {name} vs ST + numpy", evaluate(got_run), ref, got_run, ref_run))
        indexes[name], seconds = timed(lambda: _add(name, D))
        build.append([name, seconds, dir_bytes(out), dir_bytes(out / "index")])
    base_s, base_b = build[0][1], build[0][2]
    build = [[f"retr {n} .add(embeddings){' (baseline)' if i == 0 else ''}", f"{s:.3f}", ratio(s, base_s), b,
              ratio(b, base_b), ib] for i, (n, s, b, ib) in enumerate(build)]

    base = {k: per_second(lambda k=k: numpy_search(k), len(qids)) for k in (10, DEPTH)}
    speed.append(["numpy Q @ D.T + argpartition (baseline)", f"{base[10]:.0f}", "1.00×", f"{base[DEPTH]:.0f}", "1.00×"])
    for name, index in indexes.items():
        qps = {k: per_second(lambda k=k: index.search(Q, k), len(qids)) for k in (10, DEPTH)}
        speed.append([f"retr {name} .search(qemb, k)", f"{qps[10]:.0f}", ratio(qps[10], base[10]),
                      f"{qps[DEPTH]:.0f}", ratio(qps[DEPTH], base[DEPTH])])
    return equivalence, build, speed


def encoding_section(texts: list[str], st: Any, work: Path) -> list[list[Any]]:
    """docs/s: SentenceTransformer.encode vs retr DenseEncoder with an empty, then a warm, cache."""
    import retr

    os.environ["RETR_CACHE_DIR"] = str(work / "encoding-cache")  # fresh and empty
    encoder = retr.ENCODERS.create(f"dense:{MODEL}")
    st.encode(texts[:64], batch_size=64, normalize_embeddings=True, show_progress_bar=False)  # load + warm up
    encoder._encode(texts[:64])  # warm retr's model without touching its cache
    _, base = timed(lambda: st.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False))
    _, cold = timed(lambda: encoder.encode_documents(texts))
    _, warm = timed(lambda: encoder.encode_documents(texts))
    n = len(texts)
    return [["SentenceTransformer.encode (baseline)", f"{n / base:.1f}", "1.00×"],
            ["retr DenseEncoder.encode_documents, empty cache", f"{n / cold:.1f}", ratio(base, cold)],
            ["retr DenseEncoder.encode_documents, warm cache", f"{n / warm:.1f}", ratio(base, warm)]]


def _add(name: str, embeddings: np.ndarray) -> Any:
    import retr

    index = retr.INDEXES.create(name)
    index.add(embeddings)
    return index


def _equiv_row(label: str, got: dict[str, float], ref: dict[str, float], got_run: Run, ref_run: Run) -> list[Any]:
    return [label, f"{got['ndcg@10']:.4f}", f"{ref['ndcg@10']:.4f}", f"{abs(got['ndcg@10'] - ref['ndcg@10']):.4f}",
            f"{got['recall@100']:.4f}", f"{ref['recall@100']:.4f}", f"{abs(got['recall@100'] - ref['recall@100']):.4f}",
            f"{top10_overlap(got_run, ref_run):.4f}"]


def _lines(path: Path) -> int:
    with open(path / "corpus.jsonl", encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


# ---------------------------------------------------------------- main


def bench_dataset(path: Path, work: Path, st: Any) -> str:
    import retr

    ds = retr.load_dataset(path)
    evaluate = lambda run: retr.evaluate_run(ds.qrels, run, ("ndcg@10", "recall@100"))  # noqa: E731
    os.environ["RETR_CACHE_DIR"] = str(work / "cache")
    bm25_eq, bm25_build, bm25_speed = bm25_section(ds, work, evaluate)
    dense_eq, dense_build, dense_speed = dense_section(ds, work, st, evaluate)
    eq_header = ["comparison", "nDCG@10 retr", "nDCG@10 ref", "|Δ|", "R@100 retr", "R@100 ref", "|Δ|", "top-10 overlap"]
    return "\n\n".join([
        f"## {ds.name} ({len(ds.corpus)} documents, {len(ds.queries)} judged queries)",
        "### Equivalence (k=1000)", md_table(eq_header, [bm25_eq[0], *dense_eq]), bm25_eq[1],
        "### Index build and size (BM25 rows vs Pyserini IndexCollection; dense rows vs retr flat)",
        md_table(["system", "build s", "× base", "size bytes", "× base", "index part bytes"], bm25_build + dense_build),
        "### BM25 queries/s (baseline: Pyserini batch_search, threads=2)",
        md_table(["system", "nDCG@10", "q/s k=10", "× base", "q/s k=1000", "× base"], bm25_speed),
        "### Dense queries/s on precomputed query embeddings (baseline: numpy exhaustive)",
        md_table(["system", "q/s k=10", "× base", "q/s k=1000", "× base"], dense_speed),
    ])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["cranfield", "cacm"])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args(argv)

    os.environ["RETR_PROGRESS"] = "0"
    work = Path(tempfile.mkdtemp(prefix="retr-bench-"))
    try:
        from retr.indexers._jvm import ensure_jvm
        from retr.retriever.models import resolve_model

        ensure_jvm()
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(resolve_model(MODEL))
        sections = []
        for name in args.datasets:
            (work / name).mkdir()
            sections.append(bench_dataset(args.data / name, work / name, st))
            print(sections[-1] + "\n", flush=True)
        import retr

        source = "cranfield" if "cranfield" in args.datasets else args.datasets[0]
        texts = [d.content for d in retr.load_dataset(args.data / source).corpus[:500]]
        sections.append("\n\n".join([
            f"## Document encoding, first {len(texts)} documents of {source} (baseline: SentenceTransformer.encode)",
            md_table(["system", "docs/s", "× base"], encoding_section(texts, st, work)),
        ]))
        print(sections[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    header = (f"# retr foundation benchmark\n\n{datetime.datetime.now().isoformat(timespec='seconds')} · "
              f"nproc {len(os.sched_getaffinity(0))} · {platform.platform()} · Python {platform.python_version()} · `{command}`")
    out = REPO / "bench" / "results" / "foundation.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n\n".join([header, *sections]) + "\n", encoding="utf-8")
    print(f"\nwritten to {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
