"""Is B really better than A? Paired tests on per-query scores, Holm's correction, wins / ties / losses.

The inputs are trec_eval's per-query values of one metric for two systems over the same judged
queries (``retr.eval.metrics.per_query``). For each pair:

- a paired two-sided t-test (``scipy.stats.ttest_rel``);
- a paired randomisation test (``scipy.stats.permutation_test`` with ``permutation_type="samples"``:
  each query's two scores swap places at random; exact enumeration up to ``2**n <= resamples``);
- wins / ties / losses of B against A, query by query (a tie: equal to 1e-9).

Across every comparison of one table (systems x datasets, per metric) the randomisation test's
p-values are corrected with Holm's step-down method, and a difference is marked significant when
its corrected p-value is below ``alpha``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np

from retr.errors import RetrError

TIE = 1e-9


@dataclass
class Comparison:
    """B against the baseline A on one metric of one dataset."""

    dataset: str
    metric: str
    baseline: str
    system: str
    queries: int
    baseline_mean: float
    system_mean: float
    delta: float
    t_p: float
    randomisation_p: float
    wins: int
    ties: int
    losses: int
    holm_p: float = float("nan")
    significant: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def paired_vectors(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The queries both systems were scored on, and their two score vectors in one order."""
    if set(a) != set(b):
        raise RetrError(f"the two systems were scored on different queries ({len(set(a) ^ set(b))} differ); "
                        "evaluate both on the same qrels")
    qids = sorted(a)
    return qids, np.array([a[q] for q in qids], dtype=np.float64), np.array([b[q] for q in qids], dtype=np.float64)


def paired_test(a: np.ndarray, b: np.ndarray, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """(paired t-test p, paired randomisation-test p), both two-sided; 1.0 when the two never differ."""
    from scipy import stats

    diff = b - a
    if len(diff) < 2 or np.all(np.abs(diff) <= TIE):
        return 1.0, 1.0
    t_p = float(stats.ttest_rel(b, a).pvalue)
    if not np.isfinite(t_p):  # every difference equal: no variance, the t-test is undefined
        t_p = 0.0
    result = stats.permutation_test((b, a), lambda x, y, axis: np.mean(x - y, axis=axis), vectorized=True,
                                    permutation_type="samples", alternative="two-sided", n_resamples=resamples,
                                    rng=np.random.default_rng(seed))
    return t_p, float(result.pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error over all of them), in the input order."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    m = len(p)
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out.tolist()


def compare(
    dataset: str, metric: str, baseline: str, system: str, a: Mapping[str, float], b: Mapping[str, float],
    resamples: int = 10_000, seed: int = 0,
) -> Comparison:
    """B against A on the per-query values of one metric (Holm's correction is applied by ``correct``)."""
    qids, va, vb = paired_vectors(a, b)
    t_p, r_p = paired_test(va, vb, resamples, seed)
    diff = vb - va
    return Comparison(dataset, metric, baseline, system, len(qids), float(va.mean()), float(vb.mean()),
                      float(diff.mean()), t_p, r_p, int((diff > TIE).sum()), int((np.abs(diff) <= TIE).sum()),
                      int((diff < -TIE).sum()))


def correct(comparisons: Sequence[Comparison], alpha: float = 0.05) -> list[Comparison]:
    """Holm-correct the randomisation p-values per metric across all comparisons given; mark significance."""
    for metric in {c.metric for c in comparisons}:
        family = [c for c in comparisons if c.metric == metric]
        for c, p in zip(family, holm([c.randomisation_p for c in family])):
            c.holm_p, c.significant = p, p < alpha
    return list(comparisons)
