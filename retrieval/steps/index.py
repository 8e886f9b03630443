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

from retrieval.core.config import Config, ConfigError

__all__ = ["IndexConfig", "main"]

Backend = Literal["exact", "faiss-flat", "faiss-ivf", "faiss-ivfpq", "faiss-hnsw", "lancedb"]


@dataclass(frozen=True)
class IndexConfig(Config):
    """``backend``: exact (brute force, BLAS) or a faiss index; ``options``: backend options
    (nlist, nprobe, m, nbits, hnsw_m, ef_search, memory_mb ...; see :mod:`retrieval.indexing.index`);
    ``zero_rows``: what to do with an all-zero vector (an image without keypoints): ``keep`` it (it
    scores 0 against every query, so it ranks last) or ``drop`` it from the index; either is counted
    in a warning naming the images; ``collection``: write a collection folder
    (:mod:`retrieval.indexing.collection`: add, remove, metadata filters) instead of one index file."""

    backend: Backend = "exact"
    options: Dict[str, Any] = field(default_factory=dict)
    zero_rows: Literal["keep", "drop"] = "keep"
    collection: bool = False


def main(conf: IndexConfig, features: Path, out: Path, info: Optional[dict] = None, labels: Optional[Path] = None,
         images: Optional[Path] = None, local: Optional[Path] = None) -> Path:
    """Build the index of the global feature file ``features`` and write it to ``out``; returns ``out``.
    ``info``, when given, receives count, dim and seconds. A collection (``conf.collection``) also keeps
    the metadata of a ``labels`` CSV and of the image files under ``images``, and a ``local`` store."""
    import numpy as np

    from retrieval.features.store import load_global

    from retrieval.indexing.index import Index
    from retrieval.core.vectors import check_file_rows

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
    if conf.backend == "lancedb":  # an embedded vector database in the folder out (the vectordb extra)
        from retrieval.core.extras import require
        from retrieval.indexing.lancedb_index import LanceDBIndex

        require("vectordb", "lancedb", "the lancedb backend")
        index = LanceDBIndex.build(out, vectors, ids=ids, options=conf.options, config=feature_config)
        if info is not None:
            info.update(count=len(index), dim=index.dim, seconds=round(time.perf_counter() - start, 3))
        return Path(out)
    if conf.collection:
        from retrieval.indexing.collection import Collection

        try:
            coll = Collection.create(out, ids, vectors, backend=conf.backend, options=conf.options,
                                     config=feature_config, metadata=_metadata(ids, labels, images), local_store=local)
        except ValueError as exc:
            raise ValueError(f"{features}: {exc}") from None
        if info is not None:
            info.update(coll.info(), seconds=round(time.perf_counter() - start, 3))
        return Path(out)
    try:
        index = Index(vectors, ids=ids, backend=conf.backend, config=feature_config, zero_rows="keep", **conf.options)
    except ValueError as exc:
        raise ValueError(f"{features}: {exc}") from None
    out = index.save(out)
    if info is not None:
        info.update(count=len(index), dim=index.dim, options=index.options, zero_rows=int(zero.size),
                    seconds=round(time.perf_counter() - start, 3))
    return Path(out)


def _metadata(ids, labels: Optional[Path], images: Optional[Path]):
    """The metadata of a new collection's rows: a labels CSV's columns and, for ids that name an image under
    ``images`` (relative path without suffix, or file stem), its folder, file, path and EXIF date."""
    from retrieval.indexing.metadata import Metadata
    from retrieval.steps.add import image_metadata, labels_metadata

    records = [dict() for _ in ids]
    if images is not None:
        from retrieval.datasets.files import images_by_id

        found = images_by_id(images)
        hits = [(r, found[str(i)]) for r, i in enumerate(ids) if str(i) in found]
        for (r, _), meta in zip(hits, image_metadata([p for _, p in hits], Path(images))):
            records[r].update(meta)
    if labels is not None:
        records = [{**r, **extra} for r, extra in zip(records, labels_metadata(labels, [str(i) for i in ids]))]
    return Metadata.from_records(records)
