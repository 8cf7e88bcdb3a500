"""Sharded indexes: N ordinary index directories under one manifest, built and searched locally or on Ray.

    OUT/manifest.json        {"shards": [{"name": "shard-000", "docs": n}, ...], encoder, index, ...}
    OUT/shard-000/           an ordinary retr index (segments, generations: ``retr.segments``)

Every shard holds a contiguous range of the corpus and uses one codec: an index that trains is
trained once, on a seeded sample of the whole corpus, and each shard's index is an empty copy of
it (``retr.segments.spawn``), so scores compare across shards. Merging is exact: each shard answers
its top k, and the lists merge by score, ties by position in the corpus.

- Build (``build_sharded``): the corpus is staged once (ids and texts, duplicates refused), the
  codec trained, then the corpus is encoded in chunks, in this process or on Ray: Ray Data
  reads the chunks and a pool of encoder actors (one per GPU, or CPU workers) encodes them,
  in order, while the driver adds each chunk to its shard.
- Search, local (``open_index(OUT)``): all shards' segments searched as one index, one after
  another (each scorer already uses every core: FAISS and numpy threads, Anserini's thread pool;
  threads over the shards measured slower), BM25 over every shard as one Lucene collection, so it
  equals a single index exactly.
- Search, Ray (``open_index(OUT, ray=ADDRESS)``): one actor per shard, scatter-gather; a dead
  actor is restarted by Ray and the call retried; a shard that cannot answer is an error naming
  it, unless the caller asks for ``partial`` results (which then name the missing shards). On
  Ray each BM25 shard scores with its own statistics (measured in bench/results/distributed.md).
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from retr.errors import RetrError
from retr.progress import progress_bar
from retr.protocols import Encoder, Index
from retr.registry import ENCODERS, Spec, create_index
from retr.scoring.topk import merge_top_k
from retr.storage import (
    FORMAT, FORMAT_VERSION, MANIFEST, StringArray, StringArrayWriter, atomic_directory, writer_lock,
)

SHARD = "shard-{:03d}"
STAGE_DIR = ".corpus"


def shard_ranges(n: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous ranges covering 0..n, sizes differing by at most one."""
    bounds = [n * i // shards for i in range(shards + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def chunk_ranges(ranges: Sequence[tuple[int, int]], chunk: int) -> list[tuple[int, int]]:
    """Chunks of at most ``chunk`` documents that never straddle a shard boundary."""
    return [(s, min(stop, s + chunk)) for start, stop in ranges for s in range(start, stop, chunk)]


def build_sharded(corpus: Iterable[Any], encoder: Encoder | Spec | str, index: Index | Spec | str | None,
                  out: Path | str, shards: int, ray: str | bool | None = None, store_text: bool = True,
                  chunk_size: int = 0, seed: int = 42, workers: int = 0) -> Any:
    """Build ``shards`` shard indexes of ``corpus`` under ``out`` (encoding on Ray when ``ray`` is given).

    ``ray``: True (a local Ray, or the cluster in $RAY_ADDRESS) or an address ('auto', 'HOST:PORT').
    ``workers``: encoder actors (default: four per GPU of the cluster, sharing it, else one per 4 CPUs).
    Returns the sharded index opened locally.
    """
    from retr.retriever.pipeline import (
        CHUNK_DOCS, DEFAULT_CHUNK, DEFAULT_INDEX, DOCSTORE_DIR, INDEX_DIR, Docstore, Retriever, _check_pair, _sample,
        _store_documents, open_index,
    )
    from retr.segments import Segment, Segments, segment_name, spawn

    if shards < 1:
        raise RetrError(f"--shards must be at least 1, got {shards}")
    encoder = ENCODERS.create(encoder) if isinstance(encoder, (str, Spec)) else encoder
    codec = create_index(index or DEFAULT_INDEX.get(encoder.kind, "flat"), encoder.kind) \
        if isinstance(index, (str, Spec)) or index is None else index
    _check_pair(encoder, codec)
    chunk = chunk_size or CHUNK_DOCS.get(encoder.kind, DEFAULT_CHUNK)
    out = Path(out)
    with writer_lock(out), atomic_directory(out) as tmp:
        stage = tmp / STAGE_DIR
        stage.mkdir()
        ids, texts = StringArrayWriter(stage, "ids"), StringArrayWriter(stage, "texts")
        _store_documents(corpus, ids, texts)
        n = len(ids)
        if n < shards:
            raise RetrError(f"{n} documents cannot fill {shards} shards")
        all_ids, all_texts = ids.finish(), texts.finish()
        wanted = codec.training_size(n) if hasattr(codec, "training_size") and not codec.trained else 0
        if wanted:
            codec.train(encoder.encode_documents(_sample(texts, min(wanted, n), seed)), n)
        ranges = shard_ranges(n, shards)
        parts = []
        for number, (start, stop) in enumerate(ranges):
            folder = tmp / SHARD.format(number) / segment_name(1)
            for name in (INDEX_DIR, DOCSTORE_DIR):
                (folder / name).mkdir(parents=True)
            part = spawn(codec)
            if hasattr(part, "stage"):
                part.stage(folder / INDEX_DIR)
            parts.append(part)
        chunks = chunk_ranges(ranges, chunk)
        encoded = (_ray_encodings(stage, encoder, chunks, ray, workers) if ray
                   else _local_encodings(all_texts, encoder, chunks))
        starts = [s for s, _ in ranges]
        with progress_bar(total=n, desc=f"indexing {shards} shards with {encoder.name}@{codec.name}", unit="doc") as bar:
            for (start, stop), reps in zip(chunks, encoded):
                parts[int(np.searchsorted(starts, start, side="right")) - 1].add(reps)
                bar.update(stop - start)
        for number, ((start, stop), part) in enumerate(zip(ranges, parts)):
            shard_dir = tmp / SHARD.format(number)
            folder = shard_dir / segment_name(1)
            part.save(folder / INDEX_DIR)
            docstore = Docstore(StringArray.from_strings([all_ids[i] for i in range(start, stop)]),
                                StringArray.from_strings([all_texts[i] for i in range(start, stop)]) if store_text
                                else None)
            docstore.save(folder / DOCSTORE_DIR)
            shard = Retriever(encoder, Segments([Segment(part, docstore, name=segment_name(1))]))
            shard.store_text = store_text
            shard._write(shard_dir, 1)
        del all_ids, all_texts
        _rmtree(stage)
        _write_sharded_manifest(tmp, encoder, codec, [(SHARD.format(i), b - a) for i, (a, b) in enumerate(ranges)],
                                store_text)
    return open_index(out, encoder)


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path)


def _write_sharded_manifest(directory: Path, encoder: Encoder, index: Index, shards: list[tuple[str, int]],
                            store_text: bool) -> None:
    from retr.retriever.pipeline import _version

    body = {"format": FORMAT, "format_version": FORMAT_VERSION, "retr_version": _version(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "encoder": {"name": encoder.name, "kind": encoder.kind, "dim": encoder.dim, "settings": encoder.config()},
            "index": {"name": index.name, "settings": index.config()}, "texts": store_text,
            "num_docs": sum(d for _, d in shards), "shards": [{"name": s, "docs": d} for s, d in shards],
            "files": {}}
    (directory / MANIFEST).write_text(json.dumps(body, indent=2) + "\n")


def _local_encodings(texts: StringArray, encoder: Encoder, chunks: list[tuple[int, int]]) -> Iterator[Any]:
    from retr.threads import prefetch

    return prefetch(encoder.encode_documents([texts[i] for i in range(a, b)]) for a, b in chunks)


class _ChunkEncoder:
    """A Ray Data actor: reads its chunks' texts from the staged corpus and encodes them (model loaded once)."""

    def __init__(self, stage: str, name: str, settings: dict[str, Any], device: str | None) -> None:
        from retr.registry import ENCODERS

        if device is not None and "device" in settings:
            settings = dict(settings, device=device)
        self.encoder = ENCODERS.create(Spec(name, None, settings))
        self.texts = StringArray.load(Path(stage), "texts")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        reps = []
        for start, stop in zip(batch["start"].tolist(), batch["stop"].tolist()):
            reps.append(_pack(self.encoder.encode_documents([self.texts[i] for i in range(start, stop)])))
        return {"start": batch["start"], "reps": np.array(reps + [None], dtype=object)[:-1]}


def _pack(reps: Any) -> Any:
    """Representations as Ray Data carries them: arrays as they are, sparse vectors as their CSR parts."""
    from retr.sparse import SparseVectors

    if isinstance(reps, SparseVectors):
        return ("sparse", reps.matrix.data, reps.matrix.indices, reps.matrix.indptr, reps.matrix.shape,
                list(reps.vocab), None if reps.offsets is None else reps.offsets)
    return ("plain", reps)


def _unpack(packed: Any) -> Any:
    if packed[0] == "plain":
        return packed[1]
    import scipy.sparse

    from retr.sparse import SparseVectors

    _, data, indices, indptr, shape, vocab, offsets = packed
    return SparseVectors(scipy.sparse.csr_matrix((data, indices, indptr), shape=shape), list(vocab), offsets)


def connect_ray(ray: str | bool | None) -> Any:
    """``ray`` imported and connected (True: $RAY_ADDRESS or a local instance; a string: that address)."""
    try:
        import ray as ray_module
    except ImportError:
        raise RetrError("distributed builds and search need Ray: pip install 'retr[ray]'") from None
    if not ray_module.is_initialized():
        import logging

        address = None if ray is True else str(ray)
        ray_module.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.WARNING)
    return ray_module


def _ray_encodings(stage: Path, encoder: Encoder, chunks: list[tuple[int, int]], ray: str | bool,
                   workers: int) -> Iterator[Any]:
    """Encodings of ``chunks`` in order: Ray Data over the chunk list, a pool of encoder actors."""
    ray_module = connect_ray(ray)
    gpus = int(ray_module.cluster_resources().get("GPU", 0))
    cpus = int(ray_module.cluster_resources().get("CPU", 1))
    pool = workers or (4 * gpus if gpus else max(1, cpus // 4))  # a GPU shared by 4: tokenising overlaps encoding
    context = ray_module.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    items = ray_module.data.from_items([{"start": a, "stop": b} for a, b in chunks], override_num_blocks=len(chunks))
    resources = {"num_gpus": gpus / pool} if gpus else {"num_cpus": max(1, cpus // pool)}
    encoded = items.map_batches(
        _ChunkEncoder, batch_size=1, concurrency=pool, **resources,
        fn_constructor_kwargs={"stage": str(stage), "name": encoder.name, "settings": encoder.config(),
                               "device": "cuda" if gpus else None})
    for batch in encoded.iter_batches(batch_size=1, batch_format="numpy"):
        yield _unpack(batch["reps"][0])


# ---- search --------------------------------------------------------------------------------------------


def is_sharded(manifest: dict[str, Any]) -> bool:
    return "shards" in manifest


def shard_entries(manifest: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    from retr.storage import inside

    entries = manifest.get("shards")
    if not isinstance(entries, list) or not entries:
        raise RetrError(f"{path}/{MANIFEST} lists no shards; the index is corrupt, rebuild it")
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or "/" in entry["name"]:
            raise RetrError(f"{path}/{MANIFEST}: bad shard entry {entry!r}; the index is corrupt, rebuild it")
        inside(path, entry["name"])
    return entries


def open_sharded_locally(path: Path, manifest: dict[str, Any], encoder: Encoder | Spec | str | None,
                         verify: bool, device: str | None) -> Any:
    """The shards searched as one index: their segments together, in shard order (exact merge, global BM25)."""
    from retr.retriever.pipeline import Retriever, open_index
    from retr.segments import Segments

    opened, shared = [], encoder
    for entry in shard_entries(manifest, path):
        shard = open_index(path / entry["name"], shared, verify=verify, device=device)
        shared = shard.encoder  # every shard searches with one encoder object (the model loaded once)
        opened.append(shard)
    segments = [segment for shard in opened for segment in shard.index.segments]
    retriever = Retriever(opened[0].encoder, Segments(segments), path=path)
    retriever.shards = opened  # they hold their generations
    retriever.store_text = all(s.store_text for s in opened)
    return retriever


@dataclass
class ShardFailure:
    name: str
    error: str


class Results(list):
    """Hit lists, one per query, and the shards that did not answer (``partial`` searches only)."""

    missing: list[ShardFailure]


class _ShardActor:
    """A Ray actor serving one shard: opened once, searched with query representations."""

    def __init__(self, path: str, device: str | None) -> None:
        from retr.retriever.pipeline import open_index

        self.retriever = open_index(path, device=device)
        if self.retriever.encoder.kind == "text":  # start the JVM now, not on the first query (no model to load)
            self.retriever.search("warm up", 1)

    def search(self, reps: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.retriever.index.search(_unpack(reps), min(k, len(self.retriever)))

    def lookup(self, slots: list[int]) -> list[tuple[str, str | None]]:
        docstore = self.retriever.docstore
        return [(docstore.ids[s], docstore.texts[s] if docstore.texts is not None else None) for s in slots]

    def pid(self) -> int:
        import os

        return os.getpid()


class RayShardedRetriever:
    """A sharded index served by Ray actors (one per shard): scatter the query, gather, merge exactly."""

    def __init__(self, path: Path, manifest: dict[str, Any], ray: str | bool, encoder: Encoder | Spec | str | None,
                 device: str | None = None, timeout_s: float = 60.0, retries: int = 3) -> None:
        ray_module = connect_ray(ray)
        self.ray, self.path, self.timeout_s = ray_module, path, timeout_s
        entries = shard_entries(manifest, path)
        self.names = [e["name"] for e in entries]
        enc = manifest["encoder"]
        self.encoder = ENCODERS.create(encoder if encoder is not None else Spec(enc["name"], None, enc["settings"]))
        self.name = f"{ENCODERS.describe(self.encoder.name, self.encoder.config())}@{manifest['index']['name']} " \
                    f"({len(entries)} shards on Ray)"
        gpus = int(ray_module.cluster_resources().get("GPU", 0))
        # actors reserve no CPU (each shard's scorer uses the cores it finds); on a GPU device they share the GPUs
        remote = ray_module.remote(num_cpus=0, num_gpus=gpus / len(entries) if gpus and device else 0,
                                   max_restarts=retries, max_task_retries=retries)(_ShardActor)
        self.actors = [remote.remote(str(path / name), device) for name in self.names]
        try:  # every shard opened before the first query (process start, index files, model)
            ray_module.get([actor.pid.remote() for actor in self.actors], timeout=max(600.0, timeout_s))
        except Exception as exc:  # noqa: BLE001
            raise RetrError(f"the shard actors of {path} did not start: {type(exc).__name__}: {exc}") from None
        self.docs = [e["docs"] for e in entries]
        self._len = int(manifest["num_docs"])
        self.index, self.generation = None, 0  # no local index; a sharded index changes shard by shard

    def __len__(self) -> int:
        return self._len

    def search(self, query: str, k: int = 10) -> list[Any]:
        return self.search_batch([query], k)[0]

    def search_batch(self, queries: Sequence[str], k: int = 10, partial: bool = False) -> Results:
        """Top ``k`` per query over every shard; ``partial``: answer without shards that fail (named in ``missing``)."""
        from retr.retriever.pipeline import Hit, check_queries

        check_queries(queries, k)
        results = Results()
        results.missing = []
        if not queries:
            return results
        reps = _pack(self.encoder.encode_queries(list(queries)))
        calls = [actor.search.remote(reps, k) for actor in self.actors]
        scores, ids, answered = [], [], []
        for number, call in enumerate(calls):
            try:
                s, i = self.ray.get(call, timeout=self.timeout_s)
            except Exception as exc:  # noqa: BLE001  (RayActorError, GetTimeoutError, a shard's own error)
                failure = ShardFailure(self.names[number], f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                if not partial:
                    raise RetrError(f"shard {failure.name} of {self.path} did not answer ({failure.error}); "
                                    "pass partial=True to answer from the other shards") from None
                results.missing.append(failure)
                continue
            scores.append(s)
            ids.append(np.where(i >= 0, i + number * (1 << 40), -1))  # shard number in the high bits
            answered.append(number)
        if not scores:
            raise RetrError(f"no shard of {self.path} answered")
        top_scores, top_ids = merge_top_k(scores, ids, k)
        wanted: dict[int, list[int]] = {}
        for value in top_ids[top_ids >= 0].tolist():
            wanted.setdefault(value >> 40, []).append(value & ((1 << 40) - 1))
        looked = {shard: dict(zip(slots, self.ray.get(self.actors[shard].lookup.remote(slots), timeout=self.timeout_s)))
                  for shard, slots in wanted.items()}
        for row_scores, row_ids in zip(top_scores, top_ids):
            hits = []
            for score, value in zip(row_scores.tolist(), row_ids.tolist()):
                if value >= 0:
                    doc_id, text = looked[value >> 40][value & ((1 << 40) - 1)]
                    hits.append(Hit(doc_id, float(score), text))
            results.append(hits)
        return results

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)
        self.actors = []
