"""Leaderboard runs over several datasets, significance tests against scipy and a hand-computed case, plots."""

import json
import struct
import subprocess

import numpy as np
import pytest

import retr
from retr import RetrError
from retr.eval.leaderboard import dataset_folders, run_leaderboard, tables
from retr.eval.metrics import per_query
from retr.eval.runs import read_run, write_msmarco_run, write_trec_run
from retr.eval.significance import compare, holm, paired_test
from tests.conftest import DATA
from tests.test_cli import RETR


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    out = tmp_path_factory.mktemp("leaderboard")
    specs = ["bm25", "bm25:k1=1.2,b=0.75"]
    return run_leaderboard([DATA / "cranfield", DATA / "cacm"], specs, k=100, metrics=["ndcg@10", "map"], out=out,
                           baseline="bm25", msmarco=True), out


def test_many_datasets_equal_the_single_dataset_evaluations(board, cranfield, cacm):
    board, _ = board
    assert board.datasets == ["cranfield", "cacm"] and board.systems == ["bm25", "bm25:k1=1.2,b=0.75"]
    for dataset in (cranfield, cacm):
        single = retr.evaluate(dataset, ["bm25", "bm25:k1=1.2,b=0.75"], k=100, metrics=["ndcg@10", "map"])
        for result in single:
            assert board.get(result.spec, dataset.name).metrics == result.metrics
    assert board.get("bm25", "cranfield").metrics["ndcg@10"] == pytest.approx(0.3513, abs=1e-4)
    text = tables(board, "table")
    average = (0.3513 + board.get("bm25", "cacm").metrics["ndcg@10"]) / 2
    assert f"{average:.4f}"[:5] in text.splitlines()[3] and "average" in text


def test_significance_equals_scipy_on_the_same_per_query_values(board):
    from scipy import stats

    board, _ = board
    for c in board.comparisons:
        a = board.get("bm25", c.dataset).per_query[c.metric]
        b = board.get(c.system, c.dataset).per_query[c.metric]
        qids = sorted(a)
        va, vb = np.array([a[q] for q in qids]), np.array([b[q] for q in qids])
        assert c.t_p == pytest.approx(stats.ttest_rel(vb, va).pvalue)
        expected = stats.permutation_test((vb, va), lambda x, y, axis: np.mean(x - y, axis=axis), vectorized=True,
                                          permutation_type="samples", n_resamples=10_000,
                                          rng=np.random.default_rng(0)).pvalue
        assert c.randomisation_p == pytest.approx(expected)
        assert c.wins + c.ties + c.losses == c.queries == len(qids) and c.delta == pytest.approx((vb - va).mean())
    family = [c for c in board.comparisons if c.metric == "map"]
    assert [c.holm_p for c in family] == pytest.approx(holm([c.randomisation_p for c in family]))


def test_a_hand_computed_case():
    """d = (0.2, 0, 0.3): t = 1.8898 with 2 degrees of freedom, p = 1 - t / sqrt(t^2 + 2) = 0.1994; the exact
    randomisation test flips the signs of the 3 differences (8 ways): |sum| >= 0.5 in 4 of them, p = 0.5."""
    t_p, r_p = paired_test(np.array([0.1, 0.5, 0.3]), np.array([0.3, 0.5, 0.6]))
    assert t_p == pytest.approx(0.19936, abs=1e-4) and r_p == pytest.approx(0.5)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    c = compare("d", "m", "A", "B", {"q1": 0.1, "q2": 0.5, "q3": 0.3}, {"q1": 0.3, "q2": 0.5, "q3": 0.6})
    assert (c.wins, c.ties, c.losses) == (2, 1, 0)
    with pytest.raises(RetrError, match="different queries"):
        compare("d", "m", "A", "B", {"q1": 0.1}, {"q2": 0.3})


def test_resume_reads_finished_pairs_back(board, monkeypatch):
    _, out = board
    monkeypatch.setattr("retr.eval.leaderboard.evaluate_one", lambda *a, **k: pytest.fail("ran a finished pair"))
    again = run_leaderboard([DATA / "cranfield", DATA / "cacm"], ["bm25", "bm25:k1=1.2,b=0.75"], k=100,
                            metrics=["ndcg@10", "map"], out=out, resume=True, baseline="bm25")
    assert [r.metrics for r in again.results] == [r.metrics for r in board[0].results]
    assert [c.randomisation_p for c in again.comparisons] == [c.randomisation_p for c in board[0].comparisons]
    saved = json.loads((out / "cacm" / "bm25.json").read_text())
    assert saved["settings"] == {"k": 100, "metrics": ["ndcg@10", "map"], "split": "test"}


def test_compare_command_on_stored_runs(board):
    _, out = board
    proc = subprocess.run([RETR, "compare", out / "cranfield" / "bm25.trec",
                           out / "cranfield" / "bm25_k1_1.2_b_0.75.msmarco.tsv", "--qrels",
                           DATA / "cranfield" / "qrels" / "test.tsv", "--queries", DATA / "cranfield" / "queries.jsonl",
                           "-m", "ndcg@10", "--top", "2"], capture_output=True, text=True, check=True)
    lines = proc.stdout.splitlines()
    assert "225 judged queries" in lines[0] and lines[2].split()[:4] == ["ndcg@10", "0.3513", "0.3659", "+0.0147"]
    assert "91/75/59" in lines[2] and "exact solution methods" in proc.stdout  # query 167 differs most


def test_msmarco_runs_and_mrr_at_10_with_the_official_cut(tmp_path):
    run = {"q1": {"d1": 3.0, "d2": 2.0, "d3": 1.0}, "q2": {f"d{i}": 20.0 - i for i in range(15)}}
    qrels = {"q1": {"d2": 1}, "q2": {"d12": 1}, "q3": {"d1": 1}}
    write_msmarco_run(tmp_path / "run.tsv", run)
    assert (tmp_path / "run.tsv").read_text().splitlines()[:2] == ["q1\td1\t1", "q1\td2\t2"]
    back = read_run(tmp_path / "run.tsv")
    # the official script: 1/rank of the first relevant passage within the top 10, 0 beyond or missing,
    # averaged over every query with judgements
    assert sum(per_query(qrels, back, ["mrr@10"])["mrr@10"].values()) / 3 == pytest.approx((1 / 2 + 0 + 0) / 3)
    write_trec_run(tmp_path / "run.trec", run)
    assert read_run(tmp_path / "run.trec") == run
    (tmp_path / "bad.tsv").write_text("q1\td1\tfirst\n")
    with pytest.raises(RetrError, match="not a number"):
        read_run(tmp_path / "bad.tsv")


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plots_are_pngs_of_the_expected_size_and_draw_the_numbers_given(board, tmp_path):
    from retr.eval.plots import delta_plot, tradeoff_plot

    board, _ = board
    a = board.get("bm25", "cranfield").per_query["ndcg@10"]
    b = board.get("bm25:k1=1.2,b=0.75", "cranfield").per_query["ndcg@10"]
    points = delta_plot(a, b, "ndcg@10", tmp_path / "delta")
    assert dict(points) == pytest.approx({q: b[q] - a[q] for q in a})
    assert [d for _, d in points] == sorted((d for _, d in points), reverse=True)
    assert _png_size(tmp_path / "delta.png") == (840, 504) and (tmp_path / "delta.svg").stat().st_size > 1000
    records = [{"name": "flat", "bytes_per_doc": 1536, "ndcg@10": 0.36}, {"name": "pq16", "bytes_per_doc": 16,
               "ndcg@10": 0.34}, {"name": "pq8", "bytes_per_doc": 8, "ndcg@10": 0.30},
               {"name": "worse", "bytes_per_doc": 192, "ndcg@10": 0.33}]
    drawn = tradeoff_plot(records, "bytes_per_doc", "ndcg@10", tmp_path / "trade")
    assert drawn["points"] == [(r["name"], (r["bytes_per_doc"], r["ndcg@10"])) for r in records]
    assert drawn["frontier"] == ["pq8", "pq16", "flat"] and _png_size(tmp_path / "trade.png") == (840, 504)
    speed = tradeoff_plot([{"name": "a", "qps": 10, "r": 0.9}, {"name": "b", "qps": 100, "r": 0.8},
                           {"name": "c", "qps": 50, "r": 0.7}], "qps", "r", tmp_path / "speed", cost=False)
    assert speed["frontier"] == ["b", "a"]


def test_dataset_folders_and_bad_input(tmp_path):
    assert [p.name for p in dataset_folders([DATA])] == ["cacm", "cranfield", "pypi-summaries"]
    with pytest.raises(RetrError, match="neither a dataset"):
        dataset_folders([tmp_path])
    with pytest.raises(RetrError, match="not one of the retrievers"):
        run_leaderboard([DATA / "cranfield"], ["bm25"], baseline="dense")
    with pytest.raises(RetrError, match="--resume"):
        run_leaderboard([DATA / "cranfield"], ["bm25"], resume=True)
    with pytest.raises(RetrError, match="--format"):
        tables(run_leaderboard([DATA / "cranfield"], ["bm25"], k=10, metrics=["ndcg@10"]), "xml")
