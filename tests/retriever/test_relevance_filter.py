"""The Cosine Adapter relevance filter and its baselines on real Cranfield: math, training, API, harness, CLI."""

import json
import math

import numpy as np
import pytest

import retr
from retr import RetrError, open_index
from retr.eval.set_metrics import (
    evaluate_sets,
    precision_at_recall,
    threshold_curve,
    topk_curve,
)
from retr.retriever.relevance_filter import (
    FAMILIES,
    CosineAdapter,
    FilteredRetriever,
    ScoreThreshold,
    TopK,
    labelled_candidates,
    mapped_scores,
    query_split,
    split_dataset,
    total_relevant,
    train_adapter,
)
from tests.conftest import DATA
from tests.test_cli import retr as run_cli


def slow_mapped(family, params, s):
    """The families written out one number at a time."""
    a, b = math.exp(min(params[0], 20.0)), params[1]
    x = min(max((1 + s) / 2, 0.0), 1.0)
    if family == "linear":
        return a * s + b
    if family == "sqrt":
        return a * math.sqrt(x + 1e-6) + b
    return a * (x + 1e-6) ** math.exp(min(max(params[2], -5.0), 5.0)) + b


@pytest.mark.parametrize("family", FAMILIES)
def test_mapping_matches_slow_reference_and_is_monotonic_per_query(family):
    import torch

    rng = np.random.default_rng(0)
    params = rng.normal(size=(4, FAMILIES[family])).astype(np.float32)
    cos = np.sort(rng.uniform(-1, 1, size=(4, 50)).astype(np.float32), axis=1)
    got = mapped_scores(family, torch.as_tensor(params), torch.as_tensor(cos)).numpy()
    want = np.array([[slow_mapped(family, p, s) for s in row] for p, row in zip(params, cos)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert (np.diff(got, axis=1) >= -1e-6).all()  # increasing in the cosine: the ranking never changes


def test_curves_match_set_metrics_of_the_runs_they_describe():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(6, 20))
    valid = np.ones_like(values, bool)
    valid[0, 15:] = False
    relevant = rng.random((6, 20)) < 0.2
    qrels = {str(q): {f"d{j}": 1 for j in range(20) if relevant[q, j]} | {f"x{q}": 2} for q in range(6)}
    total = sum(len(v) for v in qrels.values())
    thresholds, precision, recall = threshold_curve(values, relevant, valid, total)
    for t, p, r in list(zip(thresholds, precision, recall))[::7]:
        run = {str(q): {f"d{j}": 1.0 for j in range(20) if valid[q, j] and values[q, j] >= t} for q in range(6)}
        got = evaluate_sets(qrels, run, ["precision", "recall"])
        assert got["precision"] == pytest.approx(p) and got["recall"] == pytest.approx(r)
    order = np.argsort(-values, axis=1)
    ranked_rel, ranked_valid = np.take_along_axis(relevant, order, 1), np.take_along_axis(valid, order, 1)
    _ks, precision, recall = topk_curve(ranked_rel, ranked_valid, total)
    for k in (1, 5, 20):
        run = {str(q): {f"d{j}": 1.0 for j in order[q, :k] if valid[q, j]} for q in range(6)}
        got = evaluate_sets(qrels, run, ["precision", "recall"])
        assert got["precision"] == pytest.approx(precision[k - 1]) and got["recall"] == pytest.approx(recall[k - 1])
    assert precision_at_recall(np.array([0.5, 0.2]), np.array([0.1, 0.4]), 0.3) == 0.2


def test_empty_sets_count_against_macro_scores():
    qrels = {"a": {"x": 1}, "b": {"y": 1, "z": 0}}
    got = evaluate_sets(qrels, {"a": {"x": 1.0}, "b": {}})
    assert got["precision"] == 1.0 and got["recall"] == 0.5 and got["macro_f1"] == 0.5
    assert got["empty"] == 0.5 and got["avg_size"] == 0.5
    with pytest.raises(RetrError, match="unknown set metric"):
        evaluate_sets(qrels, {}, ["p@10"])


def test_query_split_is_deterministic_and_disjoint(cranfield):
    train, held = split_dataset(cranfield, "train"), split_dataset(cranfield, "held-out")
    assert (len(train.queries), len(held.queries)) == (165, 60)
    assert set(train.queries).isdisjoint(held.queries) and set(train.queries) | set(held.queries) == set(cranfield.queries)
    assert all(query_split(q) == "held-out" for q in held.queries)
    with pytest.raises(RetrError, match="train' or 'held-out"):
        split_dataset(cranfield, "test")


@pytest.fixture(scope="module")
def trained(dense, cranfield, tmp_path_factory):
    """The Cranfield dense index saved with a linear Cosine Adapter trained on its train queries."""
    path = dense.save(tmp_path_factory.mktemp("filter") / "idx")
    adapter = train_adapter(open_index(path), cranfield, family="linear")
    return path, adapter


def test_adapter_is_saved_as_safetensors_in_the_index_and_reloads(trained, dense):
    path, adapter = trained
    assert sorted(p.name for p in (path / "adapter").iterdir()) == ["adapter.json", "adapter.safetensors"]
    config = json.loads((path / "adapter" / "adapter.json").read_text())
    assert config["dim"] == 384 and config["train_queries"] == 165 and 0 < config["threshold"] < 1
    assert config["encoder"] == "dense:all-MiniLM-L6-v2"
    reopened = open_index(path)  # the adapter files do not disturb the index's checksums
    bound = FilteredRetriever(reopened, "adapter")  # no path: the index's own adapter/
    explicit = FilteredRetriever(dense, f"adapter:{path},threshold={config['threshold']}")
    queries = ["boundary layer transition at high mach number", "flutter of panels"]
    assert bound.search_batch(queries, 50) == explicit.search_batch(queries, 50)
    assert adapter.threshold == config["threshold"]


def test_adapter_keeps_a_prefix_of_the_ranking_and_can_return_nothing(trained, dense, cranfield):
    path, _ = trained
    queries = list(cranfield.queries.values())[:20]
    unfiltered = dense.search_batch(queries, 100)
    for threshold in (0.05, 0.3):
        filtered = FilteredRetriever(dense, f"adapter:{path},threshold={threshold}").search_batch(queries, 100)
        for f, u in zip(filtered, unfiltered):
            assert f == u[: len(f)]
    nothing = FilteredRetriever(dense, f"adapter:{path},threshold=1.0").search_batch(queries, 100)
    assert all(hits == [] for hits in nothing)


def test_adapter_beats_the_global_cosine_threshold_on_held_out_queries(trained, dense, cranfield):
    """PR-AUC over held-out (query, document) pairs: measured 0.2054 (adapter) vs 0.1672 (cosine), 0.1797 (top-k)."""
    _, adapter = trained
    held = split_dataset(cranfield, "held-out")
    reps, scores, labels, _ = labelled_candidates(dense, held, 100)
    valid, relevant, total = labels >= 0, labels == 1, total_relevant(held)

    def auc(precision, recall):
        return float((precision * np.diff(np.r_[0.0, recall])).sum())

    probs = adapter.probabilities(reps, np.where(valid, scores, -1.0))
    adapter_auc = auc(*threshold_curve(probs, relevant, valid, total)[1:])
    cosine_auc = auc(*threshold_curve(scores, relevant, valid, total)[1:])
    topk_auc = auc(*topk_curve(relevant, valid, total)[1:])
    assert adapter_auc > max(cosine_auc, topk_auc) + 0.01, (adapter_auc, cosine_auc, topk_auc)


def test_harness_reports_set_metrics_for_every_filter(dense, cranfield, trained):
    path, _adapter = trained
    held = split_dataset(cranfield, "held-out")
    results = retr.evaluate(held, [dense], k=100, metrics=["ndcg@10"], filter="topk:k=5")
    assert results[0].metrics["avg_size"] == 5
    assert results[0].retriever.endswith("|topk:k=5") and results[0].metrics["empty"] == 0
    exact = evaluate_sets(held.qrels, results[0].run, ["precision"])["precision"]
    assert results[0].metrics["precision"] == exact
    filtered = retr.evaluate(held, [dense], k=100, metrics=["ndcg@10"], filter=f"adapter:{path}")[0].metrics
    cosine = retr.evaluate(held, [dense], k=100, metrics=["ndcg@10"], filter="cosine:threshold=0.2")[0].metrics
    assert filtered["avg_size"] < cosine["avg_size"] and filtered["precision"] > cosine["precision"]


def test_filter_errors_are_clear(dense, bm25, tmp_path):
    with pytest.raises(RetrError, match="no Cosine Adapter at"):
        FilteredRetriever(dense, f"adapter:{tmp_path}")
    with pytest.raises(RetrError, match="needs a saved index"):
        FilteredRetriever(retr.Retriever(dense.encoder, dense.index, dense.docstore), "adapter")  # never saved
    with pytest.raises(RetrError, match="probability in"):
        CosineAdapter(threshold=1.5)
    with pytest.raises(RetrError, match="unknown filter 'bogus'"):
        FilteredRetriever(dense, "bogus:1")
    with pytest.raises(RetrError, match="k >= 1"):
        TopK(0)
    assert FilteredRetriever(bm25, ScoreThreshold(1e9)).search("lift", 10) == []  # baselines work on any retriever
    with pytest.raises(RetrError, match="Cosine Adapter filters dense retrievers"):
        adapter = CosineAdapter()
        adapter._net, adapter.config = object(), {"dim": 384}
        FilteredRetriever(bm25, adapter)


def test_cli_trains_searches_and_evaluates_with_a_filter(tmp_path):
    index = tmp_path / "idx"
    run_cli("index", "--corpus", DATA / "cranfield", "--out", index, "--encoder", "dense:all-MiniLM-L6-v2")
    assert "trained a linear Cosine Adapter on 165 queries" in run_cli("train-filter", index, DATA / "cranfield").stdout
    out = run_cli("search", index, "shock wave boundary layer", "--filter", "adapter", "--json").stdout
    hits = json.loads(out)["hits"]
    assert 0 < len(hits) < 100
    none = json.loads(run_cli("search", index, "shock wave", "--filter", "adapter:threshold=1", "--json").stdout)
    assert none["hits"] == []
    table = run_cli("eval", DATA / "cranfield", "-r", index, "--queries", "held-out", "--filter", "adapter",
                    "-m", "ndcg@10").stdout
    assert "|adapter:linear,threshold=" in table and "macro_f1" in table
    bad = run_cli("train-filter", index, DATA / "cranfield", "--family", "cubic", check=False)
    assert bad.returncode == 2 and "unknown adapter family 'cubic'" in bad.stderr
