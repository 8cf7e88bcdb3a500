"""DupMAE pre-training (RetroMAE v2, Xiao & Liu, arXiv 2211.08769) of any BERT-style masked-LM checkpoint.

Per batch of texts, three losses are added:

1. encoder MLM: the encoder reads its input with ``encoder_mask`` of the ordinary tokens
   masked (BERT's 80/10/10 rule) and predicts them through its MLM head;
2. [CLS] decoding (RetroMAE's enhanced decoding): a one-layer transformer decoder
   reconstructs every ordinary token of the *original* text from the encoder's [CLS]
   vector. Its query stream is the [CLS] vector plus each position's embedding; its
   key/value stream is the [CLS] vector (position 0) and the original tokens' embeddings,
   where row i may see position 0 and a random ``1 - decoder_mask`` of the others, never
   itself. Predictions go through the (shared) MLM head;
3. bag-of-words (OT decoding): the encoder's MLM logits of the ordinary tokens,
   max-pooled over the tokens into one vocabulary-space vector, are trained by
   cross-entropy against the text's bag of words: ``-sum_t w_t log softmax(e_OT)_t`` with
   ``w_t = 1 / len`` for each distinct input token (as the authors' code), weighted by
   ``bow_weight``.

``pretrain_dupmae`` writes a Hugging Face checkpoint (safetensors + tokenizer) that
``dupmae:PATH`` (``retr.retriever.dupmae``) loads, plus the decoder's weights
(``dupmae_decoder.safetensors``) and the run's settings and losses (``dupmae_pretrain.json``).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from retr.errors import RetrError
from retr.progress import progress_bar
from retr.storage import atomic_directory


def decoder_attention(attention: Any, decoder_mask: float, generator: Any = None) -> Any:
    """Boolean (B, T, T) "row i may attend to column j": column 0 always, column i never,
    padding never, every other column with probability ``1 - decoder_mask``."""
    import torch

    batch, length = attention.shape
    allowed = torch.rand(batch, length, length, generator=generator, device=attention.device) >= decoder_mask
    allowed &= attention.bool().unsqueeze(1)
    allowed &= ~torch.eye(length, dtype=torch.bool, device=attention.device).unsqueeze(0)
    allowed[:, :, 0] = True
    return allowed


def mask_tokens(input_ids: Any, ordinary: Any, rate: float, mask_id: int, vocab: int, generator: Any = None) -> tuple:
    """BERT masking of a ``rate`` share of the ordinary tokens: (masked ids, labels with -100 elsewhere)."""
    import torch

    chosen = (torch.rand(input_ids.shape, generator=generator, device=input_ids.device) < rate) & ordinary
    labels = input_ids.masked_fill(~chosen, -100)
    roll = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    masked = input_ids.masked_fill(chosen & (roll < 0.8), mask_id)
    random_ids = torch.randint(vocab, input_ids.shape, generator=generator, device=input_ids.device)
    masked = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_ids, masked)
    return masked, labels


def bow_targets(input_ids: Any, ordinary: Any, vocab: int) -> Any:
    """(B, V): 1 / (number of ordinary tokens) at each distinct ordinary token of the text, 0 elsewhere."""
    import torch

    counts = ordinary.sum(dim=1, keepdim=True).clamp(min=1).float()
    present = torch.zeros(input_ids.shape[0], vocab, device=input_ids.device)
    present.scatter_(1, input_ids.masked_fill(~ordinary, 0), ordinary.float())
    return present.clamp(max=1.0) / counts


def bow_loss(logits: Any, ordinary: Any, targets: Any) -> Any:
    """``-sum_t w_t log softmax(max over ordinary tokens of the logits)_t``, averaged over the batch."""
    import torch

    pooled = logits.float().masked_fill(~ordinary.unsqueeze(-1), -1e4).amax(dim=1)
    return -(targets * torch.log_softmax(pooled, dim=-1)).sum(dim=1).mean()


class CLSDecoder:
    """Factory for the one-layer [CLS]-conditioned decoder (torch module built lazily)."""

    @staticmethod
    def build(hidden: int, heads: int, intermediate: int, dropout: float = 0.1) -> Any:
        from torch import nn

        class Decoder(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.heads = heads
                self.attention = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
                self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
                self.ffn = nn.Sequential(nn.Linear(hidden, intermediate), nn.GELU(), nn.Linear(intermediate, hidden))
                self.dropout = nn.Dropout(dropout)

            def forward(self, query: Any, memory: Any, allowed: Any) -> Any:
                blocked = ~allowed.repeat_interleave(self.heads, dim=0)  # (B * heads, T, T), True = may not attend
                attended, _ = self.attention(query, memory, memory, attn_mask=blocked, need_weights=False)
                x = self.norm1(query + self.dropout(attended))
                return self.norm2(x + self.dropout(self.ffn(x)))

        return Decoder()


def _ordinary(enc: dict) -> Any:
    return enc["attention_mask"].bool() & ~enc["special_tokens_mask"].bool()


def dupmae_losses(lm: Any, decoder: Any, enc: dict, encoder_mask: float, decoder_mask: float,
                  mask_id: int, generator: Any = None) -> dict[str, Any]:
    """The three DupMAE losses of one tokenised batch (``enc`` with ``special_tokens_mask``)."""
    import torch.nn.functional as F

    ids, attention = enc["input_ids"], enc["attention_mask"]
    ordinary = _ordinary(enc)
    vocab = lm.config.vocab_size
    masked, labels = mask_tokens(ids, ordinary, encoder_mask, mask_id, vocab, generator)
    out = lm(input_ids=masked, attention_mask=attention, labels=labels, output_hidden_states=True)
    cls = out.hidden_states[-1][:, 0]
    embeddings = lm.base_model.embeddings
    memory = embeddings(input_ids=ids)
    memory = memory.clone()
    memory[:, 0] = cls  # position 0 of the key/value stream is the [CLS] vector
    query = embeddings(inputs_embeds=cls.unsqueeze(1).expand(-1, ids.shape[1], -1))  # [CLS] + position embedding
    hidden = decoder(query, memory, decoder_attention(attention, decoder_mask, generator))
    head = lm.cls if hasattr(lm, "cls") else lm.lm_head
    targets = ids.masked_fill(~ordinary, -100)
    decoder_logits = head(hidden)
    reconstruction = F.cross_entropy(decoder_logits.reshape(-1, vocab), targets.reshape(-1), ignore_index=-100)
    bag = bow_loss(out.logits, ordinary, bow_targets(ids, ordinary, vocab))
    return {"encoder_mlm": out.loss, "decoder": reconstruction, "bow": bag}


def pretrain_dupmae(
    model: str, texts: Sequence[str], out: Path | str, steps: int = 1000, batch_size: int = 32, max_length: int = 128,
    lr: float = 1e-4, warmup: float = 0.1, encoder_mask: float = 0.3, decoder_mask: float = 0.5,
    bow_weight: float = 1.0, device: str = "", seed: int = 0, shard_size: str = "",
) -> dict[str, Any]:
    """Pre-train ``model`` (Hub name or path of a BERT-style masked LM) on ``texts`` with DupMAE; save to ``out``.

    Batches are drawn from the texts in shuffled epochs. ``shard_size`` (e.g. ``"10MB"``)
    splits the saved weights into safetensors shards. Returns the run's record (settings,
    loss curve, seconds), also written to ``out/dupmae_pretrain.json``.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from retr.retriever.models import resolve_model

    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise RetrError("DupMAE pre-training needs some non-empty texts")
    if steps < 1 or batch_size < 1 or not (0 < encoder_mask < 1 and 0 <= decoder_mask < 1):
        raise RetrError("pre-training needs steps >= 1, batch_size >= 1, 0 < encoder_mask < 1, 0 <= decoder_mask < 1")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    resolved = resolve_model(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved)
        lm = AutoModelForMaskedLM.from_pretrained(resolved).to(device=device, dtype=torch.float32)  # trained in float32
    except (OSError, ValueError) as exc:
        raise RetrError(f"cannot load masked-LM model {resolved!r}: {exc}") from None
    if tokenizer.mask_token_id is None:
        raise RetrError(f"{model!r} has no [MASK] token: DupMAE needs a masked-LM tokenizer")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    config = lm.config
    decoder = CLSDecoder.build(config.hidden_size, config.num_attention_heads, config.intermediate_size).to(device)
    params = list(lm.parameters()) + list(decoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warm = max(1, int(warmup * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm))))
    order: list[int] = []
    history: list[dict[str, float]] = []
    lm.train()
    decoder.train()
    start = time.perf_counter()
    with progress_bar(total=steps, desc="DupMAE pre-training", unit="step") as bar:
        for step in range(steps):
            if len(order) < batch_size:
                fresh = list(range(len(texts)))
                rng.shuffle(fresh)
                order += fresh
            batch, order = order[:batch_size], order[batch_size:]
            enc = tokenizer([texts[i] for i in batch], truncation=True, max_length=max_length, padding="longest",
                            return_tensors="pt", return_special_tokens_mask=True).to(device)
            losses = dupmae_losses(lm, decoder, enc, encoder_mask, decoder_mask, tokenizer.mask_token_id, generator)
            loss = losses["encoder_mlm"] + losses["decoder"] + bow_weight * losses["bow"]
            if not torch.isfinite(loss):
                raise RetrError(f"DupMAE loss became {float(loss)} at step {step}; lower lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            history.append({k: float(v.detach()) for k, v in losses.items()} | {"total": float(loss.detach())})
            bar.update(1)
    seconds = time.perf_counter() - start
    record = {
        "base_model": model, "steps": steps, "batch_size": batch_size, "max_length": max_length, "lr": lr,
        "warmup": warmup, "encoder_mask": encoder_mask, "decoder_mask": decoder_mask, "bow_weight": bow_weight,
        "seed": seed, "texts": len(texts), "device": device, "seconds": round(seconds, 1),
        "loss_first": _mean(history[: max(1, steps // 20)]), "loss_last": _mean(history[-max(1, steps // 20):]),
        "history_every_10": history[::10],
    }
    with atomic_directory(out, marker="dupmae_pretrain.json", what="a DupMAE checkpoint") as tmp:
        lm.eval()
        kwargs = {"max_shard_size": shard_size} if shard_size else {}
        lm.save_pretrained(tmp, **kwargs)
        tokenizer.save_pretrained(tmp)
        save_file({k: v.detach().cpu().contiguous() for k, v in decoder.state_dict().items()},
                  str(tmp / "dupmae_decoder.safetensors"))
        (tmp / "dupmae_pretrain.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(sum(r[k] for r in rows) / len(rows), 4) for k in rows[0]} if rows else {}


def collection_texts(paths: Sequence[Path | str]) -> list[str]:
    """Document texts (title and text) of BEIR-layout folders or corpus files, in order."""
    from retr.eval.datasets import read_corpus

    texts: list[str] = []
    for path in paths:
        texts += [d.content for d in read_corpus(Path(path), on_empty="skip")]
    return texts


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m retr.retriever.dupmae_pretrain MODEL OUT CORPUS...``: a short pre-training run."""
    import argparse

    parser = argparse.ArgumentParser(description="DupMAE pre-training of a masked-LM checkpoint")
    parser.add_argument("model")
    parser.add_argument("out", type=Path)
    parser.add_argument("corpora", nargs="+", type=Path)
    for name, kind, default in (("steps", int, 1000), ("batch-size", int, 32), ("max-length", int, 128),
                                ("lr", float, 1e-4), ("bow-weight", float, 1.0), ("seed", int, 0)):
        parser.add_argument(f"--{name}", type=kind, default=default)
    parser.add_argument("--device", default="")
    parser.add_argument("--shard-size", default="")
    args = parser.parse_args(argv)
    record = pretrain_dupmae(args.model, collection_texts(args.corpora), args.out, steps=args.steps,
                             batch_size=args.batch_size, max_length=args.max_length, lr=args.lr,
                             bow_weight=args.bow_weight, device=args.device, seed=args.seed, shard_size=args.shard_size)
    print(json.dumps({k: v for k, v in record.items() if k != "history_every_10"}))


if __name__ == "__main__":
    main()
