"""TREC run files: ``qid Q0 docid rank score tag``, the format trec_eval and leaderboards read."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from retr.errors import RetrError
from retr.retriever.pipeline import Hit


def hits_to_run(qids: Sequence[str], results: Sequence[list[Hit]]) -> dict[str, dict[str, float]]:
    return {qid: {h.id: h.score for h in hits} for qid, hits in zip(qids, results)}


def write_trec_run(path: Path | str, run: Mapping[str, Mapping[str, float]], tag: str = "retr") -> None:
    """Write ranks 1..n per query, best first; scores keep float32 precision (``%.9g``)."""
    path = Path(path)
    tag = "".join(c if c.isalnum() or c in "-_." else "_" for c in tag) or "retr"
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for qid, docs in run.items():
            ranked = sorted(docs.items(), key=lambda item: (-item[1], item[0]))
            for rank, (docid, score) in enumerate(ranked, start=1):
                fh.write(f"{qid} Q0 {docid} {rank} {score:.9g} {tag}\n")
    os.replace(tmp, path)


def read_trec_run(path: Path | str) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise RetrError(f"{path} line {number}: a TREC run line has 6 fields, got {len(parts)}")
            qid, _, docid, _, score, _ = parts
            run.setdefault(qid, {})[docid] = float(score)
    return run
