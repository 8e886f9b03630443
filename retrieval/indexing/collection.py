"""A collection that grows: an index in a folder that images are added to and removed from while it is searched.

``Collection.create(folder, ids, vectors, backend=..., metadata=..., local_store=...)`` starts one (the
command line: ``retrieval index build FEATURES --out FOLDER --collection``); ``add`` appends vectors (with
their metadata and local features), ``remove`` removes ids, ``compact`` folds removed rows and added
segments into one, ``retrain`` trains an IVF coarse quantiser again on what the collection holds now.
Every change is all or nothing and one writer works at a time (:mod:`retrieval.indexing.collection_files`
says how); ``snapshot()`` gives readers one whole generation: an :class:`~retrieval.indexing.index.Index`,
the rows' :class:`~retrieval.indexing.metadata.Metadata` and the local-feature stores, searched with
metadata filters applied inside the search. ``refresh(snapshot)`` reads only what changed since.

An add costs writing the added rows (and, for IVF, reading the coarse quantiser to measure drift), not a
rebuild: the exact backend's segments are its vectors; a faiss index is stored with the rows it was built
on and later segments are added to it in memory (faiss ``add``: assignment to the trained lists, no
training) when the collection is opened. A search of the result equals a search of an index rebuilt from
the same rows in the same order (exact: identical rankings).

Drift (IVF). The coarse quantiser was trained on the first rows. Each add measures its rows' mean squared
distance to their nearest centroid; :meth:`Collection.drift` reports the ratio of the added rows' mean to
the training rows' own, over every row held (``ratio``) and over the added rows alone (``added_ratio``).
Added data from the trained distribution keeps them near 1; data of another kind raises them, and recall
at a fixed ``nprobe`` falls as its share grows: above :data:`RETRAIN_RATIO` ``retrieval collection
retrain`` is advised (the threshold is measured by ``retrieval collection bench``, README).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Hashable, Iterator, List, Optional, Sequence, Union

import numpy as np

from retrieval.core.fileio import exclusive_lock
from retrieval.core.vectors import id_array, l2_normalize_rows
from retrieval.indexing.collection_files import (CollectionError, check_entry, collect_garbage, file_entry,
                                                 next_name, read_manifest, read_removed, read_segment, referenced,
                                                 write_manifest, write_removed, write_segment)
from retrieval.indexing.index import Index
from retrieval.indexing.metadata import Metadata
from retrieval.indexing.ranking import Ranking

__all__ = ["Collection", "Snapshot", "CollectionError", "RETRAIN_RATIO", "open_index"]

PathLike = Union[str, os.PathLike]
#: added rows' quantisation error over the training rows' above which a retrain is advised (measured, README)
RETRAIN_RATIO = 2.5
IVF = ("faiss-ivf", "faiss-ivfpq")


def _fault_point(step: str) -> None:
    """Called between the writes of a change; the crash tests stop the process here."""


@dataclass
class Snapshot:
    """One generation of a collection: search it with :meth:`search` (filters by metadata)."""

    generation: int
    index: Index
    metadata: Metadata  # aligned with the index's rows
    local_stores: List[Path]
    manifest: dict
    _all: dict = field(default_factory=dict, repr=False)  # every row read so far (refresh reuses it)

    def search(self, queries, k: int = 100, where=None, query_ids: Optional[Sequence[Hashable]] = None,
               **options) -> Ranking:
        """Top ``k`` for each query among the rows that meet ``where`` (conditions ``COLUMN OP VALUE``)."""
        return self.index.search(queries, k=k, query_ids=query_ids, allowed=self.metadata.mask(where), **options)


class Collection:
    """A collection folder (module docstring). Open one with :meth:`open`, start one with :meth:`create`."""

    def __init__(self, folder: PathLike):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)

    # -- starting ---------------------------------------------------------------------------------
    @classmethod
    def create(cls, folder: PathLike, ids: Sequence[Hashable], vectors, backend: str = "exact",
               options: Optional[dict] = None, config: Optional[dict] = None, metadata: Optional[Metadata] = None,
               local_store: Optional[PathLike] = None, normalize: bool = True) -> "Collection":
        """A new collection in ``folder`` (empty or missing) holding ``vectors`` with ``ids``."""
        folder = Path(folder)
        if folder.exists() and any(folder.iterdir()):
            raise CollectionError(folder, "not empty: a collection starts in an empty or new folder")
        folder.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(folder / ".writer.lock", folder, error=CollectionError):
            index = Index(vectors, ids=ids, backend=backend, normalize=normalize, config=config, zero_rows="keep",
                          **(options or {}))
            rows = _stored(index, vectors)
            meta = metadata if metadata is not None else Metadata(len(index))
            if meta.rows != len(index):
                raise ValueError(f"metadata has {meta.rows} rows for {len(index)} vectors")
            manifest: dict = {"generation": 0, "next_file": 1, "backend": backend, "normalize": bool(normalize),
                              "requested_options": dict(options or {}), "dim": index.dim, "config": index.config,
                              "id_type": "int" if np.issubdtype(index.ids.dtype, np.integer) else "str",
                              "segments": [], "local": [], "index": None, "removed": None, "local_config": None}
            _write_part(folder, manifest, index.ids, rows, meta, local_store)
            if backend != "exact":
                _write_index(folder, manifest, index, 1)
            manifest["drift"] = _trained_error(index, rows) if backend in IVF else None
            write_manifest(folder, {**manifest, "generation": 1, "previous": []})
        return cls(folder)

    @classmethod
    def from_features(cls, folder: PathLike, features: PathLike, **kwargs) -> "Collection":
        """A new collection from a global feature file (``retrieval extract global`` / ``encode``)."""
        from retrieval.features.store import load_global

        ids, vectors, config = load_global(features)
        if not len(ids):
            raise CollectionError(Path(features), "the feature file holds no vectors")
        return cls.create(folder, ids, vectors, config=config, **kwargs)

    @classmethod
    def open(cls, folder: PathLike) -> "Collection":
        return cls(folder)

    # -- reading ----------------------------------------------------------------------------------
    def snapshot(self, verify: bool = False, previous: Optional[Snapshot] = None) -> Snapshot:
        """The current generation. ``previous``: a snapshot of this collection whose rows are reused
        when the new generation only appended segments (what ``serve`` does after an add). A file that
        disappears while it is read (a writer replaced that generation) means reading the new one."""
        for attempt in range(3):
            self.manifest = read_manifest(self.folder)
            try:
                return _load(self.folder, self.manifest, verify, previous)
            except CollectionError as exc:
                if attempt == 2 or "newer generation" not in str(exc):
                    raise
        raise AssertionError("unreachable")

    refresh = snapshot

    @property
    def generation(self) -> int:
        return int(read_manifest(self.folder)["generation"])

    def drift(self) -> Optional[dict]:
        """IVF backends: the added rows' quantisation error against the training rows' (module docstring)."""
        d = read_manifest(self.folder).get("drift")
        if not d:
            return None
        e0, n0, n1 = d["trained_error"], d["trained_rows"], d["added_rows"]
        added = d["added_error"] / n1 / e0 if n1 and e0 else 1.0
        ratio = (n0 + added * n1) / (n0 + n1) if n0 + n1 else 1.0  # every row's error over the training rows'
        return {**d, "added_ratio": round(added, 4), "ratio": round(ratio, 4), "retrain_advised": ratio > RETRAIN_RATIO}

    # -- changing ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _writing(self) -> Iterator[dict]:
        with exclusive_lock(self.folder / ".writer.lock", self.folder, error=CollectionError):
            current = read_manifest(self.folder)
            # a killed writer's files (and generations older than the previous) go before anything is written
            collect_garbage(self.folder, referenced(current) + list(current.get("previous", [])))
            manifest = {**current, "segments": list(current["segments"]), "local": list(current["local"])}
            yield manifest
            _fault_point("before-commit")
            manifest.update(generation=current["generation"] + 1, previous=referenced(current))
            self.manifest = write_manifest(self.folder, manifest)
            _fault_point("after-commit")
            collect_garbage(self.folder, referenced(self.manifest) + referenced(current))

    def add(self, ids: Sequence[Hashable], vectors, metadata: Optional[Metadata] = None,
            local_store: Optional[PathLike] = None, replace: bool = False) -> dict:
        """Append ``vectors`` with ``ids`` (an id already there is refused, or replaced with ``replace``),
        their metadata and their local features (a store file, copied in). Returns what changed."""
        with self._writing() as manifest:
            new_ids = id_array(ids)
            if len(new_ids) and (manifest["id_type"] == "int") != np.issubdtype(new_ids.dtype, np.integer):
                raise ValueError(f"the collection {self.folder} has {manifest['id_type']} ids; the added ids are not")
            index_ids, live = _ids_and_live(self.folder, manifest)
            present = _rows_of(index_ids, live, new_ids)
            if len(present) and not replace:
                raise ValueError(f"{len(present)} id(s) already in the collection {self.folder}, e.g. "
                                 f"{index_ids[present][:5].tolist()}; pass replace=True (--replace) to replace them")
            probe = Index(np.asarray(vectors)[:1] if len(new_ids) else np.zeros((0, manifest["dim"]), np.float32),
                          normalize=manifest["normalize"], zero_rows="keep")  # checks dims, dtype and values
            rows = _stored(probe, vectors, manifest["normalize"])
            if rows.shape[1] != manifest["dim"]:
                raise ValueError(f"added vectors have dimension {rows.shape[1]}, the collection {manifest['dim']}")
            if len(set(new_ids.tolist())) != len(new_ids):
                raise ValueError("added ids must be unique")
            meta = metadata if metadata is not None else Metadata(len(new_ids))
            if meta.rows != len(new_ids):
                raise ValueError(f"metadata has {meta.rows} rows for {len(new_ids)} vectors")
            if len(present):
                _write_removed(self.folder, manifest, present, len(index_ids))
            _fault_point("removed-written")
            _write_part(self.folder, manifest, new_ids, rows, meta, local_store)
            if manifest.get("drift"):
                _count_drift(self.folder, manifest, rows)
        out = {"added": len(new_ids), "replaced": int(len(present)), "generation": self.manifest["generation"],
               "rows": sum(s["rows"] for s in self.manifest["segments"])}
        return {**out, "drift": self.drift()} if self.manifest.get("drift") else out

    def remove(self, ids: Sequence[Hashable]) -> dict:
        """Remove ``ids`` (each must be in the collection; KeyError naming the first unknown ones)."""
        with self._writing() as manifest:
            wanted = id_array(ids)
            index_ids, live = _ids_and_live(self.folder, manifest)
            rows = _rows_of(index_ids, live, wanted)
            found = set(index_ids[rows].tolist())
            unknown = [i for i in wanted.tolist() if i not in found]
            if unknown:
                raise KeyError(f"not in the collection {self.folder}: {unknown[:5]}")
            _write_removed(self.folder, manifest, rows, len(index_ids))
        return {"removed": int(len(rows)), "generation": self.manifest["generation"]}

    def compact(self, retrain: bool = False) -> dict:
        """Fold every segment into one without the removed rows; faiss indexes are rebuilt from the
        trained quantiser (``retrain``: trained again on the rows held now)."""
        with self._writing() as manifest:
            snap = _load(self.folder, manifest, True, None)
            live = ~snap._all["removed"]
            ids, rows, meta = snap._all["ids"][live], snap._all["vectors"][live], snap._all["metadata"].take(live)
            if not len(ids):
                raise ValueError(f"{self.folder}: every row is removed; nothing to compact")
            backend = manifest["backend"]
            if backend == "exact":
                index = None
            elif retrain or backend not in IVF:
                index = Index(rows, ids=ids, backend=backend, normalize=False, config=manifest["config"],
                              zero_rows="keep", **manifest["requested_options"])
            else:
                index = Index.from_parts(backend, snap.index.options, ids[:0], manifest["dim"], normalize=False,
                                         config=manifest["config"], int_ids=manifest["id_type"] == "int",
                                         faiss_index=_emptied(snap.index), zero_rows="keep")
                index.add(rows, ids)
            manifest.update(segments=[], removed=None, index=None)
            _write_part(self.folder, manifest, ids, rows, meta, None)
            if index is not None:
                _write_index(self.folder, manifest, index, 1)
            if backend in IVF:
                manifest["drift"] = _trained_error(index, rows) if retrain else {
                    **manifest["drift"], "added_rows": 0, "added_error": 0.0}
        return {"rows": len(ids), "retrained": bool(retrain), "generation": self.manifest["generation"]}

    def retrain(self) -> dict:
        if self.manifest["backend"] not in IVF:
            raise ValueError(f"{self.folder}: backend {self.manifest['backend']!r} has no coarse quantiser to "
                             "retrain (IVF backends only); 'compact' folds its segments")
        return self.compact(retrain=True)

    def live_ids(self) -> np.ndarray:
        """The ids the collection holds now (reads only the segments' ids)."""
        ids, live = _ids_and_live(self.folder, read_manifest(self.folder))
        return ids[live]

    def info(self) -> dict:
        """Generation, rows, removed rows, segments, local stores, backend and drift."""
        m = read_manifest(self.folder)
        rows = sum(s["rows"] for s in m["segments"])
        removed = m["removed"]["count"] if m.get("removed") else 0
        return {"collection": str(self.folder), "generation": m["generation"], "backend": m["backend"],
                "dim": m["dim"], "rows": rows, "live": rows - removed, "removed": removed,
                "segments": len(m["segments"]), "local_stores": len(m["local"]), "drift": self.drift()}


def open_index(path: PathLike, where=None):
    """(index, allowed rows or None) of an index file, a collection folder or a LanceDB index folder, with the
    filter ``where`` (metadata conditions; collections only) as a row mask."""
    from retrieval.indexing.collection_files import is_collection
    from retrieval.indexing.lancedb_index import LanceDBIndex, is_lancedb_index

    if is_lancedb_index(path) and not where:
        return LanceDBIndex.open(path), None
    if is_collection(path):
        snap = Collection(path).snapshot()
        return snap.index, snap.metadata.mask(where)
    if where:
        raise ValueError(f"{path}: an index file holds no metadata to filter by; build a collection "
                         "(retrieval index build ... --collection) to filter")
    return Index.load(path), None


# ---------------------------------------------------------------------------------------------
def _stored(index: Index, vectors, normalize: Optional[bool] = None) -> np.ndarray:
    """The rows as the collection stores them: float32, unit length where the index normalises."""
    if index.backend == "exact" and normalize is None:
        return index.vectors
    arr = np.ascontiguousarray(vectors, dtype=np.float32)
    norm = index.normalize if normalize is None else normalize
    return l2_normalize_rows(arr, 0.0, "keep", copy=True) if norm and arr.size else arr


def _write_part(folder: Path, manifest: dict, ids, rows, meta: Metadata, local_store) -> None:
    name, manifest["next_file"] = next_name(manifest, "seg-", ".npz")
    write_segment(folder / name, np.asarray(ids), rows, meta)
    _fault_point("segment-written")
    manifest["segments"].append(file_entry(folder, name, rows=len(ids)))
    if local_store is not None:
        import shutil

        from retrieval.core.fileio import atomic_path
        from retrieval.features.store import LocalFeatureStore

        with LocalFeatureStore(local_store, mode="r") as store:
            config = store.config
        if manifest.get("local_config") not in (None, config):
            raise ValueError(f"{local_store}: local features made with {config}, the collection holds "
                             f"{manifest['local_config']}")
        name, manifest["next_file"] = next_name(manifest, "local-", ".h5")
        with atomic_path(folder / name) as tmp:
            shutil.copyfile(local_store, tmp)
        _fault_point("local-written")
        manifest["local"].append(file_entry(folder, name))
        manifest["local_config"] = config


def _write_index(folder: Path, manifest: dict, index: Index, segments: int) -> None:
    name, manifest["next_file"] = next_name(manifest, "index-", ".npz")
    index.save(folder / name)
    manifest["index"] = file_entry(folder, name, segments=segments)


def _write_removed(folder: Path, manifest: dict, rows: np.ndarray, total: int) -> None:
    old = read_removed(check_entry(folder, manifest["removed"], True), total) if manifest.get("removed") else []
    merged = np.union1d(old, rows).astype(np.int64)
    name, manifest["next_file"] = next_name(manifest, "removed-", ".npy")
    write_removed(folder / name, merged)
    manifest["removed"] = file_entry(folder, name, count=int(len(merged)))


def _ids_and_live(folder: Path, manifest: dict):
    """Every row's id (reading only the segments' ids) and which rows are not removed."""
    from retrieval.core.fileio import read_npz

    parts = [read_npz(check_entry(folder, s, False), "collection segment", error=CollectionError, keys=["ids"])["ids"]
             for s in manifest["segments"]]
    ids = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    live = np.ones(len(ids), bool)
    if manifest.get("removed"):
        live[read_removed(check_entry(folder, manifest["removed"], True), len(ids))] = False
    return ids, live


def _rows_of(index_ids: np.ndarray, live: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Live rows whose id is in ``wanted``: a binary search of every id in the sorted ``wanted`` (numpy's isin
    would sort all 100,000 ids to look up 1,000)."""
    if not len(wanted) or not len(index_ids):
        return np.zeros(0, np.int64)
    ordered = np.sort(wanted.astype(index_ids.dtype) if index_ids.dtype.kind in "iu" else wanted)
    pos = np.minimum(np.searchsorted(ordered, index_ids), len(ordered) - 1)
    return np.flatnonzero((ordered[pos] == index_ids) & live)


def _trained_error(index: Index, rows: np.ndarray) -> dict:
    return {"trained_error": _quantisation_error(index._faiss, rows), "trained_rows": len(rows), "added_rows": 0,
            "added_error": 0.0}


def _quantisation_error(faiss_index, rows: np.ndarray) -> float:
    """Mean squared distance of unit rows to their nearest coarse centroid (IVF indexes)."""
    if not len(rows):
        return 0.0
    from retrieval.indexing.faiss_backend import import_faiss

    quantizer = import_faiss().downcast_index(faiss_index.quantizer)
    centroids = quantizer.reconstruct_n(0, quantizer.ntotal)
    distances, _ = quantizer.search(rows, 1)  # inner products with the nearest centroid
    sq = (rows * rows).sum(1) - 2 * distances[:, 0] + (centroids[_[:, 0]] ** 2).sum(1)
    return float(np.maximum(sq, 0).mean())


def _count_drift(folder: Path, manifest: dict, rows: np.ndarray) -> None:
    index = Index.load(check_entry(folder, manifest["index"], False))
    error = _quantisation_error(index._faiss, rows)
    d = manifest["drift"]
    manifest["drift"] = {**d, "added_rows": d["added_rows"] + len(rows),
                         "added_error": d["added_error"] + error * len(rows)}


def _emptied(index: Index):
    from retrieval.indexing.faiss_backend import import_faiss

    copy = import_faiss().clone_index(index._faiss)
    copy.reset()  # keeps the trained quantiser (and PQ codebooks)
    return copy


def _load(folder: Path, manifest: dict, verify: bool, previous: Optional[Snapshot]) -> Snapshot:
    from retrieval.indexing.collection_snapshot import load_snapshot

    return load_snapshot(folder, manifest, verify, previous, Snapshot)
