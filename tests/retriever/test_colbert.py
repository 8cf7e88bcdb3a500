"""The ColBERT encoder on a cranfield slice: quality, query augmentation, punctuation, checkpoints, round trip."""

import json
import shutil
import string

import numpy as np
import pytest

from retr import ENCODERS, RetrError, Retriever, evaluate_run, open_index
from retr.retriever.batching import token_ids
from retr.retriever.colbert import ColBERTEncoder
from retr.retriever.models import resolve_model
from retr.retriever.spec import parse_pair
from tests.conftest import MODEL

N_DOCS = 300


@pytest.fixture(scope="module")
def piece(cranfield):
    """The first 300 documents, and the queries judged relevant against them (qrels restricted to them)."""
    docs = cranfield.corpus[:N_DOCS]
    ids = {d.id for d in docs}
    qrels = {q: {d: r for d, r in rel.items() if d in ids} for q, rel in cranfield.qrels.items()}
    qrels = {q: rel for q, rel in qrels.items() if any(r > 0 for r in rel.values())}
    return docs, {q: cranfield.queries[q] for q in qrels}, qrels


@pytest.fixture(scope="module")
def colbert(piece):
    return Retriever.build(piece[0], f"colbert:{MODEL}", "maxsim")


def run_on(retriever, queries, k=100):
    qids = list(queries)
    results = retriever.search_batch([queries[q] for q in qids], k)
    return {q: {h.id: h.score for h in hits} for q, hits in zip(qids, results)}


def test_registered_as_a_multi_vector_encoder(colbert):
    assert "colbert" in ENCODERS.names() and colbert.encoder.kind == "multi" and colbert.encoder.dim == 384
    assert colbert.index.name == "maxsim" and colbert.name == f"colbert:{MODEL}@maxsim"
    assert str(parse_pair(f"colbert:{MODEL}")[1]) == "maxsim"  # the default index for "multi"


def test_zero_shot_quality_on_the_slice(colbert, piece):
    _, queries, qrels = piece
    ndcg = evaluate_run(qrels, run_on(colbert, queries), ["ndcg@10"])["ndcg@10"]
    # measured 0.4553 on 300 docs / 114 queries (dense MiniLM 0.4970, BM25 0.4442; no augmentation 0.4677)
    assert ndcg >= 0.435, ndcg


def test_queries_have_query_length_unit_rows_with_marker_and_masks(colbert, piece):
    encoder = colbert.encoder
    vectors = encoder.encode_queries(list(piece[1].values()))
    assert all(v.shape == (32, 384) and v.dtype == np.float32 for v in vectors)
    np.testing.assert_allclose(np.linalg.norm(np.concatenate(vectors), axis=1), 1.0, atol=1e-5)
    rows = token_ids(encoder.loaded.tokenizer, encoder._room(True))(["what is a slipstream?"])
    ids, mask = encoder._inputs(rows, True)
    tokens = encoder.loaded.tokenizer.convert_ids_to_tokens(ids[0].tolist())
    assert tokens[:9] == ["[CLS]", "[unused0]", "what", "is", "a", "slips", "##tream", "?", "[SEP]"]
    assert tokens[9:] == ["[MASK]"] * 23 and mask[0].tolist() == [1] * 9 + [0] * 23


def test_mask_augmentation_adds_query_vectors(colbert):
    query = "heat transfer in laminar boundary layers"
    augmented = colbert.encoder.encode_queries([query])[0]
    plain = ColBERTEncoder(MODEL, query_length=0).encode_queries([query])[0]
    attended = ColBERTEncoder(MODEL, attend_to_mask_tokens=True).encode_queries([query])[0]
    n = len(plain)
    assert n < 32 and augmented.shape == attended.shape == (32, 384)
    # masks are not attended to, so the real tokens are unchanged; the mask vectors are new
    np.testing.assert_allclose(augmented[:n], plain, atol=1e-5)
    assert np.abs(augmented[n:] - augmented[n - 1]).max() > 0.1
    assert np.abs(attended[:n] - plain).max() > 1e-2  # attending to masks changes the real tokens


def test_documents_lose_punctuation_and_padding(colbert, piece):
    encoder = colbert.encoder
    tokenizer = encoder.loaded.tokenizer
    texts = [d.content for d in piece[0][:40]]
    vectors = encoder.encode_documents(texts)
    with_punct = ColBERTEncoder(MODEL, skip_punctuation=False).encode_documents(texts)
    dropped = 0
    for text, v, w in zip(texts, vectors, with_punct):
        tokens = tokenizer.convert_ids_to_tokens(tokenizer(text, truncation=True, max_length=179)["input_ids"])
        kept = [t for t in tokens if t not in string.punctuation]
        assert len(v) == len(kept) + 1  # + the [D] marker
        assert len(w) == len(tokens) + 1
        dropped += len(tokens) - len(kept)
    assert dropped > 40  # cranfield text has punctuation to drop
    assert max(len(v) for v in with_punct) == 180
    np.testing.assert_allclose(np.linalg.norm(np.concatenate(vectors), axis=1), 1.0, atol=1e-5)


def test_save_and_open_give_identical_results(colbert, piece, tmp_path):
    path = colbert.save(tmp_path / "idx")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["encoder"]["kind"] == "multi" and manifest["encoder"]["dim"] == 384
    assert {"seg-000001/index/tokens.npy", "seg-000001/index/offsets.npy"} <= set(manifest["files"])
    reopened = open_index(path)
    assert reopened.name == colbert.name and len(reopened) == N_DOCS
    queries = dict(list(piece[1].items())[:30])
    assert run_on(reopened, queries) == run_on(colbert, queries)
    with pytest.raises(RetrError, match="was built with encoder"):
        open_index(path, encoder=f"colbert:{MODEL},doc_length=64")


def test_second_encoding_comes_from_the_cache(colbert, piece, monkeypatch):
    texts = [d.content for d in piece[0][:30]]
    first = colbert.encoder.encode_documents(texts)
    monkeypatch.setattr(ColBERTEncoder, "_encode", lambda self, t, q: pytest.fail("re-encoded a cached text"))
    for a, b in zip(colbert.encoder.encode_documents(texts), first):
        np.testing.assert_array_equal(a, b)
    fresh = ENCODERS.create(f"colbert:{MODEL}")  # every text cached: tokenizer and settings read, no backbone
    for a, b in zip(fresh.encode_documents(texts), first):
        np.testing.assert_array_equal(a, b)
    assert fresh._loaded is None and fresh.dim == colbert.encoder.dim == 384


def _copy_model(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(resolve_model(MODEL), folder)
    return folder


def test_sentence_transformers_checkpoint_with_a_projection(piece, tmp_path):
    import torch
    from safetensors.torch import save_file

    folder = _copy_model(tmp_path)
    (folder / "1_Dense").mkdir()
    (folder / "1_Dense" / "config.json").write_text(json.dumps(
        {"in_features": 384, "out_features": 128, "bias": False,
         "activation_function": "torch.nn.modules.linear.Identity"}))
    weight = torch.randn(128, 384, generator=torch.Generator().manual_seed(0)) / 20
    save_file({"linear.weight": weight}, str(folder / "1_Dense" / "model.safetensors"))
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "sentence_transformers.models.Dense"},
    ]))
    encoder = ENCODERS.create(f"colbert:{folder}")
    assert encoder.dim == 128 and encoder.loaded.layout == "sentence-transformers"
    texts = [d.content for d in piece[0][:8]]
    raw = ColBERTEncoder(MODEL, normalize=False).encode_documents(texts)  # token embeddings, same rows
    w = weight.numpy()
    for got, tok in zip(encoder.encode_documents(texts), raw):
        want = tok @ w.T
        want /= np.linalg.norm(want, axis=1, keepdims=True)
        assert got.shape == (len(tok), 128)
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert all(q.shape == (32, 128) for q in encoder.encode_queries(["shock waves", "flutter of panels"]))


def test_colbert_ai_checkpoint_with_metadata(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    folder = _copy_model(tmp_path)
    for extra in ("modules.json", "1_Pooling", "sentence_bert_config.json", "config_sentence_transformers.json"):
        path = folder / extra
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    tensors = {f"bert.{k}": v for k, v in load_file(str(folder / "model.safetensors")).items()}
    tensors["linear.weight"] = torch.randn(96, 384, generator=torch.Generator().manual_seed(1))
    save_file(tensors, str(folder / "model.safetensors"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["HF_ColBERT"]}))
    (folder / "artifact.metadata").write_text(json.dumps(
        {"query_token_id": "[unused0]", "doc_token_id": "[unused1]", "query_maxlen": 16, "doc_maxlen": 40}))
    encoder = ColBERTEncoder(str(folder))
    assert encoder.dim == 96 and encoder.loaded.layout == "colbert-ai"
    assert encoder.encode_queries(["shock waves"])[0].shape == (16, 96)
    doc = encoder.encode_documents(["word " * 100])[0]
    assert doc.shape == (40, 96)
    # the backbone's weights were read from the prefixed keys: same token vectors as the original model
    plain = ColBERTEncoder(MODEL, doc_length=40, normalize=False).encode_documents(["word " * 100])[0]
    want = plain @ tensors["linear.weight"].numpy().T
    np.testing.assert_allclose(doc, want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-5)


def test_bad_settings():
    with pytest.raises(RetrError, match="not a token"):
        ColBERTEncoder(MODEL, query_marker="[NOPE]").encode_queries(["lift"])
    with pytest.raises(RetrError, match="query_length >= 0"):
        ENCODERS.create(f"colbert:{MODEL},query_length=-1")
    with pytest.raises(RetrError, match="makes multi representations but index 'flat' holds dense"):
        Retriever.build(["a wing", "a shock"], f"colbert:{MODEL}", "flat")
