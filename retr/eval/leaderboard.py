"""Leaderboard runs: several retrievers on several datasets, one table per metric, significance against a baseline.

``run_leaderboard`` evaluates every (dataset, retriever) pair and, with ``out``, keeps for each
``<out>/<dataset>/<retriever>.trec`` (and ``.msmarco.tsv`` with ``msmarco=True``) and
``<out>/<dataset>/<retriever>.json`` (metrics, per-query values, settings); with ``resume`` a
pair whose JSON matches the settings asked for is read back instead of run again. ``tables``
lays the results out as BEIR does: a row per retriever, a column per dataset and their average,
one table per metric, as plain text, Markdown, CSV or JSON; with comparisons, each cell carries
its difference to the baseline and a mark where Holm's correction leaves it significant.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from retr.errors import RetrError
from retr.eval.datasets import load_dataset
from retr.eval.harness import Result, evaluate_one, slug, write_json
from retr.eval.metrics import DEFAULT_METRICS
from retr.eval.runs import write_msmarco_run, write_trec_run
from retr.eval.significance import Comparison, compare, correct

FORMATS = ("table", "markdown", "csv", "json")


def dataset_folders(paths: Sequence[Path | str]) -> list[Path]:
    """The dataset folders named, a folder holding several BEIR datasets expanded to them (sorted)."""
    out: list[Path] = []
    for path in map(Path, paths):
        if any((path / name).is_file() for name in ("corpus.jsonl", "corpus.jsonl.gz", "collection.tsv")):
            out.append(path)
        elif path.is_dir():
            inner = sorted(p for p in path.iterdir() if p.is_dir() and any(
                (p / name).is_file() for name in ("corpus.jsonl", "corpus.jsonl.gz", "collection.tsv")))
            if not inner:
                raise RetrError(f"{path} is neither a dataset (corpus.jsonl / collection.tsv) nor a folder of datasets")
            out.extend(inner)
        else:
            raise RetrError(f"dataset directory not found: {path}")
    names = [p.name for p in out]
    if len(set(names)) != len(names):
        raise RetrError(f"two datasets share a folder name ({', '.join(sorted({n for n in names if names.count(n) > 1}))}); "
                        "results are filed by that name")
    return out


@dataclass
class Leaderboard:
    """Results of every (dataset, retriever) pair, and comparisons against a baseline."""

    results: list[Result]
    metrics: list[str]
    comparisons: list[Comparison] = field(default_factory=list)

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(r.dataset for r in self.results))

    @property
    def systems(self) -> list[str]:
        return list(dict.fromkeys(r.spec for r in self.results))

    def get(self, system: str, dataset: str) -> Result | None:
        return next((r for r in self.results if r.spec == system and r.dataset == dataset), None)


def run_leaderboard(
    datasets: Sequence[Path | str], specs: Sequence[str], k: int = 1000, metrics: Sequence[str] = DEFAULT_METRICS,
    out: Path | str | None = None, resume: bool = False, split: str = "test", device: str | None = None,
    msmarco: bool = False, baseline: str | None = None, alpha: float = 0.05, resamples: int = 10_000,
) -> Leaderboard:
    """Evaluate every retriever spec on every dataset (see the module doc for the files kept under ``out``)."""
    if baseline is not None and baseline not in specs:
        raise RetrError(f"--compare {baseline!r} is not one of the retrievers: {', '.join(specs)}")
    if resume and out is None:
        raise RetrError("--resume reads earlier results from --out: give the folder")
    settings = {"k": k, "metrics": list(metrics), "split": split}
    results = []
    for folder in dataset_folders(datasets):
        dataset = None
        for spec in specs:
            record = Path(out) / folder.name / f"{slug(spec)}.json" if out is not None else None
            if resume and record is not None and record.is_file():
                saved = json.loads(record.read_text())
                if saved.get("settings") == settings:
                    results.append(_result(saved))
                    continue
            dataset = dataset or load_dataset(folder, split=split)
            result = evaluate_one(dataset, spec, k, metrics, device=device)
            if record is not None:
                record.parent.mkdir(parents=True, exist_ok=True)
                result.run_file = str(record.with_suffix(".trec"))
                write_trec_run(record.with_suffix(".trec"), result.run, tag=slug(result.retriever)[:40])
                if msmarco:
                    write_msmarco_run(record.with_suffix(".msmarco.tsv"), result.run)
                write_json(record, {"settings": settings, **result.to_dict(per_query=True)})
            results.append(result)
    board = Leaderboard(results, list(metrics))
    if baseline is not None:
        board.comparisons = compare_to(board, baseline, alpha, resamples)
    return board


def _result(saved: dict) -> Result:
    return Result(saved["retriever"], saved["dataset"], saved["metrics"], saved["build_seconds"],
                  saved["queries_per_second"], saved.get("run_file"), per_query=saved["per_query"],
                  spec=saved["spec"])


def compare_to(board: Leaderboard, baseline: str, alpha: float = 0.05, resamples: int = 10_000) -> list[Comparison]:
    """Every other system against ``baseline`` on every dataset and metric, Holm-corrected per metric."""
    out = []
    for dataset in board.datasets:
        base = board.get(baseline, dataset)
        for system in board.systems:
            other = board.get(system, dataset)
            if system == baseline or base is None or other is None:
                continue
            for metric in board.metrics:
                if metric in base.per_query:
                    out.append(compare(dataset, metric, baseline, system, base.per_query[metric],
                                       other.per_query[metric], resamples))
    return correct(out, alpha)


def tables(board: Leaderboard, fmt: str = "table") -> str:
    """One table per metric: a row per retriever, a column per dataset and the average."""
    if fmt not in FORMATS:
        raise RetrError(f"--format is one of {', '.join(FORMATS)}, not {fmt!r}")
    if fmt == "json":
        return json.dumps({"results": [r.to_dict() for r in board.results],
                           "comparisons": [c.to_dict() for c in board.comparisons]}, indent=2)
    found = {(c.system, c.dataset, c.metric): c for c in board.comparisons}
    blocks = []
    for metric in board.metrics:
        header = ["retriever", *board.datasets, "average"]
        rows = []
        for system in board.systems:
            values = [board.get(system, d) for d in board.datasets]
            cells = []
            for dataset, result in zip(board.datasets, values):
                if result is None:
                    cells.append("–")
                    continue
                cell = f"{result.metrics[metric]:.4f}"
                comparison = found.get((system, dataset, metric))
                if comparison is not None:
                    cell += f" ({comparison.delta:+.4f}){'*' if comparison.significant else ''}"
                cells.append(cell)
            present = [r.metrics[metric] for r in values if r is not None]
            average = f"{sum(present) / len(present):.4f}" if len(present) == len(values) else "–"
            rows.append([system, *cells, average])
        blocks.append((metric, header, rows))
    if board.comparisons:
        header = ["retriever", "metric", *board.datasets]
        rows = [[system, metric, *(_wtl(found.get((system, d, metric))) for d in board.datasets)]
                for system in board.systems for metric in board.metrics if system != board.comparisons[0].baseline]
        blocks.append((f"against {board.comparisons[0].baseline}: wins/ties/losses per query, Holm-corrected "
                       "randomisation p (* below alpha)", header, rows))
    return "\n\n".join(_render(title, header, rows, fmt) for title, header, rows in blocks)


def _wtl(c: Comparison | None) -> str:
    return "–" if c is None else f"{c.wins}/{c.ties}/{c.losses} p={c.holm_p:.3g}{'*' if c.significant else ''}"


def _render(title: str, header: list[str], rows: list[list[str]], fmt: str) -> str:
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([f"# {title}"])
        writer.writerows([header, *rows])
        return buffer.getvalue().rstrip("\n")
    if fmt == "markdown":
        def line(cells: list[str]) -> str:
            return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

        body = [line(header), "|" + "|".join("---" for _ in header) + "|", *(line(r) for r in rows)]
        return f"**{title}**\n\n" + "\n".join(body)
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return f"{title}\n" + "\n".join(lines)
