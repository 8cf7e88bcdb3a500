"""Torch devices for scoring: which one, how much memory it lends, and blocks of data made resident or streamed.

A scorer splits its data (vectors, padded token tiers) into blocks. If they fit the device's
budget they are moved there once; otherwise each search streams them: a background thread
builds the next host block in pinned memory while the device scores the current one, and
the copy runs asynchronously. On the CPU the same code runs with torch's CPU kernels, which
is how the tests check the GPU path without a GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from retr.errors import RetrError
from retr.threads import prefetch

DEVICES = "cpu (numpy/FAISS), cuda, cuda:N, mps, or torch:cpu (the torch path on the CPU)"
RESIDENT_FRACTION = 0.8  # of a GPU's free memory a scorer may keep resident


def torch_device(device: str) -> str:
    """The torch device a scorer runs on, or a clear error if torch or the device is missing."""
    try:
        import torch
    except ImportError:
        raise RetrError(f"device {device!r} needs torch: pip install 'retr[dense]'") from None
    name = "cpu" if device == "torch:cpu" else device
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise RetrError(f"unknown device {device!r}; use {DEVICES}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RetrError(f"device {device!r}: no CUDA GPU is available here; use device='cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise RetrError(f"device {device!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise RetrError(f"device {device!r}: MPS is not available here; use device='cpu'")
    return str(dev)


def check_device(device: str | None) -> str:
    """``device`` normalised: 'cpu' for the default numpy/FAISS path, else a checked torch device."""
    if device in (None, "", "cpu"):
        return "cpu"
    torch_device(str(device))
    return str(device)


def budget_bytes(device: str) -> int:
    """Bytes a scorer may keep resident on ``device``: 80% of a GPU's free memory, unbounded on the CPU.

    ``RETR_DEVICE_BUDGET`` (bytes) overrides it, to force streaming (tests use a tiny one).
    """
    if os.environ.get("RETR_DEVICE_BUDGET"):
        return int(os.environ["RETR_DEVICE_BUDGET"])
    import torch

    dev = torch.device("cpu" if device == "torch:cpu" else device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free * RESIDENT_FRACTION)
    return 1 << 62


@dataclass
class Block:
    """One piece of a scorer's data: how to build it on the host, and its size once built."""

    build: Callable[[], np.ndarray]
    size: int  # number of values it holds
    meta: Any = None


class DeviceBlocks:
    """Blocks kept on the device when they fit ``budget`` (bytes), else streamed for every pass."""

    def __init__(self, blocks: list[Block], device: str, dtype: Any, budget: int | None = None) -> None:
        import torch

        self.blocks, self.dtype = blocks, dtype
        self.device = torch.device("cpu" if device == "torch:cpu" else device)
        self.nbytes = sum(b.size for b in blocks) * torch.empty((), dtype=dtype).element_size()
        self.budget = budget_bytes(device) if budget is None else budget
        self.resident = self.nbytes <= self.budget
        self._tensors: list[Any] | None = None

    def _to_device(self, host: np.ndarray) -> Any:
        import torch

        tensor = torch.from_numpy(np.require(host, requirements=["C", "W"]))  # a read-only map is copied
        if self.device.type == "cuda":
            tensor = tensor.pin_memory()
            return tensor.to(self.device, dtype=self.dtype, non_blocking=True)
        return tensor.to(self.device, dtype=self.dtype)

    def __iter__(self) -> Iterator[tuple[Block, Any]]:
        if self.resident:
            if self._tensors is None:
                self._tensors = [self._to_device(b.build()) for b in self.blocks]
            yield from zip(self.blocks, self._tensors)
            return
        hosts = ((b, b.build()) for b in self.blocks)  # built ahead in a thread while the device scores
        for block, host in prefetch(hosts, depth=2):
            yield block, self._to_device(host)
