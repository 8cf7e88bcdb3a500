"""Batches cut by token count: every text once, bounded padded tokens, and encodings unchanged."""

import numpy as np
import pytest

from retr.retriever.batching import cut_batches, length_order, pad_rows, token_ids, tokenized_batches
from retr.retriever.models import resolve_model
from tests.conftest import MODEL


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(MODEL))


def counts(tokenizer, max_length, texts):
    return np.array([len(row) for row in token_ids(tokenizer, max_length)(texts)])


def padded(lengths, batches):
    return sum(int(lengths[b].max()) * len(b) for b in batches)


def test_batches_hold_every_text_once_within_the_budget(cranfield, tokenizer):
    texts = [d.content for d in cranfield.corpus]
    lengths = counts(tokenizer, 256, texts)
    assert lengths.min() >= 3 and lengths.max() <= 256  # [CLS] text [SEP], truncated
    for batch_size in (1, 7, 64, 512):
        batches = cut_batches(lengths, batch_size)
        assert sorted(np.concatenate(batches).tolist()) == list(range(len(texts)))
        budget = batch_size * lengths.mean()
        for batch in batches:
            assert 1 <= len(batch) <= batch_size
            assert len(batch) == 1 or lengths[batch].max() * len(batch) <= budget
        firsts = [lengths[b[0]] for b in batches]
        assert firsts == sorted(firsts, reverse=True)  # longest first


def test_token_order_pads_less_than_character_order(cranfield, tokenizer):
    texts = [d.content for d in cranfield.corpus]
    lengths = counts(tokenizer, 256, texts)
    by_chars = length_order(np.array([len(t) for t in texts]))
    char_batches = [by_chars[s : s + 64] for s in range(0, len(texts), 64)]
    token_batches = cut_batches(lengths, 64)
    # Cranfield's abstracts: character order computes 1.12x the real tokens, token order 1.02x
    assert padded(lengths, token_batches) < 1.05 * lengths.sum() < padded(lengths, char_batches)


def test_batches_carry_their_positions_through_the_thread(cranfield, tokenizer):
    texts = [d.content for d in cranfield.corpus[:300]]

    def tokenize(batch):
        return dict(tokenizer([texts[i] for i in batch], padding="longest", truncation=True, max_length=256,
                              return_tensors="pt"))

    seen = []
    for batch, features in tokenized_batches(texts, 32, tokenize, "cpu", lambda window: counts(tokenizer, 256, window)):
        for i, ids, mask in zip(batch, features["input_ids"], features["attention_mask"]):
            assert tokenizer.decode(ids[mask.bool()], skip_special_tokens=True) == \
                tokenizer.decode(tokenizer(texts[i], truncation=True, max_length=256)["input_ids"],
                                 skip_special_tokens=True)
        seen.extend(batch.tolist())
    assert sorted(seen) == list(range(len(texts)))


def test_dense_encodings_equal_sentence_transformers(cranfield):
    from sentence_transformers import SentenceTransformer

    from retr.retriever.dense import DenseEncoder

    texts = [d.content for d in cranfield.corpus[:400]]
    want = SentenceTransformer(resolve_model(MODEL), device="cpu").encode(
        texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    encoder = DenseEncoder(MODEL, batch_size=32)
    got = encoder._encode(texts)
    assert np.abs(got - want).max() < 1e-5 and encoder._padded is True


def test_token_ids_and_padding_equal_the_tokenizers_own_call(cranfield, tokenizer):
    texts = [d.content for d in cranfield.corpus[:200]] + ["", "  spaced   out  ", "naïve café — ünïcödé"]
    for max_length in (8, 64, 512):
        want = tokenizer(texts, truncation=True, max_length=max_length, padding="longest", return_tensors="np")
        rows = token_ids(tokenizer, max_length)(texts)
        ids, mask = pad_rows(rows, max(map(len, rows)), tokenizer.pad_token_id)
        assert np.array_equal(ids, want["input_ids"]) and np.array_equal(mask, want["attention_mask"])
    # the backend's settings changed under it: the tokenizer's own next call still pads and truncates as asked
    again = tokenizer(texts[:3], truncation=True, max_length=16, padding="max_length")
    assert all(len(row) == 16 for row in again["input_ids"])


def test_dense_batches_padded_from_ids_or_the_models_own_features(cranfield, monkeypatch):
    import torch

    from retr.retriever.dense import DenseEncoder

    texts = [d.content for d in cranfield.corpus[:300]]
    fast = DenseEncoder(MODEL, batch_size=16)
    vectors = fast._encode(texts)
    assert fast._padded is True  # MiniLM's features are exactly the padded ids
    own = DenseEncoder(MODEL, batch_size=16)
    preprocess = own.st.preprocess

    def with_extra(batch):  # a model whose features hold more than ids and masks (a prompt length, say)
        features = preprocess(batch)
        return {**features, "prompt_length": torch.zeros(len(batch), dtype=torch.long)}

    monkeypatch.setattr(own.st, "preprocess", with_extra)
    monkeypatch.setattr(own.st, "forward", lambda features: {"sentence_embedding": type(own.st).forward(
        own.st, {k: v for k, v in features.items() if k != "prompt_length"})["sentence_embedding"]})
    assert np.abs(own._encode(texts) - vectors).max() < 1e-5 and own._padded is False


def test_a_float16_checkpoint_computes_in_the_dtype_asked_for(cranfield, tmp_path):
    import torch
    from sentence_transformers import SentenceTransformer

    from retr.retriever.dense import DenseEncoder

    SentenceTransformer(resolve_model(MODEL), device="cpu").half().save(str(tmp_path / "fp16"))
    texts = [d.content for d in cranfield.corpus[:64]]
    reference = SentenceTransformer(str(tmp_path / "fp16"), device="cpu").float()  # the stored weights, in float32
    assert next(SentenceTransformer(str(tmp_path / "fp16"), device="cpu").parameters()).dtype == torch.float16
    want = reference.encode(texts, batch_size=16, normalize_embeddings=True, convert_to_numpy=True)
    encoder = DenseEncoder(str(tmp_path / "fp16"), batch_size=16)
    assert next(encoder.st.parameters()).dtype == torch.float32
    assert np.abs(encoder._encode(texts) - want).max() < 1e-5
    half = DenseEncoder(str(tmp_path / "fp16"), batch_size=16, dtype="float16")
    assert next(half.st.parameters()).dtype == torch.float16


def test_model_inference_keeps_cudnn_attention_out_on_cuda_only():
    import torch

    from retr.retriever.models import model_inference

    flags = torch.backends.cuda
    before = (flags.cudnn_sdp_enabled(), flags.flash_sdp_enabled(), flags.mem_efficient_sdp_enabled())
    with model_inference("cuda"):
        assert torch.is_inference_mode_enabled()
        assert not flags.cudnn_sdp_enabled() and flags.flash_sdp_enabled() and flags.mem_efficient_sdp_enabled()
        assert flags.math_sdp_enabled()
    assert (flags.cudnn_sdp_enabled(), flags.flash_sdp_enabled(), flags.mem_efficient_sdp_enabled()) == before
    with model_inference("cpu"):
        assert torch.is_inference_mode_enabled() and flags.cudnn_sdp_enabled() == before[0]
