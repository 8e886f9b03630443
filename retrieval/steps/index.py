"""``retrieval index build``: a global feature file -> a searchable index (``.npz``).

The index keeps the feature file's configuration (``Index.config``: the extractor or encoder
configuration recorded by the step that wrote the features, e.g. ``retrieval extract global``), so a
later step (``retrieval serve`` re-extracting an uploaded query, ``retrieval search`` checking a
query file) knows how the database was described. ``retrieval index search`` is the same command as
``retrieval search``.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Literal, Optional

from ..config import Config, ConfigError

__all__ = ["IndexConfig", "main", "register"]

Backend = Literal["exact", "faiss-flat", "faiss-ivf", "faiss-ivfpq", "faiss-hnsw"]


@dataclass(frozen=True)
class IndexConfig(Config):
    """``backend``: exact (brute force, BLAS) or a faiss index; ``options``: backend options
    (nlist, nprobe, m, nbits, hnsw_m, ef_search, memory_mb ...; see :mod:`retrieval.index`);
    ``zero_rows``: what to do with an all-zero vector (an image without keypoints): ``keep`` it (it
    scores 0 against every query, so it ranks last) or ``drop`` it from the index; either is counted
    in a warning naming the images."""

    backend: Backend = "exact"
    options: Dict[str, Any] = field(default_factory=dict)
    zero_rows: Literal["keep", "drop"] = "keep"


def main(conf: IndexConfig, features: Path, out: Path, info: Optional[dict] = None) -> Path:
    """Build the index of the global feature file ``features`` and write it to ``out``; returns ``out``.
    ``info``, when given, receives count, dim and seconds."""
    import numpy as np

    from retrieval.features.store import load_global

    from ..index import Index
    from ..vectors import check_file_rows

    start = time.perf_counter()
    ids, vectors, feature_config = load_global(features)
    if len(ids) == 0:
        raise ConfigError(f"{features}: feature file holds no vectors")
    zero = check_file_rows(features, ids, vectors)
    if zero.size:
        named = ", ".join(repr(ids[i]) for i in zero[:5]) + (" ..." if zero.size > 5 else "")
        done = ("kept: they score 0 against every query (zero_rows=drop leaves them out)" if conf.zero_rows == "keep"
                else "left out of the index (zero_rows=drop)")
        warnings.warn(f"{features}: {zero.size} image(s) have an all-zero vector (no keypoints?): {named}; {done}")
        if conf.zero_rows == "drop":
            keep = np.ones(len(ids), bool)
            keep[zero] = False
            ids, vectors = [i for i, k in zip(ids, keep) if k], vectors[keep]
            if not ids:
                raise ConfigError(f"{features}: every vector is all zero; nothing to index")
    try:
        index = Index(vectors, ids=ids, backend=conf.backend, config=feature_config, zero_rows="keep", **conf.options)
    except ValueError as exc:
        raise ValueError(f"{features}: {exc}") from None
    out = index.save(out)
    if info is not None:
        info.update(count=len(index), dim=index.dim, options=index.options, zero_rows=int(zero.size),
                    seconds=round(time.perf_counter() - start, 3))
    return Path(out)


def register(subparsers) -> None:
    from . import search

    parser = subparsers.add_parser("index", help="build an index from a feature file (and search it)")
    sub = parser.add_subparsers(dest="index_command", metavar="{build,search}", required=True)
    build = sub.add_parser("build", help="build an index from a global feature file (HDF5)")
    build.add_argument("features", help="global feature file (retrieval extract global / retrieval encode)")
    build.add_argument("--out", required=True, help="index file to write (.npz)")
    build.add_argument("--backend", default="exact",
                       help="exact, faiss-flat, faiss-ivf, faiss-ivfpq or faiss-hnsw (default exact)")
    build.add_argument("--zero-rows", choices=("keep", "drop"), default="keep",
                       help="all-zero vectors (images without keypoints): keep them (they score 0 against "
                            "every query) or drop them from the index (default keep; counted either way)")
    build.add_argument("--option", action="append", metavar="KEY=VALUE",
                       help="backend option, repeatable (nlist=, nprobe=, m=, nbits=, hnsw_m=, "
                            "ef_search=, memory_mb= ...)")
    build.set_defaults(func=_build)
    alias = sub.add_parser("search", help="same as 'retrieval search'")
    search.add_arguments(alias)
    alias.set_defaults(func=search.handle)


def _build(args) -> int:
    from ..cli import CLIError, emit_json, parse_options, require_file, require_output, writing
    from ..index import BACKENDS

    if args.backend not in BACKENDS:
        raise CLIError(f"unknown backend {args.backend!r}; choose from {', '.join(BACKENDS)}")
    features = require_file(args.features, "feature file", "hdf5")
    out = require_output(args.out, "index")
    conf = IndexConfig(backend=args.backend, options=parse_options(args.option), zero_rows=args.zero_rows)
    info: dict = {}
    with writing(out, "index"):
        out = main(conf, features, out, info=info)
    emit_json({"index": str(out), "features": str(features), "backend": conf.backend, **info})
    return 0
