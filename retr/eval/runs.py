"""Run files: TREC's ``qid Q0 docid rank score tag`` (trec_eval, most leaderboards) and MS MARCO's
submission TSV ``qid<TAB>pid<TAB>rank`` (the passage ranking leaderboard and its official MRR@10 script)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Mapping, Sequence

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
            for rank, (docid, score) in enumerate(_ranked(docs), start=1):
                fh.write(f"{qid} Q0 {docid} {rank} {score:.9g} {tag}\n")
    os.replace(tmp, path)


def _ranked(docs: Mapping[str, float]) -> list[tuple[str, float]]:
    return sorted(docs.items(), key=lambda item: (-item[1], item[0]))


def write_msmarco_run(path: Path | str, run: Mapping[str, Mapping[str, float]]) -> None:
    """``qid<TAB>pid<TAB>rank`` lines, ranks 1..n per query, best first (ties by document id)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for qid, docs in run.items():
            for rank, (docid, _) in enumerate(_ranked(docs), start=1):
                fh.write(f"{qid}\t{docid}\t{rank}\n")
    os.replace(tmp, path)


def read_run(path: Path | str) -> dict[str, dict[str, float]]:
    """A TREC run, or an MS MARCO TSV run (scores become minus the rank), told apart by the first line."""
    path = Path(path)
    if not path.is_file():
        raise RetrError(f"run file not found: {path}")
    with open(path, encoding="utf-8") as fh:
        first = next((line for line in fh if line.strip()), "")
    if len(first.split()) == 6:
        return read_trec_run(path)
    run: dict[str, dict[str, float]] = {}
    for number, parts in _fields(path, 3, "expected a TREC run (6 fields) or MS MARCO's qid pid rank"):
        try:
            run.setdefault(parts[0], {})[parts[1]] = -float(parts[2])
        except ValueError:
            raise RetrError(f"{path} line {number}: rank {parts[2]!r} is not a number") from None
    return run


def read_trec_run(path: Path | str) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for number, (qid, _, docid, _, score, _) in _fields(path, 6, "a TREC run line has 6 fields"):
        try:
            run.setdefault(qid, {})[docid] = float(score)
        except ValueError:
            raise RetrError(f"{path} line {number}: score {score!r} is not a number") from None
    return run


def _fields(path: Path | str, count: int, expected: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank line, every one with ``count`` fields (else ``expected``)."""
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != count:
                raise RetrError(f"{path} line {number}: {expected}, got {len(parts)} fields")
            yield number, parts
