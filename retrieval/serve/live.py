"""Serving a collection that grows (:mod:`retrieval.indexing.collection`) without a restart.

A :class:`LiveCatalog` holds the :class:`~retrieval.serve.catalog.Catalog` of the newest generation it
has loaded in :attr:`LiveCatalog.current`. A watcher thread reads the collection's manifest generation
every ``poll`` seconds (one small JSON file); when it changed, it reads what was appended since
(``Collection.snapshot(previous=...)``), builds the new generation's catalog (its own index, ids, image
paths, metadata, local stores and search batcher) and swaps it in with one reference assignment. A
request reads ``current`` once and uses that catalog to the end: requests in flight finish on the
old generation, none sees half of each. The catalogs share their upload extractors, open local stores
and recent uploads (:class:`~retrieval.serve.shared.Shared`).

Image files of a collection's rows come from the metadata column ``path`` (the absolute path the add
step recorded), else from an ``images`` folder or a dataset given at start; never from a request.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np

from retrieval.indexing.collection import Collection, Snapshot
from retrieval.datasets.files import images_by_id
from retrieval.serve.catalog import Catalog, appended_to

__all__ = ["LiveCatalog", "catalog_of_snapshot"]

log = logging.getLogger("retrieval.serve")
PathLike = Union[str, os.PathLike]


def catalog_of_snapshot(snapshot: Snapshot, folder: Path, base_paths: Dict[str, Path], dataset=None,
                        previous: Optional[Catalog] = None, extractor=None,
                        source: Optional[dict] = None) -> Catalog:
    """The catalog of one generation: ``base_paths`` (id -> image file, from ``--images`` or a dataset)
    overridden by the rows' recorded ``path`` metadata (of the appended rows only, when ``previous``
    holds the others)."""
    index = snapshot.index
    start = appended_to(previous, index) or 0
    paths = dict(base_paths)
    recorded = snapshot.metadata.columns.get("path")
    if recorded is not None:
        paths.update((str(i), Path(p)) for i, p in zip(index.ids[start:].tolist(), recorded[start:].tolist()) if p)
    config = snapshot.manifest.get("config") or index.config or {}
    return Catalog(index, paths, config, local_store=snapshot.local_stores, dataset=dataset,
                   source={**(source or {}), "collection": str(folder)}, extractor=extractor,
                   metadata=snapshot.metadata, generation=snapshot.generation, previous=previous)


def _warm(catalog: Catalog) -> None:
    """One search of the new index before it is swapped in: what an index builds on its first search
    (the exact backend's bfloat16 copy of the matrix: most of a second at 100k x 320 on a loaded
    machine) is then not paid by the first requests it serves."""
    index = catalog.index
    if len(index):
        index.search(np.ones((1, index.dim), np.float32), k=1)


class LiveCatalog:
    """A collection folder served generation by generation (module docstring): read :attr:`current`
    once per request; :meth:`start` the watcher, :meth:`close` when serving ends."""

    def __init__(self, folder: PathLike, images: Optional[PathLike] = None, dataset=None, extractor=None,
                 poll: float = 0.25):
        self.folder = Path(folder)
        self.poll = float(poll)
        self.collection = Collection.open(self.folder)
        self._base_paths: Dict[str, Path] = {}
        if images is not None:
            if not Path(images).is_dir():
                raise ValueError(f"{images}: no such image folder")
            self._base_paths.update(images_by_id(Path(images)))
        if dataset is not None:
            self._base_paths.update({str(i): Path(p) for i, p in zip(dataset.db_ids, dataset.db_paths)})
            self._base_paths.update({str(i): Path(p) for i, p in zip(dataset.query_ids, dataset.query_paths)})
        self._dataset = dataset
        self._source = {"images": str(images) if images else None, "dataset": getattr(dataset, "name", None)}
        self._snapshot = self.collection.snapshot()
        self.current: Catalog = catalog_of_snapshot(self._snapshot, self.folder, self._base_paths, dataset,
                                                    extractor=extractor, source=self._source)
        self.swaps = 0
        self.last_swap_seconds: Optional[float] = None  # how long loading the last new generation took
        self.last_swap: Optional[dict] = None  # ... split into reading, the catalog and the warm-up search
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._last_error: Optional[str] = None

    def refresh(self) -> bool:
        """Load and swap in the collection's newest generation if it changed; True when it did."""
        with self._refresh_lock:
            if self.collection.generation == self._snapshot.generation:
                return False
            t0 = time.perf_counter()
            snapshot = self.collection.snapshot(previous=self._snapshot)
            t1 = time.perf_counter()
            catalog = catalog_of_snapshot(snapshot, self.folder, self._base_paths, self._dataset,
                                          previous=self.current, source=self._source)
            t2 = time.perf_counter()
            _warm(catalog)
            self._snapshot = snapshot
            self.current = catalog  # the swap: one reference assignment
            t3 = time.perf_counter()
            self.swaps += 1
            self.last_swap_seconds = round(t3 - t0, 4)
            self.last_swap = {"read": round(t1 - t0, 4), "catalog": round(t2 - t1, 4), "warm": round(t3 - t2, 4),
                              "total": self.last_swap_seconds, "generation": snapshot.generation}
            log.info("serving generation %d of %s: %d images (loaded in %.3f s)", snapshot.generation,
                     self.folder, len(catalog.index), self.last_swap_seconds)
            return True

    def _watch(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self.refresh()
                self._last_error = None
            except Exception as exc:  # a damaged or half-written change: keep serving the generation held
                message = f"{type(exc).__name__}: {exc}"
                if message != self._last_error:
                    log.warning("still serving generation %d of %s: the newest cannot be read (%s)",
                                self._snapshot.generation, self.folder, message)
                self._last_error = message

    def start(self) -> "LiveCatalog":
        """Start the watcher thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="collection-watcher", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def close(self) -> None:
        self.stop()
        self.current.close()
