"""Hybrid retrieval: fuse the ranked lists of two or more retrievers.

- ``rrf``: reciprocal-rank fusion, score = sum over lists of 1 / (k + rank) (Cormack et al. 2009).
- ``linear``: min-max normalise each list's scores to [0, 1] per query, then a weighted
  sum; a document missing from a list gets 0 there.
Each member retrieves ``depth`` candidates per query.
"""

from __future__ import annotations

from typing import Sequence

from retr.errors import RetrError
from retr.retriever.pipeline import Hit, Retriever


def rrf(lists: Sequence[list[Hit]], k: int = 60) -> list[Hit]:
    scores: dict[str, float] = {}
    texts: dict[str, str | None] = {}
    for hits in lists:
        for rank, hit in enumerate(hits, start=1):
            scores[hit.id] = scores.get(hit.id, 0.0) + 1.0 / (k + rank)
            texts.setdefault(hit.id, hit.text)
    return _ranked(scores, texts)


def linear(lists: Sequence[list[Hit]], weights: Sequence[float]) -> list[Hit]:
    scores: dict[str, float] = {}
    texts: dict[str, str | None] = {}
    for hits, weight in zip(lists, weights):
        if not hits:
            continue
        low, high = min(h.score for h in hits), max(h.score for h in hits)
        span = high - low
        for hit in hits:
            norm = (hit.score - low) / span if span > 0 else 1.0
            scores[hit.id] = scores.get(hit.id, 0.0) + weight * norm
            texts.setdefault(hit.id, hit.text)
    return _ranked(scores, texts)


def _ranked(scores: dict[str, float], texts: dict[str, str | None]) -> list[Hit]:
    order = sorted(scores, key=lambda d: (-scores[d], d))
    return [Hit(d, scores[d], texts[d]) for d in order]


class FusedRetriever:
    """Several retrievers over the same collection, their lists fused per query."""

    def __init__(
        self, members: Sequence[Retriever], method: str = "rrf", k: int = 60,
        weights: Sequence[float] | None = None, depth: int = 1000,
    ) -> None:
        if len(members) < 2:
            raise RetrError("fusion needs at least two retrievers")
        if method not in ("rrf", "linear"):
            raise RetrError(f"unknown fusion method {method!r}; use 'rrf' or 'linear'")
        weights = list(weights) if weights is not None else [1.0 / len(members)] * len(members)
        if len(weights) != len(members):
            raise RetrError(f"{len(members)} retrievers but {len(weights)} weights")
        self.members, self.method, self.k, self.weights, self.depth = list(members), method, k, weights, depth

    @property
    def name(self) -> str:
        inner = " | ".join(m.name for m in self.members)
        setting = f"k={self.k}" if self.method == "rrf" else "weights=" + "/".join(f"{w:g}" for w in self.weights)
        return f"{self.method}:{setting}[{inner}]"

    def __len__(self) -> int:
        return len(self.members[0])

    def search(self, query: str, k: int = 10) -> list[Hit]:
        return self.search_batch([query], k)[0]

    def search_batch(self, queries: Sequence[str], k: int = 10) -> list[list[Hit]]:
        depth = max(self.depth, k)
        per_member = [m.search_batch(queries, depth) for m in self.members]
        fused = []
        for lists in zip(*per_member):
            merged = rrf(lists, self.k) if self.method == "rrf" else linear(lists, self.weights)
            fused.append(merged[:k])
        return fused
