"""Relevance filtering of a retriever's hits: the Cosine Adapter and the two cut-offs it is compared with.

Dense search has no natural cut-off and raw cosines are not comparable across queries.
The Cosine Adapter (Rossi et al., CIKM 2024, arXiv 2408.04887) maps each raw cosine ``s``
through a query-dependent monotonic function whose parameters a small network predicts
from the query embedding; ``sigmoid`` of the mapped score reads as the probability that
the document is relevant, and one global threshold on it cuts every query's list.
Monotonic per query, so the ranking is unchanged; only where a list ends moves.

Function families (``x = (1 + s) / 2`` in [0, 1] so roots and powers are defined;
``a = exp(.) > 0`` and ``c = exp(.) > 0`` keep them increasing; the network's output bias
starts at a global logistic fit so training begins from the raw-cosine threshold):

- ``linear``: ``a * s + b``
- ``sqrt``:   ``a * sqrt(x) + b``
- ``power``:  ``a * x ** c + b``

Training: binary cross-entropy between ``sigmoid(mapped score)`` and the label of labelled
(query, document, relevant?) pairs — here the top ``depth`` candidates of each training
query, labelled by the qrels. Filters are specs like every other part:
``adapter[:PATH][,threshold=0.5]``, ``cosine:threshold=0.45`` (a global raw-score
threshold) and ``topk:k=10`` (a fixed cut-off); ``FilteredRetriever`` applies one to any
retriever's candidates.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from retr.errors import RetrError
from retr.progress import progress_bar
from retr.retriever.pipeline import check_queries
from retr.storage import atomic_directory

FAMILIES = {"linear": 2, "sqrt": 2, "power": 3}  # family -> number of predicted parameters
ADAPTER_DIR, WEIGHTS, CONFIG = "adapter", "adapter.safetensors", "adapter.json"


# ---------------------------------------------------------------- the math

def mapped_scores(family: str, params: Any, cosines: Any) -> Any:
    """Mapped (logit) scores of shape (nq, n) from raw cosines (nq, n) and per-query parameters (nq, P), in torch."""
    return params[:, :1].clamp(max=20.0).exp() * base_function(family, cosines, params) + params[:, 1:2]


def base_function(family: str, cosines: Any, params: Any = None) -> Any:
    """The family's increasing shape f(s) before the per-query scale and shift (``power`` reads its exponent)."""
    if family not in FAMILIES:
        raise RetrError(f"unknown adapter family {family!r}; use one of {', '.join(FAMILIES)}")
    if family == "linear":
        return cosines
    x = ((1.0 + cosines) / 2.0).clamp(0.0, 1.0)
    if family == "sqrt":
        return (x + 1e-6).sqrt()
    c = params[:, 2:3].clamp(-5.0, 5.0).exp() if params is not None else 1.0
    return (x + 1e-6).pow(c)


def query_split(qid: str, held_out: float = 0.3) -> str:
    """``"train"`` or ``"held-out"`` for a query id: BLAKE2b of the id as a fraction in [0, 1) against ``held_out``.

    Deterministic and independent of file order, so every tool agrees on the split.
    """
    fraction = int.from_bytes(hashlib.blake2b(qid.encode("utf-8"), digest_size=8).digest(), "big") / 2**64
    return "held-out" if fraction < held_out else "train"


def split_dataset(dataset: Any, part: str, held_out: float = 0.3) -> Any:
    """The dataset restricted to the ``train`` or ``held-out`` queries (same corpus)."""
    from dataclasses import replace

    if part not in ("train", "held-out"):
        raise RetrError(f"query split is 'train' or 'held-out', not {part!r}")
    keep = [q for q in dataset.queries if query_split(q, held_out) == part]
    if not keep:
        raise RetrError(f"{dataset.name}: no {part} queries with held_out={held_out}")
    return replace(dataset, queries={q: dataset.queries[q] for q in keep},
                   qrels={q: dataset.qrels[q] for q in keep if q in dataset.qrels})


class CosineAdapterNet:
    """Factory for the torch module: query embedding -> MLP -> the family's parameters."""

    @staticmethod
    def build(dim: int, family: str, hidden: int, dropout: float = 0.1) -> Any:
        from torch import nn

        return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, FAMILIES[family]))


# ---------------------------------------------------------------- filters

class Filter(Protocol):
    """Decides which of a query's candidates to keep."""

    name: str

    def keep(self, query_vectors: Any, scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Boolean (nq, n): keep this candidate. ``valid`` marks real candidates (not -1 padding)."""


class TopK:
    """Baseline: keep the first ``k`` candidates of every query."""

    def __init__(self, k: int = 10) -> None:
        if int(k) < 1:
            raise RetrError(f"topk filter needs k >= 1, got {k}")
        self.k = int(k)
        self.name = f"topk:k={self.k}"

    def keep(self, query_vectors: Any, scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
        return valid & (np.arange(scores.shape[1])[None, :] < self.k)


class ScoreThreshold:
    """Baseline: keep candidates whose raw score (cosine for normalised dense encoders) is >= ``threshold``."""

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = float(threshold)
        self.name = f"cosine:threshold={self.threshold:g}"

    def keep(self, query_vectors: Any, scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
        return valid & (scores >= self.threshold)


class CosineAdapter:
    """The trained adapter: per-query mapping of raw cosines to relevance probabilities, one global threshold.

    ``path`` is an adapter folder (``adapter.json`` + ``adapter.safetensors``) or an index
    directory holding one in ``adapter/``; without it, the filtered retriever's own index
    directory is used.
    """

    def __init__(self, path: str | None = None, threshold: float | None = None) -> None:
        if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
            raise RetrError(f"adapter threshold is a probability in [0, 1], got {threshold}")
        self.path, self._threshold = path, None if threshold is None else float(threshold)
        self.config: dict[str, Any] = {}
        self._net: Any = None
        if path is not None:
            self.load(path)

    @property
    def threshold(self) -> float:
        """The global threshold on the relevance probability: the one given, else the one chosen in training."""
        if self._threshold is not None:
            return self._threshold
        return float(self.config.get("threshold", 0.5))

    @property
    def name(self) -> str:
        return f"adapter:{self.config.get('family', '?')},threshold={self.threshold:.4g}"

    @staticmethod
    def folder(path: Path | str) -> Path:
        path = Path(path)
        return path / ADAPTER_DIR if (path / ADAPTER_DIR / CONFIG).is_file() else path

    def load(self, path: Path | str) -> CosineAdapter:
        from safetensors.torch import load_file

        folder = self.folder(path)
        if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
            raise RetrError(f"no Cosine Adapter at {path}: train one with `retr train-filter INDEX DATASET`")
        try:
            self.config = json.loads((folder / CONFIG).read_text())
            state = load_file(str(folder / WEIGHTS))
        except (json.JSONDecodeError, OSError, ValueError) as exc:
            raise RetrError(f"Cosine Adapter at {folder} is unreadable ({exc}); train it again") from None
        net = CosineAdapterNet.build(self.config["dim"], self.config["family"], self.config["hidden"])
        net.load_state_dict(state)
        self._net = net.eval()
        self.path = str(folder)
        return self

    def bind(self, retriever: Any) -> None:
        """Load from the retriever's index directory if no path was given, and check the encoder matches."""
        if self._net is None:
            if getattr(retriever, "path", None) is None:
                raise RetrError("adapter filter without a path needs a saved index (or give adapter:PATH)")
            self.load(retriever.path)
        encoder = getattr(retriever, "encoder", None)
        if encoder is None or encoder.kind != "dense":
            raise RetrError("the Cosine Adapter filters dense retrievers (it reads the query embedding)")
        if encoder.dim != self.config["dim"]:
            raise RetrError(f"adapter {self.path} was trained on {self.config['dim']}-d query vectors, "
                            f"the retriever makes {encoder.dim}-d ones; train an adapter for this index")
        trained_for = self.config.get("encoder")
        if trained_for and trained_for != describe_encoder(encoder):
            raise RetrError(f"adapter {self.path} was trained for encoder {trained_for}, "
                            f"not {describe_encoder(encoder)}; train an adapter for this index")

    def probabilities(self, query_vectors: Any, scores: np.ndarray) -> np.ndarray:
        """sigmoid(mapped score) for every candidate: the adapter's relevance probability."""
        import torch

        if self._net is None:
            raise RetrError("the adapter is not loaded: give adapter:PATH or bind it to a saved index")
        with torch.inference_mode():
            params = self._net(torch.as_tensor(np.asarray(query_vectors, dtype=np.float32)))
            mapped = mapped_scores(self.config["family"], params, torch.as_tensor(scores, dtype=torch.float32))
            return torch.sigmoid(mapped).numpy()

    def keep(self, query_vectors: Any, scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
        return valid & (self.probabilities(query_vectors, np.where(valid, scores, -1.0)) >= self.threshold)


def describe_encoder(encoder: Any) -> str:
    from retr.registry import ENCODERS

    return ENCODERS.describe(encoder.name, encoder.config())


def create_filter(spec: Any) -> Filter:
    """The filter a spec names: ``adapter[:PATH][,threshold=..]``, ``cosine:threshold=..``, ``topk:k=..``."""
    from retr.registry import FILTERS

    if not isinstance(spec, str):
        return spec
    return FILTERS.create(spec)


# ---------------------------------------------------------------- the wrapper

class FilteredRetriever:
    """A retriever whose candidates (the top ``depth``) pass through a filter; a query may get no hits.

    ``search`` / ``search_batch`` return at most ``k`` of the kept hits, best first.
    """

    def __init__(self, retriever: Any, filter: Any, depth: int = 100) -> None:
        if not hasattr(retriever, "index"):
            raise RetrError("filters apply to a single retriever (encoder + index), not to a fusion")
        if depth < 1:
            raise RetrError(f"filter depth must be at least 1, got {depth}")
        self.retriever, self.filter, self.depth = retriever, create_filter(filter), int(depth)
        if hasattr(self.filter, "bind"):
            self.filter.bind(retriever)

    @property
    def name(self) -> str:
        return f"{self.retriever.name}|{self.filter.name}"

    @property
    def build_seconds(self) -> float:
        return getattr(self.retriever, "build_seconds", 0.0)

    def __len__(self) -> int:
        return len(self.retriever)

    def candidates(self, queries: Sequence[str]) -> tuple[Any, np.ndarray, np.ndarray]:
        """(query vectors, scores (nq, depth), internal ids (nq, depth)) before filtering."""
        r = self.retriever
        encoder = getattr(r.index, "query_encoder", None) or r.encoder
        reps = encoder.encode_queries(list(queries))
        scores, ids = r.index.search(reps, min(self.depth, len(r)))
        return reps, np.asarray(scores, dtype=np.float32), np.asarray(ids)

    def search(self, query: str, k: int = 10) -> list:
        return self.search_batch([query], k)[0]

    def search_batch(self, queries: Sequence[str], k: int = 10) -> list[list]:
        check_queries(queries, k)
        if not queries:
            return []
        reps, scores, ids = self.candidates(queries)
        keep = self.filter.keep(reps, scores, ids >= 0)
        return [self.retriever._hits(s[m], i[m])[:k] for s, i, m in zip(scores, ids, keep)]


# ---------------------------------------------------------------- training

def labelled_candidates(
    retriever: Any, dataset: Any, depth: int = 100, min_relevance: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """For each judged query: its embedding, its top ``depth`` raw scores and their 0/1 labels (padding = -1)."""
    qids = list(dataset.queries)
    wrapper = FilteredRetriever(retriever, TopK(depth), depth)
    reps, scores, ids = wrapper.candidates([dataset.queries[q] for q in qids])
    doc_ids = retriever.docstore.ids
    labels = np.full(ids.shape, -1, dtype=np.int8)
    for row, qid in enumerate(qids):
        judged = dataset.qrels.get(qid, {})
        for col, i in enumerate(ids[row]):
            if i >= 0:
                labels[row, col] = int(judged.get(doc_ids[int(i)], 0) >= min_relevance)
    return np.asarray(reps, dtype=np.float32), scores, labels, qids


def fit_adapter(
    query_vectors: np.ndarray, scores: np.ndarray, labels: np.ndarray, family: str = "sqrt",
    hidden: int = 64, epochs: int = 100, lr: float = 3e-3, weight_decay: float = 1e-3, seed: int = 0,
) -> tuple[Any, list[float]]:
    """Train the adapter network full-batch with binary cross-entropy on the labelled pairs; returns (net, losses).

    Runs on one CPU thread: the network is tiny, and more threads only contend.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit(query_vectors, scores, labels, family, hidden, epochs, lr, weight_decay, seed)
    finally:
        torch.set_num_threads(threads)


def _fit(
    query_vectors: np.ndarray, scores: np.ndarray, labels: np.ndarray, family: str,
    hidden: int, epochs: int, lr: float, weight_decay: float, seed: int,
) -> tuple[Any, list[float]]:
    import torch
    import torch.nn.functional as F

    if family not in FAMILIES:
        raise RetrError(f"unknown adapter family {family!r}; use one of {', '.join(FAMILIES)}")
    valid = labels >= 0
    if not valid.any() or labels[valid].min() == labels[valid].max():
        raise RetrError("training pairs need both relevant and non-relevant candidates; check the qrels and depth")
    torch.manual_seed(seed)
    net = CosineAdapterNet.build(query_vectors.shape[1], family, hidden)
    q = torch.as_tensor(query_vectors)
    s = torch.as_tensor(np.where(valid, scores, 0.0), dtype=torch.float32)
    y = torch.as_tensor(np.clip(labels, 0, 1), dtype=torch.float32)
    w = torch.as_tensor(valid, dtype=torch.float32)
    with torch.no_grad():  # start from the query-independent logistic fit of f(s): a global threshold
        f = base_function(family, s[w > 0])
        rate = float(y[w > 0].mean())
        a0 = 4.0 / max(float(f.std()), 1e-6)
        last = net[-1]
        last.weight.mul_(0.1)
        last.bias.zero_()
        last.bias[0] = float(np.log(a0))
        last.bias[1] = float(np.log(rate / (1 - rate))) - a0 * float(f.mean())
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    with progress_bar(total=epochs, desc="training the Cosine Adapter", unit="epoch") as bar:
        for _ in range(epochs):
            net.train()
            logits = mapped_scores(family, net(q), s)
            loss = (F.binary_cross_entropy_with_logits(logits, y, reduction="none") * w).sum() / w.sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            bar.update(1)
    return net.eval(), losses


def train_adapter(
    retriever: Any, dataset: Any, family: str = "linear", depth: int = 100, held_out: float = 0.3,
    hidden: int = 64, epochs: int = 100, min_relevance: int = 1, out: Path | str | None = None, seed: int = 0,
) -> CosineAdapter:
    """Train a Cosine Adapter on the dataset's *train* queries (see ``query_split``) and save it.

    It is written to ``out``, else to ``<index dir>/adapter`` of a saved retriever.
    """
    if retriever.encoder.kind != "dense":
        raise RetrError("the Cosine Adapter needs a dense retriever (it reads the query embedding)")
    if out is None:
        if getattr(retriever, "path", None) is None:
            raise RetrError("give out= (or save the index first): the adapter is stored in the index directory")
        out = Path(retriever.path) / ADAPTER_DIR
    train = split_dataset(dataset, "train", held_out)
    reps, scores, labels, qids = labelled_candidates(retriever, train, depth, min_relevance)
    net, losses = fit_adapter(reps, scores, labels, family, hidden, epochs, seed=seed)
    threshold = best_f1_threshold(net, family, reps, scores, labels, total_relevant(train, min_relevance))
    config = {
        "family": family, "dim": int(reps.shape[1]), "hidden": hidden, "depth": depth,
        "encoder": describe_encoder(retriever.encoder), "dataset": dataset.name,
        "split": {"rule": "blake2b(query id) / 2**64 < held_out -> held-out", "held_out": held_out},
        "train_queries": len(qids), "train_pairs": int((labels >= 0).sum()),
        "train_positives": int((labels == 1).sum()), "min_relevance": min_relevance,
        "epochs": epochs, "final_loss": losses[-1], "seed": seed, "threshold": threshold,
        "threshold_rule": "maximises micro F1 of the filtered train queries",
    }
    save_adapter(net, config, Path(out))
    return CosineAdapter(str(out))


def total_relevant(dataset: Any, min_relevance: int = 1) -> int:
    """Relevant (query, document) pairs of the dataset's queries, inside the candidates or not."""
    return sum(sum(r >= min_relevance for r in dataset.qrels.get(q, {}).values()) for q in dataset.queries)


def best_f1_threshold(
    net: Any, family: str, reps: np.ndarray, scores: np.ndarray, labels: np.ndarray, relevant: int,
) -> float:
    """The probability threshold with the best micro F1 on the labelled candidates."""
    from retr.eval.set_metrics import threshold_curve

    adapter = CosineAdapter()
    adapter._net, adapter.config = net, {"family": family}
    probs = adapter.probabilities(reps, np.where(labels >= 0, scores, -1.0))
    thresholds, precision, recall = threshold_curve(probs, labels == 1, labels >= 0, relevant)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1))])


def save_adapter(net: Any, config: dict[str, Any], folder: Path) -> None:
    """Write ``adapter.safetensors`` + ``adapter.json`` to ``folder``, replacing it only once both are written."""
    from safetensors.torch import save_file

    with atomic_directory(folder, marker=CONFIG, what="a Cosine Adapter") as tmp:
        save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
