"""retr: dense, sparse and late-interaction retrieval behind one API.

    import retr
    index = retr.Retriever.build(docs, encoder="dense:all-MiniLM-L6-v2", index="hnsw", out="idx")
    index = retr.open_index("idx")
    hits = index.search("what is a slipstream?", k=5)
"""

__version__ = "0.1.0"

from retr.errors import RetrError
from retr.eval.datasets import Corpus, Dataset, Document, iter_corpus, load_dataset, read_corpus, read_qrels, read_queries
from retr.eval.harness import evaluate, table
from retr.eval.metrics import evaluate_run
from retr.protocols import Encoder, Index, Quantizer
from retr.registry import ENCODERS, FILTERS, INDEXES, QUANTIZERS, Spec
from retr.retriever.fusion import FusedRetriever
from retr.retriever.pipeline import Hit, Retriever, open_index
from retr.retriever.relevance_filter import FilteredRetriever
from retr.retriever.spec import build_retriever
from retr.shards import build_sharded

__all__ = [
    "Corpus", "Dataset", "Document", "ENCODERS", "Encoder", "FILTERS", "FilteredRetriever", "FusedRetriever", "Hit", "INDEXES", "Index",
    "QUANTIZERS", "Quantizer", "RetrError", "Retriever", "Spec", "build_retriever", "build_sharded", "evaluate",
    "evaluate_run", "iter_corpus", "load_dataset", "open_index", "read_corpus", "read_qrels", "read_queries", "table",
]
