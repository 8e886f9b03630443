"""What the server serves: a saved index, the images it was built from, and what else is known about them.

A :class:`Catalog` holds

* the :class:`retrieval.Index` (loaded from its file, which is only read), or one built in memory from a
  global feature file;
* the extractor configuration recorded with the vectors (the index header, else the feature file's), from
  which an uploaded query is described exactly as the database was (:func:`build_extractor`);
* ``id -> image file`` for every image it may show, fixed when it opens: database images and the dataset's
  queries. A request names an id; an id not in that table is a 404. No text of a request ever becomes a
  path;
* optionally the query vectors of a feature file (queries that are not in the index, e.g. Oxford's
  cropped queries), local-feature stores (spatial verification or the ratio test on the shortlist; of
  several, the last one holding an id wins, as a collection's adds replace ids) and a dataset (ground
  truth: positives and junk per query; a labelled database also gives every database image its
  same-label images as positives);
* optionally the rows' :class:`~retrieval.indexing.metadata.Metadata` (a collection's), which a search
  may be restricted by (``where``, applied inside the search) and which the results show.

A catalog is not changed once it serves: a collection that grows is served by swapping in a new catalog
per generation (:mod:`retrieval.serve.live`); what is costly to rebuild (the upload extractors, the open
local stores, recent uploads) is shared between the generations' catalogs. Searching is in
:mod:`retrieval.serve.search`.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

import numpy as np

from retrieval.datasets.files import images_by_id
from retrieval.features.local import LocalFeatures
from retrieval.features.store import config_json, load_global
from retrieval.indexing.index import Index
from retrieval.indexing.metadata import Metadata
from retrieval.serve.shared import Shared, UnsupportedUpload, build_extractor

__all__ = ["Catalog", "Query", "Truth", "build_extractor", "UnsupportedUpload", "FilterError", "UPLOAD_PREFIX",
           "appended_to"]

log = logging.getLogger("retrieval.serve")
PathLike = Union[str, os.PathLike]
UPLOAD_PREFIX = "upload:"


class FilterError(ValueError):
    """A metadata filter that cannot be applied (malformed, an unknown column, no metadata served)."""


@dataclass
class Truth:
    """Ground truth of one query: ``positives`` count as right, ``junk`` is neither right nor wrong."""

    positives: Set[str]
    junk: Set[str]


@dataclass
class Query:
    """One query: ``id`` (a catalog id, or ``upload:<digest>``), its global ``vector``, its local
    features when a local store is served, its ground truth when known."""

    id: str
    kind: str  # "database", "query" or "upload"
    vector: np.ndarray
    local: Optional[LocalFeatures] = None
    truth: Optional[Truth] = None


def appended_to(previous: Optional["Catalog"], index: Index) -> Optional[int]:
    """The previous catalog's row count when ``index`` is its index with rows appended (nothing
    removed), else None."""
    if previous is None or index.removed is not None or previous.index.removed is not None:
        return None
    rows = previous.index.rows
    same = rows <= index.rows and np.array_equal(previous.index.ids, index.ids[:rows])
    return rows if same else None


class Catalog:
    """See the module docstring; build one with :meth:`open`."""

    def __init__(self, index: Index, paths: Dict[str, Path], config: dict,
                 query_vectors: Optional[Dict[str, np.ndarray]] = None,
                 local_store: Union[None, PathLike, Sequence[PathLike]] = None,
                 dataset=None, source: Optional[dict] = None, extractor=None, metadata: Optional[Metadata] = None,
                 generation: Optional[int] = None, previous: Optional["Catalog"] = None):
        """``metadata``: aligned with the index's rows; ``previous``: the catalog of the generation
        before (its extractors, open stores, uploads and fusion are carried over; when ``index`` is
        its index with rows appended, its tables are extended and ``paths`` need only name the new ids)."""
        self.index = index
        self.config = dict(config or {})
        self.source = dict(source or {})
        self.dataset = dataset
        self.metadata = metadata
        self.generation = generation
        if metadata is not None and metadata.rows != index.rows:
            raise ValueError(f"metadata has {metadata.rows} rows for an index of {index.rows}")
        kept = appended_to(previous, index)
        if kept is not None:  # the previous generation plus appended rows: extend its tables (cheap)
            new_ids = [str(i) for i in index.ids[kept:].tolist()]
            self._row = {**previous._row, **{i: kept + r for r, i in enumerate(new_ids)}}
            self.db_ids: List[str] = previous.db_ids + new_ids
        else:
            all_ids = [str(i) for i in index.ids.tolist()]
            live = range(len(all_ids)) if index.removed is None else np.flatnonzero(~index.removed).tolist()
            self._row = {all_ids[r]: r for r in live}  # rows removed (or replaced) are never served
            self.db_ids = list(self._row) if index.removed is not None else all_ids
        self.query_vectors = {str(k): np.asarray(v, np.float32) for k, v in (query_vectors or {}).items()}
        self.query_ids = [q for q in (dataset.query_ids if dataset is not None else self.query_vectors)
                          if str(q) in self.query_vectors or str(q) in self._row]
        self.query_ids = [str(q) for q in self.query_ids]
        # only ids the catalog knows may be served: indexed images and the dataset's queries
        if kept is not None:
            fresh = set(new_ids)
            self._paths = {**previous._paths, **{i: Path(p) for i, p in paths.items() if i in fresh}}
        else:
            known = set(self._row) | set(self.query_ids)
            self._paths = {i: Path(p) for i, p in paths.items() if i in known}
            missing = sum(1 for i in self._row if i not in self._paths)
            if missing and previous is None:
                log.warning("%d of %d indexed images have no image file (shown without a picture)", missing,
                            len(self._row))
        self._labels: Dict[str, str] = {}
        if dataset is not None and dataset.db_labels is not None:
            self._labels = {str(i): str(lab) for i, lab in zip(dataset.db_ids, dataset.db_labels)}
        self._by_label: Dict[str, Set[str]] = {}
        for i, lab in self._labels.items():
            if i in self._row:
                self._by_label.setdefault(lab, set()).add(i)
        self._shared = previous._shared if previous is not None else Shared(extractor)
        if local_store is None:
            stores: List[PathLike] = []
        elif isinstance(local_store, (str, os.PathLike)):
            stores = [local_store]
        else:
            stores = list(local_store)
        # the last store holding an id wins: searched newest first
        self._stores = [self._shared.store(p) for p in reversed(stores)]
        self.local_config: Optional[dict] = self._stores[-1].config if self._stores else None
        self._local_cache: "OrderedDict[str, Optional[LocalFeatures]]" = OrderedDict()
        self._masks: "OrderedDict[Tuple[str, ...], np.ndarray]" = OrderedDict()
        self._masks_lock = threading.Lock()
        from retrieval.serve.batching import SearchBatcher

        self.batcher = SearchBatcher(index)  # concurrent searches share one pass over the vectors
        from retrieval.rerank.fusion import DEFAULT_FUSION

        # the one fusion configuration: the documented default until an experiment's choice is set
        self.fusion = DEFAULT_FUSION["count"]
        self.fusion_source = "default (retrieval.rerank.fusion.DEFAULT_FUSION: no ground truth chose it)"
        if previous is not None:
            self.fusion, self.fusion_source = previous.fusion, previous.fusion_source

    def use_fusion(self, fusion, source: str) -> None:
        """Serve ``fusion`` (a :class:`~retrieval.rerank.fusion.FusionConfig`, e.g. the one an experiment
        chose on all its queries), saying where it comes from."""
        self.fusion, self.fusion_source = fusion, source

    # -- opening ----------------------------------------------------------------------------------
    @classmethod
    def open(cls, index: Optional[PathLike] = None, features: Optional[PathLike] = None,
             images: Optional[PathLike] = None, queries: Optional[PathLike] = None,
             local: Optional[PathLike] = None, dataset=None, extractor=None) -> "Catalog":
        """From an index file and/or a global feature file (at least one), an image folder and/or a
        dataset, optional query features and a local-feature store. The index file is only read.
        ``extractor``: an already built global extractor for uploads (its configuration must be the
        recorded one); by default it is rebuilt from the configuration on the first upload."""
        if index is None and features is None:
            raise ValueError("give an index file, a global feature file, or both")
        feature_config = None
        if index is not None:
            idx = Index.load(index)
            if features is not None:
                _, _, feature_config = load_global(features)
        else:
            ids, vectors, feature_config = load_global(features)
            if not ids:
                raise ValueError(f"{features}: the feature file holds no vectors")
            idx = Index(vectors, ids=ids, config=feature_config)
        config = idx.config or feature_config or {}
        if idx.config and feature_config and config_json(idx.config) != config_json(feature_config):
            raise ValueError(f"{index} was built with extractor configuration {config_json(idx.config)} but "
                             f"{features} holds {config_json(feature_config)}: not the same vectors")
        paths: Dict[str, Path] = {}
        if images is not None:
            root = Path(images)
            if not root.is_dir():
                raise ValueError(f"{root}: no such image folder")
            paths.update(images_by_id(root))
        if dataset is not None:
            paths.update({str(i): Path(p) for i, p in zip(dataset.db_ids, dataset.db_paths)})
            paths.update({str(i): Path(p) for i, p in zip(dataset.query_ids, dataset.query_paths)})
        query_vectors = None
        if queries is not None:
            q_ids, q_vectors, q_config = load_global(queries)
            if config and config_json(q_config) != config_json(config):
                raise ValueError(f"{queries}: query features made with {config_json(q_config)}, the index "
                                 f"with {config_json(config)}")
            if q_vectors.shape[1:] != (idx.dim,):
                raise ValueError(f"{queries}: {q_vectors.shape[1]}-d query vectors for a {idx.dim}-d index")
            query_vectors = dict(zip(q_ids, q_vectors))
        source = {"index": str(index) if index else None, "features": str(features) if features else None,
                  "queries": str(queries) if queries else None, "local": str(local) if local else None,
                  "images": str(images) if images else None,
                  "dataset": getattr(dataset, "name", None)}
        return cls(idx, paths, config, query_vectors=query_vectors, local_store=local, dataset=dataset,
                   source=source, extractor=extractor)

    def close(self) -> None:
        """Close the local stores (shared by every generation's catalog: call once, when serving ends)."""
        self._shared.close()

    # -- ids, vectors, images -----------------------------------------------------------------------
    def __contains__(self, image_id: str) -> bool:
        return image_id in self._row or image_id in self.query_vectors

    def image_path(self, image_id: str) -> Optional[Path]:
        """The file of a known id (None when the id is unknown or has no file)."""
        return self._paths.get(image_id)

    def has_image(self, image_id: str) -> bool:
        return image_id in self._paths

    def vector(self, image_id: str) -> np.ndarray:
        """The stored global vector of a query or database id (KeyError when unknown)."""
        if image_id in self.query_vectors:
            return self.query_vectors[image_id]
        row = self._row[image_id]
        return self.index.vectors[row]

    def kind(self, image_id: str) -> str:
        return "query" if image_id in self.query_vectors else "database"

    # -- ground truth -----------------------------------------------------------------------------
    def truth(self, query_id: str) -> Optional[Truth]:
        """The dataset's ground truth of a query; for a database image of a labelled dataset, the other
        images with its label (itself junk). None when unknown."""
        ds = self.dataset
        if ds is None:
            return None
        t = ds.ground_truth.get(query_id)
        if t is not None and t.usage != "Ignored":
            return Truth({str(x) for x in t.positives}, {str(x) for x in t.junk})
        label = self._labels.get(query_id)
        if label is not None and query_id in self._row:
            return Truth(self._by_label[label] - {query_id}, {query_id})
        return None

    # -- local features ----------------------------------------------------------------------------
    @property
    def has_local(self) -> bool:
        return bool(self._stores)

    def local_features(self, image_id: str) -> Optional[LocalFeatures]:
        """Stored local features of an id (None when no store has them; the last store holding it wins)."""
        if not self._stores:
            return None
        with self._shared.lock:
            if image_id in self._local_cache:
                self._local_cache.move_to_end(image_id)
                return self._local_cache[image_id]
            feats = next((store.get(image_id) for store in self._stores if image_id in store), None)
            self._local_cache[image_id] = feats
            while len(self._local_cache) > 4096:
                self._local_cache.popitem(last=False)
            return feats

    # -- queries ------------------------------------------------------------------------------------
    def query(self, image_id: str) -> Query:
        """A stored id as a query (KeyError when unknown)."""
        if image_id.startswith(UPLOAD_PREFIX):
            with self._shared.lock:
                if image_id not in self._shared.uploads:
                    raise KeyError(image_id)
                return self._shared.uploads[image_id]
        return Query(image_id, self.kind(image_id), self.vector(image_id), self.local_features(image_id),
                     self.truth(image_id))

    def upload_query(self, data: bytes, image: np.ndarray) -> Query:
        """An uploaded image (``data`` its file bytes, ``image`` decoded RGB) described with the index's
        own extractor (and the local store's, when that is SIFT); kept for later /api/matches calls
        (the 32 most recent)."""
        token = UPLOAD_PREFIX + hashlib.sha256(data).hexdigest()[:20]
        shared = self._shared
        with shared.lock:
            if token in shared.uploads:
                shared.uploads.move_to_end(token)
                return shared.uploads[token]
            self._ensure_extractor()
            vector = shared.extractor.extract(image)
            local = None
            from retrieval.features.local_extractors import LOCAL_TYPES, local_extractor

            if self.local_config is not None and self.local_config.get("type") in LOCAL_TYPES:
                if shared.local_extractor is None:
                    shared.local_extractor = local_extractor(dict(self.local_config))
                local = shared.local_extractor.extract(image)
            query = Query(token, "upload", np.asarray(vector, np.float32), local, None)
            shared.uploads[token] = query
            while len(shared.uploads) > 32:
                shared.uploads.popitem(last=False)
        return query

    def _ensure_extractor(self) -> None:
        """Build (once) the global extractor for uploads; the caller holds the lock."""
        self._shared.ensure_extractor(self.config)

    def warm_up(self) -> Optional[str]:
        """Build the upload extractor now (a server calls this in the background at start, so the first
        upload does not wait for it). Returns why uploads are unsupported, or None."""
        try:
            with self._shared.lock:
                self._ensure_extractor()
        except UnsupportedUpload as exc:
            return str(exc)
        return None

    def describe(self) -> dict:
        """What is served, for the page and /api/info."""
        return {"count": len(self.index), "dim": self.index.dim, "backend": self.index.backend,
                "generation": self.generation,
                "metadata": sorted(self.metadata.columns) if self.metadata is not None else None,
                "extractor": self.config, "queries": len(self.query_ids),
                "local": self.local_config, "ground_truth": self.dataset is not None,
                "images": len(self._paths), "source": self.source,
                "fusion": {"label": self.fusion.label, **self.fusion.to_dict(), "source": self.fusion_source}}

    # -- metadata -----------------------------------------------------------------------------------
    def mask(self, where: Sequence[str]) -> Optional[np.ndarray]:
        """The rows meeting every condition of ``where`` (None: no condition), or :class:`FilterError`
        with a one-line message. Recent filters' masks are kept (a page asks for the same one again)."""
        key = tuple(w for w in where if w.strip())
        if not key:
            return None
        if self.metadata is None:
            raise FilterError("this index has no metadata to filter by (serve a collection: retrieval index "
                              "build --collection)")
        with self._masks_lock:
            if key in self._masks:
                self._masks.move_to_end(key)
                return self._masks[key]
        try:
            mask = self.metadata.mask(list(key))
        except ValueError as exc:
            raise FilterError(str(exc)) from None
        if self.index.removed is not None:
            mask = mask & ~self.index.removed
        with self._masks_lock:
            self._masks[key] = mask
            while len(self._masks) > 64:
                self._masks.popitem(last=False)
        return mask

    def record(self, image_id: str) -> Optional[Dict[str, str]]:
        """The metadata of a database id (None without metadata or for an unknown id)."""
        row = self._row.get(image_id)
        return None if self.metadata is None or row is None else self.metadata.record(row)

    def page_of_ids(self, which: str, offset: int, limit: int) -> Tuple[List[str], int]:
        ids = self.query_ids if which == "queries" else self.db_ids
        return ids[offset:offset + limit], len(ids)
