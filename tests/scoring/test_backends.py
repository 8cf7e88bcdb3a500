"""The scoring component: numpy and torch backends give one answer, resident or streamed, on real vectors."""

import numpy as np
import pytest

from retr.scoring import NumpyDense, NumpyTokens, TorchDense, TorchTokens, merge_top_k, top_k
from retr.scoring.maxsim import maxsim_batch, padded_rows, tier_groups, tier_lengths, token_rows


def test_top_k_breaks_ties_by_lowest_id_across_the_partition():
    scores = np.array([[0.5, 0.9, 0.5, 0.5, 0.1, 0.5, 0.9]], dtype=np.float32)
    s, i = top_k(scores, 4)
    assert i.tolist() == [[1, 6, 0, 2]] and s.tolist() == np.float32([[0.9, 0.9, 0.5, 0.5]]).tolist()
    s, i = top_k(np.array([[1.0, -np.inf, 2.0]], np.float32), 5)
    assert i.tolist() == [[2, 0, -1, -1, -1]] and np.isneginf(s[0, 2:]).all()
    a = top_k(scores[:, :4], 2)
    b = top_k(scores[:, 4:], 2)
    merged = merge_top_k([a[0], b[0]], [a[1], b[1] + 4], 3)
    assert merged[1].tolist() == [[1, 6, 0]]


def test_tiers_and_repeat_padding_keep_maxsim_exact(colbert_slice):
    docs, flat, offsets, queries = colbert_slice
    assert tier_lengths(1) == [1] and tier_lengths(7) == [1, 2, 3, 4, 6, 8]
    lengths = np.diff(offsets)
    rows = padded_rows(offsets, np.arange(20), int(lengths[:20].max()))
    padded = flat[rows]  # each document's last token repeated up to the longest
    direct = maxsim_batch(queries[:3], flat, offsets[:21])
    for qi in range(3):
        got = (queries[qi] @ padded.reshape(-1, flat.shape[1]).T).reshape(len(queries[qi]), 20, -1).max(-1).sum(0)
        np.testing.assert_allclose(got, direct[qi], rtol=1e-5, atol=1e-5)


def test_tier_groups_hold_every_document_once_padded_to_at_least_its_length(colbert_slice):
    _, _, offsets, _ = colbert_slice
    lengths = np.diff(offsets)
    lengths[[5, 9]] = 0
    for block, least in [(1 << 22, 0), (1 << 22, 2000), (300, 2000)]:
        groups = tier_groups(lengths, block, least)
        ids = np.concatenate([docs for docs, _ in groups])
        assert sorted(ids) == sorted(set(np.flatnonzero(lengths > 0)))  # each non-empty document once
        for docs, length in groups:  # each padded to at least its documents' length, no block above the limit
            assert (lengths[docs] <= length).all() and len(docs) * length <= max(block, length)
    plain, merged = tier_groups(lengths, 1 << 22, 0), tier_groups(lengths, 1 << 22, 2000)
    assert len(merged) < len(plain)  # small tiers joined the next one
    pad = lambda groups: sum(len(docs) * length for docs, length in groups)  # noqa: E731
    assert pad(plain) < pad(merged) <= pad(plain) + 2000 * len(plain)


@pytest.mark.parametrize("budget, block, cells", [(None, 1 << 22, None), (None, 3000, None), (20_000, 3000, None),
                                                  (None, 1 << 22, 4000)])
def test_torch_tokens_equal_numpy(colbert_slice, budget, block, cells):
    """Resident, small blocks, streamed (a budget of 20 kB: every block moves per search), and tiny steps
    (``cells``: each scan step a few documents, each rerank chunk a few candidates)."""
    docs, flat, offsets, queries = colbert_slice
    numpy_scorer = NumpyTokens(flat, offsets)
    torch_scorer = TorchTokens(flat, offsets, "torch:cpu", budget=budget, block_tokens=block)
    torch_scorer.cells = cells or torch_scorer.cells
    assert torch_scorer.resident == (budget is None)
    want_s, want_i = numpy_scorer.search(queries, 10)
    got_s, got_i = torch_scorer.search(queries, 10)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_s, want_s, rtol=1e-5, atol=1e-5)
    candidates = np.random.default_rng(0).choice(len(docs), (len(queries), 40))
    candidates[:, -3:] = -1
    for a, b in zip(numpy_scorer.rerank(queries, candidates, 10), torch_scorer.rerank(queries, candidates, 10)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_empty_documents_never_match_on_either_backend(colbert_slice):
    docs, _, _, queries = colbert_slice
    some = [docs[0], docs[0][:0], docs[1], docs[1][:0]]
    flat = np.concatenate(some)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in some])])
    for scorer in (NumpyTokens(flat, offsets), TorchTokens(flat, offsets, "torch:cpu")):
        scores, ids = scorer.search(queries[:2], 3)
        assert sorted(ids[0, :2]) == [0, 2] and ids[0, 2] == -1 and np.isneginf(scores[0, 2])
        scores, ids = scorer.rerank(queries[:2], np.array([[3, 1, 2], [1, 3, -1]]), 3)
        assert ids.tolist() == [[2, -1, -1], [-1, -1, -1]] and np.isneginf(scores[:, 1:]).all()


@pytest.mark.parametrize("budget", [None, 100_000])
def test_torch_dense_equals_faiss_flat(doc_vectors, dense, cranfield, budget, monkeypatch):
    import retr.scoring.dense as dense_module

    monkeypatch.setattr(dense_module, "BLOCK_ROWS", 500)  # several blocks over Cranfield's 1398 vectors
    queries = dense.encoder.encode_queries(list(cranfield.queries.values()))
    want_s, want_i = NumpyDense(doc_vectors).search(queries, 20)
    scorer = TorchDense(doc_vectors, "torch:cpu", budget=budget)
    assert scorer.resident == (budget is None)
    got_s, got_i = scorer.search(queries, 20)
    np.testing.assert_allclose(got_s, want_s, rtol=1e-5, atol=1e-5)
    assert (got_i == want_i).mean() > 0.999  # float ties may swap places
    candidates = want_i[:, ::-1].copy()
    s, i = scorer.rerank(queries, candidates, 10)
    np.testing.assert_array_equal(i, want_i[:, :10])


def test_subset_gather_matches_contiguous_scoring(colbert_slice):
    _, flat, offsets, queries = colbert_slice
    picked = np.array([250, 3, 77, 3, 120])
    rows, seg = token_rows(offsets, picked)
    np.testing.assert_array_equal(maxsim_batch(queries, flat, seg, rows=rows), maxsim_batch(queries, flat[rows], seg))


def test_a_graph_that_cannot_be_captured_falls_back_to_launching_kernels(colbert_slice):
    """Capturing needs CUDA (and room for the graph's memory); where it fails, the scan runs as before."""
    _, flat, offsets, queries = colbert_slice
    want = NumpyTokens(flat, offsets).search(queries[:1], 10)
    scorer = TorchTokens(flat, offsets, "torch:cpu")
    assert not scorer.graphs  # off on the CPU: forced on, the capture fails there
    scorer.graphs = True
    got = scorer.search(queries[:1], 10)
    assert not scorer.graphs and not scorer._graphs
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(not _cuda(), reason="CUDA graphs need a CUDA GPU")
def test_cuda_graph_replay_equals_the_kernel_by_kernel_scan():
    """Single queries replay a captured graph (exact and PLAID's coarse scan): same answers as launching each
    kernel, query after query through one graph."""
    from retr.quantizers.residual import ResidualQuantizer

    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 40, 3000)
    tokens = rng.standard_normal((int(lengths.sum()), 64)).astype(np.float32)
    tokens /= np.linalg.norm(tokens, axis=1, keepdims=True)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    queries = [rng.standard_normal((int(n), 64)).astype(np.float32) for n in (32, 32, 32, 7)]
    rq = ResidualQuantizer(nbits=4, n_centroids=64)
    rq.train(tokens)
    codes = rq.encode(tokens)
    for store, decode in ((tokens, None), (codes, rq.torch_decoder("cuda"))):
        graphed, plain = (TorchTokens(store, offsets, "cuda", dim=64, decode=decode) for _ in range(2))
        plain.graphs = False
        for query in queries:
            (got_s, got_i), (want_s, want_i) = graphed.search([query], 10), plain.search([query], 10)
            np.testing.assert_array_equal(got_i, want_i)
            np.testing.assert_allclose(got_s, want_s, rtol=1e-6)
            if decode is not None:
                import torch

                centroids = torch.from_numpy(rq.centroids).to("cuda", dtype=graphed.dtype)
                (got_s, got_i), (want_s, want_i) = (
                    s.search_coarse([query], 10, 50, lambda q: q @ centroids.T, rq.torch_centroid_ids)
                    for s in (graphed, plain))
                np.testing.assert_array_equal(got_i, want_i)
                np.testing.assert_allclose(got_s, want_s, rtol=1e-6)
        assert graphed._graphs and not plain._graphs
