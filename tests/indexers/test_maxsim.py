"""MaxSim on real ColBERT token vectors of a cranfield slice: fast = reference, exact index, round trip."""

import numpy as np
import pytest

from retr import INDEXES, RetrError
from retr.indexers.maxsim import ExactMultiVectorIndex
from retr.scoring.maxsim import CELLS, LONG_SEGMENT, maxsim_batch, maxsim_reference, segment_max, token_rows


def maxsim_scores(query, tokens, offsets, cells=CELLS):
    return maxsim_batch([query], tokens, offsets, cells)[0]


@pytest.fixture(scope="module")
def tokens(colbert_slice):
    return colbert_slice


def test_fast_maxsim_equals_the_reference(tokens):
    docs, flat, offsets, queries = tokens
    sub = offsets[:101]  # the first 100 documents keep the loops quick
    for q in queries[:3]:
        fast, slow = maxsim_scores(q, flat, sub), maxsim_reference(q, flat, sub)
        np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-4)
        assert list(np.argsort(-fast, kind="stable")[:10]) == list(np.argsort(-slow, kind="stable")[:10])


def test_chunking_and_batching_do_not_change_scores(tokens):
    _, flat, offsets, queries = tokens
    whole = maxsim_batch(queries, flat, offsets)
    assert whole.shape == (len(queries), len(offsets) - 1) and whole.dtype == np.float32
    np.testing.assert_allclose(maxsim_batch(queries, flat, offsets, cells=3000), whole, rtol=1e-6, atol=1e-5)
    half = flat.astype(np.float16)  # chunks scored by 1 or 3 threads, each widening into its own buffer
    threads = [maxsim_batch(queries, half, offsets, cells=3000, workers=w) for w in (1, 3)]
    np.testing.assert_array_equal(threads[0], threads[1])
    np.testing.assert_allclose(threads[0], whole, rtol=1e-2, atol=1e-2)
    for i, q in enumerate(queries[:5]):
        np.testing.assert_allclose(maxsim_scores(q, flat, offsets, cells=1), whole[i], rtol=1e-6, atol=1e-5)
    picked = np.array([250, 3, 77, 3, 120])  # a subset, out of order, one twice: gathered chunk by chunk
    rows, seg = token_rows(offsets, picked)
    for cells in (CELLS, 3000):
        np.testing.assert_allclose(maxsim_batch(queries, flat.astype(np.float16), seg, cells, rows=rows),
                                   whole[:, picked], rtol=1e-2, atol=1e-2)  # float16 tokens vs float32
        np.testing.assert_array_equal(maxsim_batch(queries, flat, seg, cells, rows=rows),
                                      maxsim_batch(queries, flat[rows], seg, cells))


def test_index_is_exact_over_float16_tokens(tokens):
    docs, flat, offsets, queries = tokens
    index = INDEXES.create("maxsim")
    assert isinstance(index, ExactMultiVectorIndex) and index.kind == "multi"
    index.add(docs[:150])
    index.add(docs[150:])  # ids continue
    assert len(index) == 300 and index.dim == flat.shape[1]
    scores, ids = index.search(queries, 10)
    assert scores.dtype == np.float32 and ids.dtype == np.int64 and ids.shape == (len(queries), 10)
    expected = maxsim_batch(queries, flat.astype(np.float16), offsets)
    np.testing.assert_array_equal(ids, np.argsort(-expected, axis=1, kind="stable")[:, :10])
    np.testing.assert_allclose(scores, np.take_along_axis(expected, ids, 1), rtol=1e-6)
    assert (np.diff(scores, axis=1) <= 0).all()
    scores, ids = index.search(queries[:2], 400)  # k above the corpus size: -1 / -inf padding
    assert (ids[:, :300] >= 0).all() and (ids[:, 300:] == -1).all() and np.isneginf(scores[:, 300:]).all()
    assert sorted(ids[0, :300]) == list(range(300))


def test_an_empty_document_never_matches(tokens):
    docs, _, _, queries = tokens
    index = ExactMultiVectorIndex()
    index.add([docs[0], docs[0][:0], docs[1]])
    scores, ids = index.search(queries[:1], 3)
    assert sorted(ids[0, :2]) == [0, 2] and ids[0, 2] == -1 and np.isneginf(scores[0, 2])


def test_save_and_load_memory_mapped(tokens, tmp_path):
    docs, _, _, queries = tokens
    index = ExactMultiVectorIndex()
    index.add(docs)
    index.save(tmp_path)
    loaded = ExactMultiVectorIndex.load(tmp_path, index.config(), 300)
    assert isinstance(loaded.store.tokens.array, np.memmap) and loaded.dim == index.dim
    for got, want in zip(loaded.search(queries, 20), index.search(queries, 20)):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(RetrError, match="the manifest says 299 documents"):
        ExactMultiVectorIndex.load(tmp_path, {}, 299)


def test_bad_input(tokens):
    docs, flat, _, queries = tokens
    index = ExactMultiVectorIndex()
    with pytest.raises(RetrError, match="index is empty"):
        index.search(queries, 5)
    with pytest.raises(RetrError, match="list of"):
        index.add(flat)
    index.add(docs[:5])
    with pytest.raises(RetrError, match="dimension 128, the index holds dimension 384"):
        index.search([np.zeros((4, 128), np.float32)], 5)
    with pytest.raises(RetrError, match="NaN"):
        index.add([np.full((3, 384), np.nan, np.float32)])


@pytest.mark.parametrize("spec", ["maxsim", "plaid:nbits=2,n_centroids=16", "muvera:k_sim=2,d_proj=8,r_reps=2"])
def test_a_document_with_nan_is_named_and_nothing_is_added(tokens, spec):
    """The whole block is checked at once; the error names the first bad document and the index is unchanged."""
    from retr.registry import INDEXES

    docs = tokens[0]
    index = INDEXES.create(spec)
    index.add(docs[:20])
    bad = [np.array(d) for d in docs[20:30]]
    bad[7][-1, 3] = np.inf
    with pytest.raises(RetrError, match=r"item 7: vectors contain NaN or infinity"):
        index.add(bad)
    assert len(index) == 20


def test_float32_tokens_score_without_rounding_and_round_trip(tokens, tmp_path):
    docs, flat, offsets, queries = tokens
    index = INDEXES.create("maxsim:dtype=float32")
    index.add(docs)
    assert index.store.tokens.array.dtype == np.float32 and index.config() == {"dtype": "float32"}
    scores, ids = index.search(queries, 10)
    expected = maxsim_batch(queries, flat, offsets)  # float32 tokens, no float16 rounding
    np.testing.assert_array_equal(ids, np.argsort(-expected, axis=1, kind="stable")[:, :10])
    np.testing.assert_allclose(scores, np.take_along_axis(expected, ids, 1), rtol=1e-6)
    index.save(tmp_path)
    loaded = ExactMultiVectorIndex.load(tmp_path, index.config(), len(docs))
    assert loaded.store.tokens.array.dtype == np.float32
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], ids)
    with pytest.raises(RetrError, match="wrong shape or type"):  # the manifest says float16
        ExactMultiVectorIndex.load(tmp_path, {}, len(docs))
    with pytest.raises(RetrError, match="dtype must be one of float16, float32"):
        INDEXES.create("maxsim:dtype=int8")


def test_segment_max_is_the_max_over_each_run_along_either_axis(tokens):
    _, flat, offsets, queries = tokens
    sims = queries[0] @ flat[: offsets[40]].T  # (query tokens, tokens) of the first 40 documents
    lengths = np.diff(offsets[:41])
    short = np.minimum(lengths, 8)  # the first 8 tokens of each document
    assert short.mean() < LONG_SEGMENT <= lengths.mean()  # both paths: torch for short runs, numpy for long
    cut = np.concatenate([np.arange(o, o + n) for o, n in zip(offsets[:40], short)])
    for values, runs in ((sims, lengths), (sims[:, cut], short)):
        starts = np.concatenate([[0], np.cumsum(runs)[:-1]])
        expected = np.maximum.reduceat(values, starts, axis=1)
        np.testing.assert_array_equal(segment_max(values, runs), expected)
        np.testing.assert_array_equal(segment_max(values.T.copy().T, runs), expected)  # strided input is copied
        np.testing.assert_array_equal(segment_max(values.T, runs, axis=0), expected.T)
