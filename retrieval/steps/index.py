"""``retrieval index build``: a global feature file -> a searchable index (``.npz``).

The index keeps the feature file's configuration (``Index.config``: the extractor or encoder
configuration recorded by the step that wrote the features, e.g. ``retrieval extract global``), so a
later step (``retrieval serve`` re-extracting an uploaded query, ``retrieval search`` checking a
query file) knows how the database was described. ``retrieval index search`` is the same command as
``retrieval search``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Literal, Optional

from ..config import Config, ConfigError

__all__ = ["IndexConfig", "main"]

Backend = Literal["exact", "faiss-flat", "faiss-ivf", "faiss-ivfpq", "faiss-hnsw"]


@dataclass(frozen=True)
class IndexConfig(Config):
    """``backend``: exact (brute force, BLAS) or a faiss index; ``options``: backend options
    (nlist, nprobe, m, nbits, hnsw_m, ef_search, memory_mb ...; see :mod:`retrieval.index`)."""

    backend: Backend = "exact"
    options: Dict[str, Any] = field(default_factory=dict)


def main(conf: IndexConfig, features: Path, out: Path, info: Optional[dict] = None) -> Path:
    """Build the index of the global feature file ``features`` and write it to ``out``; returns ``out``.
    ``info``, when given, receives count, dim and seconds."""
    from retrieval.features.store import load_global

    from ..index import Index

    start = time.perf_counter()
    ids, vectors, feature_config = load_global(features)
    if len(ids) == 0:
        raise ConfigError(f"{features}: feature file holds no vectors")
    try:
        index = Index(vectors, ids=ids, backend=conf.backend, config=feature_config, **conf.options)
    except ValueError as exc:
        raise ValueError(f"{features}: {exc}") from None
    out = index.save(out)
    if info is not None:
        info.update(count=len(index), dim=index.dim, options=index.options,
                    seconds=round(time.perf_counter() - start, 3))
    return Path(out)
