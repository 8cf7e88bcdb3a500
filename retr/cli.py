"""The ``retr`` command line: index, search, eval, info. It parses arguments and calls the API."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from retr.errors import RetrError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="Index, search and evaluate collections with dense, sparse and lexical retrievers.",
)


@app.command()
def index(
    corpus: Path = typer.Option(..., help="corpus.jsonl(.gz), a .tsv (id, [title,] text), or a BEIR / MS MARCO folder"),
    out: Path = typer.Option(..., help="index directory to write (replaced only when the new one is complete)"),
    encoder: str = typer.Option("dense:sentence-transformers/all-MiniLM-L6-v2",
                                help="encoder spec: bm25[:k1=..,b=..], dense:MODEL, colbert:MODEL, splade:MODEL, "
                                     "slim:MODEL[,key=value...] (README lists the settings)"),
    index_spec: Optional[str] = typer.Option(
        None, "--index", help="index spec, default the usual one for the encoder's kind: flat, hnsw, ivf, lucene, csr, "
                              "maxsim, plaid, muvera, slim[:key=value...]"),
    store_text: bool = typer.Option(True, "--texts/--no-texts", help="keep document texts in the index"),
    on_empty: str = typer.Option("skip", help="documents with no text: skip (with a warning) or error"),
    chunk_size: int = typer.Option(0, help="documents encoded and added at once (0: 16,384; 2,048 for token "
                                           "matrices); bounds the build's memory"),
) -> None:
    """Encode a corpus and write an index directory (streaming: memory stays at a few chunks)."""
    from retr.eval.datasets import Corpus
    from retr.retriever.pipeline import Retriever
    from retr.retriever.spec import parse_pair

    if on_empty not in ("skip", "error"):
        raise RetrError("--on-empty is 'skip' or 'error'")
    enc, idx = parse_pair(encoder if index_spec is None else f"{encoder}@{index_spec}")
    docs = Corpus(corpus, on_empty=on_empty)  # type: ignore[arg-type]
    retriever = Retriever.build(docs, str(enc), str(idx), out=out, store_text=store_text, chunk_size=chunk_size)
    typer.echo(f"indexed {len(retriever)} documents with {retriever.name} into {out} "
               f"({_size(out) / 2**20:.1f} MiB, {retriever.build_seconds:.1f} s)")


@app.command()
def search(
    index_dir: Path = typer.Argument(..., metavar="INDEX", help="index directory"),
    query: List[str] = typer.Argument(..., help="one or more queries"),
    k: int = typer.Option(10, "-k", help="hits per query"),
    as_json: bool = typer.Option(False, "--json", help="print JSON lines instead of a table"),
    encoder: Optional[str] = typer.Option(None, help="query encoder; must match the index's"),
    filter_spec: Optional[str] = typer.Option(
        None, "--filter", help="relevance filter: adapter[:PATH][,threshold=0.5] (default PATH: the index's "
                               "adapter/), cosine:threshold=T, topk:k=N; a query may then get no hits"),
    filter_depth: int = typer.Option(100, help="candidates per query the filter looks at"),
    device: str = typer.Option("cpu", help="where exact scoring runs: cpu, cuda, cuda:N (flat, maxsim, "
                                           "muvera, plaid, refine / rerank stages)"),
) -> None:
    """Search an index."""
    from retr.retriever.pipeline import open_index

    retriever = open_index(index_dir, encoder=encoder, device=device)
    if filter_spec is not None:
        from retr.retriever.relevance_filter import FilteredRetriever

        retriever = FilteredRetriever(retriever, filter_spec, filter_depth)  # type: ignore[assignment]
    for text, hits in zip(query, retriever.search_batch(query, k)):
        if as_json:
            typer.echo(json.dumps({"query": text, "hits": [
                {"rank": r, "id": h.id, "score": h.score, "text": h.text} for r, h in enumerate(hits, 1)
            ]}))
            continue
        typer.echo(f"query: {text}")
        for rank, hit in enumerate(hits, 1):
            snippet = (hit.text or "").replace("\n", " ")
            typer.echo(f"{rank:>4}  {hit.score:>9.4f}  {hit.id:<12} {snippet[:90]}")


@app.command(name="eval")
def evaluate(
    dataset: Path = typer.Argument(..., help="BEIR-layout or MS MARCO-layout folder"),
    retriever: List[str] = typer.Option(
        ..., "--retriever", "-r",
        help="retriever spec (repeat for a table): bm25, dense:MODEL[@INDEX], rrf[A | B], or an index path"),
    split: str = typer.Option("test", help="qrels split"),
    k: int = typer.Option(1000, "-k", help="depth of each run"),
    out: Optional[Path] = typer.Option(None, help="folder for TREC run files and results.json"),
    metric: List[str] = typer.Option(["ndcg@10", "mrr@10", "recall@100", "recall@1000", "map"], "--metric", "-m"),
    as_json: bool = typer.Option(False, "--json", help="print results as JSON"),
    filter_spec: Optional[str] = typer.Option(
        None, "--filter", help="relevance filter on each retriever: adapter[:PATH][,threshold=..], "
                               "cosine:threshold=T, topk:k=N; adds precision/recall/F1 of the returned sets"),
    filter_depth: int = typer.Option(100, help="candidates per query the filter looks at"),
    queries: str = typer.Option("all", help="all, train or held-out: the deterministic query split "
                                            "(BLAKE2b of the query id) the Cosine Adapter trains on"),
    held_out: float = typer.Option(0.3, help="fraction of queries in the held-out part"),
    device: str = typer.Option("cpu", help="where exact scoring runs: cpu, cuda, cuda:N"),
) -> None:
    """Evaluate retrievers on a dataset and print one table."""
    from retr.eval.datasets import load_dataset
    from retr.eval.harness import evaluate as run_eval, table

    data = load_dataset(dataset, split=split)
    if queries != "all":
        from retr.retriever.relevance_filter import split_dataset

        data = split_dataset(data, queries, held_out)
    results = run_eval(data, retriever, k=k, metrics=metric, out=out, filter=filter_spec, filter_depth=filter_depth,
                       device=device)
    typer.echo(json.dumps([r.to_dict() for r in results], indent=2) if as_json else table(results))


@app.command(name="train-filter")
def train_filter(
    index_dir: Path = typer.Argument(..., metavar="INDEX", help="a saved dense index"),
    dataset: Path = typer.Argument(..., help="BEIR-layout folder with the index's corpus, queries and qrels"),
    family: str = typer.Option("linear", help="mapping family: linear, sqrt or power"),
    depth: int = typer.Option(100, help="candidates per training query (the labelled pairs)"),
    held_out: float = typer.Option(0.3, help="fraction of queries kept out of training (BLAKE2b of the query id)"),
    epochs: int = typer.Option(100, help="full-batch training epochs"),
    out: Optional[Path] = typer.Option(None, help="adapter folder (default: INDEX/adapter)"),
    split: str = typer.Option("test", help="qrels split"),
) -> None:
    """Train a Cosine Adapter relevance filter on a dataset's train queries and store it with the index."""
    from retr.eval.datasets import load_dataset
    from retr.retriever.pipeline import open_index
    from retr.retriever.relevance_filter import train_adapter

    adapter = train_adapter(open_index(index_dir), load_dataset(dataset, split=split), family=family, depth=depth,
                            held_out=held_out, epochs=epochs, out=out)
    c = adapter.config
    typer.echo(f"trained a {c['family']} Cosine Adapter on {c['train_queries']} queries ({c['train_pairs']} pairs, "
               f"{c['train_positives']} relevant; loss {c['final_loss']:.4f}) into {adapter.path}")


@app.command(name="train-jpq")
def train_jpq_command(
    index_dir: Path = typer.Argument(..., metavar="INDEX", help="a saved pq index (nbits=8) over a dense encoder"),
    dataset: Path = typer.Argument(..., help="BEIR-layout folder with the index's corpus, queries and qrels"),
    out: Path = typer.Option(..., help="the jpq index directory to write"),
    held_out: float = typer.Option(0.5, help="fraction of queries kept out of training (BLAKE2b of the query id)"),
    epochs: int = typer.Option(6, help="passes over the training (query, relevant document) pairs"),
    lr_encoder: float = typer.Option(5e-6, help="query encoder learning rate"),
    lr_centroids: float = typer.Option(2e-4, help="centroid embedding learning rate"),
    device: str = typer.Option("cpu", help="torch device for training"),
    split: str = typer.Option("test", help="qrels split"),
) -> None:
    """Train JPQ (query encoder + PQ centroids, document codes fixed) on the train queries; write a jpq index."""
    from retr.eval.datasets import load_dataset
    from retr.quantizers.jpq import JPQSettings, train_jpq
    from retr.retriever.pipeline import open_index
    from retr.retriever.relevance_filter import split_dataset

    train = split_dataset(load_dataset(dataset, split=split), "train", held_out)
    settings = JPQSettings(epochs=epochs, lr_encoder=lr_encoder, lr_centroids=lr_centroids, device=device)
    trained = train_jpq(open_index(index_dir), train, settings)
    trained.index.training["held_out"] = held_out
    trained.save(out)
    losses = trained.index.training["epoch_losses"]
    typer.echo(f"trained JPQ on {trained.index.training['train_queries']} queries "
               f"(loss {losses[0]:.4f} -> {losses[-1]:.4f}) into {out}; evaluate with "
               f"`retr eval {dataset} -r {out} --queries held-out --held-out {held_out}`")


@app.command(name="pretrain-dupmae")
def pretrain_dupmae(
    model: str = typer.Argument(..., help="BERT-style masked-LM checkpoint: Hub name, local path or splade-tiny"),
    out: Path = typer.Argument(..., help="checkpoint folder to write (loads as dupmae:OUT)"),
    corpus: List[Path] = typer.Argument(..., help="BEIR folders or corpus files whose document texts to train on"),
    steps: int = typer.Option(1000, help="optimizer steps"),
    batch_size: int = typer.Option(32, help="texts per step"),
    max_length: int = typer.Option(128, help="tokens per text"),
    lr: float = typer.Option(1e-4, help="peak learning rate (linear warm-up and decay)"),
    bow_weight: float = typer.Option(1.0, help="weight of the bag-of-words loss"),
    device: str = typer.Option("", help="cuda, cpu, ... (default: cuda when available)"),
) -> None:
    """DupMAE pre-training: masked encoder, [CLS]-conditioned decoder, bag-of-words loss."""
    from retr.retriever.dupmae_pretrain import collection_texts, pretrain_dupmae as run

    record = run(model, collection_texts(corpus), out, steps=steps, batch_size=batch_size, max_length=max_length,
                 lr=lr, bow_weight=bow_weight, device=device)
    typer.echo(f"pre-trained {model} for {steps} steps on {record['texts']} texts in {record['seconds']} s "
               f"(loss {record['loss_first']['total']:.3f} -> {record['loss_last']['total']:.3f}) into {out}; "
               f"use it as dupmae:{out}")


@app.command()
def info(index_dir: Path = typer.Argument(..., metavar="INDEX")) -> None:
    """Show an index's manifest (encoder, index, size) after checking its files."""
    from retr.storage import read_manifest

    manifest = read_manifest(index_dir)
    files = manifest.pop("files")
    typer.echo(json.dumps(manifest, indent=2))
    typer.echo(f"{len(files)} files, {sum(f['bytes'] for f in files.values()) / 2**20:.1f} MiB, checksums OK")


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def main() -> None:
    """Entry point: user errors print one line and exit 2, never a traceback."""
    try:
        app()
    except RetrError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
