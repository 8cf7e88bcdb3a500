"""Evaluate retrievers on a dataset: one run file and one row of metrics per retriever."""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from retr.eval.datasets import Dataset
from retr.eval.metrics import DEFAULT_METRICS, per_query
from retr.eval.set_metrics import SET_METRICS, evaluate_sets
from retr.eval.runs import hits_to_run, write_trec_run
from retr.retriever.spec import AnyRetriever, build_retriever


@dataclass
class Result:
    retriever: str
    dataset: str
    metrics: dict[str, float]
    build_seconds: float
    queries_per_second: float
    run_file: str | None = None
    run: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)
    per_query: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)  # metric -> qid -> value
    spec: str = ""  # what the user asked for (a spec or a path); the row label across datasets

    def to_dict(self, per_query: bool = False) -> dict:
        """Everything but the run itself (which is in the run file), for JSON; per-query values if asked."""
        data = asdict(self)
        data.pop("run")
        if not per_query:
            data.pop("per_query")
        return data


def run_retriever(retriever: AnyRetriever, dataset: Dataset, k: int = 1000) -> tuple[dict[str, dict[str, float]], float]:
    """Search every judged query; returns the run and queries per second."""
    qids = list(dataset.queries)
    retriever.search(dataset.queries[qids[0]], 1)  # warm up: load models, open files, start the JVM
    start = time.perf_counter()
    results = retriever.search_batch([dataset.queries[q] for q in qids], k)
    seconds = time.perf_counter() - start
    return hits_to_run(qids, results), len(qids) / seconds if seconds > 0 else float("inf")


def evaluate_one(
    dataset: Dataset, item: str | AnyRetriever, k: int = 1000, metrics: Sequence[str] = DEFAULT_METRICS,
    filter: str | None = None, filter_depth: int = 100, device: str | None = None,
) -> Result:
    """Build (or take) one retriever, search the dataset's queries, score the run (per query and on average)."""
    if filter is not None:
        metrics = [*metrics, *(m for m in FILTER_METRICS if m not in metrics)]
    ranking = [m for m in metrics if m not in SET_METRICS]
    sets = [m for m in metrics if m in SET_METRICS]
    start = time.perf_counter()
    retriever = build_retriever(item, dataset.corpus, depth=k, device=device) if isinstance(item, str) else item
    if filter is not None:
        from retr.retriever.relevance_filter import FilteredRetriever

        retriever = FilteredRetriever(retriever, filter, filter_depth)
    build = time.perf_counter() - start
    run, qps = run_retriever(retriever, dataset, k)
    queries = per_query(dataset.qrels, run, ranking) if ranking else {}
    scores = {m: sum(v.values()) / len(v) for m, v in queries.items()}
    scores.update(evaluate_sets(dataset.qrels, run, sets) if sets else {})
    return Result(retriever.name, dataset.name, {m: scores[m] for m in metrics}, build, qps, run=run,
                  per_query=queries, spec=item if isinstance(item, str) else retriever.name)


def evaluate(
    dataset: Dataset, retrievers: Sequence[str | AnyRetriever], k: int = 1000,
    metrics: Sequence[str] = DEFAULT_METRICS, out: Path | str | None = None,
    filter: str | None = None, filter_depth: int = 100, device: str | None = None,
) -> list[Result]:
    """Build (or take) each retriever, search the dataset's queries, score the runs.

    With ``out``, each run is written as ``<out>/<dataset>.<retriever>.trec`` and all
    results as ``<out>/<dataset>.results.json``. With ``filter`` (a filter spec such as
    ``adapter:PATH``), each retriever's top ``filter_depth`` pass through it and the
    set metrics (precision, recall, F1 of the returned sets) are added. ``device`` is where
    the retrievers' exact scoring stages run.
    """
    results = []
    for item in retrievers:
        result = evaluate_one(dataset, item, k, metrics, filter, filter_depth, device)
        if out is not None:
            Path(out).mkdir(parents=True, exist_ok=True)
            path = Path(out) / f"{dataset.name}.{slug(result.retriever)}.trec"
            write_trec_run(path, result.run, tag=slug(result.retriever)[:40])
            result.run_file = str(path)
        results.append(result)
    if out is not None:
        write_json(Path(out) / f"{dataset.name}.results.json", [r.to_dict() for r in results])
    return results


def write_json(path: Path, data: object) -> None:
    """Write JSON through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


FILTER_METRICS = ("precision", "recall", "f1", "macro_f1", "avg_size", "empty")


def slug(name: str) -> str:
    """A file-name-safe form of a retriever name or spec."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def table(results: Sequence[Result], metrics: Sequence[str] | None = None) -> str:
    """A plain-text table: one row per retriever, metrics to 4 decimals, build time and queries/s."""
    if not results:
        return ""
    metrics = list(metrics or results[0].metrics)
    header = ["dataset", "retriever", *metrics, "build s", "q/s"]
    rows = [
        [r.dataset, r.retriever, *(f"{r.metrics[m]:.4f}" for m in metrics),
         f"{r.build_seconds:.1f}", f"{r.queries_per_second:.1f}"]
        for r in results
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
