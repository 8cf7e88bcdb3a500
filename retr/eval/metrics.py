"""Retrieval metrics computed by trec_eval's own code (pytrec_eval), averaged like ``trec_eval -c``.

A judged query the run does not answer counts as 0, so systems that skip queries are
not flattered. MRR@10 is trec_eval's ``recip_rank`` on the run cut to its top 10,
cut in trec_eval's order (score descending, ties by document id descending).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from retr.errors import RetrError

Run = Mapping[str, Mapping[str, float]]  # query id -> doc id -> score
Qrels = Mapping[str, Mapping[str, int]]

# our name -> (trec_eval measure to ask for, key in its answer, depth the run is cut to first)
MEASURES: dict[str, tuple[str, str, int | None]] = {
    "ndcg@10": ("ndcg_cut.10", "ndcg_cut_10", None),
    "mrr@10": ("recip_rank", "recip_rank", 10),
    "recall@100": ("recall.100", "recall_100", None),
    "recall@1000": ("recall.1000", "recall_1000", None),
    "map": ("map", "map", None),
    "p@10": ("P.10", "P_10", None),
}
DEFAULT_METRICS = ("ndcg@10", "mrr@10", "recall@100", "recall@1000", "map")


def cut(run: Run, depth: int) -> dict[str, dict[str, float]]:
    """Each query's top ``depth`` documents in trec_eval's ranking order."""
    out = {}
    for qid, docs in run.items():
        ranked = sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)
        out[qid] = dict(ranked[:depth])
    return out


def per_query(qrels: Qrels, run: Run, metrics: Sequence[str] = DEFAULT_METRICS) -> dict[str, dict[str, float]]:
    """metric -> query id -> value, for every judged query (0 where the run has nothing)."""
    import pytrec_eval

    unknown = [m for m in metrics if m not in MEASURES]
    if unknown:
        raise RetrError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(MEASURES)}")
    judged = {q: {d: int(r) for d, r in docs.items()} for q, docs in qrels.items()}
    out: dict[str, dict[str, float]] = {}
    for depth in {MEASURES[m][2] for m in metrics}:
        chosen = [m for m in metrics if MEASURES[m][2] == depth]
        scored = cut(run, depth) if depth else run
        scored = {q: {d: float(s) for d, s in scored.get(q, {}).items()} for q in judged}
        evaluator = pytrec_eval.RelevanceEvaluator(judged, {MEASURES[m][0] for m in chosen})
        answer = evaluator.evaluate({q: docs for q, docs in scored.items() if docs})
        for m in chosen:
            key = MEASURES[m][1]
            out[m] = {q: answer.get(q, {}).get(key, 0.0) for q in judged}
    return {m: out[m] for m in metrics}


def evaluate_run(qrels: Qrels, run: Run, metrics: Sequence[str] = DEFAULT_METRICS) -> dict[str, float]:
    """metric -> mean over all judged queries."""
    scores = per_query(qrels, run, metrics)
    return {m: sum(v.values()) / len(v) for m, v in scores.items()}
