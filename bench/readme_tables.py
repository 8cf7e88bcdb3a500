"""Rewrite the README's measured tables from the bench records, so no table there is typed by hand.

``--run`` evaluates the README's retrievers on Cranfield and CACM (``retr eval``'s leaderboard, every
pair kept as JSON with its per-query values in bench/results/raw/eval/DATASET/); without it the
records already there are used. Each section between a pair of the README's markers is then rewritten:

- ``results``: the per-dataset table (metrics, build seconds, queries/s) and the leaderboard table of
  nDCG@10 with each retriever's difference to BM25 and Holm-corrected significance;
- ``late-interaction``: bench/multivector.py's records (raw/multivector.json) and its trade-off charts;
- ``gpu``: bench/gpu.py's latest run at 100,000 documents (raw/gpu-h200.json).

    .venv/bin/python bench/readme_tables.py --run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import md_table, read_records  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
RAW = RESULTS / "raw" / "eval"
README = REPO / "README.md"
SPECS = ["bm25", "dense:all-MiniLM-L6-v2", "dense:all-MiniLM-L6-v2@hnsw", "rrf[bm25 | dense:all-MiniLM-L6-v2]"]
DATASETS = ["cranfield", "cacm"]
METRICS = ["ndcg@10", "mrr@10", "recall@100", "recall@1000", "map"]


def run(data: Path) -> None:
    from retr.eval.leaderboard import run_leaderboard

    with tempfile.TemporaryDirectory(prefix="retr-readme-") as tmp:
        run_leaderboard([data / d for d in DATASETS], SPECS, k=1000, metrics=METRICS, out=tmp)
        for record in Path(tmp).rglob("*.json"):
            saved = json.loads(record.read_text())
            saved.pop("run_file", None)
            target = RAW / record.parent.name / record.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(saved, indent=1) + "\n")


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}: begin (bench/readme_tables.py writes this section) -->", f"<!-- {name}: end -->"


def results_section() -> str:
    from retr.eval.harness import Result, slug
    from retr.eval.leaderboard import Leaderboard, compare_to, tables

    results = []
    for dataset in DATASETS:
        for spec in SPECS:
            saved = json.loads((RAW / dataset / f"{slug(spec)}.json").read_text())
            results.append(Result(saved["retriever"], saved["dataset"], saved["metrics"], saved["build_seconds"],
                                  saved["queries_per_second"], per_query=saved["per_query"], spec=saved["spec"]))
    rows = [f"| {r.dataset} | `{r.retriever.replace('|', chr(92) + '|')}` | "
            + " | ".join(f"{r.metrics[m]:.4f}" for m in METRICS)
            + f" | {r.build_seconds:.1f} | {r.queries_per_second:.1f} |" for r in results]
    header = "| dataset | retriever | " + " | ".join(METRICS) + " | build s | q/s |"
    board = Leaderboard(results, ["ndcg@10"])
    board.comparisons = compare_to(board, "bm25")
    command = "retr eval " + " ".join(f"../shared/data/{d}" for d in DATASETS) + " " + " ".join(
        f"-r '{s}'" if " " in s else f"-r {s}" for s in SPECS) + " --compare bm25"
    return "\n".join([
        f"`{command}` (records: bench/results/raw/eval/, rewritten by `bench/readme_tables.py --run`)", "",
        header, "|" + "---|" * (len(METRICS) + 4), *rows, "",
        "(build s includes encoding unless the embedding cache already holds it; q/s includes query encoding.)", "",
        "nDCG@10 as a leaderboard: a column per dataset and the average, each retriever's difference to BM25, `*` where "
        "the paired randomisation test stays below 0.05 after Holm's correction over every cell:", "",
        tables(board, "markdown").replace("**ndcg@10**\n\n", "")])


def late_interaction_section() -> str:
    records = json.loads((RESULTS / "raw" / "multivector.json").read_text())
    rows = [[r["name"], f"{r['bytes_per_token']:,.0f}", f"{r['recall@10']:.3f}", f"{r['ndcg@10']:.4f}", f"{r['qps']:,.1f}"]
            for r in records]
    charts = sorted(p.name for p in RESULTS.glob("multivector-cranfield-*.png"))
    return "\n".join([
        md_table(["system (Cranfield)", "index bytes/token", "R@10", "nDCG@10", "q/s (all queries in one call)"], rows),
        "", *(f"![{c[:-4]}](bench/results/{c})" for c in charts)])


def gpu_section() -> str:
    records = read_records([RESULTS / "raw" / "gpu-h200.json"])
    last = max(r.get("run", 1) for r in records)
    rows = [[f"{r['size']:,}", r["system"], f"{r['recall']:.4f}", f"{r['single_qps']:,.0f}", f"{r['batch_qps']:,.0f}",
             f"{r['bytes_per_token']:,.0f}"]
            for r in records if r.get("run", 1) == last and "tokens" in r and "error" not in r]
    return md_table([f"run {last}: documents", "system (k=10)", "recall@10 of exact", "q/s one at a time",
                     "q/s batched", "bytes/token"], rows)


SECTIONS = {"results": results_section, "late-interaction": late_interaction_section, "gpu": gpu_section}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="evaluate again first (else use the stored records)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    args = parser.parse_args()
    if args.run:
        run(args.data)
    text = README.read_text()
    for name in args.sections:
        begin, end = markers(name)
        if begin not in text or end not in text:
            raise SystemExit(f"README.md has no {begin!r} ... {end!r} markers")
        start, stop = text.index(begin), text.index(end) + len(end)
        text = text[:start] + "\n".join([begin, "", SECTIONS[name](), "", end]) + text[stop:]
    README.write_text(text)
    print("README sections rewritten: " + ", ".join(args.sections))

if __name__ == "__main__":
    main()
