"""Indexes that change: add / delete / update / compact against fresh builds, the writer lock, crashes, readers."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import retr
from retr import RetrError
from retr.eval.datasets import Document
from retr.storage import IndexLocked, writer_lock
from tests.conftest import MODEL

REPO = Path(__file__).resolve().parents[2]
QUERIES = 20


def ranked(retriever, queries, k=10):
    """Each query's hits as (score rounded, id), ties put in id order so a tie's order does not count."""
    return [sorted((-round(h.score, 4), h.id) for h in hits) for hits in retriever.search_batch(queries, k)]


def same_up_to_cutoff_ties(a, b):
    """Equal rankings, except which of the documents tied at the k-th score made the cut."""
    for x, y in zip(a, b):
        if [s for s, _ in x] != [s for s, _ in y]:
            return False
        last = x[-1][0] if x else None
        if [p for p in x if p[0] != last] != [p for p in y if p[0] != last]:
            return False
    return True


def recall(found, truth):
    return np.mean([len({i for _, i in f} & {i for _, i in t}) / max(len(t), 1) for f, t in zip(found, truth)])


def random_changes(pool, live, rng, steps):
    """A seeded sequence of (operation, argument) over ``pool``, tracking the live corpus in ``live``."""
    spare = [d for d in pool if d.id not in {x.id for x in live}]
    for step in range(steps):
        op = rng.choice(["add", "delete", "update", "add", "delete", "compact"] if step else ["add"])
        if op == "add" and spare:
            docs = [spare.pop() for _ in range(min(len(spare), rng.randint(1, 40)))]
            live.extend(docs)
            yield op, docs
        elif op == "delete" and len(live) > 50:
            gone = rng.sample(live, rng.randint(1, 25))
            for d in gone:
                live.remove(d)
            yield op, [d.id for d in gone]
        elif op == "update":
            old = rng.sample(live, rng.randint(1, 10))
            new = [Document(d.id, f"revised: {d.text[::-1][:200]} {d.text}", d.title) for d in old]
            for d in old:
                live.remove(d)
            live.extend(new)
            yield op, new
        elif op == "compact":
            yield op, None


def apply(retriever, op, arg):
    if op == "add":
        retriever.add(arg)
    elif op == "delete":
        retriever.delete(arg)
    elif op == "update":
        retriever.update(arg)
    else:
        retriever.compact()
    if op != "compact":
        retriever.commit()


SPLADE = "splade:splade-tiny"
EXACT = [("bm25", "lucene"), (f"dense:{MODEL}", "flat"), (f"colbert:{MODEL}", "maxsim"), (SPLADE, "csr"),
         (SPLADE, "lucene")]
APPROXIMATE = [(f"dense:{MODEL}", "hnsw"), (f"dense:{MODEL}", "ivf:nlist=8,nprobe=2"),
               (f"dense:{MODEL}", "pq:M=16,nbits=6,refine=30"), (f"dense:{MODEL}", "bebr:u=2,epochs=2"),
               (f"colbert:{MODEL}", "plaid:nbits=2,n_centroids=128,ndocs=64"), (f"colbert:{MODEL}", "muvera:candidates=40"),
               ("slim:splade-tiny", "slim:candidates=30")]
# the exact ranking each encoder's approximate indexes are held to (SLIM: its two stages with every candidate)
EXACT_OF = {"dense": "flat", "colbert": "maxsim", "bm25": "lucene", "splade": "csr", "slim": "slim:candidates=2000"}


@pytest.mark.parametrize("encoder,index", EXACT + APPROXIMATE,
                         ids=[f"{e.split(':')[0]}-{i.split(':')[0]}" for e, i in EXACT + APPROXIMATE])
def test_random_changes_equal_a_fresh_build(cranfield, tmp_path, encoder, index):
    """Every result after each change equals a fresh build of the same live corpus (exact types),
    or keeps the fresh build's recall of the exact ranking (approximate types); compact(retrain)
    of a trained type equals the fresh build exactly."""
    rng = random.Random(7)
    pool = cranfield.corpus[:360]
    live = list(pool[:250])
    queries = list(cranfield.queries.values())[:QUERIES]
    exact = EXACT_OF[encoder.split(":")[0]]
    retriever = retr.Retriever.build(live, encoder, index, out=tmp_path / "ix")
    deleted_since_compact = False
    for op, arg in random_changes(pool, live, rng, steps=6):
        apply(retriever, op, arg)
        deleted_since_compact = op != "compact" and (deleted_since_compact or op in ("delete", "update"))
        reopened = retr.open_index(tmp_path / "ix")
        got, mine = ranked(reopened, queries), ranked(retriever, queries)
        assert got == mine, f"the writer and a reader of the committed generation disagree after {op}"
        assert len(reopened) == len(live) and {h for q in got for _, h in q} <= {d.id for d in live}
        fresh = retr.Retriever.build(live, encoder, index)
        if encoder == "bm25" and deleted_since_compact:
            # BM25 counts deleted documents in its statistics until compaction (as Lucene does)
            assert recall(got, ranked(fresh, queries)) >= 0.8
        elif (encoder, index) in EXACT:
            assert same_up_to_cutoff_ties(got, ranked(fresh, queries)), f"differs from a fresh build after {op}"
        else:
            truth = ranked(retr.Retriever.build(live, encoder, exact), queries)
            assert recall(got, truth) >= recall(ranked(fresh, queries), truth) - 0.12, op
        reopened.close()
    retriever.compact(retrain=True)
    assert same_up_to_cutoff_ties(ranked(retr.open_index(tmp_path / "ix"), queries),
                                  ranked(retr.Retriever.build(live, encoder, index), queries))


def test_bm25_over_segments_uses_global_statistics(cranfield, bm25, tmp_path):
    """Adds only: BM25 over three segments scores exactly as one index of the same documents."""
    r = retr.Retriever.build(cranfield.corpus[:600], "bm25", out=tmp_path / "b")
    r.add(cranfield.corpus[600:1000])
    r.commit()
    r.add(cranfield.corpus[1000:])
    r.commit()
    queries = list(cranfield.queries.values())[:50]
    assert len(retr.open_index(tmp_path / "b").index.segments) == 3
    assert same_up_to_cutoff_ties(ranked(retr.open_index(tmp_path / "b"), queries, 20), ranked(bm25, queries, 20))


def test_ids_stay_unique_and_bad_changes_lose_nothing(cranfield, tmp_path):
    r = retr.Retriever.build(cranfield.corpus[:100], f"dense:{MODEL}", out=tmp_path / "d")
    with pytest.raises(RetrError, match="already in the index; use update"):
        r.add([cranfield.corpus[5]])
    with pytest.raises(RetrError, match="no document with id 'nope'"):
        r.delete(["nope", cranfield.corpus[1].id])
    r.rollback()
    assert len(retr.open_index(tmp_path / "d")) == 100 and r.generation == 1
    r.delete([cranfield.corpus[1].id])
    r.add([Document(cranfield.corpus[1].id, "back again, with another text")])  # a deleted id may come back
    r.commit()
    hits = retr.open_index(tmp_path / "d").search("back again, with another text", 1)
    assert hits[0].id == cranfield.corpus[1].id and hits[0].text == "back again, with another text"
    assert r.update([Document("new-1", "a new document"), Document(cranfield.corpus[2].id, "replaced")]) == 2
    r.commit()
    again = retr.open_index(tmp_path / "d")
    assert len(again) == 101 and again.search("replaced", 1)[0].id == cranfield.corpus[2].id


def test_one_writer_at_a_time(cranfield, tmp_path):
    r = retr.Retriever.build(cranfield.corpus[:50], f"dense:{MODEL}", out=tmp_path / "w")
    other = retr.open_index(tmp_path / "w")
    r.delete([cranfield.corpus[0].id])  # holds the lock until commit
    with pytest.raises(IndexLocked, match="being written by another process"):
        other.delete([cranfield.corpus[1].id])
    with pytest.raises(IndexLocked):
        retr.Retriever.build(cranfield.corpus[:10], f"dense:{MODEL}", out=tmp_path / "w")
    r.commit()
    with pytest.raises(RetrError, match="changed since it was opened"):
        other.delete([cranfield.corpus[1].id])
    with writer_lock(tmp_path / "w"):  # `retr index --out SAME` while another process writes it
        run = subprocess.run([sys.executable, "-m", "retr.cli", "delete", str(tmp_path / "w"), cranfield.corpus[1].id],
                             capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 2 and "being written by another process" in run.stderr
    assert len(retr.open_index(tmp_path / "w")) == 49


def test_readers_keep_their_generation_until_closed(cranfield, tmp_path):
    r = retr.Retriever.build(cranfield.corpus[:200], f"dense:{MODEL}", out=tmp_path / "g")
    old = retr.open_index(tmp_path / "g")
    before = ranked(old, ["shock waves"])
    r.delete([d.id for d in cranfield.corpus[:100]])
    r.commit()
    r.compact()  # rewrites everything: the first segment is no longer in the committed generation
    assert ranked(old, ["shock waves"]) == before and (tmp_path / "g" / "seg-000001").is_dir()
    old.close()
    r.add([Document("late", "a late document")])
    r.commit()
    assert not (tmp_path / "g" / "seg-000001").exists()  # no reader holds it: removed at the next commit
    assert sorted(p.name for p in (tmp_path / "g").iterdir() if p.name.startswith("seg-")) == ["seg-000002", "seg-000003"]


def test_manifest_paths_symlinks_and_settings_are_checked(cranfield, tmp_path):
    retr.Retriever.build(cranfield.corpus[:30], f"dense:{MODEL}", out=tmp_path / "h")
    manifest = json.loads((tmp_path / "h" / "manifest.json").read_text())
    evil = dict(manifest, files={**manifest["files"], "../../../../etc/passwd": {"bytes": 1, "blake2b": "0"}})
    (tmp_path / "h" / "manifest.json").write_text(json.dumps(evil))
    with pytest.raises(RetrError, match="outside the index"):
        retr.open_index(tmp_path / "h")
    evil = dict(manifest, segments=[dict(manifest["segments"][0], name="../h")])
    (tmp_path / "h" / "manifest.json").write_text(json.dumps(evil))
    with pytest.raises(RetrError, match="bad segment entry"):
        retr.open_index(tmp_path / "h")
    (tmp_path / "h" / "manifest.json").write_text(json.dumps(manifest))
    vectors = tmp_path / "h" / "seg-000001" / "index" / "vectors.npy"
    vectors.rename(tmp_path / "elsewhere.npy")
    vectors.symlink_to(tmp_path / "elsewhere.npy")
    with pytest.raises(RetrError, match="symbolic link"):
        retr.open_index(tmp_path / "h")
    with pytest.raises(RetrError, match="k1='abc' must be a number"):
        retr.Retriever.build(cranfield.corpus[:5], "bm25", "lucene:k1=abc")
    with pytest.raises(RetrError, match="no setting 'efsearch'; its settings are: M, ef_construction, ef_search"):
        retr.Retriever.build(cranfield.corpus[:5], f"dense:{MODEL}", "hnsw:efsearch=10")


WRITER = textwrap.dedent("""
    import sys
    import retr
    from retr.eval.datasets import Document
    path, steps = sys.argv[1], int(sys.argv[2])
    r = retr.open_index(path)
    print("open", flush=True)  # the parent times its kills from here: the operations, not the imports
    for step in range(steps):
        if step == 0:
            r.add([Document(f"new-{i}", f"added document number {i} about boundary layers") for i in range(300)])
        elif step == 1:
            r.delete([r.docstore.ids[i] for i in range(0, 300, 2)])
        elif step == 2:
            r.update([Document(r.docstore.ids[i], "updated text " + str(i)) for i in range(1, 300, 6)])
        else:
            r.compact()
        r.commit()
    r.close()
""")


def state(path, queries):
    """What a reader sees: the generation's rankings and its segment layout."""
    index = retr.open_index(path, verify=True)  # every checksum checked
    seen = (json.dumps(ranked(index, queries)), tuple((s.slots, s.removed) for s in index.index.segments))
    index.close()
    return seen


def test_a_killed_writer_leaves_the_last_commit(cranfield, tmp_path):
    """kill -9 at spread-out moments of add, delete, update and compact (one writer doing all four):
    the index opens, passes its checksums and is one of the committed states; the next writer
    cleans what the dead one left."""
    base = retr.Retriever.build(cranfield.corpus[:300], f"dense:{MODEL}", out=tmp_path / "k")
    base.delete([cranfield.corpus[299].id])
    base.commit()  # a tombstone file in the committed state
    base.close()
    snapshot = tmp_path / "snapshot"
    shutil.copytree(tmp_path / "k", snapshot)
    queries = list(cranfield.queries.values())[:5]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    committed = [state(tmp_path / "k", queries)]
    for steps in range(1, 5):  # the state after each operation, from the same code run in this process
        shutil.rmtree(tmp_path / "full", ignore_errors=True)
        shutil.copytree(snapshot, tmp_path / "full")
        saved = sys.argv
        sys.argv = ["writer", str(tmp_path / "full"), str(steps)]
        try:
            exec(WRITER, {"__name__": "writer"})
        finally:
            sys.argv = saved
        committed.append(state(tmp_path / "full", queries))
    assert len(set(committed)) == 5  # before, then after each of the four operations
    shutil.rmtree(tmp_path / "full")
    shutil.copytree(snapshot, tmp_path / "full")

    def start_writer(path):
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "4"], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True)
        assert child.stdout.readline() == "open\n"
        return child

    child = start_writer(tmp_path / "full")
    start = time.perf_counter()
    assert child.wait() == 0
    took = time.perf_counter() - start  # the four operations and their commits, in a child
    outcomes = set()
    for delay in np.linspace(0.0, took, 8):
        child = start_writer(tmp_path / "k")
        time.sleep(float(delay))
        child.send_signal(signal.SIGKILL)
        child.wait()
        now = state(tmp_path / "k", queries)
        assert now in committed
        outcomes.add(committed.index(now))
        shutil.rmtree(tmp_path / "k")
        shutil.copytree(snapshot, tmp_path / "k")
    assert len(outcomes) >= 2  # killed at different operations
    child = start_writer(tmp_path / "k")
    time.sleep(took * 0.6)
    child.send_signal(signal.SIGKILL)
    child.wait()
    writer = retr.open_index(tmp_path / "k")
    writer.add([Document("cleanup", "the next writer")])
    writer.commit()
    assert not [p for p in (tmp_path / "k").iterdir() if p.name.startswith((".staging-", ".manifest.json."))]


READER = textwrap.dedent("""
    import json, sys
    import retr
    path, queries, rounds = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    seen = []
    for _ in range(rounds):
        r = retr.open_index(path)
        seen.append([r.generation, [[h.id for h in hits] for hits in r.search_batch(queries, 10)]])
        r.close()
    print(json.dumps(seen))
""")


def test_eight_readers_while_a_writer_changes_the_index(cranfield, tmp_path):
    docs = cranfield.corpus
    writer = retr.Retriever.build(docs[:400], f"dense:{MODEL}", out=tmp_path / "c")
    queries = list(cranfield.queries.values())[:5]
    expected = {1: [[h.id for h in hits] for hits in writer.search_batch(queries, 10)]}
    env = dict(os.environ, PYTHONPATH=str(REPO))
    readers = [subprocess.Popen([sys.executable, "-c", READER, str(tmp_path / "c"), json.dumps(queries), "12"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    rng = random.Random(3)
    for step in range(12):
        if step % 2 == 0:
            writer.add(docs[400 + 30 * step : 430 + 30 * step])
        else:
            writer.delete([h.id for h in writer.search(queries[step % 5], 3)])
        generation = writer.commit()
        expected[generation] = [[h.id for h in hits] for hits in writer.search_batch(queries, 10)]
        time.sleep(rng.uniform(0.05, 0.3))
    seen = []
    for reader in readers:
        out, err = reader.communicate(timeout=600)
        assert reader.returncode == 0, err[-2000:]
        seen += json.loads(out)
    assert len(seen) == 8 * 12
    for generation, results in seen:
        assert results == expected[generation]
    assert len({g for g, _ in seen}) > 1  # the readers did see the index change
