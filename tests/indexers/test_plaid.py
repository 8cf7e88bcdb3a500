"""PLAID on real ColBERT token vectors of a cranfield slice: recall vs exact MaxSim, staging, round trip, errors."""

import numpy as np
import pytest

from retr import INDEXES, RetrError
from retr.scoring import maxsim_batch, token_rows, top_k
from retr.indexers.plaid import PlaidIndex, _centroid_scores, colbert_ndocs, probed_scores, search_settings


def recall(ids, exact_ids):
    return np.mean([len(set(a) & set(e)) / 10 for a, e in zip(ids, exact_ids)])


@pytest.fixture(scope="module")
def exact_ids(colbert_slice):
    _docs, flat, offsets, queries = colbert_slice
    return top_k(maxsim_batch(queries, flat.astype(np.float16), offsets), 10)[1]


@pytest.fixture(scope="module")
def built(colbert_slice):
    docs = colbert_slice[0]
    index = INDEXES.create("plaid")
    index.add(docs)
    return index


def test_recall_of_the_exact_top_10(built, colbert_slice, exact_ids):
    """Measured at the defaults (nbits=4, 1,123 centroids: 39 training points each, settings for k=10): recall@10
    0.925; exhaustive MaxSim over the same decompressed vectors: 0.93, so PLAID's stages lose ~nothing and the
    gap to 1.0 is the compression of these zero-shot MiniLM vectors. nbits=2: 0.87 (decompressed 0.88);
    nbits=1: 0.825 (0.825)."""
    docs, _, offsets, queries = colbert_slice
    ids = built.search(queries, 10)[1]
    got = recall(ids, exact_ids)
    assert got >= 0.90, got
    q = built.quantizer
    decoded = q.decode(np.asarray(built.codes))
    ceiling = recall(top_k(maxsim_batch(queries, decoded, offsets), 10)[1], exact_ids)
    assert got >= ceiling - 0.02, (got, ceiling)
    # the index keeps one code row per token only: 2 + 192 bytes per 384-d token (768 as float16)
    assert built.codes.dtype == np.uint8 and built.codes.shape == (len(decoded), 194)
    ivf_offsets, ivf_docs = built._lists()
    assert len(built) == len(docs) and ivf_offsets[-1] == len(ivf_docs)


def test_scores_are_maxsim_over_decompressed_tokens(built, colbert_slice):
    _docs, _, _, queries = colbert_slice
    scores, ids = built.search(queries[:3], 5)
    for qi in range(3):
        for s, d in zip(scores[qi], ids[qi]):
            rows = np.arange(built.offsets[d], built.offsets[d + 1])
            tokens = built.quantizer.decode(np.asarray(built.codes[rows]))
            assert s == pytest.approx(float((queries[qi] @ tokens.T).max(1).sum()), rel=1e-4)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_probed_scores_are_the_centroid_interaction_with_unprobed_centroids_at_the_best_skipped(built, colbert_slice):
    """The inverted-list pass (stages 1-2 on the CPU) against sum_i max_j <q_i, C[id_j]> computed over every document:
    equal when every centroid is probed; with ``nprobe`` probes each token's term is max(its exact term, the best
    score it skipped), which bounds the exact interaction from above."""
    queries = colbert_slice[3]
    centroids = built.quantizer.centroids
    ivf_offsets, ivf_docs = built._lists()
    n, ids, offsets = len(built), built._ids.array, built.offsets
    for query in queries[:5]:
        qc = query @ centroids.T
        per_token = np.maximum.reduceat(qc[:, ids], offsets[:-1], axis=1)  # (q_len, docs): no document is empty
        reached, scores = probed_scores(qc, len(centroids), None, ivf_offsets, ivf_docs, n)
        np.testing.assert_array_equal(reached, np.arange(n))
        np.testing.assert_allclose(scores, _centroid_scores(qc, ids, offsets), rtol=1e-5)
        for nprobe in (1, 4):
            skipped = np.sort(qc, axis=1)[:, -nprobe - 1]
            expected = np.maximum(per_token, skipped[:, None]).sum(0)
            reached, scores = probed_scores(qc, nprobe, None, ivf_offsets, ivf_docs, n)
            np.testing.assert_allclose(scores, expected[reached], rtol=1e-5)
            others = np.setdiff1d(np.arange(n), reached)
            np.testing.assert_allclose(expected[others], skipped.sum(), rtol=1e-5)
        nothing, _ = probed_scores(qc, 4, float(qc.max()) + 1, ivf_offsets, ivf_docs, n)
        assert len(nothing) == 0  # every centroid below t_cs: no list is read


def test_large_k_and_second_add_reuses_centroids(colbert_slice):
    docs, _, _, queries = colbert_slice
    index = PlaidIndex(n_centroids=256)
    index.add(docs[:150])
    centroids = index.quantizer.centroids
    index.add(docs[150:])
    assert index.quantizer.centroids is centroids and len(index) == len(docs)
    _scores, ids = index.search(queries[:2], 200)  # ndocs is raised to 4k: k results come back
    assert (ids >= 0).sum(1).min() >= 150 and len(set(ids[0][ids[0] >= 0])) == (ids[0] >= 0).sum()


def test_round_trip(built, colbert_slice, tmp_path):
    docs, _, _, queries = colbert_slice
    built.save(tmp_path)
    again = PlaidIndex.load(tmp_path, built.config(), len(docs))
    for a, b in zip(built.search(queries, 10), again.search(queries, 10)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(RetrError, match="rebuild"):
        PlaidIndex.load(tmp_path, built.config(), len(docs) + 1)
    np.save(tmp_path / "codes.npy", np.zeros((3, 194), np.int32))
    with pytest.raises(RetrError, match="rebuild"):
        PlaidIndex.load(tmp_path, built.config(), len(docs))


def test_bad_input(built, colbert_slice):
    docs = colbert_slice[0]
    with pytest.raises(RetrError, match="empty"):
        PlaidIndex().search([docs[0]], 10)
    with pytest.raises(RetrError, match="nprobe"):
        INDEXES.create("plaid:nprobe=0")
    with pytest.raises(RetrError, match="nbits 1, 2 or 4"):
        INDEXES.create("plaid:nbits=3")
    with pytest.raises(RetrError, match="multi-vector"):
        built.add(np.ones((3, 384), np.float32))
    with pytest.raises(RetrError, match="dimension 8"):
        built.search([np.ones((4, 8), np.float32)], 10)


def test_residual_pq_option(colbert_slice, exact_ids, tmp_path):
    """``plaid:residual=pq,m=64``: 2 + 64 bytes per token (11.6x smaller than float16). Measured with 1024 centroids
    (to keep the test fast): recall@10 of the exact top-10 0.875 (at 4096 centroids, exhaustive MaxSim over the
    decompressed vectors gives 0.945, 2 bits per dimension at 98 bytes 0.93). The codebooks round-trip."""
    docs, _, _, queries = colbert_slice
    index = INDEXES.create("plaid:residual=pq,m=64,n_centroids=1024")
    index.add(docs)
    assert index.codes.shape == (sum(len(d) for d in docs), 66) and index.quantizer.codebooks.shape == (64, 256, 6)
    got = recall(index.search(queries, 10)[1], exact_ids)
    assert got >= 0.85, got
    index.save(tmp_path)
    again = PlaidIndex.load(tmp_path, index.config(), len(docs))
    np.testing.assert_array_equal(index.search(queries[:5], 10)[1], again.search(queries[:5], 10)[1])
    with pytest.raises(RetrError, match="m >= 1"):
        INDEXES.create("plaid:residual=pq")


@pytest.mark.parametrize("nbits, budget", [(4, None), (2, "40000")])
def test_device_path_is_centroid_interaction_then_exact_on_decoded_codes(colbert_slice, nbits, budget, monkeypatch):
    """On a torch device (here torch:cpu; resident, then streamed block by block): every document scored
    by centroid interaction read off its codes, the best ``ndocs`` decoded and scored exactly. Checked
    against the same two stages in numpy, and against exhaustive MaxSim over the codes when ndocs covers all."""
    if budget:
        monkeypatch.setenv("RETR_DEVICE_BUDGET", budget)
    docs, _, offsets, queries = colbert_slice
    index = INDEXES.create(f"plaid:nbits={nbits},ndocs=40")
    index.add(docs)
    index.use_device("torch:cpu")
    scores, ids = index.search(queries, 10)
    q = index.quantizer
    qc_all = [query @ q.centroids.T for query in queries]
    decoded = q.decode(np.asarray(index.codes))
    cids = q.centroid_ids(np.asarray(index.codes))
    for row, query in enumerate(queries):
        per_doc = np.array([qc_all[row][:, cids[offsets[d] : offsets[d + 1]]].max(1).sum() for d in range(len(docs))])
        depth = top_k(per_doc[None].astype(np.float32), 40)[1][0]
        exact = np.array([(query @ decoded[offsets[d] : offsets[d + 1]].T).max(1).sum() for d in depth])
        want = depth[np.argsort(-exact, kind="stable")[:10]]
        assert len(set(want) & set(ids[row])) >= 9, row  # float ties near the 40th coarse score may swap one
        np.testing.assert_allclose(scores[row], np.sort(exact)[::-1][:10], rtol=1e-4, atol=1e-4)
    index.ndocs = len(docs)  # depth covers the index: every document decoded and scored exactly
    full = index.search(queries, 10)
    np.testing.assert_allclose(full[0], top_k(maxsim_batch(queries, decoded, offsets), 10)[0], rtol=1e-4, atol=1e-4)


def test_search_settings_follow_k_the_centroids_and_the_corpus():
    # a large corpus: 1 / 256 of the centroids probed, 4 x ColBERT's ndocs
    assert search_settings(10, 16384, 100_000) == (64, 1024) and search_settings(100, 16384, 100_000) == (64, 4096)
    # a small one: 4 x ColBERT's would reach past a quarter of it, so ColBERT's own
    assert search_settings(100, 4096, 1398) == (16, 1024) and search_settings(10, 256, 300) == (2, 256)
    assert search_settings(1000, 16384, 8_000_000)[1] == 4 * colbert_ndocs(1000) == 16384


def test_one_call_query_equals_the_stages_in_numpy(built, colbert_slice):
    """``plaid_query`` (the compiled CPU query) against its four stages written with numpy: the same documents in
    the same order at ndocs 40 (stage 2 and 3 each cut) and at the defaults, scores within float32 rounding."""
    from retr.kernels import plaid_query

    queries = colbert_slice[3]
    q, offsets, ids = built.quantizer, built.offsets, built._ids.array
    ivf_offsets, ivf_docs = built._lists()
    for ndocs in (40, built._settings(10)[2]):
        for query in queries[:8]:
            qc = np.ascontiguousarray(query @ q.centroids.T)
            cand, approx = probed_scores(qc, 8, None, ivf_offsets, ivf_docs, len(built))
            cand = np.sort(cand[top_k(approx[None], ndocs)[1][0]])
            rows, seg = token_rows(offsets, cand)
            approx = _centroid_scores(qc, ids[rows], seg)
            cand = np.sort(cand[top_k(approx[None], ndocs // 4)[1][0]])
            exact = maxsim_batch([query], q.decode(np.asarray(built.codes)), offsets)[0][cand]
            want_scores, order = top_k(exact[None], 10)
            scores, found = plaid_query(np.ascontiguousarray(query), qc, 8, -np.inf, ndocs, ndocs // 4, 10, ivf_offsets,
                                        ivf_docs, offsets, ids, np.asarray(built.codes), q.id_size, q.centroids,
                                        q.byte_table())
            np.testing.assert_array_equal(found, cand[order[0]])
            np.testing.assert_allclose(scores, want_scores[0], rtol=1e-5)


def test_selection_keeps_the_best_with_ties_to_the_lowest_position():
    from retr.kernels import _nth_largest, best_in_order

    values = np.array([1, 3, 3, 2, 3, 0], np.float32)
    np.testing.assert_array_equal(best_in_order(values, 2), [1, 2])
    np.testing.assert_array_equal(best_in_order(values, 4), [1, 2, 3, 4])
    np.testing.assert_array_equal(best_in_order(values, 9), np.arange(6))
    rng = np.random.default_rng(0)
    for n in (1, 7, 300):
        x = rng.standard_normal(1000).astype(np.float32)
        assert _nth_largest(x, n) == np.sort(x)[-n]
