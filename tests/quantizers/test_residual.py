"""ColBERTv2 residual compression on real ColBERT token vectors of a cranfield slice."""

import numpy as np
import pytest

from retr import RetrError
from retr.quantizers.residual import ResidualQuantizer, auto_centroids
from retr.registry import QUANTIZERS


@pytest.fixture(scope="module")
def trained(colbert_slice):
    """One quantizer per nbits, trained on the slice's 43,818 tokens (4096 centroids by default)."""
    _, flat, _, _ = colbert_slice
    out = {}
    for nbits in (1, 2):
        q = QUANTIZERS.create(f"residual:nbits={nbits}")
        q.train(flat)
        out[nbits] = q
    return out


def cosines(q, x):
    codes, packed = q.encode(x)
    assert codes.dtype == np.int32 and packed.dtype == np.uint8 and packed.shape == (len(x), q.packed_size)
    decoded = q.decode(codes, packed)
    np.testing.assert_allclose(np.linalg.norm(decoded, axis=1), 1.0, atol=1e-5)
    return (decoded * x).sum(1) / np.linalg.norm(x, axis=1)


def test_reconstruction_and_size(trained, colbert_slice):
    """Measured on the slice: mean cosine 0.974 (2 bits) and 0.947 (1 bit); 100 and 52 bytes per token."""
    _, flat, _, _ = colbert_slice
    two, one = cosines(trained[2], flat).mean(), cosines(trained[1], flat).mean()
    assert two >= 0.9 and two > one, (two, one)
    dim = flat.shape[1]
    assert trained[2].code_size == 4 + dim * 2 // 8 == 100 and trained[1].code_size == 52
    assert 2 * dim / trained[2].code_size >= 7.5  # 768 bytes as float16 vs 100: 7.7x
    assert len(trained[2].centroids) == auto_centroids(len(flat)) == 4096


def test_auto_centroids():
    assert auto_centroids(43818) == 4096 and auto_centroids(10) == 10 and auto_centroids(100) == 100
    assert auto_centroids(1_000_000) == 16384


def test_save_load_round_trip(trained, colbert_slice, tmp_path):
    _, flat, _, _ = colbert_slice
    q = trained[2]
    q.save(tmp_path)
    again = ResidualQuantizer.load(tmp_path)
    assert again.nbits == 2
    a, b = q.encode(flat[:500]), again.encode(flat[:500])
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(q.decode(*a), again.decode(*b))


def test_bad_input(trained):
    with pytest.raises(RetrError, match="nbits 1 or 2"):
        ResidualQuantizer(nbits=3)
    with pytest.raises(RetrError, match="not trained"):
        ResidualQuantizer().encode(np.ones((2, 4), np.float32))
    q = trained[2]
    with pytest.raises(RetrError, match="dimension 8"):
        q.encode(np.ones((2, 8), np.float32))
    with pytest.raises(RetrError, match="NaN"):
        q.encode(np.full((2, 384), np.nan, np.float32))
    with pytest.raises(RetrError, match="expected codes"):
        q.decode(np.zeros(2, np.int32), np.zeros((3, q.packed_size), np.uint8))
    with pytest.raises(RetrError, match="centroid ids"):
        q.decode(np.array([-1], np.int32), np.zeros((1, q.packed_size), np.uint8))
