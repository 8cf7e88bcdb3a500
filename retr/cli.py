"""The ``retr`` command line: index, add / delete / update / compact, search, eval, info. It parses arguments and calls the API."""

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
    shards: int = typer.Option(0, help="write N shard indexes under one manifest (searched as one, exactly)"),
    ray: Optional[str] = typer.Option(None, help="encode on Ray: 'local', 'auto' or HOST:PORT (with --shards)"),
    workers: int = typer.Option(0, help="Ray encoder actors (0: four sharing each GPU, else one per 4 CPUs)"),
) -> None:
    """Encode a corpus and write an index directory (streaming: memory stays at a few chunks)."""
    from retr.eval.datasets import Corpus
    from retr.retriever.pipeline import Retriever
    from retr.retriever.spec import parse_pair

    if on_empty not in ("skip", "error"):
        raise RetrError("--on-empty is 'skip' or 'error'")
    enc, idx = parse_pair(encoder if index_spec is None else f"{encoder}@{index_spec}")
    docs = Corpus(corpus, on_empty=on_empty)  # type: ignore[arg-type]
    if shards or ray:
        from retr.shards import build_sharded

        import time

        start = time.perf_counter()
        retriever = build_sharded(docs, str(enc), str(idx), out, shards or 1, _ray_address(ray), store_text,
                                  chunk_size, workers=workers)
        retriever.build_seconds = time.perf_counter() - start
    else:
        retriever = Retriever.build(docs, str(enc), str(idx), out=out, store_text=store_text, chunk_size=chunk_size)
    typer.echo(f"indexed {len(retriever)} documents with {retriever.name} into {out} "
               f"({_size(out) / 2**20:.1f} MiB, {retriever.build_seconds:.1f} s)")


@app.command()
def add(
    index_dir: Path = typer.Argument(..., metavar="INDEX", help="index directory"),
    corpus: Path = typer.Option(..., help="documents to add: .jsonl(.gz), .tsv or a BEIR folder"),
) -> None:
    """Add documents as a new segment and commit; an id already in the index is an error (use update)."""
    _change(index_dir, lambda r: f"added {r.add(_corpus(corpus))} documents")


@app.command()
def update(
    index_dir: Path = typer.Argument(..., metavar="INDEX", help="index directory"),
    corpus: Path = typer.Option(..., help="documents replacing those with the same ids (others are added)"),
) -> None:
    """Replace documents by id (delete + add in one commit)."""
    _change(index_dir, lambda r: f"updated {r.update(_corpus(corpus))} documents")


@app.command()
def delete(
    index_dir: Path = typer.Argument(..., metavar="INDEX", help="index directory"),
    ids: List[str] = typer.Argument(None, metavar="ID...", help="document ids to delete"),
    ids_file: Optional[Path] = typer.Option(None, "--ids", help="a file of document ids, one per line"),
    missing_ok: bool = typer.Option(False, help="ignore ids not in the index (else nothing is deleted)"),
) -> None:
    """Delete documents by id (tombstones until `retr compact`) and commit."""
    wanted = list(ids or [])
    if ids_file is not None:
        if not ids_file.is_file():
            raise RetrError(f"file not found: {ids_file}")
        wanted += [line.strip() for line in ids_file.read_text().splitlines() if line.strip()]
    if not wanted:
        raise RetrError("name the ids to delete (arguments, or --ids FILE)")
    _change(index_dir, lambda r: f"deleted {r.delete(wanted, missing_ok=missing_ok)} documents")


@app.command()
def compact(
    index_dir: Path = typer.Argument(..., metavar="INDEX", help="index directory"),
    retrain: bool = typer.Option(False, help="train the codec again on the live documents (as a fresh build)"),
) -> None:
    """Rewrite the live documents as one segment: deletes dropped, BM25 statistics exact again."""
    _change(index_dir, lambda r: (r.compact(retrain=retrain), "compacted")[1])


def _ray_address(value: Optional[str]):
    """'local' -> a Ray started here; anything else is an address (auto, HOST:PORT); None -> no Ray."""
    return None if value is None else True if value == "local" else value


def _corpus(path: Path):
    from retr.eval.datasets import Corpus

    return Corpus(path)


def _change(index_dir: Path, change) -> None:
    """Open the index, apply one change, commit it, and say what happened."""
    import time

    from retr.retriever.pipeline import open_index

    start = time.perf_counter()
    retriever = open_index(index_dir)
    done, generation = retriever.apply(change)
    segments = retriever.index.segments
    typer.echo(f"{done} in {time.perf_counter() - start:.1f} s: {index_dir} is at generation {generation}, "
               f"{len(retriever)} documents in {len(segments)} segment(s), "
               f"{sum(s.removed for s in segments)} deleted awaiting compaction")


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
    ray: Optional[str] = typer.Option(None, help="search a sharded index on Ray: 'local', 'auto' or HOST:PORT"),
) -> None:
    """Search an index."""
    from retr.retriever.pipeline import open_index

    retriever = open_index(index_dir, encoder=encoder, device=device, ray=_ray_address(ray))
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
    datasets: List[Path] = typer.Argument(..., metavar="DATASET...",
                                          help="BEIR- or MS MARCO-layout folders, or a folder holding several"),
    retriever: List[str] = typer.Option(
        ..., "--retriever", "-r",
        help="retriever spec (repeat for a table): bm25, dense:MODEL[@INDEX], rrf[A | B], or an index path"),
    split: str = typer.Option("test", help="qrels split"),
    k: int = typer.Option(1000, "-k", help="depth of each run"),
    out: Optional[Path] = typer.Option(None, help="folder for run files and results JSON (OUT/DATASET/RETRIEVER.*)"),
    metric: List[str] = typer.Option(["ndcg@10", "mrr@10", "recall@100", "recall@1000", "map"], "--metric", "-m"),
    fmt: str = typer.Option("table", "--format", help="table, markdown, csv or json"),
    as_json: bool = typer.Option(False, "--json", help="print results as JSON (--format json)"),
    compare: Optional[str] = typer.Option(None, help="baseline retriever (one of the -r specs): differences, paired "
                                                     "t and randomisation tests, Holm-corrected, wins/ties/losses"),
    alpha: float = typer.Option(0.05, help="significance level after Holm's correction"),
    resume: bool = typer.Option(False, help="skip (dataset, retriever) pairs whose results are already in --out"),
    msmarco_runs: bool = typer.Option(False, "--msmarco-runs", help="also write runs as MS MARCO submission TSV"),
    filter_spec: Optional[str] = typer.Option(
        None, "--filter", help="relevance filter on each retriever: adapter[:PATH][,threshold=..], "
                               "cosine:threshold=T, topk:k=N; adds precision/recall/F1 of the returned sets"),
    filter_depth: int = typer.Option(100, help="candidates per query the filter looks at"),
    queries: str = typer.Option("all", help="all, train or held-out: the deterministic query split "
                                            "(BLAKE2b of the query id) the Cosine Adapter trains on"),
    held_out: float = typer.Option(0.3, help="fraction of queries in the held-out part"),
    device: str = typer.Option("cpu", help="where exact scoring runs: cpu, cuda, cuda:N"),
) -> None:
    """Evaluate retrievers on one or more datasets: one table per metric (a column per dataset and the average)."""
    from retr.eval.harness import table

    fmt = "json" if as_json else fmt
    if filter_spec is not None or queries != "all":  # filters and query splits: one dataset, the harness directly
        from retr.eval.datasets import load_dataset
        from retr.eval.harness import evaluate as run_eval
        from retr.retriever.relevance_filter import split_dataset

        if len(datasets) != 1:
            raise RetrError("--filter and --queries take one dataset")
        data = load_dataset(datasets[0], split=split)
        data = split_dataset(data, queries, held_out) if queries != "all" else data
        results = run_eval(data, retriever, k=k, metrics=metric, out=out, filter=filter_spec,
                           filter_depth=filter_depth, device=device)
        typer.echo(json.dumps([r.to_dict() for r in results], indent=2) if fmt == "json" else table(results))
        return
    from retr.eval.leaderboard import run_leaderboard, tables

    board = run_leaderboard(datasets, retriever, k=k, metrics=metric, out=out, resume=resume, split=split,
                            device=device, msmarco=msmarco_runs, baseline=compare, alpha=alpha)
    if fmt == "table" and len(board.datasets) == 1:  # one dataset: the familiar table with build time and q/s
        typer.echo(table(board.results))
        if board.comparisons:
            typer.echo("\n" + tables(board, fmt).split("\n\n")[-1])
        return
    typer.echo(tables(board, fmt))


@app.command(name="compare")
def compare_runs(
    run_a: Path = typer.Argument(..., metavar="RUN_A", help="baseline run: TREC or MS MARCO TSV, from any tool"),
    run_b: Path = typer.Argument(..., metavar="RUN_B"),
    qrels: Path = typer.Option(..., help="judgements: BEIR tsv or TREC qrels"),
    queries_file: Optional[Path] = typer.Option(None, "--queries", help="queries file, to show the texts"),
    metric: List[str] = typer.Option(["ndcg@10", "mrr@10", "recall@100", "map"], "--metric", "-m"),
    top: int = typer.Option(10, help="queries shown that differ most (on the first metric)"),
    alpha: float = typer.Option(0.05, help="significance level after Holm's correction across the metrics"),
) -> None:
    """Compare two run files query by query: differences, paired tests, and the queries that differ most."""
    from retr.eval.datasets import read_qrels, read_queries
    from retr.eval.metrics import per_query
    from retr.eval.runs import read_run
    from retr.eval.significance import compare as compare_pair, correct

    judged = read_qrels(qrels)
    texts = read_queries(queries_file) if queries_file else {}
    a, b = per_query(judged, read_run(run_a), metric), per_query(judged, read_run(run_b), metric)
    found = correct([compare_pair(qrels.stem, m, run_a.name, run_b.name, a[m], b[m]) for m in metric], alpha)
    typer.echo(f"{run_b.name} against {run_a.name} on {found[0].queries} judged queries")
    typer.echo(f"{'metric':<12} {'A':>8} {'B':>8} {'B - A':>8} {'t-test p':>9} {'random. p':>9} {'Holm p':>8}  W/T/L")
    for c in found:
        typer.echo(f"{c.metric:<12} {c.baseline_mean:>8.4f} {c.system_mean:>8.4f} {c.delta:>+8.4f} {c.t_p:>9.3g} "
                   f"{c.randomisation_p:>9.3g} {c.holm_p:>8.3g}{'*' if c.significant else ' '} "
                   f"{c.wins}/{c.ties}/{c.losses}")
    first = metric[0]
    diffs = sorted(a[first], key=lambda q: (-abs(b[first][q] - a[first][q]), q))[:top]
    typer.echo(f"\nqueries that differ most on {first}:")
    for q in diffs:
        typer.echo(f"{q:>10} {a[first][q]:.4f} -> {b[first][q]:.4f} ({b[first][q] - a[first][q]:+.4f})  "
                   f"{texts.get(q, '')[:80]}")


@app.command()
def serve(
    indexes: List[str] = typer.Argument(..., metavar="INDEX...", help="index directories, or NAME=DIR"),
    host: str = typer.Option("127.0.0.1", help="address to bind (loopback unless told otherwise)"),
    port: int = typer.Option(8080, help="port"),
    workers: int = typer.Option(4, help="search threads (one slow query does not hold up the others)"),
    max_body_bytes: int = typer.Option(1 << 20, help="largest request body"),
    max_query_chars: int = typer.Option(2048, help="longest query"),
    max_k: int = typer.Option(1000, help="largest k"),
    max_batch: int = typer.Option(64, help="most queries in one request"),
    timeout: float = typer.Option(30.0, help="seconds a search may take before the request gets 504"),
    device: str = typer.Option("cpu", help="where exact scoring runs: cpu, cuda, cuda:N"),
    mcp: bool = typer.Option(False, "--mcp", help="speak MCP over stdio (a search tool for agents) instead of HTTP"),
    api_key_env: str = typer.Option("RETR_API_KEY", help="environment variable holding the key that POST / PUT / "
                                                          "DELETE /documents need (unset: writes are off)"),
    ray: Optional[str] = typer.Option(None, help="serve sharded indexes from Ray actors: 'local', 'auto' or HOST:PORT"),
) -> None:
    """Serve indexes over HTTP: /search, /documents, /indexes, /health, a search page at /, OpenAPI at /docs."""
    from retr.serve.app import Limits, parse_index_args

    limits = Limits(max_body_bytes, max_query_chars, max_k, max_batch, timeout, workers)
    named = parse_index_args(indexes)
    if mcp:
        from retr.serve.mcp_server import mcp_server

        mcp_server(named, limits, device).run("stdio")
        return
    try:
        import uvicorn
    except ImportError:
        raise RetrError("retr serve needs FastAPI and uvicorn: pip install 'retr[serve]'") from None
    from retr.serve.app import create_app

    app = create_app(named, limits, device, api_key_env, _ray_address(ray))
    typer.echo(f"serving {', '.join(named)} on http://{host}:{port}/ (search page), /docs (API)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


plot_app = typer.Typer(no_args_is_help=True, help="Draw results as PNG and SVG (needs retr[plot]).")
app.add_typer(plot_app, name="plot")


@plot_app.command("delta")
def plot_delta(
    run_a: Path = typer.Argument(..., metavar="RUN_A"),
    run_b: Path = typer.Argument(..., metavar="RUN_B"),
    qrels: Path = typer.Option(..., help="judgements: BEIR tsv or TREC qrels"),
    metric: str = typer.Option("ndcg@10", "--metric", "-m"),
    out: Path = typer.Option(..., help="file to write (.png and .svg beside each other)"),
) -> None:
    """Per-query differences of RUN_B against RUN_A, sorted (a delta plot)."""
    from retr.eval.datasets import read_qrels
    from retr.eval.metrics import per_query
    from retr.eval.plots import delta_plot
    from retr.eval.runs import read_run

    judged = read_qrels(qrels)
    a, b = per_query(judged, read_run(run_a), [metric]), per_query(judged, read_run(run_b), [metric])
    points = delta_plot(a[metric], b[metric], metric, out, (run_a.stem, run_b.stem))
    typer.echo(f"wrote {out.with_suffix('.png')} and .svg: {len(points)} queries")


@plot_app.command("tradeoff")
def plot_tradeoff(
    records: Path = typer.Argument(..., help="JSON records (a list, or one object a line), e.g. bench/results/raw/*"),
    x: str = typer.Option("bytes_per_doc", help="the cost or speed field"),
    y: str = typer.Option("ndcg@10", help="the quality field"),
    label: str = typer.Option("name", help="field naming each point"),
    speed: bool = typer.Option(False, help="x is a speed (higher is better), not a cost"),
    out: Path = typer.Option(..., help="file to write (.png and .svg beside each other)"),
) -> None:
    """Quality against cost or speed, one point per setting, with the Pareto frontier."""
    from retr.eval.plots import tradeoff_plot

    text = records.read_text() if records.is_file() else ""
    if not text:
        raise RetrError(f"no records in {records}")
    rows = json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in text.splitlines() if line.strip()]
    drawn = tradeoff_plot(rows, x, y, out, label, cost=not speed)
    typer.echo(f"wrote {out.with_suffix('.png')} and .svg: {len(drawn['points'])} points, frontier: "
               f"{', '.join(drawn['frontier'])}")


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
