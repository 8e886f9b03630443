"""The view-set protocol: multi-view instance retrieval on a turntable dataset (COIL-100).

An *instance* is an object; a *view set* is a run of consecutive azimuths of one object. Each object's
circle of views is cut into ``n_sets`` arcs of equal width (COIL-100: 72 views at 5 degree steps, 6 arcs
of 60 degrees = 12 consecutive views; a missing view just leaves its set one view short).

Protocol (one split, one ``test_views`` = k):

1. Split the objects: seen instances DS (COIL-100 objects 1-50; all training happens on them) and unseen
   instances DU (objects 51-100; never seen in training).
2. Every view set of the split is a query in turn (leave-one-set-out). The query is represented by k
   views drawn from its set without replacement with a seeded generator (``sample_views``: the draw
   depends only on the seed, the object and the set, so it is the same for every model and every rerun).
   A set holding fewer than k views (COIL-100 has 22 missing views) uses all it has.
3. The database is every view set of the split, each represented by *all* its views pooled (or
   ``db_views`` seeded views when given). For a query the database entry of its own set is removed
   from the ranking, so no view of the query set is ever in the database it is searched against;
   the database is therefore "the other sets of every object in the split".
4. Relevant = database sets of the same object (COIL-100: the 5 other arcs).

Descriptors are made by any multi-view model (``features.multiview``); this module only says which
views make which query and database entry, ranks with :class:`retrieval.index.Index` and scores with
:mod:`retrieval.metrics`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Union

import numpy as np

from .files import check_inside
from .folders import read_labels_csv

PathLike = Union[str, os.PathLike]

#: COIL-100 split: seen instances (training and seen-instance retrieval) and unseen instances.
COIL100_SEEN = tuple(range(1, 51))
COIL100_UNSEEN = tuple(range(51, 101))

__all__ = ["ViewCatalog", "ViewSet", "ViewSetBenchmark", "read_view_catalog", "split_view_sets",
           "sample_views", "make_benchmark", "COIL100_SEEN", "COIL100_UNSEEN"]


@dataclass
class ViewCatalog:
    """Every image of a turntable dataset: path, object id and azimuth (degrees), one row each."""

    root: Path
    paths: List[Path]
    object_ids: np.ndarray  # (N,) int64
    azimuths: np.ndarray  # (N,) float64, degrees in [0, 360)

    def __len__(self) -> int:
        return len(self.paths)

    def rows_of(self, objects: Iterable[int]) -> np.ndarray:
        """Row positions of the images of ``objects`` (in catalog order)."""
        return np.flatnonzero(np.isin(self.object_ids, np.asarray(list(objects), dtype=np.int64)))

    def subset(self, rows: Sequence[int]) -> "ViewCatalog":
        rows = np.asarray(rows, dtype=np.int64)
        return ViewCatalog(self.root, [self.paths[i] for i in rows], self.object_ids[rows],
                           self.azimuths[rows])


def read_view_catalog(root: PathLike, labels_file: str = "labels.csv", image_dir: str = "images",
                      check_files: bool = True) -> ViewCatalog:
    """Read ``labels.csv`` (``filename,object_id,azimuth_deg``) of a turntable dataset folder.

    The file is read with :func:`retrieval.datasets.folders.read_labels_csv`. Rows are sorted by
    (object, azimuth). Raises ``FileNotFoundError`` / ``ValueError`` naming the file and line for a
    missing labels file, a malformed row, a duplicate (object, azimuth) or, with ``check_files``, a
    listed image that is not on disk.
    """
    root = Path(root)
    labels_path = root / labels_file
    if not labels_path.is_file():
        raise FileNotFoundError(f"{labels_path}: labels file not found (expected columns "
                                f"filename,object_id,azimuth_deg)")
    header, rows = read_labels_csv(labels_path, ("filename", "object_id", "azimuth_deg"))
    paths: List[Path] = []
    objects: List[int] = []
    azimuths: List[float] = []
    for line_no, fields in rows:
        row = dict(zip(header, fields))
        try:
            obj = int(row["object_id"])
            az = float(row["azimuth_deg"])
        except ValueError:
            raise ValueError(f"{labels_path}:{line_no}: object_id/azimuth_deg not numeric: {row}") from None
        if not np.isfinite(az):
            raise ValueError(f"{labels_path}:{line_no}: azimuth {az} is not finite")
        name = row["filename"].strip()
        if not name:
            raise ValueError(f"{labels_path}:{line_no}: empty filename")
        path = check_inside(name, root / image_dir, f"{labels_path}:{line_no}")
        if not path.is_file() and (root / name).is_file():
            path = check_inside(name, root, f"{labels_path}:{line_no}")
        paths.append(path)
        objects.append(obj)
        azimuths.append(az % 360.0)
    object_ids = np.asarray(objects, dtype=np.int64)
    az = np.asarray(azimuths, dtype=np.float64)
    order = np.lexsort((az, object_ids))
    object_ids, az = object_ids[order], az[order]
    paths = [paths[i] for i in order]
    dup = (np.diff(object_ids) == 0) & (np.diff(az) == 0)
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise ValueError(f"{labels_path}: object {object_ids[i]} has two images at azimuth {az[i]} "
                         f"({paths[i].name}, {paths[i + 1].name})")
    if check_files:
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{labels_path}: {len(missing)} listed images are missing, e.g. "
                                    f"{missing[0]}")
    return ViewCatalog(root, paths, object_ids, az)


@dataclass(frozen=True)
class ViewSet:
    """Consecutive views of one object: ``views`` are catalog rows sorted by azimuth."""

    set_id: str
    object_id: int
    index: int  # arc number around the turntable, 0 .. n_sets-1
    views: np.ndarray = field(compare=False)

    def __len__(self) -> int:
        return len(self.views)


def split_view_sets(catalog: ViewCatalog, objects: Optional[Iterable[int]] = None,
                    n_sets: int = 6) -> List[ViewSet]:
    """Cut each object's circle into ``n_sets`` arcs of ``360 / n_sets`` degrees; arc s holds the views
    with ``s * w <= azimuth < (s + 1) * w``. Every view of the object lands in exactly one set; an arc
    with no views at all is left out. Sets are ordered by (object, arc)."""
    if n_sets < 2:
        raise ValueError(f"n_sets must be >= 2 (one set is the query, the others the database), "
                         f"got {n_sets}")
    objects = sorted(set(int(o) for o in (np.unique(catalog.object_ids) if objects is None
                                               else objects)))
    present = set(np.unique(catalog.object_ids).tolist())
    absent = [o for o in objects if o not in present]
    if absent:
        raise ValueError(f"{catalog.root}: objects {absent[:10]} have no images")
    width = 360.0 / n_sets
    arc = np.minimum((catalog.azimuths // width).astype(np.int64), n_sets - 1)
    sets: List[ViewSet] = []
    for obj in objects:
        rows = np.flatnonzero(catalog.object_ids == obj)
        for s in range(n_sets):
            members = rows[arc[rows] == s]
            if len(members) == 0:
                continue
            members = members[np.argsort(catalog.azimuths[members], kind="stable")]
            sets.append(ViewSet(f"obj{obj}_set{s}", obj, s, members))
    return sets


def sample_views(view_set: ViewSet, k: Optional[int], seed: int) -> np.ndarray:
    """``k`` views of ``view_set`` drawn without replacement (all of them if ``k`` is None or the set
    is smaller), returned in azimuth order. The generator is seeded by (seed, object, arc), so the
    draw for a set does not depend on which other sets are drawn or in which order."""
    n = len(view_set.views)
    if k is None or k >= n:
        return view_set.views.copy()
    if k < 1:
        raise ValueError(f"test_views must be >= 1, got {k}")
    rng = np.random.default_rng([int(seed), int(view_set.object_id), int(view_set.index)])
    pick = np.sort(rng.choice(n, size=k, replace=False))
    return view_set.views[pick]


@dataclass
class ViewSetBenchmark:
    """Queries and database of one split at one ``test_views``: views per entry, ground truth, and the
    database entry each query must not see (its own set)."""

    name: str
    test_views: Optional[int]
    db_ids: List[str]
    db_views: List[np.ndarray]
    db_objects: np.ndarray
    query_ids: List[str]
    query_views: List[np.ndarray]
    query_objects: np.ndarray
    excluded: Dict[str, Set[str]]
    solution: Dict[str, Set[str]]

    def rank(self, query_descriptors: np.ndarray, db_descriptors: np.ndarray, k: int = 100,
             backend: str = "exact") -> Dict[str, List[str]]:
        """Rank the database for every query with :class:`retrieval.index.Index` and drop each
        query's own set: ``{query_id: best-first database ids}`` (at most ``k``)."""
        from retrieval.index import Index

        q = np.ascontiguousarray(query_descriptors, dtype=np.float32)
        d = np.ascontiguousarray(db_descriptors, dtype=np.float32)
        if q.shape[0] != len(self.query_ids) or d.shape[0] != len(self.db_ids):
            raise ValueError(f"{self.name}: got {q.shape[0]} query / {d.shape[0]} database descriptors "
                             f"for {len(self.query_ids)} queries / {len(self.db_ids)} database sets")
        if q.ndim != 2 or d.ndim != 2 or q.shape[1] != d.shape[1]:
            raise ValueError(f"{self.name}: query descriptors {q.shape} and database descriptors "
                             f"{d.shape} do not have the same dimension")
        extra = max((len(v) for v in self.excluded.values()), default=0)
        depth = min(len(self.db_ids), k + extra)
        ranking = Index(d, ids=list(self.db_ids)).search(q, depth)
        out: Dict[str, List[str]] = {}
        for qid, row in zip(self.query_ids, ranking.ids):
            drop = self.excluded.get(qid, set())
            out[qid] = [str(i) for i in row if str(i) not in drop][:k]
        return out

    def summary(self) -> str:
        sizes = [len(v) for v in self.query_views]
        dbs = [len(v) for v in self.db_views]
        return (f"{self.name}: {len(self.query_ids)} queries ({min(sizes)}-{max(sizes)} views), "
                f"{len(self.db_ids)} database sets ({min(dbs)}-{max(dbs)} views), "
                f"{len(set(self.db_objects.tolist()))} objects")


def make_benchmark(sets: Sequence[ViewSet], test_views: Optional[int], seed: int = 0,
                   db_views: Optional[int] = None, name: str = "viewsets",
                   query_sets: Optional[Sequence[str]] = None) -> ViewSetBenchmark:
    """Leave-one-set-out benchmark over ``sets``: every set (or those named in ``query_sets``) is a
    query of ``test_views`` seeded views; the database holds every set with ``db_views`` views (None:
    all), each query excluding its own set. Objects with a single set cannot be queried (no relevant
    entry would remain) and raise ``ValueError``."""
    if not sets:
        raise ValueError(f"{name}: no view sets")
    ids = [s.set_id for s in sets]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{name}: duplicate view-set ids")
    by_object: Dict[int, List[str]] = {}
    for s in sets:
        by_object.setdefault(s.object_id, []).append(s.set_id)
    lonely = [o for o, members in by_object.items() if len(members) < 2]
    if lonely:
        raise ValueError(f"{name}: objects {lonely[:10]} have a single view set; leave-one-set-out "
                         f"needs at least two")
    # database sets use a different stream than queries so that db_views=k and test_views=k never
    # pick the same views by construction
    db_views_list = [sample_views(s, db_views, seed + 1_000_003) for s in sets]
    chosen = sets if query_sets is None else [s for s in sets if s.set_id in set(query_sets)]
    if query_sets is not None and len(chosen) != len(set(query_sets)):
        unknown = sorted(set(query_sets) - set(ids))
        raise ValueError(f"{name}: unknown query sets {unknown[:5]}")
    query_ids = [f"q:{s.set_id}" for s in chosen]
    excluded = {qid: {s.set_id} for qid, s in zip(query_ids, chosen)}
    solution = {qid: {m for m in by_object[s.object_id] if m != s.set_id}
                for qid, s in zip(query_ids, chosen)}
    return ViewSetBenchmark(
        name=name, test_views=test_views, db_ids=ids, db_views=db_views_list,
        db_objects=np.asarray([s.object_id for s in sets], dtype=np.int64),
        query_ids=query_ids, query_views=[sample_views(s, test_views, seed) for s in chosen],
        query_objects=np.asarray([s.object_id for s in chosen], dtype=np.int64),
        excluded=excluded, solution=solution)
