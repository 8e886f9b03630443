"""The LanceDB backend (:mod:`retrieval.indexing.lancedb_backend`) behind the ranking stage's API: ids, L2
normalisation and :class:`~retrieval.indexing.ranking.Ranking` results, as :class:`retrieval.indexing.index.Index`.

``retrieval index build FEATURES --backend lancedb --out FOLDER`` writes one; ``retrieval search FOLDER Q.h5``
(and :func:`retrieval.indexing.collection.open_index`) opens it. The folder holds the backend's table and
header plus ``ids.npy`` (row -> id, no pickle) and ``index.json`` (the extractor configuration, normalisation;
checksummed); ids are written before the rows that use them, so a killed add leaves ids without rows (never
returned), never rows without ids.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Hashable, Optional, Sequence, Union

import numpy as np

from retrieval.core.fileio import atomic_write, atomic_write_text, read_json
from retrieval.core.vectors import as_matrix, id_array, l2_normalize_rows
from retrieval.indexing.filtered import allowed_mask
from retrieval.indexing.index_file import load_ids
from retrieval.indexing.ranking import IndexFileError, Ranking

__all__ = ["LanceDBIndex", "is_lancedb_index"]

PathLike = Union[str, os.PathLike]
IDS, META = "ids.npy", "index.json"


def is_lancedb_index(path: PathLike) -> bool:
    return (Path(path) / META).is_file() and (Path(path) / IDS).is_file()


def _digest(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class LanceDBIndex:
    """Search a LanceDB folder as an :class:`~retrieval.indexing.index.Index` is searched."""

    backend = "lancedb"

    def __init__(self, store, ids: np.ndarray, config: dict, normalize: bool):
        self.store, self._ids, self.config, self.normalize = store, ids, dict(config or {}), normalize
        self.dim = store.dim
        self.source = str(store.path)

    @classmethod
    def build(cls, path: PathLike, vectors, ids: Optional[Sequence[Hashable]] = None, options: Optional[dict] = None,
              config: Optional[dict] = None, normalize: bool = True) -> "LanceDBIndex":
        from retrieval.indexing.lancedb_backend import build
        from retrieval.indexing.lancedb_options import LanceDBOptions

        arr = as_matrix(vectors, "database vectors")
        arr = l2_normalize_rows(arr, 0.0, "keep", copy=True) if normalize else arr
        ids = np.arange(len(arr)) if ids is None else id_array(ids)
        if len(ids) != len(arr) or len(set(ids.tolist())) != len(ids):
            raise ValueError(f"{len(ids)} ids for {len(arr)} vectors, or ids not unique")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        atomic_write(path / IDS, lambda fh: np.save(fh, ids, allow_pickle=False))
        body = {"config": dict(config or {}), "normalize": bool(normalize)}
        atomic_write_text(path / META, json.dumps({**body, "sha256": _digest(body)}))
        store = build(arr, path, LanceDBOptions.from_dict(dict(options or {}), where="lancedb options"))
        return cls(store, ids, body["config"], body["normalize"])

    @classmethod
    def open(cls, path: PathLike) -> "LanceDBIndex":
        from retrieval.indexing.lancedb_backend import open_store

        path = Path(path)
        meta = read_json(path / META, "LanceDB index", error=IndexFileError)
        if meta.pop("sha256", None) != _digest(meta):
            raise IndexFileError(path / META, "checksum mismatch: altered or damaged")
        store = open_store(path)
        ids = load_ids(path / IDS)
        if len(ids) < store.next_row:
            raise IndexFileError(path / IDS, f"{len(ids)} ids for {store.next_row} rows; rebuild the index")
        return cls(store, ids[:store.next_row], meta["config"], meta["normalize"])

    @property
    def ids(self) -> np.ndarray:
        return self._ids

    def __len__(self) -> int:
        return int(self.store.table.count_rows())

    def add(self, vectors, ids: Sequence[Hashable]) -> None:
        from retrieval.indexing.lancedb_backend import add

        arr = as_matrix(vectors, "added vectors")
        arr = l2_normalize_rows(arr, 0.0, "keep", copy=True) if self.normalize else arr
        new = id_array(ids)
        if len(new) != len(arr) or set(new.tolist()) & set(self._ids.tolist()):
            raise ValueError("one id per added vector, none already in the index")
        everything = np.concatenate([self._ids, new])
        atomic_write(Path(self.store.path) / IDS, lambda fh: np.save(fh, everything, allow_pickle=False))
        add(self.store, arr)
        self._ids = everything

    def search(self, queries, k: int = 100, query_ids: Optional[Sequence[Hashable]] = None, allowed=None,
               where: Optional[str] = None, **search_options) -> Ranking:
        """Top ``k`` per query (module docstring); ``allowed`` a row mask, ``where`` LanceDB SQL over columns."""
        from retrieval.indexing.lancedb_backend import search

        arr = as_matrix(queries, "query vectors")
        if arr.shape[1] != self.dim:
            raise ValueError(f"query vectors have dimension {arr.shape[1]} but the index {self.source} has "
                             f"dimension {self.dim}")
        arr = l2_normalize_rows(arr, 0.0, "keep", copy=True) if self.normalize else arr
        mask = None if allowed is None else allowed_mask(allowed, self.store.next_row, f" {self.source}")
        options = self.store.options.with_search(**search_options) if search_options else None
        k = int(max(1, min(k, len(self))))
        scores, rows = search(self.store, arr, k, options, allowed=mask, where=where)
        ids = self._ids[np.maximum(rows, 0)]
        if (rows < 0).any():
            ids = ids.copy()
            ids[rows < 0] = -1 if np.issubdtype(ids.dtype, np.integer) else ""
        return Ranking(ids=ids, scores=scores, indices=rows, query_ids=query_ids)
