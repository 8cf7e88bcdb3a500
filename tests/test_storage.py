import json
from pathlib import Path

import numpy as np
import pytest

from retr import RetrError
from retr import storage
from retr.storage import (StringArray, atomic_directory, checksum, load_array, memory_map_of, piece_checksums,
                          read_manifest, release_pages, save_array, write_manifest)


def _index_dir(root, name="idx"):
    target = root / name
    with atomic_directory(target) as tmp:
        save_array(tmp / "a.npy", np.arange(1000, dtype=np.float32))
        write_manifest(tmp, {"note": "test"})
    return target


def test_manifest_records_every_file_and_verifies(tmp_path):
    target = _index_dir(tmp_path)
    manifest = read_manifest(target)
    assert set(manifest["files"]) == {"a.npy"} and manifest["note"] == "test"


def test_corruption_is_caught_on_open(tmp_path):
    target = _index_dir(tmp_path)
    data = bytearray((target / "a.npy").read_bytes())
    data[-1] ^= 0xFF
    (target / "a.npy").write_bytes(bytes(data))
    with pytest.raises(RetrError, match="checksum"):
        read_manifest(target)
    read_manifest(target, verify=False)  # same size: only the checksum can tell


def test_piece_checksums_cover_every_byte_and_old_manifests_still_verify(tmp_path, monkeypatch):
    import hashlib

    monkeypatch.setattr(storage, "PIECE_BYTES", 1000)  # the 4,128-byte file is five pieces, the last one short
    target = _index_dir(tmp_path)
    data = (target / "a.npy").read_bytes()
    pieces = b"".join(hashlib.blake2b(data[s : s + 1000], digest_size=16).digest() for s in range(0, len(data), 1000))
    entry = json.loads((target / "manifest.json").read_text())["files"]["a.npy"]
    assert entry == {"bytes": len(data), "blake2b": hashlib.blake2b(pieces, digest_size=16).hexdigest(),
                     "piece_bytes": 1000}
    assert piece_checksums([target / "a.npy"] * 2, 1000) == [entry["blake2b"]] * 2
    for at in (0, 1500, len(data) - 1):  # a flipped byte in the first, a middle and the last piece
        changed = bytearray(data)
        changed[at] ^= 0xFF
        (target / "a.npy").write_bytes(bytes(changed))
        with pytest.raises(RetrError, match="checksum"):
            read_manifest(target)
    (target / "a.npy").write_bytes(data)
    manifest = json.loads((target / "manifest.json").read_text())  # a manifest written before pieces: in order
    manifest["files"]["a.npy"] = {"bytes": len(data), "blake2b": checksum(target / "a.npy")}
    (target / "manifest.json").write_text(json.dumps(manifest))
    read_manifest(target)
    (target / "a.npy").write_bytes(bytes(changed))
    with pytest.raises(RetrError, match="checksum"):
        read_manifest(target)


def test_truncation_and_missing_files_are_caught(tmp_path):
    target = _index_dir(tmp_path)
    with open(target / "a.npy", "r+b") as fh:
        fh.truncate(100)
    with pytest.raises(RetrError, match="truncated"):
        read_manifest(target, verify=False)
    (target / "a.npy").unlink()
    with pytest.raises(RetrError, match="missing a.npy"):
        read_manifest(target)


def test_bad_manifest_and_version(tmp_path):
    target = _index_dir(tmp_path)
    (target / "manifest.json").write_text("{not json")
    with pytest.raises(RetrError, match="corrupt"):
        read_manifest(target)
    target = _index_dir(tmp_path, "v")
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["format_version"] = 99
    (target / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RetrError, match="format version 99"):
        read_manifest(target)
    with pytest.raises(RetrError, match="no index"):
        read_manifest(tmp_path / "nowhere")


def test_failed_write_leaves_the_old_directory_and_no_temporaries(tmp_path):
    target = _index_dir(tmp_path)
    before = (target / "a.npy").read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with atomic_directory(target) as tmp:
            save_array(tmp / "a.npy", np.zeros(3))
            raise KeyboardInterrupt
    assert (target / "a.npy").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]


def test_refuses_to_replace_a_directory_that_is_not_an_index(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "precious.txt").write_text("keep me")
    with pytest.raises(RetrError, match="not a retr index"):
        with atomic_directory(tmp_path / "docs"):
            pass
    assert (tmp_path / "docs" / "precious.txt").read_text() == "keep me"


def test_string_array_round_trip_memory_mapped(tmp_path):
    strings = ["", "plain", "ünïcödé ✓", "tab\tand\nnewline", "x" * 10_000]
    StringArray.from_strings(strings).save(tmp_path, "s")
    loaded = StringArray.load(tmp_path, "s")
    assert list(loaded) == strings and len(loaded) == 5
    assert isinstance(loaded._blob, np.memmap)


def test_object_arrays_are_refused(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    from retr.storage import load_array

    with pytest.raises(RetrError, match="cannot read"):
        load_array(tmp_path / "obj.npy", mmap=False)


def test_growing_array_on_disk_equals_the_concatenation_and_reopens(tmp_path):
    from retr.storage import GrowingArray

    rng = np.random.default_rng(0)
    blocks = [rng.standard_normal((n, 7)).astype(np.float32) for n in (5, 0, 12, 1)]
    grown = GrowingArray(np.float32, None, tmp_path / "a.npy")
    for block in blocks:
        grown.append(block)
    np.testing.assert_array_equal(grown.rows(3, 9), np.concatenate(blocks)[3:9])  # read back while writing
    whole = grown.array
    assert isinstance(whole, np.memmap) and whole.shape == (18, 7)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.concatenate(blocks))  # an ordinary .npy
    again = GrowingArray.reopen(tmp_path / "a.npy")
    again.append(np.ones((2, 7), np.float32))
    again.close()
    assert np.load(tmp_path / "a.npy").shape == (20, 7)
    with pytest.raises(RetrError, match="rows of shape"):
        again.append(np.ones((2, 3), np.float32))


def test_a_closed_array_survives_its_directory_being_renamed(tmp_path):
    from retr.storage import GrowingArray

    (tmp_path / "tmp").mkdir()
    grown = GrowingArray(np.int64, (), tmp_path / "tmp" / "x.npy")
    grown.append(np.arange(10))
    grown.close()
    (tmp_path / "tmp").rename(tmp_path / "final")
    assert grown.array.sum() == 45  # the mapping outlives the rename
    grown.append(np.arange(3))  # the file moved away: later rows stay in memory
    assert len(grown) == 13 and grown.array.tolist()[-3:] == [0, 1, 2]


def test_string_array_writer_streams_to_disk(tmp_path):
    from retr.storage import StringArrayWriter

    writer = StringArrayWriter(tmp_path, "s")
    writer.append(["a", "ünï", ""])
    writer.append(["last"])
    assert writer.read(1, 4) == ["ünï", "", "last"]
    assert list(writer.finish()) == ["a", "ünï", "", "last"]
    assert list(StringArray.load(tmp_path, "s")) == ["a", "ünï", "", "last"]


def test_saving_a_mapped_array_onto_itself_keeps_it(tmp_path):
    save_array(tmp_path / "a.npy", np.arange(5.0))
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
    save_array(tmp_path / "a.npy", mapped)
    assert np.load(tmp_path / "a.npy").tolist() == [0, 1, 2, 3, 4]


def _rss_file_kib() -> int:
    with open("/proc/self/status") as fh:
        return int(next(line for line in fh if line.startswith("RssFile")).split()[1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssFile from Linux's /proc")
def test_released_pages_leave_the_resident_set_and_read_back_unchanged(tmp_path):
    """What a build streams through the embedding cache's maps does not stay resident (the RSS bound)."""
    data = np.random.default_rng(0).standard_normal((1 << 14, 1024)).astype(np.float32)  # 64 MiB
    save_array(tmp_path / "rows.npy", data)
    mapped = load_array(tmp_path / "rows.npy")
    before = _rss_file_kib()
    total = float(mapped.sum(dtype=np.float64))  # touches every page
    touched = _rss_file_kib()
    release_pages(mapped)
    released = _rss_file_kib()
    assert touched - before > 48 * 1024 and touched - released > 48 * 1024
    assert float(mapped.sum(dtype=np.float64)) == total and np.array_equal(mapped[-3:], data[-3:])
    release_pages(data)  # an array in memory: nothing to release, no error


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssFile from Linux's /proc")
def test_stacked_token_rows_equal_their_concatenation_and_leave_no_mapped_pages(tmp_path):
    """A training sample copied out of the cache's maps (``stack_tokens``) costs its copy, not the maps too."""
    from retr.indexers.maxsim import as_token_matrices, stack_tokens

    data = np.random.default_rng(1).standard_normal((1 << 14, 1024)).astype(np.float32)  # 64 MiB
    save_array(tmp_path / "rows.npy", data)
    mapped = load_array(tmp_path / "rows.npy")
    bounds = np.unique(np.random.default_rng(2).integers(0, len(data), 500))
    before = _rss_file_kib()
    # checked as they are copied (PLAID's training): listing them reads no page
    docs = as_token_matrices([mapped[a:b] for a, b in zip([0, *bounds], [*bounds, len(data)])], None, "test",
                             finite=False)
    assert memory_map_of(docs[3]) is memory_map_of(mapped) is not None and memory_map_of(data) is None
    assert _rss_file_kib() - before < 16 * 1024
    flat = stack_tokens(docs, block=64, what="test")
    assert np.array_equal(flat, data) and flat.dtype == np.float32
    assert _rss_file_kib() - before < 16 * 1024  # the 64 MiB read through the map did not stay resident
    np.testing.assert_array_equal(stack_tokens(docs[:5], dtype=np.float16), data[: bounds[4]].astype(np.float16))
    assert stack_tokens([]).shape == (0, 0)
    bad = [d.copy() for d in docs[:3]]
    bad[2][0, 7] = np.nan
    with pytest.raises(RetrError, match="test: item 2"):
        stack_tokens(bad, block=2, what="test")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssFile from Linux's /proc")
def test_cached_vectors_read_back_leave_no_mapped_pages(tmp_path):
    """A dense training sample read from the embedding cache is held once (its stacked copy), not also as the
    cache's mapped pages: 350 MB of IVF-PQ's sample at 794K documents."""
    from retr.retriever.cache import EmbeddingCache

    data = np.random.default_rng(3).standard_normal((1 << 14, 1024)).astype(np.float32)  # 64 MiB
    texts = [f"text {i}" for i in range(len(data))]
    first = EmbeddingCache("k", tmp_path)
    first.encode(texts, lambda batch: data[[int(t.split()[1]) for t in batch]])
    first.flush()  # its shards in place, as when its process exits
    cache = EmbeddingCache("k", tmp_path)  # a new process's view: every row read through the shards' maps
    before = _rss_file_kib()
    again = cache.encode(texts, lambda batch: pytest.fail("re-encoded a cached text"))
    assert np.array_equal(again, data)
    assert _rss_file_kib() - before < 16 * 1024
