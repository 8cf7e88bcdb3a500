import math

import pytest

from retr import RetrError, evaluate_run
from retr.eval.metrics import cut, per_query
from retr.eval.runs import read_trec_run, write_trec_run

QRELS = {"q1": {"a": 2, "b": 1}, "q2": {"c": 1}, "q3": {"z": 1}}
RUN = {"q1": {"b": 3.0, "x": 2.0, "a": 1.0}, "q2": {"y": 5.0, "c": 4.0}}  # q3 unanswered


def test_ndcg_mrr_recall_map_by_hand():
    got = per_query(QRELS, RUN, ["ndcg@10", "mrr@10", "recall@100", "map"])
    dcg = 1 / math.log2(2) + 2 / math.log2(4)  # trec_eval's linear gains: b=1 at rank 1, a=2 at rank 3
    ideal = 2 / math.log2(2) + 1 / math.log2(3)
    assert got["ndcg@10"]["q1"] == pytest.approx(dcg / ideal, abs=1e-4)
    assert got["mrr@10"] == {"q1": 1.0, "q2": 0.5, "q3": 0.0}
    assert got["recall@100"] == {"q1": 1.0, "q2": 1.0, "q3": 0.0}
    assert got["map"]["q1"] == pytest.approx((1 / 1 + 2 / 3) / 2)


def test_unanswered_queries_count_as_zero_in_the_mean():
    assert evaluate_run(QRELS, RUN, ["mrr@10"])["mrr@10"] == pytest.approx(1.5 / 3)


def test_mrr_at_10_ignores_hits_below_rank_10():
    run = {"q2": {f"d{i}": 100.0 - i for i in range(10)} | {"c": 1.0}}
    assert per_query({"q2": {"c": 1}}, run, ["mrr@10"])["mrr@10"]["q2"] == 0.0


def test_cut_breaks_ties_like_trec_eval():
    assert list(cut({"q": {"a": 1.0, "c": 1.0, "b": 1.0}}, 2)["q"]) == ["c", "b"]


def test_unknown_metric():
    with pytest.raises(RetrError, match="unknown metric"):
        evaluate_run(QRELS, RUN, ["ndcg@7"])


def test_trec_run_round_trip(tmp_path):
    write_trec_run(tmp_path / "r.trec", RUN, tag="my system")
    lines = (tmp_path / "r.trec").read_text().splitlines()
    assert lines[0] == "q1 Q0 b 1 3 my_system"
    assert read_trec_run(tmp_path / "r.trec") == RUN
