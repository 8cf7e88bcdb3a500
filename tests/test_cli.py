"""The ``retr`` command end to end, as a user runs it (a subprocess of the installed script)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DATA, MODEL


# the console script installed beside this Python (the venv's bin), else the one on PATH
RETR = str(next((p for p in [Path(sys.executable).parent / "retr"] if p.exists()), shutil.which("retr") or "retr"))


def retr(*args, check=True):
    proc = subprocess.run([RETR, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "RETR_PROGRESS": "0"}, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"retr {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def test_help_is_instant_because_heavy_imports_are_lazy():
    code = "import sys, retr.cli; print(sorted(m for m in ('torch', 'faiss', 'jnius', 'sentence_transformers', 'pyserini') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"
    assert "index" in retr("--help").stdout


@pytest.fixture(scope="module")
def bm25_index(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "cranfield-bm25"
    proc = retr("index", "--corpus", DATA / "cranfield", "--encoder", "bm25", "--out", out)
    assert "indexed 1398 documents with bm25@lucene" in proc.stdout
    return out


def test_index_search_info(bm25_index):
    proc = retr("search", bm25_index, "what similarity laws must be obeyed for aeroelastic models", "-k", "3", "--json")
    result = json.loads(proc.stdout)
    assert [h["rank"] for h in result["hits"]] == [1, 2, 3] and result["hits"][0]["text"]
    table = retr("search", bm25_index, "heat conduction in composite slabs", "-k", "2").stdout
    assert table.startswith("query: heat conduction") and len(table.splitlines()) == 3
    info = retr("info", bm25_index).stdout
    assert '"num_docs": 1398' in info and "checksums OK" in info


def test_eval_prints_one_table_and_writes_runs(bm25_index, tmp_path):
    proc = retr("eval", DATA / "cranfield", "-r", "bm25", "-r", bm25_index, "-m", "ndcg@10", "-m", "recall@100",
                "--out", tmp_path)
    rows = [line for line in proc.stdout.splitlines() if line.startswith("cranfield")]
    assert len(rows) == 2 and all("0.3513" in row for row in rows)  # built on the fly == opened from disk
    result = json.loads((tmp_path / "cranfield" / "bm25.json").read_text())
    assert result["metrics"]["recall@100"] == pytest.approx(0.7218, abs=1e-4) and len(result["per_query"]["ndcg@10"]) == 225
    first = open(result["run_file"]).readline().split()
    assert first[1] == "Q0" and first[3] == "1" and len(first) == 6


def test_dense_index_and_search(tmp_path):
    out = tmp_path / "dense"
    retr("index", "--corpus", DATA / "cranfield" / "corpus.jsonl", "--encoder", f"dense:{MODEL}", "--index", "hnsw",
         "--out", out)
    hits = json.loads(retr("search", out, "heat transfer in hypersonic flow", "-k", "5", "--json").stdout)["hits"]
    assert len(hits) == 5 and all("hypersonic" in h["text"].lower() for h in hits[:3])


@pytest.mark.parametrize("args,message", [
    (["search", "/nonexistent/index", "q"], "no index at /nonexistent/index"),
    (["index", "--corpus", "/nonexistent.jsonl", "--encoder", "bm25", "--out", "/tmp/x"], "not found"),
    (["index", "--corpus", DATA / "cranfield", "--encoder", "word2vec", "--out", "/tmp/x"], "unknown encoder 'word2vec'"),
    (["index", "--corpus", DATA / "cranfield", "--encoder", "bm25", "--index", "flat", "--out", "/tmp/x"],
     "makes text representations"),
    (["eval", DATA / "cranfield", "-r", "bm25", "-m", "ndcg@7"], "unknown metric"),
])
def test_user_errors_exit_2_without_a_traceback(args, message):
    proc = retr(*args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_failed_index_leaves_the_existing_index_untouched(bm25_index, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"_id": "1", "text": "fine"}\n{"_id": "2", "text": broken}\n')
    before = {p: p.read_bytes() for p in bm25_index.rglob("*") if p.is_file()}
    proc = retr("index", "--corpus", bad, "--encoder", "bm25", "--out", bm25_index, check=False)
    assert proc.returncode == 2 and "bad.jsonl line 2: not valid JSON" in proc.stderr
    assert {p: p.read_bytes() for p in bm25_index.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in bm25_index.parent.iterdir()) == [".cranfield-bm25.lock", "cranfield-bm25"]


def test_corrupt_index_is_refused_on_open(bm25_index, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(bm25_index, copy)
    victim = max((p for p in (copy / "seg-000001" / "docstore").iterdir()), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[:-10])
    proc = retr("search", copy, "wing", check=False)
    assert proc.returncode == 2 and "truncated or changed" in proc.stderr


def test_eval_learned_sparse_and_hybrid(tmp_path):
    """SPLADE-tiny on Lucene and its fusion with dense, from the command line (measured 0.3632 and 0.4080)."""
    proc = retr("eval", DATA / "cranfield", "-r", "splade:splade-tiny", "-r", f"rrf[splade:splade-tiny | dense:{MODEL}]",
                "-m", "ndcg@10")
    cells = [re.split(r"\s{2,}", line.strip()) for line in proc.stdout.splitlines() if line.startswith("cranfield")]
    rows = {row[1]: float(row[2]) for row in cells}  # columns are two spaces apart; fusion names hold single spaces
    assert rows == pytest.approx({"splade:splade-tiny@lucene": 0.3632,
                                  f"rrf:k=60[splade:splade-tiny@lucene | dense:{MODEL}@flat]": 0.4080}, abs=5e-4)


def test_multi_vector_index_search_and_eval(tmp_path):
    """ColBERT over PLAID and MUVERA from the command line (eval measured: muvera 0.3489, exact maxsim 0.3467)."""
    out = tmp_path / "plaid"
    retr("index", "--corpus", DATA / "cranfield" / "corpus.jsonl", "--encoder", f"colbert:{MODEL}",
         "--index", "plaid:nbits=1", "--out", out)
    hits = json.loads(retr("search", out, "heat transfer in hypersonic flow", "-k", "5", "--json").stdout)["hits"]
    assert len(hits) == 5 and all("hypersonic" in h["text"].lower() for h in hits[:3])
    # k 100: muvera reranks max(k, candidates) documents, so eval's default k of 1000 would rerank them all
    proc = retr("eval", DATA / "cranfield", "-r", f"colbert:{MODEL}@muvera", "-m", "ndcg@10", "-k", "100")
    row = next(line.split() for line in proc.stdout.splitlines() if line.startswith("cranfield"))
    assert row[1] == f"colbert:{MODEL}@muvera" and float(row[2]) == pytest.approx(0.3489, abs=5e-4)
