"""JPQ on Cranfield: query encoder + centroids trained on the train queries, document codes fixed (CPU)."""

import json

import numpy as np
import pytest
import torch

from retr import RetrError, Retriever, open_index
from retr.indexers.quantized import JPQIndex
from retr.quantizers.jpq import JPQSettings, lambda_ranknet_loss, reconstruct, train_jpq
from retr.registry import INDEXES
from retr.retriever.relevance_filter import split_dataset
from tests.conftest import run_of

HELD_OUT = 0.5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pq_retriever(dense, doc_vectors):
    index = INDEXES.create("pq:M=16")
    index.add(doc_vectors)
    return Retriever(dense.encoder, index, dense.docstore)


@pytest.fixture(scope="module")
def jpq(pq_retriever, cranfield):
    train = split_dataset(cranfield, "train", HELD_OUT)
    return train_jpq(pq_retriever, train, JPQSettings(epochs=3))


def test_reconstruct_matches_faiss_decode(pq_retriever):
    from retr.quantizers.pq import pq_codebooks

    q = pq_retriever.index.quantizer
    codes = pq_retriever.index.codes[:100]
    ours = reconstruct(torch.from_numpy(pq_codebooks(q.pq)), torch.from_numpy(codes.astype(np.int64))).numpy()
    np.testing.assert_allclose(ours, q.decode(codes), atol=1e-6)


def test_lambda_loss_against_slow_reference():
    pos, neg = torch.tensor([[0.5, 0.2], [0.1, 0.3]]), torch.tensor([[0.4, 0.6, 0.1], [0.0, 0.3, 0.2]])
    pos_rank, neg_rank = torch.tensor([[2.0, 4.0], [5.0, 1.0]]), torch.tensor([[3.0, 1.0, 7.0], [9.0, 2.0, 3.0]])
    expected, pairs = 0.0, 0
    for i in range(2):
        for p in range(2):
            for n in range(3):
                weight = abs(1 / pos_rank[i, p].item() - 1 / neg_rank[i, n].item())
                expected += weight * np.log1p(np.exp(-(pos[i, p].item() - neg[i, n].item()) / 0.05))
                pairs += 1
    got = float(lambda_ranknet_loss(pos, neg, pos_rank, neg_rank, 0.05))
    assert got == pytest.approx(expected / pairs, rel=1e-5)


def test_training_reduces_loss_keeps_codes_and_moves_centroids(jpq, pq_retriever):
    losses = jpq.index.training["epoch_losses"]
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    np.testing.assert_array_equal(jpq.index.codes, pq_retriever.index.codes)
    before = pq_retriever.index.quantizer.decode(pq_retriever.index.codes[:50])
    assert not np.allclose(jpq.index.quantizer.decode(jpq.index.codes[:50]), before)
    assert jpq.index.query_encoder is not None and jpq.name.startswith("dense:all-MiniLM-L6-v2@jpq")


def test_train_and_held_out_queries_are_disjoint(cranfield):
    train, held = split_dataset(cranfield, "train", HELD_OUT), split_dataset(cranfield, "held-out", HELD_OUT)
    assert not set(train.queries) & set(held.queries)
    assert len(train.queries) + len(held.queries) == len(cranfield.queries)
    assert 0.35 < len(train.queries) / len(cranfield.queries) < 0.65


def test_save_open_gives_identical_results_without_pickle(jpq, cranfield, tmp_path):
    path = jpq.save(tmp_path / "jpq")
    files = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    segment = "seg-000001/index"
    assert {f"{segment}/centroids.safetensors", f"{segment}/query_encoder/model.safetensors", f"{segment}/jpq.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl", ".pickle")) for f in files)
    reopened = open_index(path)
    assert isinstance(reopened.index.first, JPQIndex) and reopened.name == jpq.name
    held = split_dataset(cranfield, "held-out", HELD_OUT)
    assert run_of(reopened, held, k=50) == run_of(jpq, held, k=50)
    assert json.loads((path / "seg-000001" / "index" / "jpq.json").read_text())["train_queries"] > 50


def test_jpq_needs_a_pq_index(dense, cranfield):
    with pytest.raises(RetrError, match="JPQ trains a pq index"):
        train_jpq(dense, split_dataset(cranfield, "train", HELD_OUT))
