"""JPQ: jointly train the query encoder and the PQ centroid embeddings, document codes fixed.

Zhan et al., "Jointly Optimizing Query Encoder and Product Quantization to Improve
Retrieval Performance" (CIKM 2021). The documents keep the PQ codes of the index they
were built into; what is trained is

- the query encoder (a sentence-transformers model), and
- the centroid embeddings ``C`` (M, 2**nbits, dim / M), through which a document's code
  reconstructs its vector ``d = concat_m C[m, code_m]``,

with a ranking-oriented loss on (query, positive, negatives) from training qrels:
RankNet's pairwise logistic loss on ``s(q, d) / temperature`` weighted by the change in
reciprocal rank that swapping the pair would cause (LambdaRank with ΔMRR, as JPQ does).
Negatives are the top documents of the *current* PQ index for the current query
encoder, refreshed every epoch (JPQ's dynamic negatives), judged positives excluded.
A step takes a batch of training queries (each query encoded once, which is what costs
on CPU), ``positives`` of each query's relevant documents and ``negatives`` sampled from
its current top ``negative_depth``; ``train_layers`` can restrict fine-tuning to the top
transformer layers.

Queries are split into training and held-out parts by a hash of the query id, with the
one split rule retr has (``retr.retriever.relevance_filter.split_dataset``: BLAKE2b of the
query id / 2**64 < held_out -> held-out), so evaluation on the held-out part never sees a
training query. JPQ's runs here use ``held_out=0.5``.
The trained query encoder (``query_encoder/``, safetensors) and the centroids
(``centroids.safetensors``) are written into the index directory and loaded on open.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retr.errors import RetrError
from retr.eval.datasets import Dataset
from retr.progress import progress_bar
from retr.quantizers.pq import pq_codebooks, set_pq_codebooks
from retr.storage import GrowingArray

QUERY_ENCODER_DIR, CENTROIDS_FILE, STATE_FILE = "query_encoder", "centroids.safetensors", "jpq.json"


# ---------------------------------------------------------------- math


def reconstruct(centroids: Any, codes: Any) -> Any:
    """(n, M * dsub) vectors from centroids (M, K, dsub) and codes (n, M) int64: concat_m C[m, code_m]."""
    import torch

    m = torch.arange(centroids.shape[0], device=codes.device)
    return centroids[m, codes].reshape(len(codes), -1)


def lambda_ranknet_loss(pos: Any, neg: Any, pos_rank: Any, neg_rank: Any, temperature: float) -> Any:
    """Mean over (positive, negative) pairs of |1/r_pos - 1/r_neg| * log(1 + exp(-(s_pos - s_neg) / temperature)).

    ``pos`` (b, P) and ``neg`` (b, N) scores of each query's positives and negatives; the ranks
    (1-based, same shapes) come from the current ranking, as LambdaRank's ΔMRR weights do.
    """
    import torch.nn.functional as F

    weight = (1.0 / pos_rank[:, :, None] - 1.0 / neg_rank[:, None, :]).abs()
    pairs = F.softplus(-(pos[:, :, None] - neg[:, None, :]) / temperature)
    return (weight * pairs).sum() / max(1, pairs.numel())


# ---------------------------------------------------------------- the trained query side


class QueryEncoder:
    """The JPQ-trained query tower: a sentence-transformers model, L2-normalised outputs, no cache."""

    name = "jpq-query"
    kind = "dense"

    def __init__(self, model: Any, batch_size: int = 64) -> None:
        self.model, self.batch_size = model, batch_size

    @property
    def dim(self) -> int:
        return int(self.model.get_sentence_embedding_dimension())

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False).astype(np.float32)

    def save(self, directory: Path) -> None:
        self.model.save(str(directory), safe_serialization=True)

    @classmethod
    def load(cls, directory: Path) -> QueryEncoder:
        from retr.retriever.dense import open_sentence_transformer

        if not (Path(directory) / "model.safetensors").is_file():
            raise RetrError(f"{directory} has no model.safetensors: the JPQ query encoder is missing; retrain it")
        return cls(open_sentence_transformer(str(directory), "cpu"))


def save_jpq_state(index: Any, directory: Path) -> None:
    """Write the query encoder, the trained centroids (safetensors) and the training record."""
    from safetensors.numpy import save_file

    (directory / QUERY_ENCODER_DIR).mkdir()
    index.query_encoder.save(directory / QUERY_ENCODER_DIR)
    save_file({"centroids": pq_codebooks(index.quantizer.pq)}, str(directory / CENTROIDS_FILE))
    (directory / STATE_FILE).write_text(json.dumps(index.training, indent=2) + "\n")


def load_jpq_state(index: Any, directory: Path) -> None:
    """Load what ``save_jpq_state`` wrote, if the index was trained."""
    if not (directory / STATE_FILE).is_file():
        return
    from safetensors.numpy import load_file

    centroids = load_file(str(directory / CENTROIDS_FILE))["centroids"]
    set_pq_codebooks(index.quantizer.pq, centroids, "JPQ centroids")
    index.refresh()
    index.query_encoder = QueryEncoder.load(directory / QUERY_ENCODER_DIR)
    index.training = json.loads((directory / STATE_FILE).read_text())


# ---------------------------------------------------------------- training


def freeze_below(model: Any, top_layers: int) -> None:
    """Train only the top ``top_layers`` transformer layers (and what follows them); 0 trains everything.

    Frozen layers need no backward pass, which is most of a CPU training step.
    """
    import re

    layer_of = {name: int(m.group(1)) for name, _ in model.named_parameters()
                if (m := re.search(r"\blayer\.(\d+)\.", name))}
    if top_layers <= 0 or not layer_of:
        return
    first = max(layer_of.values()) + 1 - top_layers
    for name, param in model.named_parameters():
        param.requires_grad_(layer_of.get(name, -1 if "embeddings" in name else first) >= first)


@dataclass
class JPQSettings:
    """Training settings; recorded in ``jpq.json`` with the losses."""

    epochs: int = 6
    batch_size: int = 16  # training queries per step
    positives: int = 4  # relevant documents sampled per query and step (with replacement when fewer)
    negatives: int = 16  # sampled per query from the current index's top ``negative_depth``, positives excluded
    negative_depth: int = 100
    train_layers: int = 0  # 0: fine-tune the whole query encoder; k: only its top k transformer layers
    lr_encoder: float = 5e-6
    lr_centroids: float = 2e-4
    temperature: float = 0.05
    seed: int = 42
    device: str = "cpu"


def train_jpq(retriever: Any, train: Dataset, settings: JPQSettings | None = None) -> Any:
    """A new Retriever with a ``jpq`` index: ``retriever``'s PQ codes, trained centroids and query encoder.

    ``retriever`` holds a ``pq`` (or ``jpq``) index over a dense encoder's vectors; ``train``
    gives the training queries and qrels (``split_dataset(dataset, "train", held_out)``).
    """
    import faiss
    import torch

    from retr.indexers.quantized import JPQIndex, PQIndex
    from retr.retriever.dense import features_of, open_sentence_transformer
    from retr.retriever.pipeline import Retriever

    s = settings or JPQSettings()
    if len(retriever.index.segments) > 1 or retriever.index.segments[0].removed:
        raise RetrError("JPQ trains the codes of one segment: run `retr compact` on the index first")
    source = retriever.index.first
    if not isinstance(source, PQIndex) or source.quantizer.nbits != 8:
        raise RetrError(f"JPQ trains a pq index with nbits=8 (e.g. 'dense:MODEL@pq:M=16'), not {retriever.name!r}")
    resolved = getattr(retriever.encoder, "_resolved", None)
    if resolved is None:
        raise RetrError(f"JPQ needs a sentence-transformers query encoder (dense:MODEL), not {retriever.encoder.name!r}")
    torch.manual_seed(s.seed)
    rng = np.random.default_rng(s.seed)

    index = JPQIndex(M=source.quantizer.M, nbits=8)
    index.quantizer.codec = faiss.clone_index(source.quantizer.codec)
    index._codes = GrowingArray.of(source.codes)
    if isinstance(source, JPQIndex) and source.query_encoder is not None:
        model = source.query_encoder.model
    else:
        model = open_sentence_transformer(resolved, s.device)  # trained in float32
    model.to(s.device)
    freeze_below(model, s.train_layers)

    doc_row = {retriever.docstore.ids[i]: i for i in range(len(retriever.docstore))}
    positives = {q: sorted(doc_row[d] for d, rel in train.qrels.get(q, {}).items() if rel > 0 and d in doc_row)
                 for q in train.queries}
    qids = sorted(q for q, p in positives.items() if p)
    if not qids:
        raise RetrError(f"{train.name}: no training query has a relevant document in the index; JPQ has nothing to learn")

    centroids = torch.nn.Parameter(torch.from_numpy(pq_codebooks(index.quantizer.pq)).to(s.device))
    codes = torch.from_numpy(np.asarray(index.codes, dtype=np.int64)).to(s.device)
    optimizer = torch.optim.AdamW([
        {"params": [p for p in model.parameters() if p.requires_grad], "lr": s.lr_encoder},
        {"params": [centroids], "lr": s.lr_centroids, "weight_decay": 0.0},
    ])

    def embed(texts: list[str]) -> Any:
        features = {k: v.to(s.device) if hasattr(v, "to") else v for k, v in features_of(model)(texts).items()}
        return torch.nn.functional.normalize(model(features)["sentence_embedding"], dim=-1)

    def docs_of(rows: np.ndarray) -> Any:
        return reconstruct(centroids, codes[torch.from_numpy(rows.ravel())]).reshape(*rows.shape, -1)

    losses: list[float] = []
    steps_per_epoch = (len(qids) + s.batch_size - 1) // s.batch_size
    with progress_bar(total=s.epochs * steps_per_epoch, desc="training JPQ", unit="step") as bar:
        for _ in range(s.epochs):
            # dynamic negatives: the current query encoder searched against the current centroids
            model.eval()
            with torch.no_grad():
                scores = torch.cat([embed([train.queries[q] for q in qids[i : i + 64]]) for i in range(0, len(qids), 64)])
                ranking = torch.argsort(scores @ reconstruct(centroids, codes).T, dim=1, descending=True).cpu().numpy()
            rank_of = np.empty_like(ranking)
            np.put_along_axis(rank_of, ranking, np.broadcast_to(np.arange(1, ranking.shape[1] + 1), ranking.shape), 1)
            top = [ranking[i, : s.negative_depth + len(positives[q])] for i, q in enumerate(qids)]
            candidates = [row[~np.isin(row, positives[q])][: s.negative_depth] for row, q in zip(top, qids)]
            model.train()
            epoch_loss, order = [], rng.permutation(len(qids))
            for start in range(0, len(qids), s.batch_size):
                slots = order[start : start + s.batch_size]
                pos = np.stack([rng.choice(positives[qids[j]], s.positives) for j in slots])
                neg = np.stack([rng.choice(candidates[j], s.negatives, replace=len(candidates[j]) < s.negatives)
                                for j in slots])
                q = embed([train.queries[qids[j]] for j in slots])
                pos_scores = torch.einsum("bd,bpd->bp", q, docs_of(pos))
                neg_scores = torch.einsum("bd,bnd->bn", q, docs_of(neg))
                pos_rank = torch.from_numpy(np.take_along_axis(rank_of[slots], pos, 1).astype(np.float32))
                neg_rank = torch.from_numpy(np.take_along_axis(rank_of[slots], neg, 1).astype(np.float32))
                loss = lambda_ranknet_loss(pos_scores, neg_scores, pos_rank.to(s.device), neg_rank.to(s.device),
                                           s.temperature)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                epoch_loss.append(float(loss.detach()))
                bar.update(1)
            losses.append(float(np.mean(epoch_loss)))
    model.eval()
    set_pq_codebooks(index.quantizer.pq, centroids.detach().cpu().numpy(), "JPQ centroids")
    index.refresh()
    index.query_encoder = QueryEncoder(model)
    index.training = {"settings": asdict(s), "train_queries": len(qids),
                      "train_pairs": sum(len(positives[q]) for q in qids), "epoch_losses": losses,
                      "train_dataset": train.name}
    return Retriever(retriever.encoder, index, retriever.docstore)
