"""Corpora, queries and relevance judgements in the BEIR layout and as MS MARCO tsv files.

BEIR: ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``,
``text``), ``qrels/<split>.tsv`` (header ``query-id corpus-id score``).
MS MARCO: ``collection.tsv`` (``pid<TAB>passage``), ``queries.<split>.tsv``
(``qid<TAB>text``), ``qrels.<split>.tsv`` (TREC: ``qid 0 pid rel``).
Every reader checks what it reads and names the file and line of the first problem.
"""

from __future__ import annotations

import gzip
import itertools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np

from retr.errors import RetrError
from retr.hashindex import HashIndex, first_repeat, hash_keys

ID_FIELDS = ("_id", "id", "docid", "doc_id", "pid", "qid")
TEXT_FIELDS = ("text", "contents", "passage", "body")
HEADER_IDS = {"id", "_id", "docid", "pid", "qid", "query-id", "query_id"}


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    title: str = ""

    @property
    def content(self) -> str:
        """What encoders and the BM25 analyser see: title and text, as BEIR and Pyserini join them."""
        return f"{self.title} {self.text}".strip() if self.title else self.text.strip()


@dataclass
class Dataset:
    name: str
    corpus: list[Document]
    queries: dict[str, str]  # query id -> text (only judged queries)
    qrels: dict[str, dict[str, int]]  # query id -> doc id -> relevance
    split: str = "test"
    path: Path | None = field(default=None, repr=False)


CHECK_BLOCK = 4096  # documents whose ids are checked for duplicates at once
CORPUS_FILES = ("corpus.jsonl", "corpus.jsonl.gz", "collection.tsv", "corpus.tsv")


class IdSet:
    """Ids seen so far (their 128-bit hashes, ``retr.hashindex``), checked a block at a time: 24 bytes an id."""

    def __init__(self) -> None:
        self._seen = HashIndex()

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, ids: Sequence[str], where: Sequence[int]) -> tuple[str, int, int] | None:
        """Add ``ids`` (seen at ``where``); if one was seen before, (id, where first, where again) instead."""
        keys, where = hash_keys(ids), np.asarray(where, dtype=np.int64)
        repeat = first_repeat(keys)
        found = self._seen.find(keys)
        earlier = np.flatnonzero(found >= 0)
        if len(earlier) and (repeat is None or earlier[0] < repeat[1]):
            i = int(earlier[0])
            return ids[i], int(found[i]), int(where[i])
        if repeat is not None:
            return ids[repeat[1]], int(where[repeat[0]]), int(where[repeat[1]])
        self._seen.add(keys, where)
        return None


def _open_lines(path: Path) -> Iterator[tuple[int, str]]:
    if not path.is_file():
        raise RetrError(f"file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                if line.strip():
                    yield number, line.rstrip("\n\r")
    except UnicodeDecodeError as exc:
        raise RetrError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (OSError, EOFError) as exc:  # a damaged or truncated .gz
        raise RetrError(f"cannot read {path}: {exc}") from None


def _json_records(path: Path) -> Iterator[tuple[int, dict]]:
    for number, line in _open_lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RetrError(f"{path} line {number}: not valid JSON ({exc.msg}); fix or remove the line") from None
        if not isinstance(record, dict):
            raise RetrError(f"{path} line {number}: expected a JSON object, got {type(record).__name__}")
        yield number, record


def _field(record: dict, names: tuple[str, ...], path: Path, number: int, what: str) -> str:
    for name in names:
        if name in record and record[name] is not None:
            return str(record[name])
    raise RetrError(f"{path} line {number}: no {what} field (expected one of {', '.join(names)})")


def _tsv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    for number, line in _open_lines(path):
        row = line.split("\t")
        if number == 1 and row[0].strip().lower() in HEADER_IDS:
            continue
        yield number, row


def read_corpus(path: Path | str, on_empty: Literal["skip", "error"] = "skip") -> list[Document]:
    """Read a whole corpus into memory: ``list(iter_corpus(path, on_empty))``."""
    return list(iter_corpus(path, on_empty))


def _corpus_file(path: Path) -> Path:
    if path.is_dir():
        for name in CORPUS_FILES:
            if (path / name).is_file():
                return path / name
        raise RetrError(f"{path} has no corpus.jsonl or collection.tsv")
    if not path.exists():
        raise RetrError(f"corpus not found: {path}")
    return path


def _corpus_rows(path: Path) -> Iterator[tuple[int, Document]]:
    suffix = path.suffix if path.suffix != ".gz" else Path(path.stem).suffix
    if suffix == ".tsv":
        return ((n, _tsv_document(row, path, n)) for n, row in _tsv_rows(path))
    if suffix in (".jsonl", ".json"):
        return (
            (n, Document(
                _field(r, ID_FIELDS, path, n, "id"),
                _field(r, TEXT_FIELDS, path, n, "text"),
                str(r.get("title") or ""),
            ))
            for n, r in _json_records(path)
        )
    raise RetrError(f"{path}: a corpus is a .jsonl, .jsonl.gz or .tsv file or a BEIR / MS MARCO directory")


def iter_corpus(path: Path | str, on_empty: Literal["skip", "error"] = "skip") -> Iterator[Document]:
    """Stream a corpus from a ``.jsonl`` (or ``.jsonl.gz``) or ``.tsv`` file, or a BEIR / MS MARCO directory.

    Nothing but a block of documents is held at once. Duplicate ids are an error (naming both
    lines). A document with no text cannot be retrieved: it is skipped with a warning
    (``on_empty="skip"``) or refused (``on_empty="error"``).
    """
    path = _corpus_file(Path(path))
    rows = _corpus_rows(path)
    seen = IdSet()
    empty: list[str] = []
    count = 0
    while block := list(itertools.islice(rows, CHECK_BLOCK)):
        duplicate = seen.add([doc.id for _, doc in block], [n for n, _ in block])
        if duplicate is not None:
            doc_id, first, again = duplicate
            raise RetrError(
                f"{path} line {again}: duplicate document id {doc_id!r} (first at line {first}); "
                "document ids must be unique"
            )
        for number, doc in block:
            if not doc.content:
                if on_empty == "error":
                    raise RetrError(f"{path} line {number}: document {doc.id!r} has no text")
                empty.append(doc.id)
                continue
            count += 1
            yield doc
    if empty:
        shown = ", ".join(empty[:10]) + (" ..." if len(empty) > 10 else "")
        print(f"retr: skipped {len(empty)} document(s) with no text: {shown}", file=sys.stderr)
    if not count:
        raise RetrError(f"{path}: the corpus is empty (no document with text)")


class Corpus:
    """A corpus file read again on every iteration (``iter_corpus``), so a build can stream it."""

    def __init__(self, path: Path | str, on_empty: Literal["skip", "error"] = "skip") -> None:
        self.path, self.on_empty = _corpus_file(Path(path)), on_empty

    def __iter__(self) -> Iterator[Document]:
        return iter_corpus(self.path, self.on_empty)

    def __repr__(self) -> str:
        return f"Corpus({str(self.path)!r})"


def _tsv_document(row: list[str], path: Path, number: int) -> Document:
    if len(row) == 2:
        return Document(row[0].strip(), row[1])
    if len(row) == 3:
        return Document(row[0].strip(), row[2], row[1])
    raise RetrError(f"{path} line {number}: expected id<TAB>text or id<TAB>title<TAB>text, got {len(row)} columns")


def read_queries(path: Path | str) -> dict[str, str]:
    """Read queries from ``.jsonl`` (``_id``, ``text``) or ``.tsv`` (``qid<TAB>text``)."""
    path = Path(path)
    queries: dict[str, str] = {}
    if path.suffix == ".tsv":
        items = ((n, row[0].strip(), row[-1]) for n, row in _tsv_rows(path) if _ncols(row, 2, path, n))
    else:
        items = (
            (n, _field(r, ID_FIELDS, path, n, "id"), _field(r, TEXT_FIELDS + ("query",), path, n, "text"))
            for n, r in _json_records(path)
        )
    for number, qid, text in items:
        if qid in queries:
            raise RetrError(f"{path} line {number}: duplicate query id {qid!r}")
        if not text.strip():
            raise RetrError(f"{path} line {number}: query {qid!r} has no text")
        queries[qid] = text
    if not queries:
        raise RetrError(f"{path}: no queries")
    return queries


def _ncols(row: list[str], n: int, path: Path, number: int) -> bool:
    if len(row) != n:
        raise RetrError(f"{path} line {number}: expected {n} tab-separated columns, got {len(row)}")
    return True


def read_qrels(path: Path | str) -> dict[str, dict[str, int]]:
    """Read judgements: BEIR tsv (``query-id corpus-id score``) or TREC (``qid 0 docid rel``)."""
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    for number, line in _open_lines(path):
        parts = line.split()
        if number == 1 and parts[0].lower() in HEADER_IDS:
            continue
        if len(parts) == 3:
            qid, docid, rel = parts
        elif len(parts) == 4:
            qid, _, docid, rel = parts
        else:
            raise RetrError(f"{path} line {number}: expected 'qid docid rel' or 'qid 0 docid rel'")
        try:
            qrels.setdefault(qid, {})[docid] = int(float(rel))
        except ValueError:
            raise RetrError(f"{path} line {number}: relevance {rel!r} is not a number") from None
    if not qrels:
        raise RetrError(f"{path}: no judgements")
    return qrels


def load_dataset(path: Path | str, split: str = "test", on_empty: Literal["skip", "error"] = "skip") -> Dataset:
    """Load a BEIR-layout or MS MARCO-layout directory; keep the queries judged in ``split``."""
    path = Path(path)
    if not path.is_dir():
        raise RetrError(f"dataset directory not found: {path}")
    if (path / "corpus.jsonl").is_file() or (path / "corpus.jsonl.gz").is_file():
        queries_file, qrels_file = path / "queries.jsonl", path / "qrels" / f"{split}.tsv"
    elif (path / "collection.tsv").is_file():
        queries_file, qrels_file = path / f"queries.{split}.tsv", path / f"qrels.{split}.tsv"
    else:
        raise RetrError(f"{path} is neither BEIR (corpus.jsonl) nor MS MARCO (collection.tsv) layout")
    corpus = read_corpus(path, on_empty)
    qrels = read_qrels(qrels_file)
    queries = read_queries(queries_file)
    judged = {qid: queries[qid] for qid in qrels if qid in queries}
    if not judged:
        raise RetrError(f"{path}: no query in {queries_file.name} has judgements in {qrels_file.name}")
    return Dataset(path.name, corpus, judged, qrels, split, path)
