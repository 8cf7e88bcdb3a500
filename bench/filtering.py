"""Relevance filtering benchmark: the Cosine Adapter against a fixed top-k cut-off and a global cosine threshold.

For each dataset (BEIR layout) with dense all-MiniLM-L6-v2 on a flat index:

1. Split the judged queries deterministically (BLAKE2b of the query id, 30% held out; see
   ``retr.retriever.relevance_filter.query_split``). Take every query's top ``depth``
   candidates; label them with the qrels (relevant = any judgement >= 1).
2. Train a Cosine Adapter per function family (linear, sqrt, power) on the train queries'
   labelled pairs (binary cross-entropy on sigmoid of the mapped cosine).
3. On the held-out queries, micro precision/recall curves (pooled over query-document
   pairs; recall counts every judged relevant document, also those below the depth) of:
   the unfiltered top ``depth`` list (the reference), top-k for k = 1..depth, a global raw
   cosine threshold swept over all values, and each adapter's global probability threshold.
   Reported: PR-AUC, best F1, precision at <= 5% recall loss (recall >= 0.95 x the
   unfiltered list's recall) and its gain over the unfiltered list and the two baselines,
   precision at fixed recall levels (the curve), and each method with the setting chosen on
   the *train* queries (best train F1) applied to the held-out ones (no tuning on test).

Tables are printed and written to bench/results/filtering.md.

    .venv/bin/python bench/filtering.py [--datasets cranfield cacm] [--depth 100]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from common import md_table

REPO = Path(__file__).resolve().parent.parent
MODEL = "all-MiniLM-L6-v2"
FAMILIES = ("linear", "sqrt", "power")
RECALL_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


def pr_auc(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the step curve: sum of precision x recall gained, from recall 0 (AP-style, micro)."""
    gained = np.diff(np.r_[0.0, recall])
    return float((precision * gained).sum())


def best_f1(precision: np.ndarray, recall: np.ndarray) -> tuple[float, int]:
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    i = int(np.argmax(f1))
    return float(f1[i]), i


def at_setting(values: np.ndarray, relevant: np.ndarray, valid: np.ndarray, total: int, threshold: float) -> tuple:
    keep = valid & (values >= threshold)
    found = int((keep & relevant).sum())
    p = found / keep.sum() if keep.sum() else 0.0
    r = found / total
    return p, r, 2 * p * r / (p + r) if p + r else 0.0, keep.sum() / len(values)


def run(dataset_dir: Path, depth: int, held_out: float, epochs: int) -> tuple[list[list], list[list], list[list], dict]:
    import retr
    from retr.eval.set_metrics import precision_at_recall, threshold_curve, topk_curve
    from retr.retriever.relevance_filter import (
        CosineAdapter,
        best_f1_threshold,
        fit_adapter,
        labelled_candidates,
        split_dataset,
        total_relevant,
    )

    data = retr.load_dataset(dataset_dir)
    retriever = retr.Retriever.build(data.corpus, f"dense:{MODEL}", "flat")
    parts = {p: split_dataset(data, p, held_out) for p in ("train", "held-out")}
    cand = {p: labelled_candidates(retriever, d, depth) for p, d in parts.items()}
    totals = {p: total_relevant(d) for p, d in parts.items()}
    info = {"train queries": len(parts["train"].queries), "held-out queries": len(parts["held-out"].queries),
            "train pairs": int((cand["train"][2] >= 0).sum()), "train relevant in candidates": int((cand["train"][2] == 1).sum()),
            "held-out relevant (all)": totals["held-out"]}

    reps, scores, labels, _ = cand["held-out"]
    valid, rel, total = labels >= 0, labels == 1, totals["held-out"]
    r0 = float(rel.sum() / total)
    p0 = float(rel.sum() / valid.sum())
    target = 0.95 * r0
    curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    transfer: dict[str, tuple] = {}
    curves["top-k"] = topk_curve(rel, valid, total)
    curves["cosine threshold"] = threshold_curve(scores, rel, valid, total)

    tr_reps, tr_scores, tr_labels, _ = cand["train"]
    tr_valid, tr_rel = tr_labels >= 0, tr_labels == 1
    ks, tp, trr = topk_curve(tr_rel, tr_valid, totals["train"])
    k_best = int(ks[best_f1(tp, trr)[1]])
    transfer["top-k"] = (f"k={k_best}", *at_setting(np.tile(-np.arange(depth, dtype=float), (len(scores), 1)),
                                                     rel, valid, total, -k_best + 0.5))
    th, cp, cr = threshold_curve(tr_scores, tr_rel, tr_valid, totals["train"])
    t_best = float(th[best_f1(cp, cr)[1]])
    transfer["cosine threshold"] = (f"cos>={t_best:.3f}", *at_setting(scores, rel, valid, total, t_best))
    train_seconds = {}
    for family in FAMILIES:
        start = time.perf_counter()
        net, _ = fit_adapter(tr_reps, tr_scores, tr_labels, family, epochs=epochs)
        train_seconds[family] = time.perf_counter() - start
        t_adapter = best_f1_threshold(net, family, tr_reps, tr_scores, tr_labels, totals["train"])
        adapter = CosineAdapter()
        adapter._net, adapter.config = net, {"family": family}
        probs = adapter.probabilities(reps, np.where(valid, scores, -1.0))
        name = f"adapter ({family})"
        curves[name] = threshold_curve(probs, rel, valid, total)
        transfer[name] = (f"p>={t_adapter:.3f}", *at_setting(probs, rel, valid, total, t_adapter))
    info["adapter training s"] = ", ".join(f"{f} {s:.1f}" for f, s in train_seconds.items())

    base = {m: precision_at_recall(curves[m][1], curves[m][2], target) for m in ("top-k", "cosine threshold")}
    summary = [[data.name, f"unfiltered top {depth}", "–", f"{p0:.4f}", f"{r0:.4f}", f"{2*p0*r0/(p0+r0):.4f}",
                f"{p0:.4f}", "1.00×", "–", "–"]]
    for name, (_, precision, recall) in curves.items():
        f1, i = best_f1(precision, recall)
        p95 = precision_at_recall(precision, recall, target)
        summary.append([data.name, name, f"{pr_auc(precision, recall):.4f}", f"{precision[i]:.4f}", f"{recall[i]:.4f}",
                        f"{f1:.4f}", f"{p95:.4f}", f"{p95 / p0:.2f}×",
                        f"{p95 / base['top-k']:.2f}×", f"{p95 / base['cosine threshold']:.2f}×"])
    curve_rows = [[data.name, name, *(f"{precision_at_recall(c[1], c[2], lvl):.4f}" for lvl in RECALL_LEVELS),
                   f"{precision_at_recall(c[1], c[2], target):.4f}"] for name, c in curves.items()]
    transfer_rows = [[data.name, name, setting, f"{p:.4f}", f"{r:.4f}", f"{f:.4f}", f"{size:.1f}"]
                     for name, (setting, p, r, f, size) in transfer.items()]
    info["target recall (0.95 x unfiltered)"] = round(target, 4)
    return summary, curve_rows, transfer_rows, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["cranfield", "cacm"])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--held-out", type=float, default=0.3)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "filtering.md")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))

    summary, curves, transfer, infos = [], [], [], {}
    for name in args.datasets:
        s, c, t, info = run(args.data / name, args.depth, args.held_out, args.epochs)
        summary += s
        curves += c
        transfer += t
        infos[name] = info
    levels = [f"P@R≥{lvl}" for lvl in RECALL_LEVELS]
    text = "\n\n".join([
        "# Relevance filtering: Cosine Adapter vs top-k vs global cosine threshold",
        (f"`{shlex.join(['.venv/bin/python', 'bench/filtering.py', *sys.argv[1:]])}` — "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{os.cpu_count()} CPUs; dense:{MODEL}@flat, candidates = top {args.depth}, "
        f"held-out = {args.held_out:.0%} of queries by BLAKE2b(query id); micro precision/recall over "
        "(query, document) pairs, recall against every judged relevant document."),
        "Splits: " + "; ".join(f"{n}: " + ", ".join(f"{k} {v}" for k, v in i.items()) for n, i in infos.items()),
        "## Held-out queries: the whole curve (settings swept on the held-out queries, the same for every method)",
        "P@R95 = precision at <= 5% recall loss (recall >= 0.95 × the unfiltered list's); gains are its ratios.",
        md_table(["dataset", "method", "PR-AUC", "P at best F1", "R at best F1", "best F1", "P@R95",
                  "vs unfiltered", "vs top-k", "vs cosine"], summary),
        "## Precision-recall curve: best precision at recall >= level (held-out)",
        md_table(["dataset", "method", *levels, "P@R95"], curves),
        "## Settings chosen on the train queries (best train F1), applied to the held-out queries",
        md_table(["dataset", "method", "setting", "precision", "recall", "F1", "avg results/query"], transfer),
    ]) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
