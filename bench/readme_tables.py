"""Rewrite the README's results section from evaluation records, so no figure there is typed by hand.

``--run`` evaluates the README's retrievers on Cranfield and CACM (``retr eval``'s leaderboard, every
pair kept as JSON with its per-query values in bench/results/raw/eval/DATASET/); without it the
records already there are used. The section between the README's ``results`` markers is then
rewritten: the per-dataset table (metrics, build seconds, queries/s) and the leaderboard table of
nDCG@10 with each retriever's difference to BM25 and Holm-corrected significance.

    .venv/bin/python bench/readme_tables.py --run
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RAW = REPO / "bench" / "results" / "raw" / "eval"
README = REPO / "README.md"
BEGIN, END = "<!-- results: begin (bench/readme_tables.py writes this section) -->", "<!-- results: end -->"
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


def section() -> str:
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
        BEGIN, "", f"`{command}` (records: bench/results/raw/eval/, rewritten by `bench/readme_tables.py --run`)", "",
        header, "|" + "---|" * (len(METRICS) + 4), *rows, "",
        "(build s includes encoding unless the embedding cache already holds it; q/s includes query encoding.)", "",
        "nDCG@10 as a leaderboard: a column per dataset and the average, each retriever's difference to BM25, `*` where "
        "the paired randomisation test stays below 0.05 after Holm's correction over every cell:", "",
        tables(board, "markdown").replace("**ndcg@10**\n\n", ""), "", END])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="evaluate again first (else use the stored records)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    if args.run:
        run(args.data)
    text = README.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"README.md has no {BEGIN!r} ... {END!r} markers")
    start, end = text.index(BEGIN), text.index(END) + len(END)
    README.write_text(text[:start] + section() + text[end:])
    print("README results section rewritten")


if __name__ == "__main__":
    main()
