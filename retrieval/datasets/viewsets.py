"""The view-set protocol: multi-view instance retrieval on any set of objects seen from many views.

An *instance* is an object; a *view set* is a run of neighbouring views of one object. The view
geometry is whatever the labels file gives (:func:`read_view_catalog`):

* ``azimuth_deg`` (a turntable, e.g. COIL-100: 72 views at 5 degree steps), optionally with
  ``elevation_deg`` (views on several rings): each object's circle is cut into ``n_sets`` arcs of
  ``360 / n_sets`` degrees, and a set holds the views of every elevation whose azimuth falls in
  its arc (COIL-100, 6 arcs: 12 consecutive views; a missing view leaves its set one view short);
* ``view_index`` only (an ordered sequence such as a video or a capture order): each object's views,
  in that order, are cut into ``n_sets`` runs of (nearly) equal length;
* neither: the views are ordered by file name (natural order) and cut as with ``view_index``.

Protocol (one split, one ``test_views`` = k):

1. Split the objects (:func:`split_objects`): seen instances DS (all training happens on them;
   default: the first half of the object ids in sorted order, COIL-100: 1-50) and unseen instances
   DU (the others; never seen in training). Both are options.
2. Every view set of the split is a query in turn (leave-one-set-out). The query is represented by k
   views drawn from its set without replacement with a seeded generator (``sample_views``: the draw
   depends only on the seed, the object and the set, so it is the same for every model and every rerun).
   A set holding fewer than k views uses all it has.
3. The database is every view set of the split, each represented by *all* its views pooled (or
   ``db_views`` seeded views when given). For a query the database entry of its own set is removed
   from the ranking, so no view of the query set is ever in the database it is searched against.
4. Relevant = database sets of the same object.

Descriptors are made by any multi-view model (``retrieval.features.multiview``); this module only says which
views make which query and database entry, ranks with :class:`retrieval.indexing.index.Index` and scores with
:mod:`retrieval.evaluation.metrics`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import numpy as np

from retrieval.datasets.files import check_inside, natural_key
from retrieval.datasets.folders import read_labels_csv

PathLike = Union[str, os.PathLike]

__all__ = ["ViewCatalog", "ViewSet", "ViewSetBenchmark", "read_view_catalog", "split_view_sets",
           "split_objects", "sample_views", "make_benchmark", "GEOMETRIES"]

#: how a catalog's views are placed: turntable azimuths (with elevation rings) or an ordered index
GEOMETRIES = ("azimuth", "index")


@dataclass
class ViewCatalog:
    """Every image of a multi-view dataset, one row each: path, object id and where the view is.

    ``geometry == "azimuth"``: ``azimuths`` (degrees in [0, 360)) and ``elevations`` (degrees; 0 when
    the labels give none) place each view. ``geometry == "index"``: ``order`` (the view's rank
    within its object, 0-based) does; ``azimuths`` / ``elevations`` are NaN. Rows are sorted by
    object, then by (azimuth, elevation) or by order; ``order`` is always the rank in that sort."""

    root: Path
    paths: List[Path]
    object_ids: np.ndarray  # (N,) int64
    azimuths: np.ndarray  # (N,) float64
    elevations: np.ndarray = None  # (N,) float64
    order: np.ndarray = None  # (N,) int64
    geometry: str = "azimuth"

    def __post_init__(self) -> None:
        n = len(self.paths)
        if self.elevations is None:
            self.elevations = np.zeros(n) if self.geometry == "azimuth" else np.full(n, np.nan)
        if self.order is None:
            self.order = _rank_within(self.object_ids)

    def __len__(self) -> int:
        return len(self.paths)

    def objects(self) -> List[int]:
        return sorted(int(o) for o in np.unique(self.object_ids))

    def rows_of(self, objects: Iterable[int]) -> np.ndarray:
        """Row positions of the images of ``objects`` (in catalog order)."""
        return np.flatnonzero(np.isin(self.object_ids, np.asarray(list(objects), dtype=np.int64)))

    def subset(self, rows: Sequence[int]) -> "ViewCatalog":
        rows = np.asarray(rows, dtype=np.int64)
        return ViewCatalog(self.root, [self.paths[i] for i in rows], self.object_ids[rows],
                           self.azimuths[rows], self.elevations[rows], _rank_within(self.object_ids[rows]),
                           self.geometry)


def _rank_within(object_ids: np.ndarray) -> np.ndarray:
    """0-based position of each row among the rows of its object (rows sorted by object)."""
    object_ids = np.asarray(object_ids)
    if len(object_ids) == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(object_ids)) + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, len(object_ids)]))
    return np.arange(len(object_ids), dtype=np.int64) - first


def _number(row: dict, column: str, where: str) -> Optional[float]:
    if column not in row:
        return None
    try:
        value = float(row[column])
    except ValueError:
        raise ValueError(f"{where}: {column} {row[column]!r} is not a number") from None
    if not np.isfinite(value):
        raise ValueError(f"{where}: {column} {value} is not finite")
    return value


def read_view_catalog(root: PathLike, labels_file: str = "labels.csv", image_dir: str = "images",
                      check_files: bool = True) -> ViewCatalog:
    """Read ``labels.csv`` of a multi-view dataset folder: columns ``filename,object_id`` and, for
    the geometry (module docstring), ``azimuth_deg`` (optionally with ``elevation_deg``) or
    ``view_index``, or neither (file-name order). Other columns are ignored.

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file (and line) for a missing labels
    file, a malformed row, two images at the same place of one object (same azimuth and elevation,
    or same view index) or, with ``check_files``, a listed image that is not on disk."""
    root = Path(root)
    labels_path = root / labels_file
    if not labels_path.is_file():
        raise FileNotFoundError(f"{labels_path}: labels file not found (expected columns filename,object_id "
                                f"and azimuth_deg [elevation_deg] or view_index)")
    header, rows = read_labels_csv(labels_path, ("filename", "object_id"))
    geometry = "azimuth" if "azimuth_deg" in header else "index"
    if "elevation_deg" in header and geometry != "azimuth":
        raise ValueError(f"{labels_path}: elevation_deg needs an azimuth_deg column")
    paths: List[Path] = []
    objects: List[int] = []
    place: List[Tuple[float, float]] = []
    for line_no, fields in rows:
        row = dict(zip(header, fields))
        where = f"{labels_path}:{line_no}"
        try:
            obj = int(row["object_id"])
        except ValueError:
            raise ValueError(f"{where}: object_id {row['object_id']!r} is not a whole number") from None
        name = row["filename"].strip()
        if not name:
            raise ValueError(f"{where}: empty filename")
        if geometry == "azimuth":
            place.append((_number(row, "azimuth_deg", where) % 360.0, _number(row, "elevation_deg", where) or 0.0))
        elif "view_index" in header:
            place.append((_number(row, "view_index", where), np.nan))
        else:
            place.append((np.nan, np.nan))
        path = check_inside(name, root / image_dir, where)
        if not path.is_file() and (root / name).is_file():
            path = check_inside(name, root, where)
        paths.append(path)
        objects.append(obj)
    object_ids = np.asarray(objects, dtype=np.int64)
    first, second = (np.asarray(c, dtype=np.float64) for c in zip(*place))
    if geometry == "index" and "view_index" not in header:  # file-name order
        first = name_order(paths)
    return build_catalog(root, paths, object_ids, first, second, geometry, str(labels_path), check_files)


def name_order(paths: Sequence[Path]) -> np.ndarray:
    names = sorted(range(len(paths)), key=lambda i: natural_key(paths[i].name))
    order = np.empty(len(paths))
    order[names] = np.arange(len(paths))
    return order


def build_catalog(root: Path, paths: List[Path], object_ids: np.ndarray, first: np.ndarray, second: np.ndarray,
             geometry: str, source: str, check_files: bool = True) -> ViewCatalog:
    """The catalog of images ``paths`` of ``object_ids`` at places ``first`` (azimuth or view order)
    and ``second`` (elevation), sorted by object then place; two images at one place of an object
    are refused naming ``source``."""
    keys = (second, first, object_ids) if geometry == "azimuth" else (first, object_ids)
    order = np.lexsort(keys)
    object_ids, first, second = object_ids[order], first[order], second[order]
    paths = [paths[i] for i in order]
    same = (np.diff(object_ids) == 0) & (np.diff(first) == 0)
    if geometry == "azimuth":
        same &= np.diff(second) == 0
    if same.any():
        i = int(np.flatnonzero(same)[0])
        at = (f"azimuth {first[i]} and elevation {second[i]}" if geometry == "azimuth"
              else f"view_index {first[i]:g}")
        raise ValueError(f"{source}: object {object_ids[i]} has two images at {at} "
                         f"({paths[i].name}, {paths[i + 1].name})")
    if check_files:
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{source}: {len(missing)} listed images are missing, e.g. "
                                    f"{missing[0]}")
    if geometry == "azimuth":
        return ViewCatalog(root, paths, object_ids, first, second, geometry="azimuth")
    return ViewCatalog(root, paths, object_ids, np.full(len(paths), np.nan), geometry="index")


def split_objects(objects: Sequence[int], seen: Sequence[int] = (), unseen: Sequence[int] = (),
                  seen_fraction: float = 0.5) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """(seen, unseen) object ids. Given lists are checked against ``objects`` and kept; a missing
    side is the rest of the objects; with neither, the first ``seen_fraction`` of the sorted ids are
    seen (COIL-100: objects 1-50 seen, 51-100 unseen)."""
    objects = sorted(int(o) for o in objects)
    known = set(objects)
    for name, given in (("seen", seen), ("unseen", unseen)):
        absent = sorted(set(int(o) for o in given) - known)
        if absent:
            raise ValueError(f"{name} objects {absent[:10]} are not in the dataset")
    if seen and unseen and set(seen) & set(unseen):
        raise ValueError(f"objects {sorted(set(seen) & set(unseen))[:10]} are both seen and unseen")
    if not seen and not unseen:
        if not 0 < seen_fraction < 1:
            raise ValueError(f"seen_fraction must be in (0, 1), got {seen_fraction}")
        cut = max(1, min(len(objects) - 1, int(round(seen_fraction * len(objects)))))
        return tuple(objects[:cut]), tuple(objects[cut:])
    if not unseen:
        unseen = [o for o in objects if o not in set(seen)]
    elif not seen:
        seen = [o for o in objects if o not in set(unseen)]
    return tuple(sorted(int(o) for o in seen)), tuple(sorted(int(o) for o in unseen))


@dataclass(frozen=True)
class ViewSet:
    """Neighbouring views of one object: ``views`` are catalog rows in place order."""

    set_id: str
    object_id: int
    index: int  # set number within the object (azimuth arc or run of the order), 0 .. n_sets-1
    views: np.ndarray = field(compare=False)

    def __len__(self) -> int:
        return len(self.views)


def split_view_sets(catalog: ViewCatalog, objects: Optional[Iterable[int]] = None,
                    n_sets: int = 6) -> List[ViewSet]:
    """Cut each object's views into ``n_sets`` sets of neighbouring views (module docstring).

    Azimuth geometry: arc s holds the views (of every elevation) with ``s * w <= azimuth < (s + 1) *
    w``, ``w = 360 / n_sets``; an arc with no views is left out. Index geometry: the object's n views
    in order, the i-th going to set ``floor(i * n_sets / n)``. Every view lands in exactly one set;
    sets are ordered by (object, set number), their views by place."""
    if n_sets < 2:
        raise ValueError(f"n_sets must be >= 2 (one set is the query, the others the database), "
                         f"got {n_sets}")
    objects = sorted(set(int(o) for o in (np.unique(catalog.object_ids) if objects is None
                                               else objects)))
    present = set(np.unique(catalog.object_ids).tolist())
    absent = [o for o in objects if o not in present]
    if absent:
        raise ValueError(f"{catalog.root}: objects {absent[:10]} have no images")
    sets: List[ViewSet] = []
    for obj in objects:
        rows = np.flatnonzero(catalog.object_ids == obj)  # already in place order
        if catalog.geometry == "azimuth":
            width = 360.0 / n_sets
            part = np.minimum((catalog.azimuths[rows] // width).astype(np.int64), n_sets - 1)
        else:
            part = (np.arange(len(rows)) * n_sets) // len(rows)
        for s in range(n_sets):
            members = rows[part == s]
            if len(members):
                sets.append(ViewSet(f"obj{obj}_set{s}", obj, s, members))
    return sets


def sample_views(view_set: ViewSet, k: Optional[int], seed: int) -> np.ndarray:
    """``k`` views of ``view_set`` drawn without replacement (all of them if ``k`` is None or the set
    is smaller), returned in place order. The generator is seeded by (seed, object, arc), so the
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
        """Rank the database for every query with :class:`retrieval.indexing.index.Index` and drop each
        query's own set: ``{query_id: best-first database ids}`` (at most ``k``)."""
        from retrieval.indexing.index import Index

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
