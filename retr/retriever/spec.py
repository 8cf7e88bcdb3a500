"""Retriever specs, as the CLI and the harness take them.

- ``bm25`` or ``bm25:k1=1.2,b=0.75``: Lucene BM25 (the settings go to the index)
- ``ENCODER[@INDEX]``: e.g. ``dense:sentence-transformers/all-MiniLM-L6-v2@hnsw:M=32``;
  the index defaults to the usual one for the encoder's kind (flat for dense)
- ``rrf[A | B]``, ``rrf:k=60[A | B]``, ``linear:weights=0.3/0.7[A | B]``: fusion
- a path to a saved index directory
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Union

from retr.errors import RetrError
from retr.eval.datasets import Document
from retr.registry import ENCODERS, INDEXES, Spec
from retr.retriever.fusion import FusedRetriever
from retr.retriever.pipeline import DEFAULT_INDEX, Retriever, open_index, use_device

AnyRetriever = Union[Retriever, FusedRetriever]
_FUSION = re.compile(r"^(rrf|linear)(?::([^\[]*))?\[(.*)\]$", re.S)


def split_members(body: str) -> list[str]:
    """Split ``A | B`` at top-level bars (bars inside nested brackets stay)."""
    parts, depth, current = [], 0, ""
    for ch in body:
        depth += (ch == "[") - (ch == "]")
        if ch == "|" and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    parts.append(current.strip())
    return [p for p in parts if p]


def build_retriever(spec: str, corpus: Iterable[Document] | None = None, depth: int = 1000,
                    device: str | None = None) -> AnyRetriever:
    """Open a saved index, or build the spec's retriever over ``corpus``; search on ``device``."""
    spec = spec.strip()
    if (match := _FUSION.match(spec)) is not None:
        method, settings_text, body = match.groups()
        settings = Spec.parse(f"{method}:{settings_text or ''}").settings
        corpus = list(corpus) if corpus is not None else None
        members = [build_retriever(m, corpus, depth, device) for m in split_members(body)]
        weights = settings.pop("weights", None)
        if isinstance(weights, str):
            weights = [float(w) for w in weights.split("/")]
        elif weights is not None:
            weights = [float(weights)] * len(members)
        try:
            return FusedRetriever(members, method, weights=weights, depth=depth, **settings)
        except TypeError as exc:
            raise RetrError(f"fusion spec {spec!r}: {exc}") from None
    if Path(spec).is_dir():
        return open_index(spec, device=device)
    encoder_spec, index_spec = parse_pair(spec)
    if corpus is None:
        raise RetrError(f"{spec!r} is neither a saved index nor usable without a corpus")
    retriever = Retriever.build(corpus, encoder_spec, index_spec)
    use_device(retriever.index, device)
    return retriever


def parse_pair(spec: str) -> tuple[Spec, Spec]:
    """``ENCODER[@INDEX]`` -> (encoder spec, index spec), with ``bm25`` settings moved to the index."""
    encoder_text, _, index_text = spec.partition("@")
    encoder = Spec.parse(encoder_text)
    ENCODERS.get(encoder.name)  # unknown names fail here, before any work
    if encoder.name == "bm25":
        index = Spec.parse(index_text) if index_text else Spec("lucene")
        if encoder.settings or encoder.positional:
            index = Spec(index.name, index.positional, {**encoder.settings, **index.settings})
        encoder = Spec("bm25")
    else:
        kind = getattr(ENCODERS.get(encoder.name), "kind", "dense")
        index = Spec.parse(index_text) if index_text else Spec(DEFAULT_INDEX.get(kind, "flat"))
    INDEXES.get(index.name)
    return encoder, index
