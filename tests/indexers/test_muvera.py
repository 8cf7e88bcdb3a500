"""MUVERA on real ColBERT token vectors of a cranfield slice: FDE = reference, Chamfer correlation, recall, round trip."""

from pathlib import Path

import numpy as np
import pytest

from retr import INDEXES, RetrError
from retr.indexers.fde import FDE, chamfer
from retr.scoring import maxsim_batch, top_k
from retr.indexers.muvera import MuveraIndex
from retr.storage import load_array, save_array


def fde_reference(fde: FDE, tokens: np.ndarray, query: bool) -> np.ndarray:
    """The encoding with loops over repetitions, buckets and tokens."""
    out = []
    for r in range(fde.r_reps):
        bits = [[int(np.dot(t, fde.hyperplanes[r][:, j]) > 0) for j in range(fde.k_sim)] for t in tokens]
        ids = [sum(b << j for j, b in enumerate(bs)) for bs in bits]
        proj = tokens @ fde.projections[r]
        for bucket in range(fde.buckets):
            members = [i for i, b in enumerate(ids) if b == bucket]
            if members:
                block = proj[members].sum(0) if query else proj[members].mean(0)
            elif query or not fde.fill_empty:
                block = np.zeros(fde.d_proj)
            else:
                dist = [bin(b ^ bucket).count("1") for b in ids]
                block = proj[int(np.argmin(dist))]
            out.append(block)
    return np.concatenate(out)


def test_fde_equals_the_reference(colbert_slice):
    docs, _, _, queries = colbert_slice
    fde = FDE(docs[0].shape[1], r_reps=3, k_sim=4, d_proj=8)
    for tokens, query in ((queries[0], True), (docs[0], False), (docs[1], False)):
        np.testing.assert_allclose(fde.encode([tokens], query)[0], fde_reference(fde, tokens, query), atol=1e-5)
    assert fde.encode([docs[0]], False).shape == (1, 3 * 16 * 8)


def test_fde_inner_product_tracks_chamfer(colbert_slice):
    """Measured: Pearson 0.73 over 20 queries x 300 documents with the paper's defaults (20 x 32 x 16)."""
    docs, _, _, queries = colbert_slice
    fde = FDE(docs[0].shape[1])
    estimate = fde.encode(queries, True) @ fde.encode(docs, False).T
    truth = np.array([[chamfer(q, d) for d in docs] for q in queries])
    assert np.corrcoef(estimate.ravel(), truth.ravel())[0, 1] > 0.70
    sketched = FDE(docs[0].shape[1], final_dim=2048)
    assert sketched.encode(docs[:3], False).shape == (3, 2048)


@pytest.mark.parametrize("spec", ["muvera", "muvera:inner=hnsw,inner_ef_search=200"])
def test_recall_of_the_exact_top_10_and_exact_rescoring(colbert_slice, spec):
    docs, flat, offsets, queries = colbert_slice
    index = INDEXES.create(spec)
    index.add(docs)
    exact_scores, exact_ids = top_k(maxsim_batch(queries, flat.astype(np.float16), offsets), 10)
    scores, ids = index.search(queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(ids, exact_ids)])
    assert recall >= 0.95, recall
    same = ids == exact_ids
    np.testing.assert_allclose(scores[same], exact_scores[same], rtol=1e-5)


def test_fewer_candidates_lower_recall_and_no_rerank_gives_fde_scores(colbert_slice):
    docs, flat, offsets, queries = colbert_slice
    exact_ids = top_k(maxsim_batch(queries, flat.astype(np.float16), offsets), 10)[1]
    recalls = []
    for candidates in (10, 100):
        index = MuveraIndex(candidates=candidates)
        index.add(docs)
        ids = index.search(queries, 10)[1]
        recalls.append(np.mean([len(set(a) & set(e)) / 10 for a, e in zip(ids, exact_ids)]))
    assert recalls[0] < recalls[1]
    plain = MuveraIndex(rerank=False)
    plain.add(docs)
    fde = plain.fde()
    expected = top_k(fde.encode(queries[:2], True) @ fde.encode(docs, False).T, 5)[1]
    np.testing.assert_array_equal(plain.search(queries[:2], 5)[1], expected)


@pytest.mark.parametrize("spec", ["muvera:final_dim=4096,candidates=50", "muvera:dtype=float32"])
def test_round_trip(colbert_slice, tmp_path, spec):
    docs, _, _, queries = colbert_slice
    index = INDEXES.create(spec)
    index.add(docs)
    index.save(tmp_path)
    again = MuveraIndex.load(tmp_path, index.config(), len(docs))
    assert again._store.store.tokens.array.dtype == index._store.store.dtype
    for a, b in zip(index.search(queries, 10), again.search(queries, 10)):
        np.testing.assert_array_equal(a, b)


def test_bad_settings():
    with pytest.raises(RetrError, match="inner index settings start with inner_"):
        INDEXES.create("muvera:ef_search=10")
    with pytest.raises(RetrError, match="inner index must hold dense"):
        INDEXES.create("muvera:inner=lucene")
    with pytest.raises(RetrError, match="exceeds the token width"):
        FDE(8, d_proj=16)


def test_training_sample_is_capped_by_the_bytes_of_its_encodings():
    """PQ over the paper's 10,240-d encodings would train on 65,536 of them (2.7 GB); the cap keeps 1 GiB of them."""
    from retr.indexers.muvera import MIN_TRAIN, TRAIN_BYTES

    index = INDEXES.create("muvera:inner=pq,inner_M=1280")
    assert index._inner.training_size(10**6) == 65536
    assert index.training_size(10**6) == TRAIN_BYTES // (4 * 20 * 32 * 16) == 26214
    assert index.training_size(5000) == 5000  # a small corpus: all of it
    wide = INDEXES.create("muvera:inner=pq,inner_M=16,r_reps=40,d_proj=64")  # 320 KB encodings: the floor holds
    assert wide.training_size(10**6) == MIN_TRAIN
    assert INDEXES.create("muvera").training_size(10**6) == 0  # flat inner: nothing trains


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssFile from Linux's /proc")
def test_training_on_mapped_rows_holds_one_chunk_of_pages_and_checks_them(colbert_slice, tmp_path, monkeypatch):
    """Rows read through the embedding cache's maps, as a build's training sample is: each chunk's pages are
    released once its FDEs are made, so the sample is not held twice (at 100K documents its pages were
    2.3 GiB beside 1 GiB of FDEs); a NaN among them is a clear error naming the document."""
    from tests.test_storage import _rss_file_kib

    import retr.indexers.muvera as muvera

    docs, flat, offsets, _ = colbert_slice
    copies = -(-(64 << 20) // flat.nbytes)  # the real tokens repeated to 64 MiB
    save_array(tmp_path / "rows.npy", np.tile(flat, (copies, 1)))
    mapped = load_array(tmp_path / "rows.npy")
    bounds = np.concatenate([offsets[:-1] + i * len(flat) for i in range(copies)] + [[copies * len(flat)]])
    sample = [mapped[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    monkeypatch.setattr(muvera, "ENCODE_CHUNK", 64)
    index = INDEXES.create("muvera:r_reps=4,k_sim=3,inner=pq,inner_M=8,inner_nbits=4")
    before = _rss_file_kib()
    index.train(sample, len(sample))
    assert index.trained
    assert _rss_file_kib() - before < 16 * 1024  # 64 MiB read through the map; one chunk's pages stay at most
    bad = [d.copy() for d in docs[:3]]
    bad[2][0, 5] = np.nan
    with pytest.raises(RetrError, match="training a muvera index: item 2"):
        INDEXES.create("muvera:r_reps=4,k_sim=3,inner=pq,inner_M=8,inner_nbits=4").train(bad, 3)
