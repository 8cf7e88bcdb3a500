"""Compressed indexes from the ``retr`` command: index by spec, search, info, eval, train-jpq."""

import json

import pytest

from tests.conftest import DATA, MODEL
from tests.test_cli import retr


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """The first 300 Cranfield documents (with text) as a corpus.jsonl."""
    out = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    with open(DATA / "cranfield" / "corpus.jsonl") as corpus:
        lines = [line for line in corpus if json.loads(line)["text"].strip()][:300]
    out.write_text("".join(lines))
    return out


@pytest.mark.parametrize("spec", ["pq:M=16", "bebr:u=2,epochs=2,rerank=20"])
def test_index_search_info_eval(spec, small_corpus, tmp_path):
    out = tmp_path / "idx"
    proc = retr("index", "--corpus", small_corpus, "--encoder", f"dense:{MODEL}", "--index", spec, "--out", out)
    assert f"indexed 300 documents with dense:{MODEL}@{spec.split(':')[0]}" in proc.stdout
    hits = json.loads(retr("search", out, "shock wave boundary layer", "-k", "3", "--json").stdout)["hits"]
    assert len(hits) == 3 and hits[0]["score"] >= hits[-1]["score"]
    assert json.loads(retr("info", out).stdout.split("\n}\n")[0] + "\n}")["index"]["name"] == spec.split(":")[0]
    table = retr("eval", DATA / "cranfield", "-r", out, "-k", "10", "--queries", "held-out", "--held-out", "0.5").stdout
    assert spec.split(":")[0] in table


def test_train_jpq_command(small_corpus, tmp_path):
    pq = tmp_path / "pq"
    retr("index", "--corpus", small_corpus, "--encoder", f"dense:{MODEL}", "--index", "pq:M=16", "--out", pq)
    proc = retr("train-jpq", pq, DATA / "cranfield", "--out", tmp_path / "jpq", "--epochs", "1")
    assert "trained JPQ on" in proc.stdout and "--queries held-out --held-out 0.5" in proc.stdout
    assert (tmp_path / "jpq" / "seg-000001" / "index" / "query_encoder" / "model.safetensors").is_file()
    assert len(json.loads(retr("search", tmp_path / "jpq", "lift", "-k", "2", "--json").stdout)["hits"]) == 2
    bad = retr("train-jpq", tmp_path / "jpq" / "missing", DATA / "cranfield", "--out", tmp_path / "x", check=False)
    assert bad.returncode == 2 and "error:" in bad.stderr
