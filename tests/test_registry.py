import pytest

from retr import ENCODERS, INDEXES, RetrError, Spec


def test_spec_parses_positional_and_typed_settings():
    spec = Spec.parse("dense:sentence-transformers/all-MiniLM-L6-v2,batch_size=32,normalize=false,x=0.5")
    assert spec.name == "dense"
    assert spec.positional == "sentence-transformers/all-MiniLM-L6-v2"
    assert spec.settings == {"batch_size": 32, "normalize": False, "x": 0.5}
    assert Spec.parse(str(spec)) == spec


def test_spec_rejects_second_positional_and_empty():
    with pytest.raises(RetrError, match="not key=value"):
        Spec.parse("hnsw:M=16,oops")
    with pytest.raises(RetrError, match="empty spec"):
        Spec.parse("  ")


def test_unknown_names_list_the_known_ones():
    with pytest.raises(RetrError, match="unknown index 'annoy'.*flat.*hnsw"):
        INDEXES.create("annoy")
    with pytest.raises(RetrError, match="unknown encoder"):
        ENCODERS.get("word2vec")


def test_bad_setting_is_a_clear_error():
    with pytest.raises(RetrError, match="hnsw"):
        INDEXES.create("hnsw:efsearch=5")


def test_describe_keeps_only_changed_settings():
    assert INDEXES.describe("hnsw", {"M": 32, "ef_construction": 200, "ef_search": 64}) == "hnsw:ef_search=64"
    assert INDEXES.describe("lucene", {"k1": 0.9, "b": 0.4, "threads": 1}) == "lucene"
