"""Query / database splits of labelled datasets.

:func:`every_nth_query` is the COIL protocol of this project: images are put in a fixed order (label,
then azimuth / view, then id, all compared naturally) and every n-th one (starting at ``offset``)
becomes a query. Its positives are the other images with the same label.

With ``db="all"`` (default) the query is searched against all the OTHER images: the database keeps
every image, the query's own image is listed as its ``junk`` (the Oxford convention: removed from the
ranking before scoring, so retrieving itself neither helps nor hurts), and the other queries stay in
the database as ordinary entries. Metrics that ignore junk (plain mAP@k over ``solution()``) must drop
the query's own id from its ranking; :func:`drop_junk` (any dataset) or :func:`exclude_self` does that. With ``db="rest"`` the
queries are taken out of the database altogether (no self-matches possible, 1/n fewer positives).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from retrieval.datasets.dataset import QueryTruth, RetrievalDataset
from retrieval.datasets.files import DatasetError, natural_key
from retrieval.datasets.folders import sortable

__all__ = ["every_nth_query", "listed_queries", "read_query_list", "split_queries", "canonical_order",
           "exclude_self", "drop_junk"]

_ORDER_COLUMNS = ("azimuth_deg", "view", "azimuth")


def canonical_order(dataset: RetrievalDataset, order_by: Optional[str] = "auto") -> List[int]:
    """Database positions sorted by (label, ``order_by`` metadata column, id). ``order_by='auto'``
    uses the first of azimuth_deg / view / azimuth present in ``db_metadata``; None uses only label
    and id."""
    if dataset.db_labels is None:
        raise DatasetError(f"dataset {dataset.name!r} ({dataset.root}) has no database labels")
    if order_by == "auto":
        order_by = next((c for c in _ORDER_COLUMNS if c in dataset.db_metadata), None)
    if order_by is not None and order_by not in dataset.db_metadata:
        raise DatasetError(f"dataset {dataset.name!r}: no metadata column {order_by!r} "
                           f"(has {sorted(dataset.db_metadata)})")
    column = dataset.db_metadata[order_by] if order_by is not None else None
    labels, ids = dataset.db_labels, dataset.db_ids
    return sorted(range(len(ids)), key=lambda i: (natural_key(str(labels[i])),
                                                  sortable(column[i]) if column is not None else (0,),
                                                  natural_key(ids[i])))


def every_nth_query(dataset: RetrievalDataset, n: int = 4, offset: int = 0, db: str = "all",
                    order_by: Optional[str] = "auto") -> RetrievalDataset:
    """Every ``n``-th image (positions ``offset, offset+n, ...`` of :func:`canonical_order`) becomes a
    query; positives = images with the same label other than itself. See the module docstring for
    ``db='all'`` (query image kept, marked junk for itself) versus ``db='rest'``."""
    if n < 1:
        raise ValueError(f"every_nth_query: n must be >= 1, got {n}")
    if not 0 <= offset < n:
        raise ValueError(f"every_nth_query: offset must be in [0, {n}), got {offset}")
    if db not in ("all", "rest"):
        raise ValueError(f"every_nth_query: db must be 'all' or 'rest', not {db!r}")
    if not dataset.db_ids:
        raise DatasetError(f"dataset {dataset.name!r} ({dataset.root}) is empty")
    order = canonical_order(dataset, order_by)
    q_pos = order[offset::n]
    if not q_pos:
        raise DatasetError(f"dataset {dataset.name!r}: {len(order)} images give no query for n={n}, "
                           f"offset={offset}")
    return split_queries(dataset, q_pos, db=db, name=f"{dataset.name}-every{n}" + (f"+{offset}" if offset else ""),
                         protocol=f"every_nth_query(n={n}, offset={offset}, db={db!r})", order=order)


def listed_queries(dataset: RetrievalDataset, query_ids: Sequence[str], db: str = "all",
                   source: str = "query list") -> RetrievalDataset:
    """The images named in ``query_ids`` (database ids, e.g. read from a ``queries.txt``) become the
    queries; positives = the other images with the same label; ``db`` as in :func:`every_nth_query`.
    An id that is not an image of the dataset is a :class:`DatasetError` naming ``source``."""
    if db not in ("all", "rest"):
        raise ValueError(f"listed_queries: db must be 'all' or 'rest', not {db!r}")
    position = {image_id: i for i, image_id in enumerate(dataset.db_ids)}
    unknown = [q for q in query_ids if q not in position]
    if unknown:
        raise DatasetError(f"{source}: {len(unknown)} listed queries are not images of {dataset.root}, "
                           f"e.g. {unknown[0]!r} (ids look like {dataset.db_ids[0]!r})")
    if not query_ids:
        raise DatasetError(f"{source}: lists no query")
    q_pos = list(dict.fromkeys(position[q] for q in query_ids))
    return split_queries(dataset, q_pos, db=db, name=f"{dataset.name}-listed", protocol=f"queries from {source}")


def read_query_list(path) -> List[str]:
    """Image ids one a line (``#`` comments and blank lines skipped; an image extension is dropped,
    so ``cat/001.jpg`` and ``cat/001`` name the same image)."""
    from pathlib import Path

    from retrieval.datasets.files import IMAGE_EXTENSIONS

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such query list")
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        p = Path(line)
        out.append(p.with_suffix("").as_posix() if p.suffix.lower() in IMAGE_EXTENSIONS else p.as_posix())
    return out


def split_queries(dataset: RetrievalDataset, q_pos: Sequence[int], db: str = "all", name: Optional[str] = None,
                  protocol: str = "", order: Optional[Sequence[int]] = None) -> RetrievalDataset:
    """Database positions ``q_pos`` become queries (positives: same label, not itself); ``db='all'``
    keeps every image in the database (the query's own image as its junk), ``'rest'`` removes the
    queries from it. ``order``: database order (default :func:`canonical_order`)."""
    if dataset.db_labels is None:
        raise DatasetError(f"dataset {dataset.name!r} ({dataset.root}) has no database labels")
    order = canonical_order(dataset, "auto") if order is None else list(order)
    q_set = set(q_pos)
    d_pos = list(order) if db == "all" else [i for i in order if i not in q_set]
    labels = dataset.db_labels
    members: Dict[str, set] = {}
    for i in d_pos:
        members.setdefault(labels[i], set()).add(dataset.db_ids[i])
    truth = {}
    for i in q_pos:
        qid = dataset.db_ids[i]
        positives = members.get(labels[i], set()) - {qid}
        truth[qid] = QueryTruth(positives=positives, junk={qid} if db == "all" else set())

    def take(values: Optional[Sequence], pos: Sequence[int]):
        return None if values is None else [values[i] for i in pos]

    return RetrievalDataset(
        name=name or dataset.name, root=dataset.root,
        db_ids=take(dataset.db_ids, d_pos), db_paths=take(dataset.db_paths, d_pos),
        query_ids=take(dataset.db_ids, q_pos), query_paths=take(dataset.db_paths, q_pos),
        ground_truth=truth, db_labels=take(labels, d_pos), query_labels=take(labels, q_pos),
        train_ids=dataset.train_ids, train_paths=dataset.train_paths, train_labels=dataset.train_labels,
        bad_files=list(dataset.bad_files),
        db_metadata={k: take(v, d_pos) for k, v in dataset.db_metadata.items()},
        query_metadata={k: take(v, q_pos) for k, v in dataset.db_metadata.items()},
        metadata={**dataset.metadata, "protocol": protocol})


def exclude_self(predictions: Dict[str, Sequence[str]]) -> Dict[str, List[str]]:
    """Drop each query's own id from its ranked list (for protocols where the query image is also a
    database entry and the metric does not honour junk)."""
    return {qid: [d for d in ranked if d != qid] for qid, ranked in predictions.items()}


def drop_junk(dataset: RetrievalDataset, predictions: Dict[str, Sequence[str]]) -> Dict[str, List[str]]:
    """Remove each query's ``junk`` ids from its ranked list (the Oxford convention: junk neither
    helps nor hurts), so metrics that only look at positives score it correctly. Queries without
    junk keep their list unchanged."""
    out: Dict[str, List[str]] = {}
    for qid, ranked in predictions.items():
        truth = dataset.ground_truth.get(qid)
        junk = truth.junk if truth is not None else None
        out[qid] = [d for d in ranked if d not in junk] if junk else list(ranked)
    return out
