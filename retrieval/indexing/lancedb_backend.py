"""An embedded vector database as a ranking backend: LanceDB (a Lance table in a folder, its ANN index
beside it), with the search contract of :class:`retrieval.indexing.index.Index`: inner product over unit
float32 vectors, ``(scores (Q, k) float32, rows (Q, k) int64)`` best first, missing results row -1 and
score -inf. Chosen against Qdrant's local mode and Milvus Lite by a screen (``docs/vector_db_screen.py``)
and measured against faiss by ``retrieval bench vector-db`` (README, "Vector database backends").

Rows are positions: row ``r`` is the ``r``-th vector given to :func:`build` / :func:`add`; they stay
the same when other rows are removed (never renumbered, never reused), so the Index maps them to ids.

Filters are applied inside the search, never to a top-k afterwards:

* ``allowed``: a boolean mask over rows (True: may be returned) of length :func:`num_rows_total`;
  ``where``: a predicate over the metadata columns (LanceDB SQL, e.g. ``"year >= 2020 AND city = 'Oxford'"``).
* When at most ``exact_below`` rows pass, those rows are scored exactly (read back, numpy BLAS).
* A mask passing more rows (than ``exact_below`` and 20,000) is scored exactly by streaming the table:
  LanceDB takes a mask only as ``row IN (...)``, which at 100,000 rows of 1M held more than 8 GB.
  Broad filters belong in a metadata column (``where``), which the index search prefilters.
* Otherwise LanceDB prefilters (the filter decides which rows the index may visit) and searches at
  least ``nprobes`` lists and as many more as it needs to find k passing rows, so a query gets k
  results whenever k rows pass.

The folder holds the Lance table (LanceDB's own columnar files and manifests) and ``backend.json``
(format, version, dimension, row counter, options; checksummed). lancedb is imported only here (the
``vectordb`` extra).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np

from retrieval.core.fileio import FileFormatError, atomic_write_text, check_header, read_json
from retrieval.indexing.lancedb_options import LanceDBOptions

__all__ = ["LanceDBStore", "import_lancedb", "build", "open_store", "add", "remove", "search",
           "num_rows_total", "BACKEND_FORMAT", "BACKEND_VERSION"]

PathLike = Union[str, os.PathLike]
BACKEND_FORMAT = "hybrid-retrieval/lancedb-backend"
BACKEND_VERSION = 1
TABLE = "vectors"
ROW, VECTOR, DISTANCE = "row", "vector", "_distance"
HEADER = "backend.json"
# rows written to the table per Arrow batch: bounds the copy held besides the caller's array
WRITE_ROWS = 100_000
# queries per LanceDB call: it runs the queries of one call concurrently, each with its own candidate
# and filter buffers (1,000 queries at once with a 50 % filter over 1M rows ran out of 24 GB)
QUERY_CHUNK = 32
# masks passing more rows than this are scored exactly by a streamed scan, not sent as ``row IN (...)``
MASK_IN_LIMIT = 20_000


def import_lancedb():
    from retrieval.core.extras import require

    require("vectordb", "lancedb", "the lancedb backend")
    import lancedb

    return lancedb


@dataclass
class LanceDBStore:
    """An open LanceDB backend: its folder, table, dimension, options and the next row number."""

    path: Path
    table: object
    dim: int
    options: LanceDBOptions
    next_row: int


def _arrow_batch(vectors: np.ndarray, rows: np.ndarray, columns: Optional[Dict[str, np.ndarray]]):
    import pyarrow as pa

    data = {ROW: pa.array(rows, pa.int64()),
            VECTOR: pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), vectors.shape[1])}
    for name, values in (columns or {}).items():
        data[name] = pa.array(np.asarray(values))
    return pa.table(data)


def _batches(vectors: np.ndarray, first_row: int, columns: Optional[Dict[str, np.ndarray]]):
    for lo in range(0, len(vectors), WRITE_ROWS):
        hi = min(len(vectors), lo + WRITE_ROWS)
        part = {name: np.asarray(values)[lo:hi] for name, values in (columns or {}).items()}
        yield _arrow_batch(vectors[lo:hi], np.arange(first_row + lo, first_row + hi, dtype=np.int64), part)


def _check_vectors(vectors, dim: Optional[int], columns: Optional[Dict[str, np.ndarray]]) -> np.ndarray:
    arr = np.ascontiguousarray(vectors, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] == 0 or (dim is not None and arr.shape[1] != dim):
        want = f"(N, {dim})" if dim is not None else "(N, D)"
        raise ValueError(f"vectors must be {want}, got shape {arr.shape}")
    for name, values in (columns or {}).items():
        if name in (ROW, VECTOR) or name.startswith("_"):
            raise ValueError(f"metadata column name {name!r} is reserved")
        if len(values) != len(arr):
            raise ValueError(f"metadata column {name!r} has {len(values)} values for {len(arr)} vectors")
    return arr


def _write_header(store: LanceDBStore) -> None:
    header = {"format": BACKEND_FORMAT, "version": BACKEND_VERSION, "dim": store.dim,
              "next_row": store.next_row, "options": store.options.to_dict()}
    header["sha256"] = hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()
    atomic_write_text(store.path / HEADER, json.dumps(header, indent=1))


def _index_config(opt: LanceDBOptions, n: int, dim: int):
    from lancedb.index import HnswSq, IvfFlat, IvfPq

    # LanceDB trains k-means on sample_rate * num_partitions rows: it refuses fewer rows than lists
    parts = opt.num_partitions
    if parts is not None and parts > n:
        raise ValueError(f"num_partitions={parts} exceeds the {n} vectors to index")
    common = dict(distance_type="dot", num_partitions=parts, max_iterations=opt.max_iterations)
    if opt.index_type == "IVF_PQ":
        sub = opt.num_sub_vectors or max(1, dim // 16)
        if dim % sub:
            raise ValueError(f"num_sub_vectors={sub} must divide the dimension {dim}")
        return IvfPq(num_sub_vectors=sub, **common)
    if opt.index_type == "IVF_HNSW_SQ":
        return HnswSq(m=opt.hnsw_m, ef_construction=opt.ef_construction, **common)
    return IvfFlat(**common)


def build(vectors, path: PathLike, options: Optional[LanceDBOptions] = None,
          columns: Optional[Dict[str, np.ndarray]] = None) -> LanceDBStore:
    """A new backend in the folder ``path`` (created; an existing backend there is replaced) holding the
    (N, D) float32 unit ``vectors`` as rows 0..N-1, with optional metadata ``columns`` (name -> N values)
    for ``where`` predicates, and its ANN index built (``options.index_type``)."""
    lancedb = import_lancedb()
    opt = options or LanceDBOptions()
    arr = _check_vectors(vectors, None, columns)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    db = lancedb.connect(str(path))
    batches = _batches(arr, 0, columns)
    table = db.create_table(TABLE, next(batches), mode="overwrite")
    for batch in batches:
        table.add(batch)
    if opt.index_type != "none" and len(arr):
        table.create_index(VECTOR, config=_index_config(opt, len(arr), arr.shape[1]))
    store = LanceDBStore(path, table, int(arr.shape[1]), opt, len(arr))
    _write_header(store)
    return store


def open_store(path: PathLike) -> LanceDBStore:
    """Open a backend written by :func:`build` (header checked: format, version, checksum)."""
    lancedb = import_lancedb()
    path = Path(path)
    header_path = path / HEADER
    header = read_json(header_path, "lancedb backend header")
    check_header(header_path, header, BACKEND_FORMAT, BACKEND_VERSION)
    body = {key: value for key, value in header.items() if key != "sha256"}
    if header.get("sha256") != hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest():
        raise FileFormatError(header_path, "checksum mismatch: the backend header was altered or damaged")
    try:
        table = lancedb.connect(str(path)).open_table(TABLE)
    except (ValueError, OSError, RuntimeError) as exc:
        raise FileFormatError(path, f"no readable LanceDB table {TABLE!r} ({exc})") from None
    options = LanceDBOptions.from_dict(header["options"], where=str(header_path))
    return LanceDBStore(path, table, int(header["dim"]), options, int(header["next_row"]))


def num_rows_total(store: LanceDBStore) -> int:
    """Rows numbered so far (removed ones included): the length an ``allowed`` mask must have."""
    return store.next_row


def add(store: LanceDBStore, vectors, columns: Optional[Dict[str, np.ndarray]] = None) -> np.ndarray:
    """Append vectors (and their metadata); returns their rows. They are searched at once (LanceDB
    scans rows its index does not cover yet; :func:`reindex` folds them in)."""
    arr = _check_vectors(vectors, store.dim, columns)
    first = store.next_row
    for batch in _batches(arr, first, columns):
        store.table.add(batch)
    store.next_row = first + len(arr)
    _write_header(store)
    return np.arange(first, store.next_row, dtype=np.int64)


def reindex(store: LanceDBStore) -> None:
    """Fold added rows into the ANN index (LanceDB's incremental index update)."""
    if store.options.index_type != "none":
        store.table.optimize()


def remove(store: LanceDBStore, rows) -> int:
    """Delete ``rows`` (never returned again; other rows keep their numbers). Returns the rows left."""
    rows = np.unique(np.asarray(rows, dtype=np.int64))
    if len(rows) and (rows[0] < 0 or rows[-1] >= store.next_row):
        raise ValueError(f"rows to remove must lie in 0..{store.next_row - 1}")
    for lo in range(0, len(rows), 50_000):
        store.table.delete(f"{ROW} IN ({','.join(map(str, rows[lo:lo + 50_000].tolist()))})")
    return store.table.count_rows()


def _filter_expr(allowed: Optional[np.ndarray], where: Optional[str]):
    """The filter as one LanceDB predicate (None: no filter): the mask as ``row IN (passing rows)`` (or
    ``NOT row IN (failing rows)`` when fewer fail), AND the ``where`` predicate."""
    if allowed is None:
        return where or None
    from lancedb.expr import col

    passing = np.flatnonzero(allowed)
    failing = np.flatnonzero(~allowed)
    mask = col(ROW).isin(passing.tolist()) if len(passing) <= len(failing) else ~col(ROW).isin(failing.tolist())
    return f"({mask.to_sql()}) AND ({where})" if where else mask


def _exact_subset(store: LanceDBStore, queries: np.ndarray, k: int, expr) -> Tuple[np.ndarray, np.ndarray]:
    """Exact top k among the rows that pass ``expr`` (read back, one BLAS product)."""
    query = store.table.search().where(expr).select([ROW, VECTOR]).limit(None)
    data = query.to_arrow()
    rows = data[ROW].to_numpy()
    vectors = data[VECTOR].combine_chunks().flatten().to_numpy().reshape(len(rows), store.dim)
    return _top_k(queries @ vectors.T, rows, k)


def _exact_masked_scan(store: LanceDBStore, queries: np.ndarray, k: int, allowed: np.ndarray,
                       where: Optional[str]) -> Tuple[np.ndarray, np.ndarray]:
    """Exact top k among the rows a large mask allows: the table streamed in batches, the mask applied to
    each, running top k merged (LanceDB takes a mask only as ``row IN (...)``, which at 100,000 rows held
    more than 8 GB per search)."""
    best = (np.full((len(queries), k), -np.inf, np.float32), np.full((len(queries), k), -1, np.int64))
    query = store.table.search()
    if where:
        query = query.where(where)
    for batch in query.select([ROW, VECTOR]).limit(None).to_batches():
        batch_rows = batch.column(ROW).to_numpy()
        keep = allowed[batch_rows]
        if not keep.any():
            continue
        vectors = batch.column(VECTOR).flatten().to_numpy().reshape(len(batch_rows), store.dim)[keep]
        scores = np.concatenate([best[0], queries @ vectors.T], axis=1)
        rows = np.concatenate([best[1], np.broadcast_to(batch_rows[keep], (len(queries), int(keep.sum())))], axis=1)
        best = _top_k_rows(scores, rows, k)
    return best


def _top_k_rows(scores: np.ndarray, rows: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Per query, the k best of ``scores`` with their own ``rows`` (both (Q, M)); -inf / -1 stay last."""
    order = np.lexsort((rows, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(rows, order, axis=1)


def _top_k(scores: np.ndarray, rows: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    nq, n = scores.shape
    out_scores = np.full((nq, k), -np.inf, np.float32)
    out_rows = np.full((nq, k), -1, np.int64)
    take = min(k, n)
    if take:
        part = np.argpartition(-scores, take - 1, axis=1)[:, :take] if take < n else np.tile(np.arange(n), (nq, 1))
        part_scores = np.take_along_axis(scores, part, axis=1)
        # best first; equal scores: lower row first
        order = np.lexsort((rows[part], -part_scores), axis=1)
        out_scores[:, :take] = np.take_along_axis(part_scores, order, axis=1)
        out_rows[:, :take] = rows[np.take_along_axis(part, order, axis=1)]
    return out_scores, out_rows


def _count_passing(store: LanceDBStore, allowed: Optional[np.ndarray], where: Optional[str], expr) -> int:
    if where is None and allowed is not None:
        return int(np.count_nonzero(allowed))  # removed rows may still be counted: an upper bound
    return store.table.count_rows(expr if isinstance(expr, str) else expr.to_sql())


def search(store: LanceDBStore, queries, k: int, options: Optional[LanceDBOptions] = None,
           allowed: Optional[np.ndarray] = None, where: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(scores (Q, k) float32, rows (Q, k) int64) of the ``k`` best rows per query by inner product,
    best first, among the rows that pass ``allowed`` (bool mask over :func:`num_rows_total` rows) and
    ``where`` (SQL over the metadata columns). Missing results: row -1, score -inf."""
    opt = options or store.options
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != store.dim:
        raise ValueError(f"queries must be (Q, {store.dim}), got shape {q.shape}")
    if allowed is not None:
        allowed = np.asarray(allowed)
        if allowed.dtype != bool or allowed.shape != (store.next_row,):
            raise ValueError(f"allowed must be a bool mask of {store.next_row} rows, got {allowed.dtype} "
                             f"{allowed.shape}")
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if allowed is not None and int(np.count_nonzero(allowed)) > max(opt.exact_below, MASK_IN_LIMIT):
        return _exact_masked_scan(store, q, k, allowed, where)
    expr = _filter_expr(allowed, where)
    if expr is not None and _count_passing(store, allowed, where, expr) <= opt.exact_below:
        return _exact_subset(store, q, k, expr)
    if len(q) == 0:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    parts = [_index_search(store, q[lo:lo + QUERY_CHUNK], k, opt, expr) for lo in range(0, len(q), QUERY_CHUNK)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _index_search(store: LanceDBStore, q: np.ndarray, k: int, opt: LanceDBOptions, expr):
    builder = store.table.search(list(q) if len(q) > 1 else q[0]).distance_type("dot").limit(k)
    builder = builder.select([ROW, DISTANCE])
    if store.options.index_type != "none":
        # at least nprobes lists; more (up to all) when the filter leaves fewer than k rows in them
        builder = builder.minimum_nprobes(opt.nprobes).maximum_nprobes(0)
        if opt.refine_factor:
            builder = builder.refine_factor(opt.refine_factor)
        if store.options.index_type == "IVF_HNSW_SQ":
            builder = builder.ef(max(opt.ef, k))
    if expr is not None:
        builder = builder.where(expr, prefilter=True)
    data = builder.to_arrow()
    return _results(data, len(q), k)


def _results(data, nq: int, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Arrow results (query_index, row, _distance = 1 - dot) as (Q, k) arrays, best first."""
    rows = data[ROW].to_numpy()
    scores = (1.0 - data[DISTANCE].to_numpy()).astype(np.float32)
    which = data["query_index"].to_numpy() if "query_index" in data.column_names else np.zeros(len(rows), np.int64)
    order = np.lexsort((rows, -scores, which))
    rows, scores, which = rows[order], scores[order], which[order]
    starts = np.searchsorted(which, np.arange(nq))
    rank = np.arange(len(rows)) - starts[which]
    keep = rank < k
    out_scores = np.full((nq, k), -np.inf, np.float32)
    out_rows = np.full((nq, k), -1, np.int64)
    out_scores[which[keep], rank[keep]] = scores[keep]
    out_rows[which[keep], rank[keep]] = rows[keep]
    return out_scores, out_rows
