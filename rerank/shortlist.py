"""The cached shortlist: what re-ranking needs to be re-sorted any number of times without
re-extracting or re-matching anything.

Per query (row): the ``k`` shortlisted database ids in global order with their global scores, the
rest of the global ranking (``tail_ids``, kept behind the shortlist after re-ranking), and any number
of named local scores, e.g. ``"inliers"``, ``"matches"``, ``"ratio"`` (``(Q, k)`` float64; NaN =
not computed yet, so an interrupted scoring run resumes at the first missing row).

Files: ``<name>.npz`` (arrays, no pickle: ids as fixed-width unicode) and ``<name>.json`` (format,
version, configuration, local score names, shapes and a SHA-256 of the arrays). Both are written to
temporary names and renamed, the JSON last; loading checks that the two belong together, so a
half-written, stale (other configuration) or edited cache is refused with a clear error.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Hashable, List, Optional, Sequence, Union

import numpy as np

from retrieval.features.store import FeatureFileError, config_json
from retrieval.core.fileio import atomic_write_text, check_header, digest, read_json, read_npz, save_npz

PathLike = Union[str, os.PathLike]
SHORTLIST_FORMAT = "hybrid-retrieval/shortlist"
FORMAT_VERSION = 1

__all__ = ["Shortlist", "SHORTLIST_FORMAT"]


def _str_array(ids) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.dtype.kind not in "US":
        arr = np.asarray([[str(x) for x in row] for row in arr.tolist()] if arr.ndim == 2
                         else [str(x) for x in arr.tolist()])
    if arr.size == 0:
        arr = arr.astype("<U1")
    return arr.astype(str)


class Shortlist:
    """Shortlists of ``Q`` queries (see the module docstring).

    ``query_ids`` (Q,); ``db_ids`` (Q, k) database ids in global order; ``global_scores`` (Q, k);
    ``tail_ids`` (Q, t) the global ranking after the shortlist (t may be 0); ``local`` name -> (Q, k)
    scores; ``config`` a JSON-able description of how it was made (global features, shortlist size,
    local feature / scorer configuration) checked when a cache is reopened.
    """

    def __init__(self, query_ids: Sequence[Hashable], db_ids, global_scores,
                 tail_ids=None, local: Optional[Dict[str, np.ndarray]] = None, config: Optional[dict] = None):
        self.query_ids: List[str] = [str(q) for q in query_ids]
        if len(set(self.query_ids)) != len(self.query_ids):
            raise ValueError("query ids must be unique")
        self.db_ids = _str_array(db_ids).reshape(len(self.query_ids), -1)
        self.global_scores = np.asarray(global_scores, dtype=np.float64).reshape(self.db_ids.shape)
        if tail_ids is None:
            tail_ids = np.zeros((len(self.query_ids), 0), dtype="<U1")
        self.tail_ids = _str_array(tail_ids).reshape(len(self.query_ids), -1)
        self.local: Dict[str, np.ndarray] = {}
        for name, scores in (local or {}).items():
            self.set_local_scores(name, scores)
        self.config = dict(config or {})

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_ranking(cls, ranking, k: int = 100, query_ids: Optional[Sequence[Hashable]] = None,
                     config: Optional[dict] = None, keep_tail: bool = True) -> "Shortlist":
        """Top ``k`` of a :class:`retrieval.indexing.index.Ranking` (or anything with ``.ids`` / ``.scores``
        (Q, N) best first) as the shortlist, the remaining columns as the tail."""
        ids = np.asarray(ranking.ids)
        scores = np.asarray(ranking.scores, dtype=np.float64)
        if ids.ndim != 2 or ids.shape != scores.shape:
            raise ValueError(f"ranking ids {ids.shape} and scores {scores.shape} must both be (Q, N)")
        if k < 1:
            raise ValueError(f"shortlist size k must be >= 1, got {k}")
        if query_ids is None:
            query_ids = getattr(ranking, "query_ids", None)
            if query_ids is None:
                raise ValueError("the ranking has no query_ids: pass query_ids")
        k = min(int(k), ids.shape[1])
        tail = ids[:, k:] if keep_tail else None
        cfg = dict(config or {})
        cfg.setdefault("k", k)
        return cls(query_ids, ids[:, :k], scores[:, :k], tail, config=cfg)

    # -- shape ---------------------------------------------------------------------------------
    @property
    def num_queries(self) -> int:
        return len(self.query_ids)

    @property
    def k(self) -> int:
        return int(self.db_ids.shape[1])

    def __len__(self) -> int:
        return self.num_queries

    def row(self, query_id: Hashable) -> int:
        try:
            return self.query_ids.index(str(query_id))
        except ValueError:
            raise KeyError(f"query {query_id!r} is not in this shortlist") from None

    # -- local scores --------------------------------------------------------------------------
    def add_local(self, name: str) -> np.ndarray:
        """Create the named local score (all NaN = to compute) unless it exists; returns it."""
        if name not in self.local:
            self.local[name] = np.full(self.db_ids.shape, np.nan)
        return self.local[name]

    def set_local_scores(self, name: str, scores) -> None:
        arr = np.asarray(scores, dtype=np.float64)
        if arr.shape != self.db_ids.shape:
            raise ValueError(f"local scores {name!r} have shape {arr.shape}, the shortlist is {self.db_ids.shape}")
        self.local[name] = arr.copy()

    def set_local(self, name: str, row: int, scores) -> None:
        """Store the (k,) local scores of one query (by row number)."""
        arr = np.asarray(scores, dtype=np.float64).reshape(-1)
        if arr.shape != (self.k,):
            raise ValueError(f"expected {self.k} local scores for query {self.query_ids[row]!r}, got {arr.shape}")
        self.add_local(name)[row] = arr

    def pending(self, name: str) -> List[int]:
        """Rows whose ``name`` scores are not (all) computed yet."""
        if name not in self.local:
            return list(range(self.num_queries))
        return np.nonzero(np.isnan(self.local[name]).any(axis=1))[0].tolist()

    def local_scores(self, name: str) -> np.ndarray:
        """The complete (Q, k) ``name`` scores; an error names the queries still missing."""
        if name not in self.local:
            raise KeyError(f"no local score {name!r} in this shortlist (has: {sorted(self.local)})")
        missing = self.pending(name)
        if missing:
            names = [self.query_ids[i] for i in missing[:5]]
            raise ValueError(f"local score {name!r} is not computed for {len(missing)} queries "
                             f"(e.g. {names}); finish scoring first")
        return self.local[name]

    def score_with(self, scorer, query_features, db_features, name: Optional[str] = None,
                   path: Optional[PathLike] = None, save_every: int = 10, progress: bool = True,
                   engine: str = "local", n_jobs: int = 2, ray_address: Optional[str] = None) -> np.ndarray:
        """Fill the local score ``name`` (default ``scorer.name``) with any
        :class:`~retrieval.rerank.scorer.LocalScorer`, query by query, skipping rows already computed (resume).

        ``query_features`` / ``db_features``: mappings from id to :class:`~retrieval.features.local.LocalFeatures`
        (a dict, or a :class:`~retrieval.features.store.LocalFeatureStore`: anything with ``[id]`` or ``.get(id)``).
        With ``path`` the cache is saved every ``save_every`` queries and at the end. Returns the
        complete (Q, k) scores. ``engine="ray"`` scores the pending queries as Ray tasks (``n_jobs``
        at a time, see :mod:`retrieval.scale.engine`); feature stores are opened by the workers from their
        files, dicts are sent along. The scores do not depend on the engine."""
        from tqdm.auto import tqdm

        from retrieval.features.local_extractors import check_same_kind

        # stores of different descriptor kinds (or a kind the scorer has no weights for) are refused
        # before any work: their scores would be silently meaningless
        kind = check_same_kind(query_features, db_features)
        if kind is not None and hasattr(scorer, "check_kind"):
            scorer.check_kind(kind, getattr(query_features, "path", None))
        name = name or getattr(scorer, "name", "local")
        if engine != "local":
            return self._score_on(engine, scorer, query_features, db_features, name, path, save_every,
                                  progress, n_jobs, ray_address)

        def lookup(features, image_id):
            return features.get(image_id) if hasattr(features, "put") else features[image_id]

        if hasattr(db_features, "put"):
            # a store: each image read once and kept (LRU, DB_MEMORY_BYTES), so that a database image
            # in many queries' shortlists is neither read nor prepared for the matcher again
            db_features = _FeatureMemo(db_features, DB_MEMORY_BYTES)
        rows = self.pending(name)
        self.add_local(name)
        for count, row in enumerate(tqdm(rows, desc=f"local score {name}", disable=not progress, leave=False), 1):
            query = lookup(query_features, self.query_ids[row])
            shortlist = [lookup(db_features, i) for i in self.db_ids[row]]
            self.set_local(name, row, scorer.score(query, shortlist))
            if path is not None and count % save_every == 0:
                self.save(path)
        if path is not None and rows:
            self.save(path)
        return self.local_scores(name)

    def _score_on(self, engine, scorer, query_features, db_features, name, path, save_every, progress,
                  n_jobs, ray_address) -> np.ndarray:
        from retrieval.scale.engine import map_units

        rows = self.pending(name)
        self.add_local(name)
        units = [{"row": row, "query": self.query_ids[row], "db": [str(i) for i in self.db_ids[row]]}
                 for row in rows]
        shared = {"scorer": scorer, "query": _features_source(query_features, {u["query"] for u in units}),
                  "db": _features_source(db_features, {i for u in units for i in u["db"]})}
        finished = [0]

        def keep(i, scores):
            self.set_local(name, units[i]["row"], scores)
            finished[0] += 1
            if path is not None and finished[0] % save_every == 0:
                self.save(path)

        map_units(_score_row, units, engine=engine, n_jobs=n_jobs, shared=shared, ray_address=ray_address,
                  progress=progress, desc=f"local score {name}", on_result=keep)
        if path is not None and rows:
            self.save(path)
        return self.local_scores(name)

    # -- rankings ------------------------------------------------------------------------------
    def predictions(self, order: Optional[np.ndarray] = None) -> Dict[str, List[str]]:
        """``{query_id: [db ids best first]}``: the shortlist in ``order`` ((Q, k) column
        permutation; default the global order) followed by the tail."""
        ids = self.db_ids if order is None else np.take_along_axis(self.db_ids, np.asarray(order), axis=1)
        full = np.concatenate([ids, self.tail_ids], axis=1) if self.tail_ids.shape[1] else ids
        return dict(zip(self.query_ids, full.tolist()))

    # -- files ---------------------------------------------------------------------------------
    @staticmethod
    def paths(path: PathLike):
        path = Path(path)
        base = path.with_suffix("") if path.suffix in (".npz", ".json") else path
        return base.with_name(base.name + ".npz"), base.with_name(base.name + ".json")

    def _arrays(self) -> Dict[str, np.ndarray]:
        arrays = {"query_ids": np.asarray(self.query_ids, dtype=str), "db_ids": self.db_ids,
                  "global_scores": self.global_scores, "tail_ids": self.tail_ids}
        for i, name in enumerate(sorted(self.local)):
            arrays[f"local_{i}"] = self.local[name]
        return arrays

    @staticmethod
    def _digest(arrays: Dict[str, np.ndarray]) -> str:
        """SHA-256 of the arrays alone (no header, no separators: the format's definition)."""
        return digest(arrays, separator="")

    def save(self, path: PathLike) -> Path:
        """Write ``<path>.npz`` + ``<path>.json`` (atomically, the JSON last); returns the npz path."""
        npz_path, json_path = self.paths(path)
        arrays = self._arrays()
        header = {"format": SHORTLIST_FORMAT, "version": FORMAT_VERSION, "config": json.loads(config_json(self.config)),
                  "num_queries": self.num_queries, "k": self.k, "tail": int(self.tail_ids.shape[1]),
                  "local": sorted(self.local), "sha256": self._digest(arrays)}
        save_npz(npz_path, arrays)
        atomic_write_text(json_path, json.dumps(header, indent=1))
        return npz_path

    @classmethod
    def exists(cls, path: PathLike) -> bool:
        return all(p.is_file() for p in cls.paths(path))

    @classmethod
    def load(cls, path: PathLike, expect_config: Optional[dict] = None) -> "Shortlist":
        """Read a cache written by :meth:`save`. Refuses a missing half, another format/version, arrays
        that do not match their header (edited, or from another save), and (with ``expect_config``)
        a cache made with another configuration."""
        npz_path, json_path = cls.paths(path)
        for p in (npz_path, json_path):
            if not p.is_file():
                raise FeatureFileError(p, "shortlist cache file missing")
        header = read_json(json_path, "shortlist header", error=FeatureFileError)
        check_header(json_path, header, SHORTLIST_FORMAT, FORMAT_VERSION, error=FeatureFileError)
        arrays = read_npz(npz_path, "shortlist", error=FeatureFileError, hint="delete it to recompute")
        if cls._digest(arrays) != header.get("sha256"):
            raise FeatureFileError(npz_path, f"arrays do not match {json_path.name} (edited, truncated or from "
                                   "another run); delete both files to recompute")
        if expect_config is not None and config_json(header.get("config")) != config_json(expect_config):
            raise FeatureFileError(json_path, f"made with configuration {config_json(header.get('config'))}, "
                                   f"expected {config_json(expect_config)}; use another cache path or delete it")
        names = list(header.get("local", []))
        local = {name: arrays[f"local_{i}"] for i, name in enumerate(names)}
        return cls(arrays["query_ids"].tolist(), arrays["db_ids"], arrays["global_scores"], arrays["tail_ids"],
                   local=local, config=header.get("config"))

    def __repr__(self) -> str:
        return (f"Shortlist({self.num_queries} queries, k={self.k}, tail={self.tail_ids.shape[1]}, "
                f"local={sorted(self.local)})")


def _features_source(features, needed):
    """What a worker needs to look features up: the file of a store (opened there), else the needed
    entries themselves."""
    root = getattr(features, "root", None)
    if root is not None and hasattr(features, "entries"):  # a features.shards.ShardedStore
        return ("sharded", str(root))
    if hasattr(features, "put") and hasattr(features, "path"):  # a features.store.LocalFeatureStore
        return ("store", str(features.path))
    return ("dict", {i: (features.get(i) if hasattr(features, "put") else features[i]) for i in needed})


#: bytes of database features :meth:`Shortlist.score_with` keeps in memory across queries
DB_MEMORY_BYTES = 2 << 30


class _FeatureMemo:
    """A store's features by id, read once and kept up to ``budget`` bytes (least recently used
    first out)."""

    def __init__(self, store, budget: int):
        from collections import OrderedDict

        self.store, self.budget, self.used = store, int(budget), 0
        self.items: "OrderedDict[str, object]" = OrderedDict()

    def __getitem__(self, image_id: str):
        hit = self.items.get(image_id)
        if hit is not None:
            self.items.move_to_end(image_id)
            return hit
        feats = self.store.get(image_id)
        self.items[image_id] = feats
        self.used += feats.keypoints.nbytes + feats.descriptors.nbytes
        while self.used > self.budget and len(self.items) > 1:
            _, old = self.items.popitem(last=False)
            self.used -= old.keypoints.nbytes + old.descriptors.nbytes
        return feats


_OPENED: Dict[tuple, object] = {}  # per worker process: stores stay open across the queries it scores


def _open_source(source):
    kind, value = source
    if kind == "dict":
        return value
    if source not in _OPENED:
        if kind == "sharded":
            from retrieval.features.shards import ShardedStore

            _OPENED[source] = ShardedStore(value)
        else:
            from retrieval.features.store import LocalFeatureStore

            _OPENED[source] = LocalFeatureStore(value, mode="r")
    return _OPENED[source]


def _lookup(features, image_id: str):
    return features[image_id] if isinstance(features, dict) else features.get(image_id)


def _score_row(unit: dict, shared: dict) -> np.ndarray:
    """One query of :meth:`Shortlist.score_with` on another engine (a worker process)."""
    query_features, db_features = _open_source(shared["query"]), _open_source(shared["db"])
    shortlist = [_lookup(db_features, i) for i in unit["db"]]
    return np.asarray(shared["scorer"].score(_lookup(query_features, unit["query"]), shortlist), dtype=np.float64)
