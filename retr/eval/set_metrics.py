"""Set-based metrics for filtered result lists: precision, recall and F1 of the returned set.

Ranking metrics (nDCG, MRR) cannot see where a list was cut; relevance filtering is
judged on the set it returns, which may be empty. Two averages:

- micro (``precision``, ``recall``, ``f1``): pooled over all (query, document) pairs, as a
  classifier of candidates is judged — the paper's view;
- macro (``macro_precision``, ``macro_recall``, ``macro_f1``): per query, then averaged over
  every judged query. An empty set scores 0 on all three (each judged query has at least
  one relevant document, so returning nothing is a miss).

``avg_size`` is the mean number of documents returned, ``empty`` the fraction of judged
queries that got none. A document is relevant when its judgement is >= ``min_relevance``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from retr.errors import RetrError

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]
SET_METRICS = ("precision", "recall", "f1", "macro_precision", "macro_recall", "macro_f1", "avg_size", "empty")


def relevant_sets(qrels: Qrels, min_relevance: int = 1) -> dict[str, set[str]]:
    """Query id -> relevant document ids, for judged queries that have at least one."""
    out = {q: {d for d, r in docs.items() if r >= min_relevance} for q, docs in qrels.items()}
    return {q: docs for q, docs in out.items() if docs}


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def evaluate_sets(
    qrels: Qrels, run: Run, metrics: Sequence[str] = SET_METRICS, min_relevance: int = 1,
) -> dict[str, float]:
    """metric -> value over every judged query (queries the run leaves out count as empty sets)."""
    unknown = [m for m in metrics if m not in SET_METRICS]
    if unknown:
        raise RetrError(f"unknown set metric(s) {', '.join(unknown)}; known: {', '.join(SET_METRICS)}")
    relevant = relevant_sets(qrels, min_relevance)
    if not relevant:
        raise RetrError("no judged query has a relevant document: set metrics are undefined")
    hits = returned = total_relevant = 0
    per_query = np.zeros((len(relevant), 4))  # precision, recall, f1, size
    for row, (qid, rel) in enumerate(relevant.items()):
        got = set(run.get(qid, {}))
        found = len(got & rel)
        hits, returned, total_relevant = hits + found, returned + len(got), total_relevant + len(rel)
        p = found / len(got) if got else 0.0
        r = found / len(rel)
        per_query[row] = (p, r, _f1(p, r), len(got))
    precision = hits / returned if returned else 0.0
    recall = hits / total_relevant
    values = {
        "precision": precision, "recall": recall, "f1": _f1(precision, recall),
        "macro_precision": per_query[:, 0].mean(), "macro_recall": per_query[:, 1].mean(),
        "macro_f1": per_query[:, 2].mean(), "avg_size": per_query[:, 3].mean(),
        "empty": float((per_query[:, 3] == 0).mean()),
    }
    return {m: float(values[m]) for m in metrics}


def threshold_curve(
    values: np.ndarray, relevant: np.ndarray, valid: np.ndarray, total_relevant: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Micro precision/recall of "keep candidates with value >= t" for every useful global threshold t.

    ``values``, ``relevant`` and ``valid`` are (nq, n) over the candidates; ``total_relevant``
    counts every relevant pair of the judged queries (also those outside the candidates).
    Returns (thresholds, precision, recall), thresholds descending; ties kept together.
    """
    v = np.asarray(values, dtype=np.float64)[valid]
    rel = np.asarray(relevant, dtype=bool)[valid]
    order = np.argsort(-v, kind="stable")
    v, rel = v[order], rel[order]
    last = np.r_[v[1:] != v[:-1], True]  # the last pair of each run of equal values
    found = np.cumsum(rel)[last]
    kept = np.arange(1, len(v) + 1)[last]
    return v[last], found / kept, found / max(total_relevant, 1)


def topk_curve(
    relevant: np.ndarray, valid: np.ndarray, total_relevant: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Micro precision/recall of "keep each query's first k candidates" for k = 1..n: (k, precision, recall)."""
    rel = np.asarray(relevant, dtype=bool) & valid
    found = np.cumsum(rel.sum(axis=0))
    kept = np.cumsum(np.asarray(valid).sum(axis=0))
    ks = np.arange(1, rel.shape[1] + 1)
    return ks, found / np.maximum(kept, 1), found / max(total_relevant, 1)


def precision_at_recall(precision: np.ndarray, recall: np.ndarray, target: float) -> float:
    """The best precision among operating points whose recall is >= ``target`` (0 if none reaches it)."""
    ok = recall >= target - 1e-12
    return float(precision[ok].max()) if ok.any() else 0.0
