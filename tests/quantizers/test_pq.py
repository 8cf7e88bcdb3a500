"""PQ / OPQ / IVF-PQ quantizers and their indexes on Cranfield's real MiniLM document vectors."""

import numpy as np
import pytest

from retr import RetrError
from retr.indexers.quantized import PQIndex
from retr.quantizers.pq import IVFPQQuantizer, OPQQuantizer, PQQuantizer, inner_index
from retr.registry import INDEXES, QUANTIZERS

SPECS = {"pq": "pq:M=16", "opq": "opq:M=16,niter=4", "ivfpq": "ivfpq:nlist=16,M=16"}


@pytest.fixture(scope="module")
def trained(doc_vectors):
    out = {}
    for name, spec in SPECS.items():
        q = QUANTIZERS.create(spec)
        q.train(doc_vectors)
        out[name] = q
    return out


def reconstruction_error(q, x):
    codes = q.encode(x)
    assert codes.dtype == np.uint8 and codes.shape == (len(x), q.code_size)
    return np.linalg.norm(q.decode(codes) - x, axis=1) / np.linalg.norm(x, axis=1)


def test_round_trip_error_bounds_and_code_size(trained, doc_vectors):
    """Relative L2 error of decode(encode(x)) on unit vectors, mean / max measured:
    pq M=16 0.496 / 0.711, opq M=16 0.423 / 0.531, ivfpq 0.483 / 0.799, pq M=48 0.354 / 0.494."""
    errors = {name: reconstruction_error(q, doc_vectors) for name, q in trained.items()}
    for name, err in errors.items():
        assert err.mean() < 0.55 and err.max() < 0.9, (name, err.mean(), err.max())
    assert errors["opq"].mean() < errors["pq"].mean()  # the learned rotation helps
    assert trained["pq"].code_size == trained["opq"].code_size == 16
    assert trained["ivfpq"].code_size == 17  # one byte of cell id for 16 cells
    finer = PQQuantizer(M=48)
    finer.train(doc_vectors)
    assert reconstruction_error(finer, doc_vectors).mean() < errors["pq"].mean()


def test_adc_search_equals_scores_on_decoded_vectors(doc_vectors, cranfield):
    """FAISS ADC on codes = exact inner product with the decoded vectors (the slow reference)."""
    index = INDEXES.create("pq:M=16")
    index.add(doc_vectors)
    queries = doc_vectors[:25] + 0.01
    scores, ids = index.search(queries, 10)
    decoded = index.quantizer.decode(index.codes)
    reference = queries @ decoded.T
    np.testing.assert_allclose(scores, np.take_along_axis(reference, ids, 1), atol=1e-4)
    np.testing.assert_allclose(scores[:, 0], reference.max(1), atol=1e-4)


@pytest.mark.parametrize("spec", ["pq:M=24", "opq:M=16,niter=4", "ivfpq:nlist=16,M=16,nprobe=4"])
def test_save_load_gives_identical_results(spec, doc_vectors, tmp_path):
    index = INDEXES.create(spec)
    index.add(doc_vectors)
    queries = doc_vectors[::50]
    index.save(tmp_path)
    again = type(index).load(tmp_path, index.config(), len(doc_vectors))
    assert again.config() == index.config()
    for a, b in zip(index.search(queries, 20), again.search(queries, 20)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(again.quantizer.encode(queries), index.quantizer.encode(queries))


def test_ivfpq_nprobe_trades_recall(doc_vectors):
    full = INDEXES.create("ivfpq:nlist=16,M=16,nprobe=16")
    full.add(doc_vectors)
    one = INDEXES.create("ivfpq:nlist=16,M=16,nprobe=1")
    one.quantizer, one._codes = full.quantizer, full._codes
    queries = doc_vectors[::20]
    exact = np.argsort(-(queries @ doc_vectors.T), axis=1)[:, :10]
    recall = [np.mean([len(set(a) & set(e)) / 10 for a, e in zip(ix.search(queries, 10)[1], exact)]) for ix in (one, full)]
    assert recall[0] < recall[1], recall


@pytest.mark.parametrize("spec", ["ivfpq:nlist=16,M=16", "ivf:nlist=16"])
def test_automatic_nprobe_searches_a_third_of_the_cells(spec, doc_vectors, tmp_path):
    auto = INDEXES.create(spec)
    auto.add(doc_vectors)
    auto.save(tmp_path)
    auto = type(auto).load(tmp_path, auto.config(), len(doc_vectors))
    assert auto.config()["nprobe"] == 0  # saved as automatic: follows the cells of the index it opens
    queries = doc_vectors[::20]
    found = auto.search(queries, 10)
    searcher = auto._searcher if spec.startswith("ivfpq") else auto._index
    assert inner_index(searcher).nprobe == 6  # ceil(16 / 3)
    for nprobe, same in ((6, True), (1, False)):
        fixed = type(auto).load(tmp_path, {**auto.config(), "nprobe": nprobe}, len(doc_vectors))
        assert np.array_equal(fixed.search(queries, 10)[1], found[1]) == same


def test_auto_nlist_is_resolved_and_kept(doc_vectors):
    q = IVFPQQuantizer(M=16)
    q.train(doc_vectors)
    assert q.nlist == 35 and q.config()["nlist"] == 35  # min(4 sqrt(1398), 1398 // 39)


def test_bad_settings_and_input(trained):
    with pytest.raises(RetrError, match="must divide the vector dimension 384"):
        PQQuantizer(M=10).train(np.ones((300, 384), np.float32))
    with pytest.raises(RetrError, match="not trained"):
        PQQuantizer().encode(np.ones((2, 384), np.float32))
    with pytest.raises(RetrError, match="dimension 8, the quantizer holds dimension 384"):
        trained["pq"].encode(np.ones((2, 8), np.float32))
    with pytest.raises(RetrError, match="expected uint8 codes of shape"):
        trained["pq"].decode(np.zeros((2, 3), np.uint8))
    with pytest.raises(RetrError, match="needs at least 64 vectors"):
        IVFPQQuantizer(nlist=64, M=16).train(np.ones((10, 384), np.float32))
    with pytest.raises(RetrError, match="opq needs niter"):
        OPQQuantizer(niter=0)
    with pytest.raises(RetrError, match="index is empty"):
        PQIndex().search(np.ones((1, 384), np.float32), 3)
