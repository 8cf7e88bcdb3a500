"""ColBERTv2 residual compression on real ColBERT token vectors of a cranfield slice."""

import numpy as np
import pytest

from retr import RetrError
from retr.quantizers.residual import ResidualQuantizer, auto_centroids, id_bytes
from retr.registry import QUANTIZERS


@pytest.fixture(scope="module")
def trained(colbert_slice):
    """One quantizer per nbits, trained on the slice's 43,818 tokens (1,123 centroids by default: 39 points each)."""
    _, flat, _, _ = colbert_slice
    out = {}
    for nbits in (1, 2, 4):
        q = QUANTIZERS.create(f"residual:nbits={nbits}")
        q.train(flat)
        out[nbits] = q
    return out


def dim_of(x):
    return x.shape[1]


def test_four_bit_codes_round_trip_within_their_buckets(trained, colbert_slice):
    """Each dimension's residual decodes to its bucket's value, which lies between the bucket's cut-offs: the
    error is bounded by the bucket width; the torch decoder (the GPU path) gives the same vectors."""
    import torch

    _, flat, _, _ = colbert_slice
    q = trained[4]
    x = flat[:2000]
    codes = q.encode(x)
    residual = x - q.centroids[q.centroid_ids(codes)]
    bucket = (residual[:, :, None] > q.cutoffs[None]).sum(-1)
    dims = np.arange(x.shape[1])
    value = q.weights[dims, bucket]
    low = np.where(bucket > 0, q.cutoffs[dims, np.maximum(bucket - 1, 0)], -np.inf)
    high = np.where(bucket < 15, q.cutoffs[dims, np.minimum(bucket, 14)], np.inf)
    assert ((value >= low) & (value <= high)).all()
    interior = (bucket > 0) & (bucket < 15)
    assert (np.abs(value - residual)[interior] <= (high - low)[interior] + 1e-6).all()
    expected = value + q.centroids[q.centroid_ids(codes)]
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(q.decode(codes), expected, atol=1e-6)
    np.testing.assert_allclose(q.torch_decoder("cpu")(torch.from_numpy(codes)).numpy(), expected, atol=1e-6)


def cosines(q, x):
    codes = q.encode(x)
    assert codes.dtype == np.uint8 and codes.shape == (len(x), q.code_size)
    np.testing.assert_array_equal(q.centroid_ids(codes), q.assign(x))
    decoded = q.decode(codes)
    np.testing.assert_allclose(np.linalg.norm(decoded, axis=1), 1.0, atol=1e-5)
    return (decoded * x).sum(1) / np.linalg.norm(x, axis=1)


def test_reconstruction_and_size(trained, colbert_slice):
    """Measured on the slice (1,123 centroids): mean cosine 0.991 (4 bits), 0.960 (2 bits) and 0.914 (1 bit);
    194, 98 and 50 bytes per token."""
    _, flat, _, _ = colbert_slice
    four, two, one = (cosines(trained[b], flat).mean() for b in (4, 2, 1))
    assert four >= 0.985 and two >= 0.95 and four > two > one, (four, two, one)
    assert trained[4].code_size == 2 + dim_of(flat) // 2
    dim = flat.shape[1]
    assert trained[2].code_size == 2 + dim * 2 // 8 == 98 and trained[1].code_size == 50
    assert trained[2].id_size == 2 and 2 * dim / trained[2].code_size >= 7.8  # 768 bytes as float16 vs 98: 7.8x
    assert len(trained[2].centroids) == auto_centroids(len(flat)) == 1123


def test_auto_centroids():
    """16 sqrt(n) rounded up to a power of two, capped at one centroid per 39 training points (FAISS), not rounded."""
    assert auto_centroids(1_000_000) == 16384 and auto_centroids(43818) == 1123  # 4096 would have 10.7 points each
    assert auto_centroids(1_000_000, 100_000) == 2564 and auto_centroids(100) == 2 and auto_centroids(10) == 1
    assert auto_centroids(808_770, 634_000) == 16256  # 50K pypi-summaries documents: not halved to 8,192


def test_save_load_round_trip(trained, colbert_slice, tmp_path):
    _, flat, _, _ = colbert_slice
    q = trained[2]
    q.save(tmp_path)
    again = ResidualQuantizer.load(tmp_path)
    assert again.nbits == 2
    a, b = q.encode(flat[:500]), again.encode(flat[:500])
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(q.decode(a), again.decode(b))


def test_bad_input(trained):
    with pytest.raises(RetrError, match="nbits 1, 2 or 4"):
        ResidualQuantizer(nbits=3)
    with pytest.raises(RetrError, match="not trained"):
        ResidualQuantizer().encode(np.ones((2, 4), np.float32))
    q = trained[2]
    with pytest.raises(RetrError, match="dimension 8"):
        q.encode(np.ones((2, 8), np.float32))
    with pytest.raises(RetrError, match="NaN"):
        q.encode(np.full((2, 384), np.nan, np.float32))
    with pytest.raises(RetrError, match="expected uint8 codes"):
        q.decode(np.zeros((3, q.code_size), np.int32))
    with pytest.raises(RetrError, match="expected uint8 codes"):
        q.decode(np.zeros((3, q.code_size + 1), np.uint8))
    with pytest.raises(RetrError, match="centroid ids"):
        q.decode(np.full((1, q.code_size), 255, np.uint8))
    with pytest.raises(RetrError, match="residual must be"):
        ResidualQuantizer(residual="opq")
    with pytest.raises(RetrError, match="m >= 1"):
        ResidualQuantizer(residual="pq")
    with pytest.raises(RetrError, match="does not divide"):
        ResidualQuantizer(residual="pq", m=5).train(np.ones((300, 384), np.float32))


def test_residual_pq(colbert_slice, trained, tmp_path):
    """Residual PQ (m=64 one-byte sub-codes) on the slice, 1024 centroids: mean cosine 0.958 at 66 bytes per token,
    above 1 bit per dimension at 50 bytes (0.914 at the default 1,123 centroids; 2 bits: 0.960 at 98
    bytes); every sub-code is its nearest codeword; the codebooks round-trip through save/load, and the torch
    decoder gives the same vectors."""
    _, flat, _, _ = colbert_slice
    q = QUANTIZERS.create("residual:residual=pq,m=64,n_centroids=1024")
    q.train(flat)
    assert q.code_size == 2 + 64 and q.codebooks.shape == (64, 256, 6)
    pq = cosines(q, flat).mean()
    assert pq >= 0.95 and pq > cosines(trained[1], flat).mean(), pq
    q.save(tmp_path)
    again = ResidualQuantizer.load(tmp_path, q.config())
    codes = q.encode(flat[:300])
    np.testing.assert_array_equal(codes, again.encode(flat[:300]))
    np.testing.assert_array_equal(q.decode(codes), again.decode(codes))
    # each sub-code is the nearest codeword of its residual's sub-vector (ties aside: compare distances)
    sub = (flat[:300] - q.centroids[q.centroid_ids(codes)]).reshape(300, 64, 1, 6)
    dist = ((sub - q.codebooks[None]) ** 2).sum(-1)  # (300, 64, 256)
    chosen = np.take_along_axis(dist, codes[:, 2:, None].astype(np.int64), axis=2)[..., 0]
    np.testing.assert_allclose(chosen, dist.min(-1), rtol=1e-5, atol=1e-7)
    import torch

    np.testing.assert_allclose(q.torch_decoder("cpu")(torch.from_numpy(codes)).numpy(), q.decode(codes), atol=1e-6)
    with pytest.raises(RetrError, match="rebuild"):
        ResidualQuantizer.load(tmp_path, {**q.config(), "m": 32})


def test_wide_centroid_ids():
    """Ids take 2 bytes up to 65,536 centroids, 4 above; little-endian, they round-trip through the codes."""
    assert id_bytes(65536) == 2 and id_bytes(65537) == 4
    rng = np.random.default_rng(0)
    for n_centroids, width in ((300, 2), (70000, 4)):
        q = ResidualQuantizer(nbits=1)
        q.centroids = rng.standard_normal((n_centroids, 8)).astype(np.float32)
        q.centroids /= np.linalg.norm(q.centroids, axis=1, keepdims=True)
        q.cutoffs, q.weights = np.zeros((8, 1), np.float32), np.zeros((8, 2), np.float32)
        codes = q.encode(q.centroids[[3, n_centroids - 1, 0]])
        assert q.id_size == width and codes.shape == (3, width + 1)
        np.testing.assert_array_equal(q.centroid_ids(codes), [3, n_centroids - 1, 0])
        assert codes[0, :width].tolist() == [3] + [0] * (width - 1)


def test_a_float16_sample_trains_as_its_float32_values(colbert_slice, monkeypatch):
    """k-means widens a float16 sample a block at a time (FAISS through a float16 codec, torch a block at a
    time), so it gives exactly the centroids of the same values held as float32; so does the CPU assignment,
    which scores a bounded block of points against the centroids at a time."""
    import retr.quantizers.kmeans as kmeans

    half = colbert_slice[1][:20000].astype(np.float16)
    wide = half.astype(np.float32)
    for device in (None, "cpu"):  # FAISS, torch
        monkeypatch.setattr(kmeans, "_gpu", lambda: device)
        np.testing.assert_array_equal(kmeans.spherical_kmeans(half, 256, niter=3),
                                      kmeans.spherical_kmeans(wide, 256, niter=3))
    monkeypatch.setattr(kmeans, "_gpu", lambda: None)
    monkeypatch.setattr(kmeans, "ASSIGN_CELLS", 256 * 100)  # 100 points a block
    centroids = kmeans.spherical_kmeans(wide, 256, niter=3)
    np.testing.assert_array_equal(kmeans.nearest_centroids(half, centroids), np.argmax(wide @ centroids.T, axis=1))
    q16, q32 = ResidualQuantizer(nbits=2, n_centroids=256), ResidualQuantizer(nbits=2, n_centroids=256)
    q16.train(half)
    q32.train(wide)
    np.testing.assert_array_equal(q16.encode(wide), q32.encode(wide))
