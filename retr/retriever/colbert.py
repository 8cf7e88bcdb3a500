"""ColBERT late-interaction encoder: one L2-normalised vector per token.

Reads three checkpoint layouts with plain ``transformers``:

- sentence-transformers / PyLate: ``modules.json`` lists a ``Dense`` module after the
  Transformer; its folder holds ``config.json`` (in/out features, bias) and the
  ``linear.weight`` projection. PyLate's ``config_sentence_transformers.json`` supplies
  its markers and lengths.
- colbert-ai: ``config.json`` says ``HF_ColBERT``; the weights file holds ``linear.weight``
  next to the BERT weights, and ``artifact.metadata`` the markers and lengths.
- any other model (a plain sentence-transformers bi-encoder, say): zero-shot, the
  Transformer's token embeddings with no projection.

Queries get a marker after ``[CLS]`` and are padded with ``[MASK]`` to ``query_length``
(query augmentation: the mask tokens are not attended to, but their output vectors are
kept). Documents get their marker, are truncated to ``doc_length``, and lose padding and
punctuation tokens. Encodings are cached on disk by model, settings and text.
"""

from __future__ import annotations

import functools
import hashlib
import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from retr.errors import RetrError
from retr.retriever.batching import id_batches, pad_rows, to_host
from retr.retriever.cache import EmbeddingCache, open_cache
from retr.retriever.models import model_fingerprint, model_inference, quiet_model_libraries, resolve_model

DEFAULTS: dict[str, Any] = {
    "query_marker": "[unused0]", "doc_marker": "[unused1]", "query_length": 32, "doc_length": 180,
    "attend_to_mask_tokens": False,
}


@dataclass
class ColBERTModel:
    """A loaded checkpoint: tokenizer, backbone, optional projection, and the checkpoint's own settings."""

    tokenizer: Any
    backbone: Any
    weight: Any  # torch (out, in) projection, or None
    bias: Any
    settings: dict[str, Any]  # markers / lengths the checkpoint was trained with
    layout: str  # "sentence-transformers", "colbert-ai" or "zero-shot"
    device: str


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RetrError(f"cannot read {path}: {exc}") from None


def _load_weights(folder: Path) -> dict[str, Any]:
    """Tensors of a weights file in ``folder`` (safetensors, else a .bin read without running code)."""
    import torch
    from safetensors.torch import load_file

    if (folder / "model.safetensors").is_file():
        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").is_file():
        try:
            return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises many types for an unsafe or bad file
            raise RetrError(f"cannot read {folder / 'pytorch_model.bin'} safely: {exc}") from None
    raise RetrError(f"{folder} has no model.safetensors or pytorch_model.bin")


def _local_folder(resolved: str) -> Path:
    """The checkpoint's folder: a local path, else the Hub snapshot (from the local cache if it is there).

    The whole repository is needed, not only the backbone: the projection lives beside it.
    """
    path = Path(resolved)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise RetrError(f"model {resolved!r} is not a local folder and huggingface_hub is missing") from None
    for local_only in (True, False):  # the local Hub cache first, then a download
        try:
            return Path(snapshot_download(resolved, local_files_only=local_only))
        except Exception as exc:  # noqa: BLE001 - not cached, network, missing repository, auth
            error = exc
    raise RetrError(
        f"cannot load model {resolved!r}: {error}. Give a local model folder or a Hugging Face name"
    ) from None


def _projection(folder: Path) -> tuple[Any, Any, dict[str, Any], str, str]:
    """(weight, bias, settings, layout, transformer sub-folder) for a checkpoint folder."""
    config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    if config.get("architectures") == ["HF_ColBERT"]:
        tensors = _load_weights(folder)
        if "linear.weight" not in tensors:
            raise RetrError(f"{folder} is a colbert-ai checkpoint without linear.weight")
        settings = {}
        if (folder / "artifact.metadata").is_file():
            meta = _read_json(folder / "artifact.metadata")
            names = {"query_token_id": "query_marker", "doc_token_id": "doc_marker", "query_maxlen": "query_length",
                     "doc_maxlen": "doc_length", "attend_to_mask_tokens": "attend_to_mask_tokens"}
            settings = {ours: meta[theirs] for theirs, ours in names.items() if theirs in meta}
        return tensors["linear.weight"], tensors.get("linear.bias"), settings, "colbert-ai", ""
    if not (folder / "modules.json").is_file():
        return None, None, {}, "zero-shot", ""
    modules = json.loads((folder / "modules.json").read_text())
    transformer = next((m for m in modules if m.get("type", "").endswith(".Transformer")), None)
    if transformer is None:
        raise RetrError(f"{folder}/modules.json lists no Transformer module")
    sub = transformer.get("path", "")
    dense = [m for m in modules if m.get("type", "").endswith(".Dense") and m["idx"] > transformer["idx"]]
    settings = {}
    st_config = folder / "config_sentence_transformers.json"
    if dense and st_config.is_file():  # PyLate writes its markers and lengths here
        meta = _read_json(st_config)
        names = {"query_prefix": "query_marker", "document_prefix": "doc_marker", "query_length": "query_length",
                 "document_length": "doc_length", "attend_to_expansion_tokens": "attend_to_mask_tokens"}
        settings = {ours: meta[theirs] for theirs, ours in names.items() if meta.get(theirs) is not None}
    if not dense:
        return None, None, settings, "zero-shot", sub
    if len(dense) > 1:
        raise RetrError(f"{folder}: more than one Dense module; only one projection is supported")
    dense_dir = folder / dense[0]["path"]
    dense_config = _read_json(dense_dir / "config.json")
    activation = dense_config.get("activation_function", "torch.nn.modules.linear.Identity")
    if not activation.endswith("Identity"):
        raise RetrError(f"{dense_dir}: activation {activation} is not supported (ColBERT projections are linear)")
    tensors = _load_weights(dense_dir)
    if "linear.weight" not in tensors:
        raise RetrError(f"{dense_dir} has no linear.weight")
    weight = tensors["linear.weight"]
    expected = (dense_config.get("out_features"), dense_config.get("in_features"))
    if None not in expected and tuple(weight.shape) != expected:
        raise RetrError(f"{dense_dir}: linear.weight has shape {tuple(weight.shape)}, config.json says {expected}")
    bias = tensors.get("linear.bias") if dense_config.get("bias", True) else None
    return weight, bias, settings, "sentence-transformers", sub


@dataclass
class ColBERTCard:
    """What a checkpoint says without its backbone's weights: tokenizer, projection, settings and limits."""

    tokenizer: Any
    weight: Any  # torch (out, in) projection on the CPU, or None
    bias: Any
    settings: dict[str, Any]  # markers / lengths the checkpoint was trained with
    layout: str  # "sentence-transformers", "colbert-ai" or "zero-shot"
    source: Path  # the transformer's folder
    max_length: int  # the backbone's position limit
    dim: int  # of the token vectors: the projection's output, else the backbone's hidden size


def _cannot_load(resolved: str, exc: Exception) -> RetrError:
    return RetrError(f"cannot load model {resolved!r}: {exc}. Give a local model folder or a Hugging Face name")


@functools.lru_cache(maxsize=4)
def read_colbert(resolved: str) -> ColBERTCard:
    """Read a checkpoint's tokenizer, configuration and projection once per process, without the backbone
    (an encoder whose texts are all cached needs no more: no model on a device, no GPU context)."""
    try:
        from transformers import AutoConfig, AutoTokenizer
    except ImportError:
        raise RetrError("ColBERT encoders need torch and transformers: pip install 'retr[dense]'") from None
    folder = _local_folder(resolved)
    weight, bias, settings, layout, sub = _projection(folder)
    source = folder / sub
    quiet_model_libraries()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source))
        config = AutoConfig.from_pretrained(str(source))
    except (OSError, ValueError) as exc:
        raise _cannot_load(resolved, exc) from None
    hidden = int(config.hidden_size)
    if weight is not None and weight.shape[1] != hidden:
        raise RetrError(f"{resolved}: projection takes {weight.shape[1]}-d input, the model makes {hidden}-d")
    return ColBERTCard(tokenizer, weight, bias, settings, layout, source,
                       int(getattr(config, "max_position_embeddings", 512)),
                       int(weight.shape[0]) if weight is not None else hidden)


@functools.lru_cache(maxsize=4)
def load_colbert(resolved: str, device: str, dtype: str = "float32") -> ColBERTModel:
    """Load once per process; every encoder naming the same checkpoint shares it."""
    card = read_colbert(resolved)
    import torch
    from transformers import AutoModel

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        backbone = AutoModel.from_pretrained(str(card.source)).to(device=device, dtype=getattr(torch, dtype)).eval()
    except (OSError, ValueError) as exc:
        raise _cannot_load(resolved, exc) from None
    weight, bias = card.weight, card.bias
    if weight is not None:
        weight = weight.to(device=device, dtype=torch.float32)
        bias = bias.to(device=device, dtype=torch.float32) if bias is not None else None
    return ColBERTModel(card.tokenizer, backbone, weight, bias, card.settings, card.layout, device)


class ColBERTEncoder:
    """Texts to sets of L2-normalised token vectors (ColBERT), for MaxSim indexes.

    Defaults are ColBERTv2's; for marker, length and mask-attention settings left at
    their defaults, a checkpoint's own values (colbert-ai ``artifact.metadata``, PyLate
    config) are used. ``query_length=0`` turns query augmentation off (no [MASK]
    padding; padding dropped); ``doc_length=0`` truncates at the model's limit only.
    """

    name = "colbert"
    kind = "multi"

    def __init__(
        self, model: str = "colbert-ir/colbertv2.0", query_marker: str = "[unused0]", doc_marker: str = "[unused1]",
        query_length: int = 32, doc_length: int = 180, skip_punctuation: bool = True, normalize: bool = True,
        attend_to_mask_tokens: bool = False, batch_size: int = 32, device: str = "", dtype: str = "float32",
    ) -> None:
        if query_length < 0 or doc_length < 0 or batch_size < 1:
            raise RetrError("colbert needs query_length >= 0, doc_length >= 0 and batch_size >= 1")
        self.model = model
        self.query_marker, self.doc_marker = str(query_marker), str(doc_marker)
        self.query_length, self.doc_length = int(query_length), int(doc_length)
        self.skip_punctuation, self.normalize = bool(skip_punctuation), bool(normalize)
        self.attend_to_mask_tokens = bool(attend_to_mask_tokens)
        if dtype not in ("float32", "float16", "bfloat16"):
            raise RetrError(f"colbert: dtype is float32, float16 or bfloat16, got {dtype!r}")
        self.batch_size, self.device, self.dtype = int(batch_size), device, dtype
        self._resolved = resolve_model(model)
        self._loaded: ColBERTModel | None = None
        self._effective: dict[str, Any] = {}

    def config(self) -> dict[str, Any]:
        return {"model": self.model, "query_marker": self.query_marker, "doc_marker": self.doc_marker,
                "query_length": self.query_length, "doc_length": self.doc_length,
                "skip_punctuation": self.skip_punctuation, "normalize": self.normalize,
                "attend_to_mask_tokens": self.attend_to_mask_tokens, "dtype": self.dtype}

    @property
    def card(self) -> ColBERTCard:
        """The checkpoint without its backbone (``read_colbert``); the effective settings come from it."""
        card = read_colbert(self._resolved)
        if not self._effective:
            effective = {key: getattr(self, key) for key in DEFAULTS}
            for key, value in card.settings.items():
                if effective[key] == DEFAULTS[key]:
                    effective[key] = type(DEFAULTS[key])(value)
            tokenizer = card.tokenizer
            for key in ("query_marker", "doc_marker"):
                marker = effective[key]
                effective[key + "_id"] = None
                if marker:
                    effective[key + "_id"] = self._token_id(tokenizer, marker, key)
            if effective["query_length"] and tokenizer.mask_token_id is None:
                raise RetrError(f"{self.model!r} has no [MASK] token; use query_length=0 (no query augmentation)")
            effective["max_length"] = card.max_length
            effective["skip_ids"] = self._punctuation_ids(tokenizer) if self.skip_punctuation else set()
            self._effective = effective
        return card

    @property
    def loaded(self) -> ColBERTModel:
        """The checkpoint with its backbone on the encoder's device (loaded at the first text to encode)."""
        if self._loaded is None:
            self.card
            self._loaded = load_colbert(self._resolved, self.device, self.dtype)
        return self._loaded

    def _token_id(self, tokenizer: Any, marker: str, key: str) -> int:
        """The vocabulary id of a marker token (PyLate's markers carry a trailing space)."""
        for form in dict.fromkeys((marker, marker.strip())):
            token_id = tokenizer.convert_tokens_to_ids(form)
            if token_id is not None and (token_id != tokenizer.unk_token_id or form == tokenizer.unk_token):
                return int(token_id)
        raise RetrError(f"{key} {marker!r} is not a token of {self.model!r}'s vocabulary")

    @staticmethod
    def _punctuation_ids(tokenizer: Any) -> set[int]:
        ids = set()
        for symbol in string.punctuation:
            encoded = tokenizer.encode(symbol, add_special_tokens=False)
            if len(encoded) == 1:
                ids.add(int(encoded[0]))
        return ids

    @property
    def dim(self) -> int:
        return self.card.dim

    def _cache(self, role: str) -> EmbeddingCache:
        self.card
        settings = {k: v for k, v in self._effective.items() if k != "skip_ids"}
        settings.update(normalize=self.normalize, skip=sorted(self._effective["skip_ids"]))
        if self.dtype != "float32":
            settings["dtype"] = self.dtype
        digest = hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(), digest_size=8).hexdigest()
        return open_cache(f"colbert-{model_fingerprint(self._resolved)}-{role}-{digest}", role)

    def _room(self, query: bool) -> int:
        """Tokens the tokenizer may give a text: the query or document length (else the model's limit), less the
        marker's place."""
        eff = self._effective
        length = eff["query_length"] if query else eff["doc_length"]
        length = min(length or eff["max_length"], eff["max_length"])
        return length - (1 if eff["query_marker_id" if query else "doc_marker_id"] is not None else 0)

    def _inputs(self, rows: Sequence[Sequence[int]], query: bool) -> tuple[Any, Any]:
        """Input ids and attention mask from the texts' token ids (``token_ids`` at ``_room``): marker inserted
        after [CLS], queries padded with [MASK]."""
        import torch

        loaded, eff = self.loaded, self._effective
        marker_id = eff["query_marker_id" if query else "doc_marker_id"]
        augment = query and eff["query_length"] > 0
        width = self._room(query) if augment else max(map(len, rows))
        ids, mask = (torch.from_numpy(a) for a in pad_rows(rows, width, loaded.tokenizer.pad_token_id or 0))
        if marker_id is not None:
            column = torch.full((len(ids), 1), marker_id, dtype=ids.dtype)
            ids = torch.cat([ids[:, :1], column, ids[:, 1:]], dim=1)
            mask = torch.cat([mask[:, :1], torch.ones_like(column), mask[:, 1:]], dim=1)
        if augment:
            ids = ids.masked_fill(mask == 0, loaded.tokenizer.mask_token_id)
            if eff["attend_to_mask_tokens"]:
                mask = torch.ones_like(mask)
        return ids, mask

    def _encode(self, texts: Sequence[str], query: bool) -> list[np.ndarray]:
        """Kept token vectors of each text. Which tokens are kept follows from the ids, so it is worked out with the
        padding, ahead of the model; the rows are picked on the device (only they are projected, normalised and
        copied back), and a batch's rows are copied to the host while the next batch computes."""
        import torch

        loaded, eff = self.loaded, self._effective
        keep_all = query and eff["query_length"] > 0
        skip = None if query or not eff["skip_ids"] else torch.tensor(sorted(eff["skip_ids"]))
        out: list[np.ndarray | None] = [None] * len(texts)

        def features(rows: list[list[int]], batch: np.ndarray) -> dict[str, Any]:
            ids, mask = self._inputs(rows, query)
            keep = torch.ones_like(mask, dtype=torch.bool) if keep_all else mask.bool()
            if skip is not None:
                keep &= ~torch.isin(ids, skip)
            return {"input_ids": ids, "attention_mask": mask, "kept": keep.flatten().nonzero().flatten(),
                    "counts": keep.sum(1).numpy()}

        def finish(batch: np.ndarray, counts: np.ndarray, copied: Any) -> None:
            (rows,) = copied()  # kept tokens of every text, in order
            for i, part in zip(batch, np.split(rows, np.cumsum(counts)[:-1])):
                out[i] = part

        pending = None
        with model_inference(loaded.device):
            for batch, inputs in id_batches(texts, self.batch_size, loaded.tokenizer, self._room(query), features,
                                            loaded.device):
                hidden = loaded.backbone(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])[0]
                rows = hidden.flatten(0, 1).index_select(0, inputs["kept"]).float()
                if loaded.weight is not None:
                    rows = torch.nn.functional.linear(rows, loaded.weight, loaded.bias)
                if self.normalize:
                    rows = torch.nn.functional.normalize(rows, p=2, dim=-1)
                if pending is not None:
                    finish(*pending)
                pending = (batch, inputs["counts"], to_host(rows))
            if pending is not None:
                finish(*pending)
        return out  # type: ignore[return-value]

    def encode_documents(self, texts: Sequence[str]) -> list[np.ndarray]:
        return self._cache("d").encode(texts, lambda t: self._encode(t, False), ragged=True,
                                         desc="encoding documents")

    def encode_queries(self, texts: Sequence[str]) -> list[np.ndarray]:
        return self._cache("q").encode(texts, lambda t: self._encode(t, True), ragged=True,
                                         desc="encoding queries")
