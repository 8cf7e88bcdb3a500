import json

import pytest

from retr import RetrError, load_dataset, read_corpus, read_qrels, read_queries
from tests.conftest import DATA


def test_cranfield_loads_with_every_judged_query(cranfield):
    assert len(cranfield.corpus) == 1398  # 1,400 documents, 2 of them empty and skipped
    assert len(cranfield.queries) == 225
    assert sum(len(d) for d in cranfield.qrels.values()) == 1612
    doc = next(d for d in cranfield.corpus if d.id == "1")
    assert doc.content.startswith("experimental investigation of the aerodynamics")


def test_empty_documents_are_skipped_with_a_warning_or_refused(capsys):
    docs = read_corpus(DATA / "cranfield")
    assert {"471", "995"}.isdisjoint(d.id for d in docs)
    assert "skipped 2 document(s) with no text: 471, 995" in capsys.readouterr().err
    with pytest.raises(RetrError, match="line 471: document '471' has no text"):
        read_corpus(DATA / "cranfield", on_empty="error")


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_malformed_json_names_the_line(tmp_path):
    path = _write(tmp_path / "c.jsonl", ['{"_id": "a", "text": "x"}', '{"_id": "b", "text": '])
    with pytest.raises(RetrError, match=r"c.jsonl line 2: not valid JSON"):
        read_corpus(path)


def test_duplicate_ids_name_both_lines(tmp_path):
    path = _write(tmp_path / "c.jsonl", [json.dumps({"_id": i, "text": "t"}) for i in ("a", "b", "a")])
    with pytest.raises(RetrError, match=r"line 3: duplicate document id 'a' \(first at line 1\)"):
        read_corpus(path)


def test_missing_fields_empty_corpus_and_missing_files(tmp_path):
    with pytest.raises(RetrError, match="line 1: no text field"):
        read_corpus(_write(tmp_path / "a.jsonl", ['{"_id": "a", "body2": "x"}']))
    with pytest.raises(RetrError, match="corpus is empty"):
        read_corpus(_write(tmp_path / "b.jsonl", ['{"_id": "a", "text": "  "}']))
    with pytest.raises(RetrError, match="corpus is empty"):
        read_corpus(_write(tmp_path / "c.jsonl", []))
    with pytest.raises(RetrError, match="not found"):
        read_corpus(tmp_path / "nope.jsonl")
    with pytest.raises(RetrError, match="expected a JSON object"):
        read_corpus(_write(tmp_path / "d.jsonl", ["[1, 2]"]))
    with pytest.raises(RetrError, match="dataset directory not found"):
        load_dataset(tmp_path / "missing")


def test_queries_and_qrels_errors(tmp_path):
    with pytest.raises(RetrError, match="query '1' has no text"):
        read_queries(_write(tmp_path / "q.jsonl", ['{"_id": "1", "text": ""}']))
    with pytest.raises(RetrError, match="duplicate query id"):
        read_queries(_write(tmp_path / "q.tsv", ["1\ta", "1\tb"]))
    with pytest.raises(RetrError, match="line 2: relevance 'high' is not a number"):
        read_qrels(_write(tmp_path / "r.tsv", ["query-id\tcorpus-id\tscore", "1\td\thigh"]))


def test_ms_marco_layout_reads_the_same_collection(tmp_path, cranfield):
    """Cranfield rewritten as MS MARCO tsv files (TREC qrels) loads to the same dataset."""
    folder = tmp_path / "msmarco"
    folder.mkdir()
    _write(folder / "collection.tsv", [f"{d.id}\t{d.content}" for d in cranfield.corpus])
    _write(folder / "queries.dev.tsv", [f"{q}\t{t}" for q, t in cranfield.queries.items()])
    _write(folder / "qrels.dev.tsv", [f"{q} 0 {d} {r}" for q, docs in cranfield.qrels.items() for d, r in docs.items()])
    data = load_dataset(folder, split="dev")
    assert [d.id for d in data.corpus] == [d.id for d in cranfield.corpus]
    assert [d.content for d in data.corpus] == [d.content for d in cranfield.corpus]
    assert data.queries == cranfield.queries and data.qrels == cranfield.qrels


def test_tsv_corpus_with_title_column(tmp_path):
    docs = read_corpus(_write(tmp_path / "c.tsv", ["id\ttitle\ttext", "d1\tWings\tlift and drag"]))
    assert docs[0].id == "d1" and docs[0].content == "Wings lift and drag"
    with pytest.raises(RetrError, match="line 1: expected id<TAB>text.*got 5 columns"):
        read_corpus(_write(tmp_path / "bad.tsv", ["d1\ta\tb\tc\td", "d2\ta\tb\tc"]))
