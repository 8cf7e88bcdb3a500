"""DupMAE on real Cranfield text: the representation against a slow reference, and pre-training on a CPU slice."""

import json

import numpy as np
import pytest

from retr import RetrError
from retr.retriever.dupmae import DupMAEEncoder, combine, ordinary_bow, reduce_vocab
from retr.retriever.dupmae_pretrain import (
    bow_targets,
    decoder_attention,
    mask_tokens,
    pretrain_dupmae,
)
from tests.test_cli import retr as run_cli

MODEL = "splade-tiny"


def test_reduce_vocab_matches_a_loop_over_chunks():
    import torch

    rng = np.random.default_rng(0)
    x = np.maximum(rng.normal(size=(3, 1003)), 0).astype(np.float32)  # 1003 = 8 chunks of 126, the last padded
    want = np.array([[row[c * 126 : (c + 1) * 126].max() for c in range(8)] for row in x])
    np.testing.assert_array_equal(reduce_vocab(x, 8), want)
    np.testing.assert_array_equal(reduce_vocab(torch.as_tensor(x), 8).numpy(), want)
    sums = np.array([[row[c * 126 : (c + 1) * 126].sum() for c in range(8)] for row in x])
    np.testing.assert_allclose(reduce_vocab(x, 8, "sum"), sums, rtol=1e-5)


def test_bow_pools_relu_logits_of_ordinary_tokens_only():
    import torch

    logits = torch.randn(2, 5, 7)
    ordinary = torch.tensor([[0, 1, 1, 0, 0], [0, 1, 1, 1, 0]], dtype=torch.bool)
    got = ordinary_bow(logits, ordinary).numpy()
    for b in range(2):
        rows = [torch.relu(logits[b, t]).numpy() for t in range(5) if ordinary[b, t]]
        np.testing.assert_allclose(got[b], np.max(rows, axis=0))


def slow_dupmae(texts, max_length=256):
    """The representation written out with transformers, one text at a time: [CLS] ++ chunk-max(max_t ReLU(logits))."""
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from retr.retriever.models import resolve_model

    path = resolve_model(MODEL)
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModelForMaskedLM.from_pretrained(path).eval()
    out = []
    with torch.no_grad():
        for text in texts:
            enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
            res = model(**enc, output_hidden_states=True)
            cls = res.hidden_states[-1][0, 0].numpy()
            vocab = torch.relu(res.logits[0, 1:-1]).max(dim=0).values.numpy()  # drop [CLS] and [SEP]
            chunk = -(-len(vocab) // 128)
            padded = np.zeros(chunk * 128, np.float32)
            padded[: len(vocab)] = vocab
            out.append(np.concatenate([cls, padded.reshape(128, chunk).max(axis=1)]))
    return np.array(out)


def test_encoder_matches_the_slow_reference_on_cranfield(cranfield):
    texts = [d.content for d in cranfield.corpus[:6]] + list(cranfield.queries.values())[:3]
    raw = DupMAEEncoder(MODEL, normalize="none")
    assert raw.dim == 256 and raw.hidden == 128 and raw.bow_dim == 128
    np.testing.assert_allclose(raw.encode_documents(texts), slow_dupmae(texts), rtol=1e-4, atol=1e-4)
    halves = DupMAEEncoder(MODEL).encode_documents(texts)
    np.testing.assert_allclose(np.linalg.norm(halves, axis=1), 1.0, rtol=1e-5)
    cls, bow = DupMAEEncoder(MODEL).halves(texts)
    cos = lambda m: (m / np.linalg.norm(m, axis=1, keepdims=True)) @ (m / np.linalg.norm(m, axis=1, keepdims=True)).T
    np.testing.assert_allclose(halves @ halves.T, (cos(cls) + cos(bow)) / 2, atol=1e-5)  # mean of the halves' cosines
    assert DupMAEEncoder(MODEL, part="cls").dim == 128
    assert DupMAEEncoder(MODEL, part="bow", reduced_dim=512).encode_queries(["shock wave"]).shape == (1, 512)
    np.testing.assert_allclose(combine(cls, bow, "cls", "none"), cls)


def test_bad_settings_are_clear():
    with pytest.raises(RetrError, match="part is one of"):
        DupMAEEncoder(MODEL, part="all")
    with pytest.raises(RetrError, match="reduced_dim >= 0"):
        DupMAEEncoder(MODEL, reduced_dim=-1)
    with pytest.raises(RetrError, match="exceeds the vocabulary"):
        _ = DupMAEEncoder(MODEL, reduced_dim=10**6).dim


def test_decoder_attention_rows_see_cls_never_themselves_never_padding():
    import torch

    attention = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    allowed = decoder_attention(attention, 0.5, torch.Generator().manual_seed(0))
    assert allowed[:, :, 0].all()
    assert not allowed[:, torch.arange(6), torch.arange(6)][:, 1:].any()
    assert not allowed[1, :, 4:].any()
    dense = decoder_attention(torch.ones(4, 64, dtype=torch.long), 0.5, torch.Generator().manual_seed(1))
    assert 0.4 < dense[:, :, 1:].float().mean() < 0.6


def test_bow_targets_and_masking_touch_ordinary_tokens_only():
    import torch

    ids = torch.tensor([[101, 7, 7, 9, 102, 0]])
    ordinary = torch.tensor([[0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    target = bow_targets(ids, ordinary, 12)
    assert target[0, 7] == pytest.approx(1 / 3) and target[0, 9] == pytest.approx(1 / 3)
    assert target[0].sum() == pytest.approx(2 / 3) and target[0, 0] == 0
    big = torch.randint(1000, 2000, (8, 128))
    mask = torch.rand(8, 128) < 0.9
    masked, labels = mask_tokens(big, mask, 0.3, 103, 30522, torch.Generator().manual_seed(0))
    chosen = labels != -100
    assert not (chosen & ~mask).any() and 0.25 < chosen[mask].float().mean() < 0.35
    assert (masked[~chosen] == big[~chosen]).all() and 0.7 < (masked[chosen] == 103).float().mean() < 0.9


def test_pretraining_on_a_cpu_slice_lowers_the_loss_and_saves_a_loadable_checkpoint(cranfield, tmp_path):
    texts = [d.content for d in cranfield.corpus[:8]]
    record = pretrain_dupmae(MODEL, texts, tmp_path / "ckpt", steps=12, batch_size=4, max_length=48,
                             lr=2e-3, device="cpu", seed=0)
    assert record["loss_last"]["total"] < record["loss_first"]["total"]
    assert all(np.isfinite(v) for v in record["loss_last"].values())
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert "model.safetensors" in files and "dupmae_decoder.safetensors" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl"))]  # no pickle
    assert json.loads((tmp_path / "ckpt" / "dupmae_pretrain.json").read_text())["steps"] == 12
    before = DupMAEEncoder(MODEL).encode_queries(["supersonic flow"])
    after = DupMAEEncoder(str(tmp_path / "ckpt")).encode_queries(["supersonic flow"])
    assert after.shape == before.shape == (1, 256) and not np.allclose(after, before)
    with pytest.raises(RetrError, match="non-empty texts"):
        pretrain_dupmae(MODEL, ["  "], tmp_path / "x", steps=1)


def test_cli_pretrains_then_indexes_and_searches_with_the_checkpoint(cranfield, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n"
                              for d in cranfield.corpus[:60]))
    out = run_cli("pretrain-dupmae", MODEL, tmp_path / "ckpt", corpus, "--steps", "2", "--batch-size", "4",
                  "--max-length", "32", "--device", "cpu").stdout
    assert "pre-trained splade-tiny for 2 steps on 60 texts" in out
    indexed = run_cli("index", "--corpus", corpus, "--out", tmp_path / "idx", "--encoder", f"dupmae:{tmp_path / 'ckpt'}")
    assert "indexed 60 documents with dupmae:" in indexed.stdout
    hits = json.loads(run_cli("search", tmp_path / "idx", "boundary layer", "-k", "3", "--json").stdout)["hits"]
    assert len(hits) == 3
    info = json.loads(run_cli("info", tmp_path / "idx").stdout.strip().rsplit("\n", 1)[0])
    assert info["encoder"]["name"] == "dupmae" and info["encoder"]["dim"] == 256
