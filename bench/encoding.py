"""Encoding throughput: ``retr index`` end to end against the model library's own encode loop, same GPU and batch.

- dense: sentence-transformers ``encode()`` alone (the library underneath) against ``retr index
  --encoder dense:MODEL --index flat`` end to end (reading the corpus, encoding, the embedding
  cache, the docstore, the index, checksums), float32; and both in float16 (``dtype=float16``);
- ColBERT: a plain transformers forward pass over the same length-sorted batches (tokenize, forward,
  normalise, copy back: what any ColBERT encoder must do) against ``retr index`` with ``maxsim``;
- SPLADE: the transformers masked-LM forward with max-pooled log-saturation against ``retr index``
  with ``csr``.

Each retr run starts with an empty embedding cache of its own. Documents/s, and the ratio to the
library baseline from the same run, are appended to ``--json``; ``--report`` writes
bench/results/encoding.md.

    python bench/encoding.py --model PATH --dense 794232 --colbert 100000 --splade 100000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RENDERED, machine_label, md_table, read_records, write_results  # noqa: E402
from scale import REPO, corpus_slice, machine  # noqa: E402


def texts_of(size: int, work: Path) -> list[str]:
    from retr import iter_corpus

    return [d.content for d in iter_corpus(corpus_slice(size, work))]


def retr_index(corpus: Path, encoder: str, index: str, work: Path, name: str, keep: Path | None = None) -> float:
    """Seconds of ``retr index`` end to end with an empty embedding cache (``keep``: an empty one kept afterwards)."""
    cache = keep or work / f"cache-{name}"
    if keep is None:
        shutil.rmtree(cache, ignore_errors=True)
    out = work / f"index-{name}"
    env = {**os.environ, "RETR_CACHE_DIR": str(cache), "RETR_PROGRESS": "0",
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "retr.cli", "index", "--corpus", str(corpus), "--encoder", encoder,
                    "--index", index, "--out", str(out), "--no-texts"], check=True, env=env)
    seconds = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    if keep is None:
        shutil.rmtree(cache, ignore_errors=True)
    return seconds


def st_encode(model: str, texts: list[str], batch: int, dtype: str = "float32") -> float:
    import torch
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(model).to(getattr(torch, dtype))  # as retr's dtype= loads it
    st.encode(texts[:1024], batch_size=batch)  # load and warm up
    start = time.perf_counter()
    st.encode(texts, batch_size=batch, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    return time.perf_counter() - start


def transformers_forward(model: str, texts: list[str], batch: int, head: str, device: str) -> float:
    """Seconds of a plain forward loop: length-sorted batches, tokenize, forward, pool or normalise, copy back."""
    import torch
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    net = (AutoModelForMaskedLM if head == "mlm" else AutoModel).from_pretrained(model).to(device).eval()
    order = np.argsort([-len(t) for t in texts], kind="stable")
    start = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(order), batch):
            enc = tokenizer([texts[i] for i in order[s : s + batch]], truncation=True, max_length=180,
                            padding="longest", return_tensors="pt").to(device)
            out = net(**enc)
            if head == "mlm":
                out.logits.masked_fill(~enc["attention_mask"].bool().unsqueeze(-1), 0).amax(1).relu().log1p().cpu()
            else:
                torch.nn.functional.normalize(out[0], dim=-1)[enc["attention_mask"].bool()].cpu()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--splade-model", default="splade-tiny")
    parser.add_argument("--dense", type=int, default=794232)
    parser.add_argument("--colbert", type=int, default=100000)
    parser.add_argument("--splade", type=int, default=100000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--fp16", type=int, default=100000, help="documents for the dense float16 run")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--cache", default="", help="an empty embedding cache the float32 runs fill and keep")
    parser.add_argument("--work", default="runs/encoding")
    parser.add_argument("--json", default="runs/encoding.json")
    parser.add_argument("--note", default="", help="a note written into every record of this run")
    parser.add_argument("--report", nargs="*")
    args = parser.parse_args()
    if args.report:
        return report(args.report)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    def emit(record: dict[str, Any]) -> None:
        record["machine"] = machine()
        if args.note:
            record["note"] = args.note
        print(json.dumps(record), flush=True)
        with open(args.json, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    from retr.retriever.models import resolve_model

    model = resolve_model(args.model)
    keep = Path(args.cache) if args.cache else None
    if args.dense:
        texts = texts_of(args.dense, work)
        base = st_encode(model, texts, args.batch)
        emit({"encoder": "dense", "system": "sentence-transformers encode()", "docs": len(texts), "seconds": base})
        seconds = retr_index(corpus_slice(args.dense, work), f"dense:{model},batch_size={args.batch}", "flat", work,
                             "dense", keep)
        emit({"encoder": "dense", "system": "retr index (flat)", "docs": len(texts), "seconds": seconds,
              "ratio": base / seconds})
    for family, size, head, spec, index in (("colbert", args.colbert, "tokens", f"colbert:{model}", "maxsim"),
                                            ("splade", args.splade, "mlm", f"splade:{args.splade_model}", "csr")):
        if not size:
            continue
        texts = texts_of(size, work)
        source = model if family == "colbert" else resolve_model(args.splade_model)
        base = transformers_forward(source, texts, args.batch, head, args.device)
        emit({"encoder": family, "system": "transformers forward loop", "docs": len(texts), "seconds": base})
        seconds = retr_index(corpus_slice(size, work), f"{spec},batch_size={args.batch}", index, work, family, keep)
        emit({"encoder": family, "system": f"retr index ({index})", "docs": len(texts), "seconds": seconds,
              "ratio": base / seconds})
    if args.fp16:
        texts = texts_of(args.fp16, work)
        base = st_encode(model, texts, args.batch, "float16")
        emit({"encoder": "dense", "system": "sentence-transformers encode() (float16)", "docs": len(texts),
              "seconds": base})
        seconds = retr_index(corpus_slice(args.fp16, work), f"dense:{model},batch_size={args.batch},dtype=float16",
                             "flat", work, "dense-fp16")
        emit({"encoder": "dense", "system": "retr index (flat, dtype=float16)", "docs": len(texts),
              "seconds": seconds, "ratio": base / seconds})


def report(paths: list[str]) -> None:
    records = read_records(paths)
    rows = [[r["encoder"], r["system"], f"{r['docs']:,}", f"{r['seconds']:.1f}", f"{r['docs'] / r['seconds']:,.0f}",
             f"{r['ratio']:.2f}×" if "ratio" in r else "baseline",
             machine_label(r["machine"]), r.get("note", "")]
            for r in records]
    write_results("encoding", "Encoding throughput: retr index against the library underneath", [md_table(
        ["encoder", "system", "documents", "seconds", "docs/s", "throughput vs baseline", "machine", "note"], rows)],
        os.getloadavg()[0], RENDERED)


if __name__ == "__main__":
    main()
