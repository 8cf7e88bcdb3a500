"""128-bit hash keys to int64 values, for millions of keys: duplicate-id checks and the embedding cache.

Keys are kept in sorted runs that merge when two reach the same size (a log-structured
merge), so adding n keys costs O(n log n) in all and a lookup a binary search per run;
each key costs 24 bytes (two 64-bit halves and its value), against ~100 bytes for a
Python dict of strings.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np


def hash_keys(strings: Sequence[str]) -> np.ndarray:
    """(n, 16) uint8: BLAKE2b-128 of each string's UTF-8 bytes."""
    raw = b"".join(hashlib.blake2b(s.encode("utf-8"), digest_size=16).digest() for s in strings)
    return np.frombuffer(raw, dtype=np.uint8).reshape(len(strings), 16)


def _halves(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pairs = np.ascontiguousarray(keys, dtype=np.uint8).view(np.uint64).reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1]


def first_repeat(keys: np.ndarray) -> tuple[int, int] | None:
    """Positions (first, second) of the earliest-completed repeat among ``keys``, or None if all differ."""
    k1, k2 = _halves(keys)
    order = np.lexsort((np.arange(len(k1)), k2, k1))
    same = np.flatnonzero((k1[order][1:] == k1[order][:-1]) & (k2[order][1:] == k2[order][:-1]))
    if not len(same):
        return None
    i = same[np.argmin(order[same + 1])]
    return int(order[i]), int(order[i + 1])


class HashIndex:
    """A set of 128-bit keys, each with an int64 value; ``find`` gives a key's value or -1."""

    def __init__(self) -> None:
        self._runs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (k1 sorted, k2, values)

    def __len__(self) -> int:
        return sum(len(run[0]) for run in self._runs)

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Add keys (n, 16) uint8 with their values; a key added twice is found with its largest value."""
        k1, k2 = _halves(keys)
        if not len(k1):
            return
        order = np.argsort(k1, kind="stable")
        self._runs.append((k1[order], k2[order], np.asarray(values, dtype=np.int64)[order]))
        while len(self._runs) > 1 and len(self._runs[-2][0]) <= 2 * len(self._runs[-1][0]):
            (a1, a2, av), (b1, b2, bv) = self._runs.pop(), self._runs.pop()
            c1 = np.concatenate([b1, a1])
            merged = np.argsort(c1, kind="stable")  # two sorted runs: timsort merges them in linear time
            self._runs.append((c1[merged], np.concatenate([b2, a2])[merged], np.concatenate([bv, av])[merged]))

    def find(self, keys: np.ndarray) -> np.ndarray:
        """int64 (n,): the value of each key (the largest, for a key added twice), -1 for keys not in the index."""
        k1, k2 = _halves(keys)
        out = np.full(len(k1), -1, dtype=np.int64)
        for r1, r2, values in self._runs:
            pos = np.searchsorted(r1, k1)
            for i in np.flatnonzero(r1[np.minimum(pos, len(r1) - 1)] == k1):
                p = int(pos[i])  # equal first halves: compare the second over the run of equal ones
                while p < len(r1) and r1[p] == k1[i]:
                    if r2[p] == k2[i]:
                        out[i] = max(out[i], values[p])
                    p += 1
        return out
