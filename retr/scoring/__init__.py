"""Where exact scores are computed: one small component that every exact scoring stage shares.

Flat search, exact MaxSim, and the exact re-scoring stages of MUVERA, PLAID, IVF-PQ / PQ
refinement and BEBR re-ranking all hand their arrays (memory-mapped float vectors or token
stores) to a scorer chosen when the index is opened (``open_index(path, device=...)``):

- ``cpu`` (default): numpy and FAISS on the CPU, straight over the memory-mapped arrays;
- ``cuda``, ``cuda:N``, ``mps``: torch on that device, data moved there once when it fits
  (80% of the free memory), streamed block by block from the host otherwise;
- ``torch:cpu``: the torch path on the CPU, so the GPU code is checked without a GPU.

Every backend returns the same top k (ties by lowest id on the CPU; GPU float16 tokens round
scores in the 3rd-4th decimal, which can swap near-ties).
"""

from retr.scoring.dense import NumpyDense, TorchDense, dense_scorer
from retr.scoring.device import DEVICES, check_device
from retr.scoring.maxsim import (NumpyTokens, TorchTokens, maxsim_batch, one_thread_each, segment_max, token_rows,
                                 token_scorer)
from retr.scoring.topk import merge_top_k, top_k

__all__ = ["DEVICES", "NumpyDense", "NumpyTokens", "TorchDense", "TorchTokens", "check_device", "dense_scorer",
           "maxsim_batch", "merge_top_k", "one_thread_each", "segment_max", "token_rows", "token_scorer", "top_k"]
