"""Streaming builds: a corpus added chunk by chunk equals the one-shot build, from lists, files and generators."""

import json

import numpy as np
import pytest

import retr
from retr import RetrError
from tests.conftest import DATA, MODEL, run_of


SEG = "seg-000001"  # a fresh build is one segment


def _bytes(path):
    return path.read_bytes()


@pytest.mark.parametrize("index", ["flat", "ivfpq:M=16,refine=50", "bebr:u=2,epochs=2"])
def test_chunked_build_equals_one_shot_on_disk(cranfield, tmp_path, index):
    one = retr.Retriever.build(cranfield.corpus, f"dense:{MODEL}", index, out=tmp_path / "one")
    chunked = retr.Retriever.build(cranfield.corpus, f"dense:{MODEL}", index, out=tmp_path / "chunked", chunk_size=97)
    for name in ("codes.npy", "vectors.npy"):
        if (tmp_path / "one" / SEG / "index" / name).exists():
            assert _bytes(tmp_path / "one" / SEG / "index" / name) == _bytes(tmp_path / "chunked" / SEG / "index" / name)
    assert _bytes(tmp_path / "one" / SEG / "docstore" / "ids.bytes.npy") == \
        _bytes(tmp_path / "chunked" / SEG / "docstore" / "ids.bytes.npy")
    assert run_of(one, cranfield, 20) == run_of(chunked, cranfield, 20) == run_of(retr.open_index(tmp_path / "chunked"), cranfield, 20)


def test_chunked_multi_vector_builds_equal_one_shot(cranfield, tmp_path):
    docs = cranfield.corpus[:300]  # the ColBERT encodings of the colbert_slice fixture's documents
    for index in ("maxsim", "plaid:nbits=2", "muvera:inner=pq,inner_M=640,candidates=50"):
        a = retr.Retriever.build(docs, f"colbert:{MODEL}", index, out=tmp_path / "a")
        b = retr.Retriever.build(docs, f"colbert:{MODEL}", index, out=tmp_path / "b", chunk_size=41)
        for file in sorted((tmp_path / "a" / SEG / "index").rglob("*.npy")):
            assert _bytes(file) == _bytes(tmp_path / "b" / SEG / "index" / file.relative_to(tmp_path / "a" / SEG / "index")), file
        queries = list(cranfield.queries.values())[:10]
        assert [[h.id for h in hits] for hits in a.search_batch(queries, 10)] == \
            [[h.id for h in hits] for hits in b.search_batch(queries, 10)]


def test_bm25_appended_in_chunks_equals_one_shot(bm25, cranfield, tmp_path):
    chunked = retr.Retriever.build(cranfield.corpus, "bm25", out=tmp_path / "bm25", chunk_size=300)
    assert run_of(chunked, cranfield, 50) == run_of(bm25, cranfield, 50)


def test_list_file_and_generator_build_the_same_index(cranfield, tmp_path):
    from_file = retr.Retriever.build(retr.Corpus(DATA / "cranfield"), f"dense:{MODEL}", out=tmp_path / "f")
    from_list = retr.Retriever.build(cranfield.corpus, f"dense:{MODEL}", out=tmp_path / "l")
    from_generator = retr.Retriever.build((d for d in cranfield.corpus), f"dense:{MODEL}", out=tmp_path / "g",
                                          chunk_size=500)
    for name in (f"{SEG}/index/vectors.npy", f"{SEG}/docstore/ids.bytes.npy", f"{SEG}/docstore/texts.bytes.npy"):
        assert _bytes(tmp_path / "f" / name) == _bytes(tmp_path / "l" / name) == _bytes(tmp_path / "g" / name)
    assert len(from_file) == len(from_list) == len(from_generator) == 1398


def test_the_training_sample_is_seeded_bounded_and_uniform(cranfield, monkeypatch):
    from retr.indexers.quantized import PQIndex

    seen = []
    original = PQIndex.train

    def spy(self, vectors, n):
        seen.append((len(vectors), n))
        original(self, vectors, n)

    monkeypatch.setattr(PQIndex, "training_size", lambda self, n: 300)
    monkeypatch.setattr(PQIndex, "train", spy)
    a = retr.Retriever.build(cranfield.corpus, f"dense:{MODEL}", "pq:M=8")
    b = retr.Retriever.build(cranfield.corpus, f"dense:{MODEL}", "pq:M=8")
    c = retr.Retriever.build(cranfield.corpus, f"dense:{MODEL}", "pq:M=8", seed=7)
    assert seen == [(300, 1398)] * 3
    assert np.array_equal(a.index.codes, b.index.codes) and not np.array_equal(a.index.codes, c.index.codes)


def test_duplicates_far_apart_and_empty_documents_are_refused(tmp_path):
    docs = [{"_id": f"d{i}", "text": f"text {i}"} for i in range(10_000)] + [{"_id": "d3", "text": "again"}]
    with pytest.raises(RetrError, match="duplicate document id 'd3' \\(documents 4 and 10001\\)"):
        retr.Retriever.build(iter(docs), "bm25")
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    with pytest.raises(RetrError, match="line 10001: duplicate document id 'd3' \\(first at line 4\\)"):
        list(retr.iter_corpus(path))
    with pytest.raises(RetrError, match="has no text"):
        retr.Retriever.build([{"_id": "a", "text": " "}], "bm25")
    with pytest.raises(RetrError, match="corpus is empty"):
        retr.Retriever.build(iter([]), "bm25")
