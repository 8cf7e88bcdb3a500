"""DupMAE benchmark: nDCG@10 of the DupMAE representation before and after a short DupMAE pre-training run.

For each dataset (BEIR layout) and each checkpoint — the bundled SPLADE-tiny-msmarco MLM
(``splade-tiny``, 2 layers, 128-d) and, with ``--pretrain OUT`` (or ``--pretrained PATH``),
the same model after DupMAE pre-training on the collections' document texts
(``retr.retriever.dupmae_pretrain``) — the texts are encoded once into the two halves
([CLS]; reduced bag-of-words) and ranked by exhaustive inner product (what the ``flat``
index computes) for:

- DupMAE ``both`` with each half L2-normalised (the default, ``normalize=halves``),
- DupMAE ``both`` as the paper's raw concatenation (``normalize=none``),
- the [CLS] half alone and the BoW half alone (cosine).

Reported: nDCG@10 and Recall@100 of runs of depth 100 over all judged queries, and the
change after pre-training. Tables are printed and written to ``--out``
(default bench/results/dupmae.md).

    .venv/bin/python bench/dupmae.py --pretrain runs/dupmae-ckpt --steps 3000 [--device cuda]
    .venv/bin/python bench/dupmae.py --pretrained runs/dupmae-ckpt
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from common import md_table

VARIANTS = (("DupMAE [CLS]+BoW (halves normalised)", "both", "halves"),
            ("DupMAE [CLS]+BoW (raw concatenation)", "both", "none"),
            ("[CLS] half only", "cls", "halves"), ("BoW half only", "bow", "halves"))


def rank(queries: np.ndarray, docs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` by inner product, ties by document order (what FAISS flat returns)."""
    scores = queries @ docs.T
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, 1), ids


def evaluate(model: str, dataset_dir: Path, device: str, k: int) -> dict[str, dict[str, float]]:
    import retr
    from retr.retriever.dupmae import DupMAEEncoder, combine

    data = retr.load_dataset(dataset_dir)
    encoder = DupMAEEncoder(model, device=device, batch_size=64 if device.startswith("cuda") else 8)
    qids = list(data.queries)
    start = time.perf_counter()
    d_cls, d_bow = encoder.halves([d.content for d in data.corpus])
    q_cls, q_bow = encoder.halves([data.queries[q] for q in qids])
    seconds = time.perf_counter() - start
    doc_ids = [d.id for d in data.corpus]
    out = {}
    for label, part, normalize in VARIANTS:
        scores, ids = rank(combine(q_cls, q_bow, part, normalize), combine(d_cls, d_bow, part, normalize), k)
        run = {q: {doc_ids[i]: float(s) for s, i in zip(sr, ir)} for q, sr, ir in zip(qids, scores, ids)}
        metrics = retr.evaluate_run(data.qrels, run, ["ndcg@10", "recall@100"])
        out[label] = metrics | {"dim": encoder.dim if part == "both" else (encoder.hidden if part == "cls" else encoder.bow_dim)}
    out["_seconds"] = {"encode": seconds}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="splade-tiny")
    parser.add_argument("--datasets", nargs="+", default=["cranfield", "cacm"])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--pretrain", type=Path, help="run DupMAE pre-training into this folder first")
    parser.add_argument("--pretrained", type=Path, help="a DupMAE checkpoint to compare with the base model")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--shard-size", default="")
    parser.add_argument("--device", default="")
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "dupmae.md")
    args = parser.parse_args()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    record = None
    after = args.pretrained
    if args.pretrain is not None:
        from retr.retriever.dupmae_pretrain import collection_texts, pretrain_dupmae

        texts = collection_texts([args.data / d for d in args.datasets])
        record = pretrain_dupmae(args.model, texts, args.pretrain, steps=args.steps, batch_size=args.batch_size,
                                 max_length=args.max_length, lr=args.lr, device=device, shard_size=args.shard_size)
        after = args.pretrain
    elif after is not None and (after / "dupmae_pretrain.json").is_file():
        record = json.loads((after / "dupmae_pretrain.json").read_text())

    models = {"SPLADE-tiny MLM (before)": args.model}
    if after is not None:
        models["after DupMAE pre-training"] = str(after)
    results = {(m, d): evaluate(path, args.data / d, device, args.depth) for m, path in models.items() for d in args.datasets}
    rows = []
    for d in args.datasets:
        for label, _, _ in VARIANTS:
            before = results[(next(iter(models)), d)][label]
            row = [d, label, before["dim"], f"{before['ndcg@10']:.4f}", f"{before['recall@100']:.4f}"]
            if after is not None:
                post = results[("after DupMAE pre-training", d)][label]
                row += [f"{post['ndcg@10']:.4f}", f"{post['recall@100']:.4f}", f"{post['ndcg@10'] - before['ndcg@10']:+.4f}"]
            rows.append(row)
    header = ["dataset", "representation", "dim", "nDCG@10 before", "R@100 before"]
    if after is not None:
        header += ["nDCG@10 after", "R@100 after", "Δ nDCG@10"]
    lines = [
        "# DupMAE: SPLADE-tiny MLM before and after DupMAE pre-training",
        f"`{shlex.join(['python', 'bench/dupmae.py', *sys.argv[1:]])}` — "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, device {device}"
        + (f" ({torch.cuda.get_device_name(0)})" if device.startswith("cuda") else "")
        + f"; exhaustive inner product (= flat index), runs of depth {args.depth}, all judged queries.",
        md_table(header, rows),
    ]
    if record is not None:
        lines.append("Pre-training run: " + ", ".join(f"{k} {v}" for k, v in record.items() if k != "history_every_10"))
        curve = record.get("history_every_10", [])
        if curve:
            marks = sorted({0, len(curve) // 4, len(curve) // 2, 3 * len(curve) // 4, len(curve) - 1})
            lines.append(md_table(["step", "encoder MLM", "[CLS] decoder", "BoW", "total"],
                                  [[i * 10, *(f"{curve[i][k]:.3f}" for k in ("encoder_mlm", "decoder", "bow", "total"))]
                                   for i in marks]))
    text = "\n\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
