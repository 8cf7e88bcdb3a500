"""The embedding cache: shards written behind the encoding, whole or not at all, and a killed run resumed."""

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from retr.retriever.cache import EmbeddingCache, flush_caches

CHUNK = 128
REPO = Path(__file__).resolve().parents[2]


def vectors(texts):
    """A deterministic stand-in encoder: each text's vector from its own bytes."""
    return np.stack([np.frombuffer(t.encode()[:32].ljust(32, b"."), dtype=np.uint8).astype(np.float32)
                     for t in texts])


def never(texts):
    raise AssertionError(f"re-encoded {len(texts)} cached texts")


def test_encodings_are_served_while_written_and_match_after(cranfield, tmp_path):
    texts = [d.content for d in cranfield.corpus[:1000]]
    cache = EmbeddingCache("k", tmp_path)
    first = cache.encode(texts, vectors, chunk=CHUNK)
    again = cache.encode(texts, never, chunk=CHUNK)
    assert np.array_equal(first, vectors(texts)) and np.array_equal(again, first)
    flush_caches()
    shards = [p for p in (tmp_path / "embeddings" / "k").iterdir()]
    assert len(shards) == -(-len(set(texts)) // CHUNK) and not any(p.name.startswith(".") for p in shards)
    fresh = EmbeddingCache("k", tmp_path)  # another process's view, from the files alone
    assert np.array_equal(fresh.encode(texts, never, chunk=CHUNK), first)


def test_a_killed_encoding_resumes_with_only_what_is_missing(cranfield, tmp_path):
    """kill -9 in the middle of an encoding: the shards on disk are whole, and a re-run encodes only the rest."""
    texts = list(dict.fromkeys(d.content for d in cranfield.corpus))[:1280]
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from retr.retriever.cache import EmbeddingCache
        from tests.retriever.test_cache import vectors
        from tests.conftest import DATA
        import retr
        texts = list(dict.fromkeys(d.content for d in retr.load_dataset(DATA / "cranfield").corpus))[:1280]
        def slow(batch):
            print("chunk", flush=True)
            time.sleep(0.3)
            return vectors(batch)
        EmbeddingCache("k", Path({str(tmp_path)!r})).encode(texts, slow, chunk={CHUNK})
    """)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    for _ in range(5):  # chunks 1-3 are written for certain once the 5th starts (one write in flight)
        assert child.stdout.readline().strip() == "chunk"
    child.send_signal(signal.SIGKILL)
    child.wait()
    cache = EmbeddingCache("k", tmp_path)
    asked = []
    got = cache.encode(texts, lambda batch: asked.extend(batch) or vectors(batch), chunk=CHUNK)
    assert np.array_equal(got, vectors(texts))
    cached = len(texts) - len(asked)
    assert cached % CHUNK == 0 and 3 * CHUNK <= cached < len(texts)  # whole shards only, and not all of them
