"""Registries that map a name in a spec string to the class that implements it.

A spec is ``name`` or ``name:ITEM,ITEM,...``; an item is ``key=value`` or, first only,
a bare positional value (a model name, say). Values are parsed as int, float or bool
where they look like one. ``dense:sentence-transformers/all-MiniLM-L6-v2,batch_size=64``
and ``hnsw:M=32,ef_search=128`` are specs. Saved indexes name their parts the same way,
so a manifest rebuilds them.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar

from retr.errors import RetrError

T = TypeVar("T")


def _value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            continue
    return text


@dataclass(frozen=True)
class Spec:
    """A parsed spec: a registry name, an optional positional argument, keyword settings."""

    name: str
    positional: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> "Spec":
        text = text.strip()
        if not text:
            raise RetrError("empty spec: give a name such as 'bm25', 'dense:MODEL' or 'flat'")
        name, _, rest = text.partition(":")
        positional, settings = None, {}
        for i, item in enumerate(p for p in rest.split(",") if p.strip()) if rest else ():
            key, eq, value = item.partition("=")
            if eq:
                settings[key.strip()] = _value(value.strip())
            elif i == 0:
                positional = item.strip()
            else:
                raise RetrError(f"spec {text!r}: {item!r} is not key=value")
        return cls(name.strip().lower(), positional, settings)

    def __str__(self) -> str:
        items = ([self.positional] if self.positional else []) + [
            f"{k}={v}" for k, v in self.settings.items()
        ]
        return self.name + (":" + ",".join(items) if items else "")


class Registry(Generic[T]):
    """Names to factories, for one family of parts (encoders, indexes, quantizers)."""

    def __init__(self, family: str, builtins: dict[str, str]) -> None:
        self.family = family
        self._builtins = builtins  # name -> "module:attribute", imported on first use
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def add(factory: Callable[..., T]) -> Callable[..., T]:
            self._entries[name] = factory
            return factory

        return add

    def names(self) -> list[str]:
        return sorted({*self._builtins, *self._entries})

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._entries and name in self._builtins:
            module, _, attr = self._builtins[name].partition(":")
            self._entries[name] = getattr(importlib.import_module(module), attr)
        try:
            return self._entries[name]
        except KeyError:
            raise RetrError(
                f"unknown {self.family} {name!r}; known: {', '.join(self.names())}"
            ) from None

    def changed(self, name: str, config: dict[str, Any]) -> dict[str, Any]:
        """The settings in ``config`` that differ from the defaults of the part ``name``."""
        params = inspect.signature(self.get(name)).parameters
        return {k: v for k, v in config.items() if k not in params or params[k].default != v}

    def describe(self, name: str, config: dict[str, Any]) -> str:
        """A short spec for a part: its name and the settings that differ from the defaults."""
        changed = self.changed(name, config)
        first = changed.pop("model", None)
        return str(Spec(name, first, changed))

    def create(self, spec: "Spec | str", **extra: Any) -> T:
        """Build the part a spec names, with the spec's settings as keyword arguments."""
        spec = Spec.parse(spec) if isinstance(spec, str) else spec
        factory = self.get(spec.name)
        kwargs = dict(spec.settings, **extra)
        args = (spec.positional,) if spec.positional is not None else ()
        check_settings(f"{self.family} {spec.name!r}", factory, kwargs)
        try:
            return factory(*args, **kwargs)
        except TypeError as exc:
            raise RetrError(f"{self.family} spec {str(spec)!r}: {exc}") from None


TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "text"}


def _accepts(annotation: str, default: Any) -> tuple[str, ...]:
    """The plain types a parameter takes, from its annotation text (``int | None``) or else its default."""
    named = tuple(t for t in (part.strip() for part in str(annotation).split("|")) if t in TYPE_WORDS)
    if named or annotation is not inspect.Parameter.empty:
        return named
    return (type(default).__name__,) if type(default).__name__ in TYPE_WORDS else ()


def check_settings(what: str, factory: Callable[..., Any], settings: dict[str, Any]) -> None:
    """Clear errors for settings a factory does not have, or whose value has the wrong type."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    known = [n for n, p in params.items() if n != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL]
    for key, value in settings.items():
        if key not in params:
            listing = f"its settings are: {', '.join(known)}" if known else "it takes no settings"
            raise RetrError(f"{what} has no setting {key!r}; {listing}")
        accepts = _accepts(params[key].annotation, params[key].default)
        if not accepts or value is None:
            continue
        ok = (isinstance(value, bool) and "bool" in accepts) or (not isinstance(value, bool) and (
            (isinstance(value, int) and ("int" in accepts or "float" in accepts))
            or (isinstance(value, float) and "float" in accepts)
            or (isinstance(value, str) and "str" in accepts)))
        if not ok:
            wanted = " or ".join(TYPE_WORDS[t] for t in accepts)
            raise RetrError(f"{what}: setting {key}={value!r} must be {wanted}")


ENCODERS: Registry = Registry(
    "encoder",
    {
        "dense": "retr.retriever.dense:DenseEncoder",
        "bm25": "retr.retriever.bm25:BM25Text",
        "colbert": "retr.retriever.colbert:ColBERTEncoder",
        "splade": "retr.retriever.splade:SpladeEncoder",
        "slim": "retr.retriever.slim:SlimEncoder",
        "dupmae": "retr.retriever.dupmae:DupMAEEncoder",
    },
)
INDEXES: Registry = Registry(
    "index",
    {
        "flat": "retr.indexers.faiss_index:FlatIndex",
        "hnsw": "retr.indexers.faiss_index:HNSWIndex",
        "ivf": "retr.indexers.faiss_index:IVFIndex",
        "lucene": "retr.indexers.lucene:LuceneIndex",
        "csr": "retr.indexers.csr:ExhaustiveSparseIndex",
        "maxsim": "retr.indexers.maxsim:ExactMultiVectorIndex",
        "muvera": "retr.indexers.muvera:MuveraIndex",
        "plaid": "retr.indexers.plaid:PlaidIndex",
        "pq": "retr.indexers.quantized:PQIndex",
        "opq": "retr.indexers.quantized:OPQIndex",
        "ivfpq": "retr.indexers.quantized:IVFPQIndex",
        "jpq": "retr.indexers.quantized:JPQIndex",
        "bebr": "retr.indexers.binary:BEBRIndex",
        "slim": "retr.indexers.slim:SlimIndex",
    },
)
QUANTIZERS: Registry = Registry("quantizer", {
    "residual": "retr.quantizers.residual:ResidualQuantizer",
    "pq": "retr.quantizers.pq:PQQuantizer",
    "opq": "retr.quantizers.pq:OPQQuantizer",
    "ivfpq": "retr.quantizers.pq:IVFPQQuantizer",
    "bebr": "retr.quantizers.bebr:BEBRQuantizer",
})


FILTERS: Registry = Registry("filter", {
    "adapter": "retr.retriever.relevance_filter:CosineAdapter",
    "cosine": "retr.retriever.relevance_filter:ScoreThreshold",
    "topk": "retr.retriever.relevance_filter:TopK",
})


def create_index(spec: "Spec | str", kind: str) -> Any:
    """The index a spec names, for representations of ``kind``.

    An index type that holds several kinds (its ``kinds``; Lucene holds text and sparse
    term weights) is told which one, unless the spec says it.
    """
    spec = Spec.parse(spec) if isinstance(spec, str) else spec
    kinds = getattr(INDEXES.get(spec.name), "kinds", ())
    return INDEXES.create(spec, **({"kind": kind} if kind in kinds and "kind" not in spec.settings else {}))
