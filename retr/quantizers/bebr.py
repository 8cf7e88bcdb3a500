"""BEBR recurrent binarization: a float embedding becomes ``u`` binary vectors of ``bits`` bits.

Gan et al., "Binary Embedding-based Retrieval at Tencent" (KDD 2023). Step 0 binarizes
the embedding, each later step binarizes the residual the earlier steps left:

    x = sqrt(dim) * f                          (unit-variance entries)
    b_i = sign(Enc_i(x - Dec(v_{i-1})))        (v_{-1} = 0; Enc_i, Dec: residual MLP blocks)
    v_i = sum_{j <= i} w_j * b_j               (w_j > 0, learned)

``v = v_{u-1}`` is what search compares: ``<v_q, v_d>``. Each dimension of ``v`` takes
one of ``2**u`` values, its ``u`` bits stored next to each other, so a byte holds
``8 / u`` whole dimensions and symmetric distance calculation (SDC) is a sum over the
code's bytes of one (256, 256) lookup table: ``<v_q, v_d> = sum_p T[q_p, d_p]``.
Hamming ranking over the same bits is the cheaper, weight-blind alternative.

Training is embedding-to-embedding on the corpus's own float vectors (no labels): per
step, reconstruction ``|Dec(v_i) - x|^2`` plus a listwise similarity-preserving term,
KL(softmax(<x_a, x_b> / (dim t)) || softmax(<v_a, v_b> / (dim t))) over in-batch pairs.
``sign`` passes gradients straight through (clipped to |z| <= 1). With identity-initialised
blocks the untrained model is greedy residual sign quantization; training refines it.
The model is saved as safetensors (``bebr.safetensors``) with its shape in ``bebr.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from retr.errors import RetrError
from retr.progress import progress_bar
from retr.quantizers.pq import check_codes, check_vectors

MODEL_FILE, META_FILE = "bebr.safetensors", "bebr.json"
CHUNK = 8192


# ---------------------------------------------------------------- pure numpy: codes, tables, scores


def pack_codes(signs: np.ndarray) -> np.ndarray:
    """(n, u, bits) signs (> 0 is a 1 bit) -> (n, bits * u / 8) uint8, each dimension's u bits adjacent, step 0 first."""
    n, u, bits = signs.shape
    interleaved = np.ascontiguousarray((signs > 0).transpose(0, 2, 1)).reshape(n, bits * u)
    return np.packbits(interleaved, axis=1)


def unpack_codes(codes: np.ndarray, u: int, bits: int) -> np.ndarray:
    """uint8 codes -> (n, u, bits) int8 signs in {-1, +1}: the inverse of ``pack_codes``."""
    flat = np.unpackbits(codes, axis=1, count=bits * u).reshape(len(codes), bits, u)
    return (flat.astype(np.int8) * 2 - 1).transpose(0, 2, 1)


def level_values(weights: np.ndarray) -> np.ndarray:
    """(2**u,) the value of a dimension for each u-bit pattern (step 0 = most significant bit)."""
    u = len(weights)
    patterns = (np.arange(1 << u)[:, None] >> np.arange(u - 1, -1, -1)[None, :]) & 1
    return ((patterns * 2 - 1) * np.asarray(weights, np.float64)[None, :]).sum(1)


def byte_values(weights: np.ndarray) -> np.ndarray:
    """(256, 8 / u) the values of the 8 / u dimensions one code byte holds, for each byte value."""
    u = len(weights)
    if 8 % u:
        raise RetrError(f"SDC needs u to divide 8 (1, 2, 4 or 8), got u={u}")
    per_byte = 8 // u
    levels = level_values(weights)
    shifts = np.arange(per_byte - 1, -1, -1) * u
    return levels[(np.arange(256)[:, None] >> shifts[None, :]) & ((1 << u) - 1)].astype(np.float32)


def sdc_table(weights: np.ndarray) -> np.ndarray:
    """(256, 256) float32: T[a, b] = inner product of the dimensions held by code bytes a and b."""
    values = byte_values(weights).astype(np.float64)
    return (values @ values.T).astype(np.float32)


def sdc_scores(q_codes: np.ndarray, d_codes: np.ndarray, table: np.ndarray, chunk: int = 16) -> np.ndarray:
    """(nq, n) float32 SDC scores: sum over byte positions p of table[q[:, p], d[:, p]]."""
    n, size = d_codes.shape
    flat_codes = d_codes.astype(np.int32) + (np.arange(size, dtype=np.int32) * 256)[None, :]
    out = np.empty((len(q_codes), n), dtype=np.float32)
    for s in range(0, len(q_codes), chunk):
        luts = table[q_codes[s : s + chunk]].reshape(-1, size * 256)  # (c, P * 256): row T[q_p] per position
        out[s : s + chunk] = luts[:, flat_codes].sum(-1)
    return out


_POPCOUNT = np.array([i.bit_count() for i in range(256)], dtype=np.int32)


def hamming_scores(q_codes: np.ndarray, d_codes: np.ndarray) -> np.ndarray:
    """(nq, n) int32: number of bits minus twice the Hamming distance (the inner product of the ±1 bits)."""
    dist = _POPCOUNT[np.bitwise_xor(q_codes[:, None, :], d_codes[None, :, :])].sum(-1)
    return 8 * q_codes.shape[1] - 2 * dist


def embed_codes(codes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(n, bits) float32 vectors v = sum_i w_i b_i that SDC compares (``<v_q, v_d>``)."""
    values = byte_values(weights)  # (256, 8 / u)
    return values[codes].reshape(len(codes), -1)


# ---------------------------------------------------------------- the torch model


def _model_class() -> Any:
    import torch
    from torch import nn

    class ResidualMLP(nn.Module):
        """x + W2 gelu(W1 LayerNorm(x)); W2 starts at zero, so the block starts as the identity."""

        def __init__(self, dim: int, hidden: int) -> None:
            super().__init__()
            self.norm, self.up, self.down = nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.Linear(hidden, dim)
            nn.init.zeros_(self.down.weight)
            nn.init.zeros_(self.down.bias)

        def forward(self, x: Any) -> Any:
            return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))

    class RecurrentBinarizer(nn.Module):
        def __init__(self, dim: int, u: int, hidden: int, blocks: int) -> None:
            super().__init__()
            self.dim, self.u = dim, u
            self.encoders = nn.ModuleList(
                nn.Sequential(*[ResidualMLP(dim, hidden) for _ in range(blocks)]) for _ in range(u))
            self.decoder = nn.Sequential(*[ResidualMLP(dim, hidden) for _ in range(blocks)])
            init = torch.tensor([0.8 * 0.5**i for i in range(u)])
            self.log_weights = nn.Parameter(init.log())

        @property
        def weights(self) -> Any:
            return self.log_weights.exp()

        def forward(self, f: Any) -> tuple[list[Any], list[Any], list[Any]]:
            """Signs b_i, compositions v_i and reconstructions Dec(v_i), i = 0..u-1 (scaled space)."""
            x = f * math.sqrt(self.dim)
            v = torch.zeros_like(x)
            recon = torch.zeros_like(x)
            signs, comps, recons = [], [], []
            for i, enc in enumerate(self.encoders):
                z = enc(x - recon)
                soft = torch.clamp(z, -1.0, 1.0)
                b = soft + (torch.where(z >= 0, 1.0, -1.0) - soft).detach()  # sign, straight-through
                v = v + self.weights[i] * b
                recon = self.decoder(v)
                signs.append(b)
                comps.append(v)
                recons.append(recon)
            return signs, comps, recons

    return RecurrentBinarizer


def bebr_loss(x: Any, comps: list[Any], recons: list[Any], temperature: float) -> Any:
    """Sum over steps of reconstruction MSE + in-batch listwise similarity KL (scaled space, see module doc)."""
    import torch
    import torch.nn.functional as F

    dim = x.shape[1]
    eye = torch.eye(len(x), dtype=torch.bool, device=x.device)
    target = F.softmax((x @ x.T / dim / temperature).masked_fill(eye, -1e9), dim=1)
    total = x.new_zeros(())
    for v, r in zip(comps, recons):
        logits = (v @ v.T / dim / temperature).masked_fill(eye, -1e9)
        total = total + F.mse_loss(r, x) + F.kl_div(F.log_softmax(logits, dim=1), target, reduction="batchmean")
    return total


# ---------------------------------------------------------------- the quantizer


class BEBRQuantizer:
    """``bebr:u=4``: u binary vectors of ``bits`` bits per embedding (``bits=0``: the embedding's dimension)."""

    name = "bebr"

    def __init__(self, u: int = 4, bits: int = 0, hidden: int = 0, blocks: int = 1, epochs: int = 30,
                 batch_size: int = 256, lr: float = 1e-3, temperature: float = 0.05, sample: int = 16384,
                 seed: int = 42) -> None:
        if u not in (1, 2, 4, 8):
            raise RetrError(f"bebr needs u in 1, 2, 4, 8 (whole dimensions per code byte), got {u}")
        if (bits < 0 or hidden < 0 or blocks < 1 or epochs < 0 or batch_size < 2 or lr <= 0 or temperature <= 0
                or sample < 2):
            raise RetrError("bebr needs bits >= 0, hidden >= 0, blocks >= 1, epochs >= 0, batch_size >= 2, lr > 0, "
                            "temperature > 0, sample >= 2")
        if bits and bits * u % 8:
            raise RetrError(f"bebr: bits * u must be a multiple of 8, got bits={bits}, u={u}")
        self.u, self.bits, self.hidden, self.blocks, self.epochs = int(u), int(bits), int(hidden), int(blocks), int(epochs)
        self.batch_size, self.lr, self.temperature, self.seed = int(batch_size), float(lr), float(temperature), int(seed)
        self.sample = int(sample)
        self.model: Any = None
        self.losses: list[float] = []  # mean training loss per epoch

    def config(self) -> dict[str, Any]:
        return {"u": self.u, "bits": self.bits, "hidden": self.hidden, "blocks": self.blocks, "epochs": self.epochs,
                "batch_size": self.batch_size, "lr": self.lr, "temperature": self.temperature, "sample": self.sample,
                "seed": self.seed}

    @property
    def trained(self) -> bool:
        return self.model is not None

    @property
    def dim(self) -> int | None:
        return None if self.model is None else int(self.model.dim)

    @property
    def code_size(self) -> int:
        return self._need_trained().dim * self.u // 8

    @property
    def weights(self) -> np.ndarray:
        """(u,) float32 step weights w_i."""
        return self._need_trained().weights.detach().cpu().numpy().astype(np.float32)

    def sdc_table(self) -> np.ndarray:
        return sdc_table(self.weights)

    def _need_trained(self) -> Any:
        if self.model is None:
            raise RetrError("the bebr quantizer is not trained: call train() (or add vectors) first")
        return self.model

    def _new_model(self, dim: int) -> Any:
        import torch

        if self.bits not in (0, dim):
            raise RetrError(f"bebr: bits={self.bits} must be 0 or the embedding dimension {dim} (residual blocks keep the width)")
        if dim * self.u % 8:
            raise RetrError(f"bebr: dimension {dim} * u={self.u} must be a multiple of 8")
        torch.manual_seed(self.seed)
        return _model_class()(dim, self.u, self.hidden or dim, self.blocks)

    def sample_size(self, n: int) -> int:
        """Vectors to train on: at most ``sample``, so training costs the same for any corpus size."""
        return min(n, self.sample)

    def train(self, vectors: np.ndarray, n: int | None = None) -> None:
        """Fit the binarizer on ``vectors`` themselves (embedding-to-embedding, no labels), at most ``sample`` of them."""
        import torch

        x = check_vectors(vectors, None, "training the bebr quantizer")
        if len(x) > self.sample:  # a seeded subsample: the cost stays bounded whoever calls
            x = x[np.sort(np.random.default_rng(self.seed).choice(len(x), self.sample, replace=False))]
        model = self._new_model(x.shape[1])
        data = torch.from_numpy(x)
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=0.0)
        generator = torch.Generator().manual_seed(self.seed)
        self.losses = []
        steps = (len(x) + self.batch_size - 1) // self.batch_size
        with progress_bar(total=self.epochs * steps, desc="training bebr", unit="step") as bar:
            for _ in range(self.epochs):
                order, total = torch.randperm(len(x), generator=generator), 0.0
                for s in range(0, len(x), self.batch_size):
                    batch = data[order[s : s + self.batch_size]]
                    if len(batch) < 2:
                        continue
                    _, comps, recons = model(batch)
                    loss = bebr_loss(batch * math.sqrt(model.dim), comps, recons, self.temperature)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach()) * len(batch)
                    bar.update(1)
                self.losses.append(total / len(x))
        model.eval()
        self.model = model

    def loss(self, vectors: np.ndarray) -> float:
        """The training loss of ``vectors`` under the current model (one batch)."""
        import torch

        model = self._need_trained()
        x = torch.from_numpy(check_vectors(vectors, self.dim, "bebr loss"))
        with torch.no_grad():
            _, comps, recons = model(x)
            return float(bebr_loss(x * math.sqrt(model.dim), comps, recons, self.temperature))

    def _signs(self, x: np.ndarray) -> np.ndarray:
        import torch

        model = self._need_trained()
        out = np.empty((len(x), self.u, model.dim), dtype=np.int8)
        with torch.no_grad():
            for s in range(0, len(x), CHUNK):
                signs, _, _ = model(torch.from_numpy(x[s : s + CHUNK]))
                out[s : s + CHUNK] = torch.stack(signs, 1).numpy().astype(np.int8)
        return out

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """uint8 codes (n, dim * u / 8)."""
        x = check_vectors(vectors, self.dim if self.trained else None, "encoding with the bebr quantizer")
        return pack_codes(self._signs(x))

    def embed(self, codes: np.ndarray) -> np.ndarray:
        """(n, dim) float32 v = sum_i w_i b_i: the vectors SDC compares."""
        return embed_codes(check_codes(codes, self.code_size, self.name), self.weights)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """float32 (n, dim) reconstructions of the original embeddings: Dec(v) / sqrt(dim)."""
        import torch

        model = self._need_trained()
        v = self.embed(codes)
        with torch.no_grad():
            return (model.decoder(torch.from_numpy(v)) / math.sqrt(model.dim)).numpy().astype(np.float32)

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        model = self._need_trained()
        directory = Path(directory)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / MODEL_FILE))
        (directory / META_FILE).write_text(json.dumps({"dim": model.dim, "losses": self.losses}) + "\n")

    @classmethod
    def load(cls, directory: Path, config: dict[str, Any] | None = None) -> BEBRQuantizer:
        from safetensors.torch import load_file

        directory = Path(directory)
        quantizer = cls(**(config or {}))
        try:
            meta = json.loads((directory / META_FILE).read_text())
            state = load_file(str(directory / MODEL_FILE))
        except (OSError, ValueError) as exc:
            raise RetrError(f"cannot read the bebr model in {directory}: {exc}; rebuild the index") from None
        model = quantizer._new_model(int(meta["dim"]))
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise RetrError(f"{directory}: the bebr model does not match its settings ({exc}); rebuild the index") from None
        model.eval()
        quantizer.model, quantizer.losses = model, list(meta.get("losses", []))
        return quantizer
