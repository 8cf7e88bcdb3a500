"""Exact late interaction, ``S(q, d) = sum_i max_j <q_i, d_j>``, over a token store: all token vectors in one
(N_tok, dim) matrix, document ``i`` owning rows ``offsets[i]:offsets[i+1]``.

Two backends give the same answer:

- numpy (``NumpyTokens``, the CPU default): chunks of document tokens (memory-mapped rows,
  float16 widened by faiss's SIMD decoder) scored side by side in threads, each with one matrix
  product with all query tokens, a max per document segment (``segment_max``) and a sum per query.
- torch (``TorchTokens``, GPUs, or ``torch:cpu``): documents grouped in length tiers (1, 2, 3, 4,
  6, 8, 12, 16, ... tokens: powers of two and 1.5 times them), each padded to its tier's length
  by repeating the document's last token (a repeated token cannot change a max, so padding is
  exact and needs no mask) and queries padded with zero vectors (a zero query token adds 0).
  A tier block is then one batched matrix product and a max over its last axis; blocks stay on
  the device when they fit (``retr.scoring.device``) and are streamed from the host otherwise.
  On a CUDA device a small batch (a single query above all) replays a CUDA graph of the whole scan,
  captured on its first search, instead of launching a few kernels per block from Python.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import threading
from typing import Any, Callable, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from retr.errors import RetrError
from retr.scoring.device import Block, DeviceBlocks
from retr.scoring.topk import top_k

CELLS = 1 << 24  # similarity-matrix entries the numpy path computes at once (64 MB of float32)
# float32 document rows the numpy path widens at once: a block under glibc's largest mmap threshold (32 MiB) reuses
# heap pages, a larger one is fresh pages faulted in on every chunk (a one-query scan spent most of its time there)
ROWS_BYTES = 1 << 24
LONG_SEGMENT = 32  # mean run length from which segment_max uses numpy's reduceat rather than torch
GATHER = 2048  # float32 token rows gathered at once when scoring a subset (stays in cache for the product)
QUERY_GROUP = 64  # queries the numpy path scores together in one pass over the documents
WORKERS = os.cpu_count() or 1  # threads scoring chunks of documents side by side
BLOCK_TOKENS = 1 << 22  # padded tokens in one torch tier block (the unit kept resident or streamed)
MIN_BLOCK_TOKENS = 1 << 18  # a tier smaller than this is padded to the next one (each block costs kernel launches)
TORCH_CELLS = {"cuda": 1 << 29, "cpu": 1 << 24}  # similarity entries one torch step computes at once
GRAPH_QUERIES = 8  # batches up to this many queries replay a captured CUDA graph (a few launches instead of many)
GRAPHS_KEPT = 4  # captured graphs a scorer keeps (one per query batch shape and depth)


@functools.lru_cache(maxsize=8)
def _float16_decoder(dim: int) -> Any:
    import faiss

    return faiss.ScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16)


def widen(tokens: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float32 token rows: float16 ones decoded by faiss (SIMD, multi-threaded), others cast by numpy.

    With ``out`` (float32) holding as many rows, float16 rows are decoded into its first rows
    and that view returned: a buffer reused across chunks has its pages mapped already, where a
    fresh array of each chunk is paged in anew (and faiss's own output is such an array)."""
    if tokens.dtype != np.float16 or tokens.size == 0:
        return np.asarray(tokens, dtype=np.float32)
    rows = np.ascontiguousarray(tokens)
    decoder = _float16_decoder(rows.shape[1])
    if out is None or len(out) < len(rows):
        return decoder.decode(rows.view(np.uint8))
    import faiss

    target = out[: len(rows)]
    decoder.decode_c(faiss.swig_ptr(rows.view(np.uint8)), faiss.swig_ptr(target), len(rows))
    return target


def maxsim_batch(
    queries: Sequence[np.ndarray], doc_tokens: np.ndarray, doc_offsets: np.ndarray, cells: int = CELLS,
    rows: np.ndarray | None = None, workers: int | None = None,
) -> np.ndarray:
    """(nq, n_docs) float32 MaxSim scores of each query against each document; empty documents get -inf.

    The documents are cut into chunks that end on document boundaries. A chunk's tokens are widened
    to float32, multiplied with all query tokens at once (one matrix product), reduced to a max per
    document segment (``segment_max``) and summed per query (``np.add.reduceat``), all by one thread
    with one BLAS thread; ``workers`` threads (default: every core) score chunks side by side. The
    steps release the GIL (BLAS, faiss's decoder, torch, numpy's loops), and a chunk's small product
    (one query: 16 rows) parallelises over chunks where a many-threaded BLAS call would not. ``cells``
    bounds the similarity entries of the chunks in flight, and so the memory. With ``rows``, the
    documents are those rows of ``doc_tokens`` (``doc_offsets`` index into ``rows``); float32 rows are
    gathered ``GATHER`` at a time so each chunk is still in cache for its product.
    """
    offsets = np.asarray(doc_offsets, dtype=np.int64)
    n_docs = len(offsets) - 1
    q_lens = np.array([len(q) for q in queries], dtype=np.int64)
    if len(queries) == 0:
        return np.zeros((0, n_docs), dtype=np.float32)
    if (q_lens == 0).any():
        raise RetrError("a query has no token vectors")
    q_all = np.concatenate([np.asarray(q, dtype=np.float32) for q in queries])
    q_starts = np.concatenate([[0], np.cumsum(q_lens)[:-1]])
    out = np.full((len(queries), n_docs), -np.inf, dtype=np.float32)
    n_tokens = int(offsets[-1] - offsets[0])
    workers = workers or WORKERS
    chunk = max(1, min(cells // (workers * len(q_all)), ROWS_BYTES // (4 * q_all.shape[1])))
    if rows is not None and doc_tokens.dtype == np.float32:
        chunk = min(chunk, GATHER)
    local = threading.local()  # each thread widens float16 rows into its own buffer, chunk after chunk

    def score(d0: int, d1: int) -> None:
        t0, t1 = int(offsets[d0]), int(offsets[d1])
        if t1 == t0:
            return
        block = doc_tokens[t0:t1] if rows is None else doc_tokens[rows[t0:t1]]
        wide = getattr(local, "wide", None)
        if wide is None and block.dtype == np.float16:
            wide = local.wide = np.empty((min(chunk, n_tokens), q_all.shape[1]), dtype=np.float32)
        sims = q_all @ widen(block, wide).T  # (query tokens, tokens)
        lengths = np.diff(offsets[d0 : d1 + 1])
        nonempty = np.flatnonzero(lengths > 0)
        out[:, d0 + nonempty] = np.add.reduceat(segment_max(sims, lengths[nonempty]), q_starts, axis=0)

    spans, d0 = [], 0
    while d0 < n_docs:  # the documents whose tokens fit in one chunk (at least one document)
        d1 = int(np.searchsorted(offsets, offsets[d0] + chunk, side="right")) - 1
        d1 = min(max(d1, d0 + 1), n_docs)
        spans.append((d0, d1))
        d0 = d1
    if workers == 1 or len(spans) == 1:  # no threads for one chunk's work (a rerank of a few documents)
        for span in spans:
            score(*span)
        return out
    with (threadpool_limits(1, user_api="blas"),
          concurrent.futures.ThreadPoolExecutor(workers, initializer=one_thread_each) as pool):
        for job in [pool.submit(score, *span) for span in spans]:
            job.result()
    return out


def one_thread_each() -> None:
    """Run this thread's torch and faiss (OpenMP) work on it alone: both counts are per thread. The
    initializer of a pool whose threads each take a share of the work (BLAS is limited around the pool)."""
    import faiss
    import torch

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)


def segment_max(values: np.ndarray, lengths: np.ndarray, axis: int = 1) -> np.ndarray:
    """The max over each run of ``lengths[i]`` consecutive entries of 2-d ``values`` along ``axis`` (0: rows,
    1: columns), every length above 0: float32, with ``len(lengths)`` entries along that axis.

    Runs of ``LONG_SEGMENT`` columns or more on average go to ``np.maximum.reduceat``, which vectorises
    a long run (a 140-token Cranfield document: 5-8x faster than torch); shorter ones to torch's segment
    reduction, which beats numpy's per-run overhead there and releases the GIL, so PLAID's query threads
    (16-token documents) run side by side.
    """
    lengths = np.asarray(lengths, np.int64)
    if len(lengths) and lengths.mean() >= LONG_SEGMENT:
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        return np.maximum.reduceat(values, starts, axis=axis)
    import torch

    data = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    runs = torch.from_numpy(lengths) if axis == 0 else torch.from_numpy(lengths).expand(len(data), -1)
    return torch.segment_reduce(data, "max", lengths=runs, axis=axis).numpy()


def maxsim_reference(query: np.ndarray, doc_tokens: np.ndarray, doc_offsets: np.ndarray) -> np.ndarray:
    """The same scores with plain Python loops over documents and tokens (slow; for tests)."""
    q = np.asarray(query, dtype=np.float64)
    scores = np.empty(len(doc_offsets) - 1, dtype=np.float64)
    for d in range(len(scores)):
        tokens = np.asarray(doc_tokens[doc_offsets[d] : doc_offsets[d + 1]], dtype=np.float64)
        if len(tokens) == 0:
            scores[d] = -np.inf
            continue
        total = 0.0
        for qi in q:
            total += max(float(np.dot(qi, t)) for t in tokens)
        scores[d] = total
    return scores


def token_rows(offsets: np.ndarray, doc_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Token rows of the given documents, concatenated, and the offsets of each document within them."""
    starts, ends = offsets[doc_ids], offsets[doc_ids + 1]
    lengths = ends - starts
    seg = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    rows = np.repeat(starts - seg[:-1], lengths) + np.arange(seg[-1], dtype=np.int64)
    return rows, seg


def tier_lengths(longest: int) -> list[int]:
    """Padded lengths 1, 2, 3, 4, 6, 8, 12, 16, ... (powers of two and 1.5 times them) up to one >= ``longest``."""
    out = [1]
    while out[-1] < longest:
        p = out[-1]
        out.append(p * 3 // 2 if p >= 2 and p & (p - 1) == 0 else 1 << p.bit_length())
    return out


def tier_groups(lengths: np.ndarray, block_tokens: int = BLOCK_TOKENS,
                min_tokens: int = MIN_BLOCK_TOKENS) -> list[tuple[np.ndarray, int]]:
    """(document ids, padded length) of each torch block: documents by length tier, at most ``block_tokens``
    padded tokens a block; a tier that would pad to fewer than ``min_tokens`` at the next tier's length joins
    that tier instead (fewer, fuller blocks: a single query's search costs kernel launches per block, and
    the extra padding is bounded by ``min_tokens``). Empty documents are in no block."""
    tiers = tier_lengths(int(lengths.max(initial=1)))
    out, carried = [], np.zeros(0, dtype=np.int64)
    for i, (low, length) in enumerate(zip([0, *tiers], tiers)):
        docs = np.concatenate([carried, np.flatnonzero((lengths > low) & (lengths <= length))])
        if i + 1 < len(tiers) and len(docs) * tiers[i + 1] <= min_tokens:
            carried = docs
            continue
        carried = docs[:0]
        per_block = max(1, block_tokens // length)
        out += [(docs[start : start + per_block], length) for start in range(0, len(docs), per_block)]
    return out


def padded_rows(offsets: np.ndarray, doc_ids: np.ndarray, length: int) -> np.ndarray:
    """(len(doc_ids), length) token rows of each document, its last token repeated to fill (exact for MaxSim)."""
    starts = offsets[doc_ids]
    lengths = offsets[doc_ids + 1] - starts
    return starts[:, None] + np.minimum(np.arange(length)[None, :], np.maximum(lengths, 1)[:, None] - 1)


def _pad_queries(queries: Sequence[np.ndarray]) -> np.ndarray:
    """(nq, longest, dim) float32: each query's tokens, then zero vectors (which add 0 to a MaxSim)."""
    longest = max(len(q) for q in queries)
    out = np.zeros((len(queries), longest, queries[0].shape[1]), dtype=np.float32)
    for i, q in enumerate(queries):
        out[i, : len(q)] = q
    return out


class NumpyTokens:
    """Exact MaxSim over a (memory-mapped) token store with numpy; the CPU default and the reference."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray) -> None:
        self.tokens, self.offsets = tokens, np.asarray(offsets, dtype=np.int64)

    def search(self, queries: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = [np.zeros((0, k), np.float32)], [np.zeros((0, k), np.int64)]
        for start in range(0, len(queries), QUERY_GROUP):
            s, i = top_k(maxsim_batch(queries[start : start + QUERY_GROUP], self.tokens, self.offsets), k)
            scores.append(s)
            ids.append(i)
        return np.concatenate(scores), np.concatenate(ids)

    def rerank(self, queries: Sequence[np.ndarray], candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top ``k`` of each query among its candidate documents (-1 entries ignored)."""
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        for row, (query, cand) in enumerate(zip(queries, candidates)):
            cand = cand[cand >= 0]
            if not len(cand):
                continue
            rows, seg = token_rows(self.offsets, cand)
            exact = maxsim_batch([query], self.tokens, seg, rows=rows)
            s, order = top_k(exact, k)
            found = order[0] >= 0
            scores[row, found], ids[row, found] = s[0, found], cand[order[0, found]]
        return scores, ids


class TorchTokens:
    """Exact MaxSim with torch on any device over length-tiered, padded token blocks.

    With ``decode``, the store holds uint8 code rows (PLAID's residual codes) instead of
    vectors: blocks stay compressed on the device and each step decodes only the documents it
    scores (``decode``: uint8 (..., code_size) tensor -> float (..., dim)), so a store of any
    size in codes is scored without ever decompressing all of it.
    """

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, device: str, dtype: str = "",
                 budget: int | None = None, block_tokens: int = BLOCK_TOKENS, decode: Any = None,
                 dim: int | None = None) -> None:
        import torch

        self.tokens, self.offsets = tokens, np.asarray(offsets, dtype=np.int64)
        self.device, self.decode = device, decode
        cuda = device.startswith("cuda")
        self.dtype = getattr(torch, dtype) if dtype else (torch.float16 if cuda else torch.float32)
        self.cells = TORCH_CELLS["cuda" if cuda else "cpu"]
        self.dim = int(dim or tokens.shape[1])
        self.width = int(tokens.shape[1])  # values a stored row holds: dim floats, or code bytes
        stored = torch.uint8 if decode is not None else self.dtype
        blocks = [Block(functools.partial(self._gather, docs, length), len(docs) * length * self.width, docs)
                  for docs, length in tier_groups(np.diff(self.offsets), block_tokens)]
        self._blocks = DeviceBlocks(blocks, device, stored, budget)
        self._ids = [torch.from_numpy(b.meta).to(self._blocks.device) for b in blocks]
        self._budget = self._blocks.budget - self._blocks.nbytes if self._blocks.resident else 0
        self._store: Any = None  # the whole flat store on the device (for reranking) once it is needed and fits
        self.graphs = self._blocks.device.type == "cuda"  # replay small batches' scans from captured CUDA graphs
        self._graphs: dict[tuple, tuple[Any, Any, Any]] = {}
        self._graph_lock = threading.Lock()

    @property
    def resident(self) -> bool:
        return self._blocks.resident

    def _gather(self, docs: np.ndarray, length: int) -> np.ndarray:
        rows = self.tokens[padded_rows(self.offsets, docs, length).ravel()]
        return (rows if self.decode is not None else widen(rows)).reshape(len(docs), length, self.width)

    def _floats(self, rows: Any) -> Any:
        """Stored rows as vectors in the scoring dtype (decoded first when the store holds codes)."""
        return rows if self.decode is None else self.decode(rows).to(self.dtype)

    def _queries(self, queries: Sequence[np.ndarray]) -> Any:
        import torch

        return torch.from_numpy(_pad_queries(queries)).to(self._blocks.device, dtype=self.dtype)

    def search(self, queries: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
        if not len(queries):
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)

        def scan(q: Any) -> tuple[Any, Any]:
            flat = q.reshape(-1, self.dim)
            return self._scan(q, k, lambda stored: (flat @ self._floats(stored).reshape(-1, self.dim).T).view(
                *q.shape[:2], *stored.shape[:2]))

        best_s, best_i = (t.cpu().numpy() for t in self._replayed(("exact", k), self._queries(queries), scan))
        return best_s.astype(np.float32), best_i

    def search_coarse(self, queries: Sequence[np.ndarray], k: int, depth: int, table: Callable[[Any], Any],
                      code_of: Callable[[Any], Any]) -> tuple[np.ndarray, np.ndarray]:
        """Exact top ``k`` among each query's best ``depth`` documents by a coarse MaxSim read off the stored rows.

        ``table(q)`` gives each padded query token's score for every code value, (nq, q_len, n_codes), and
        ``code_of(rows)`` each stored row's code (long, the rows' shape less the last axis); a document's
        coarse score is ``sum_i max_j table[i, code_j]`` (PLAID's centroid interaction: a query token's
        score with the centroid each document token was assigned to), over every tier block and without
        decoding anything. The best ``depth`` documents are then decoded and scored exactly (``rerank``).
        """
        if not len(queries):
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)

        def scan(q: Any) -> tuple[Any, Any]:
            scores = table(q)
            return self._scan(q, depth, lambda stored: scores[:, :, code_of(stored)])

        q = self._queries(queries)
        _, candidates = self._replayed(("coarse", depth), q, scan)
        return self._rerank(q, candidates.cpu().numpy(), k)

    def _replayed(self, key: tuple, q: Any, scan: Callable[[Any], tuple[Any, Any]]) -> tuple[Any, Any]:
        """``scan(q)``; for a small batch on a CUDA device with the store resident, replayed from a CUDA graph.

        A single query's scan is a few kernels per tier block, so its time goes to launching them from
        Python; a graph captured once per (batch shape, ``key``) launches them all at once. The graph's
        input is copied in and its outputs copied out under a lock (a service searches from threads).
        """
        if not (self.graphs and self.resident and len(q) <= GRAPH_QUERIES):
            return scan(q)
        with self._graph_lock:
            entry = self._graphs.get((key, tuple(q.shape)))
            if entry is None:
                try:
                    entry = self._capture(q, scan)
                except RuntimeError:  # no room for the graph's memory, or no CUDA: same answer, kernel by kernel
                    self.graphs = False
                    return scan(q)
                if len(self._graphs) >= GRAPHS_KEPT:
                    self._graphs.pop(next(iter(self._graphs)))
                self._graphs[(key, tuple(q.shape))] = entry
            static_q, graph, outputs = entry
            static_q.copy_(q)
            graph.replay()
            return tuple(t.clone() for t in outputs)

    @staticmethod
    def _capture(q: Any, scan: Callable[[Any], tuple[Any, Any]]) -> tuple[Any, Any, Any]:
        """(static input, CUDA graph, its outputs): ``scan`` warmed up on a side stream, then captured."""
        import torch

        side = torch.cuda.Stream(q.device)  # the warm-up moves the blocks and loads kernels outside the capture
        side.wait_stream(torch.cuda.current_stream(q.device))
        with torch.cuda.stream(side):
            scan(q)
        torch.cuda.current_stream(q.device).wait_stream(side)
        static_q, graph = q.clone(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = scan(static_q)
        return static_q, graph, outputs

    def _scan(self, q: Any, k: int, similarities: Callable[[Any], Any]) -> tuple[Any, Any]:
        """(nq, k) best MaxSim scores and document ids over every tier block, on the device (-inf, -1: none).

        ``similarities(stored)`` turns a slice of a block, (docs, length, width) stored rows, into
        (nq, q_len, docs, length) similarities with the padded queries ``q``.
        """
        import torch

        nq, q_len, _ = q.shape
        # each step's own top k, merged once at the end (a running merge costs a single query more launches)
        parts_s = [torch.full((nq, k), -float("inf"), device=q.device)]
        parts_i = [torch.full((nq, k), -1, dtype=torch.int64, device=q.device)]
        with torch.inference_mode():
            for ids, (_, docs) in zip(self._ids, self._blocks):
                n, length = docs.shape[0], docs.shape[1]
                step = max(1, self.cells // (nq * q_len * length))  # documents scored per step
                for d0 in range(0, n, step):
                    scores = similarities(docs[d0 : d0 + step]).amax(-1).sum(1, dtype=torch.float32)  # (nq, docs)
                    s, i = torch.topk(scores, min(k, scores.shape[1]), dim=1)
                    parts_s.append(s)
                    parts_i.append(ids[d0 : d0 + step][i])
            best_s, order = torch.topk(torch.cat(parts_s, 1), k, dim=1)
            best_i = torch.gather(torch.cat(parts_i, 1), 1, order)
        return best_s, best_i.masked_fill(torch.isinf(best_s), -1)

    def rerank(self, queries: Sequence[np.ndarray], candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top ``k`` of each query among its candidates: their tokens gathered padded, scored at once."""
        return self._rerank(self._queries(queries), candidates, k)

    def _rerank(self, q: Any, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``rerank`` with the queries already padded on the device.

        Every (query, candidate) pair of the batch is scored together: pairs sorted by document length,
        cut into chunks of about ``cells / dim`` gathered rows, each chunk's documents padded to its
        longest (sorted, so little padding) and scored against their queries in one batched product.
        """
        import torch

        cand = np.asarray(candidates, dtype=np.int64).reshape(len(q), -1)
        pair_q, pair_c = np.nonzero(cand >= 0)
        docs = cand[pair_q, pair_c]
        lengths = self.offsets[docs + 1] - self.offsets[docs]
        nonempty = lengths > 0  # an empty document keeps -inf
        pair_q, pair_c, docs, lengths = pair_q[nonempty], pair_c[nonempty], docs[nonempty], lengths[nonempty]
        order = np.argsort(lengths, kind="stable")
        cap = max(1, self.cells // self.dim)  # rows (document tokens plus query tokens) gathered per chunk
        q_len, dev = q.shape[1], q.device
        scores = torch.full(cand.shape, -float("inf"), device=dev)
        with torch.inference_mode():
            start = 0
            while start < len(order):
                # as many pairs as fit ``cap`` at the length where the chunk would end (sorted: its longest)
                guess = max(start, min(len(order), start + cap // (int(lengths[order[start]]) + q_len)) - 1)
                end = min(len(order), start + max(1, cap // (int(lengths[order[guess]]) + q_len)))
                part = order[start:end]
                length = int(lengths[part[-1]])
                found = self._floats(self._rows_on_device(padded_rows(self.offsets, docs[part], length)))
                where_q = torch.from_numpy(pair_q[part]).to(dev)
                s = torch.bmm(q[where_q], found.transpose(1, 2)).amax(-1).sum(1, dtype=torch.float32)
                scores[where_q, torch.from_numpy(pair_c[part]).to(dev)] = s
                start = end
            best_s, best_c = (t.cpu().numpy() for t in torch.topk(scores, min(k, cand.shape[1]), dim=1))
        out_s = np.full((len(cand), k), -np.inf, dtype=np.float32)
        out_i = np.full((len(cand), k), -1, dtype=np.int64)
        out_s[:, : best_s.shape[1]] = best_s  # -inf where a query had fewer scored candidates
        out_i[:, : best_s.shape[1]] = np.where(np.isfinite(best_s), np.take_along_axis(cand, best_c, 1), -1)
        return out_s, out_i

    def _rows_on_device(self, rows: np.ndarray) -> Any:
        """Token rows gathered on the device from a resident copy of the store, or on the host and moved."""
        import torch

        stored = self._blocks.dtype
        if self._store is None:
            self._store = False
            if self.tokens.size * torch.empty((), dtype=stored).element_size() <= self._budget:  # room beside the tiers
                store = torch.empty(self.tokens.shape, dtype=stored, device=self._blocks.device)
                for start in range(0, len(self.tokens), BLOCK_TOKENS):
                    block = self._host_rows(np.arange(start, min(start + BLOCK_TOKENS, len(self.tokens))))
                    store[start : start + len(block)] = block.to(store.device)
                self._store = store
        if self._store is not False:
            index = torch.from_numpy(rows.ravel()).to(self._store.device)
            return self._store.index_select(0, index).view(*rows.shape, self.width)
        return self._host_rows(rows.ravel()).to(self._blocks.device).view(*rows.shape, self.width)

    def _host_rows(self, rows: np.ndarray) -> Any:
        import torch

        data = self.tokens[rows]
        if self.decode is not None:
            return torch.from_numpy(np.ascontiguousarray(data))
        return torch.from_numpy(widen(data)).to(self.dtype)


def token_scorer(tokens: np.ndarray, offsets: np.ndarray, device: str = "cpu") -> NumpyTokens | TorchTokens:
    """The exact MaxSim scorer of a token store on ``device`` ('cpu': numpy; else torch there)."""
    return NumpyTokens(tokens, offsets) if device == "cpu" else TorchTokens(tokens, offsets, device)


__all__ = ["NumpyTokens", "TorchTokens", "maxsim_batch", "maxsim_reference", "one_thread_each", "padded_rows",
           "segment_max", "tier_groups", "tier_lengths", "token_rows", "token_scorer", "top_k", "widen"]
