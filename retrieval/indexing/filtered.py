"""Search restricted to some database rows, inside the search (never by cutting a top-k afterwards).

``allowed`` is a boolean mask over the index's rows (True: may be returned): a metadata filter
(:mod:`retrieval.indexing.metadata`), the rows still live in a collection whose removed rows are kept
until it is compacted (:mod:`retrieval.indexing.collection`), or both. A query gets ``min(k, allowed
rows)`` results; the rest of its row is missing (row -1, score -inf), as :class:`Ranking` marks it.

exact
    The product is taken over the allowed rows only (gathered once per call): a 1% filter costs 1%
    of the unfiltered product, and the result is exactly the unfiltered search of that subset.
faiss-flat, faiss-ivf, faiss-ivfpq
    faiss' ``IDSelectorBitmap`` in the per-call SearchParameters: faiss skips rows that do not pass
    while it scans. An IVF search only sees the ``nprobe`` lists nearest the query, which may hold
    fewer than k allowed rows: those queries are searched again with ``nprobe`` doubled until they
    have k (at ``nprobe = nlist`` every list is scanned, so k are found whenever k pass).
faiss-hnsw
    The selector steers the graph walk; a query that still has fewer than k (a very selective filter
    can cut the graph into pieces) is answered exactly over the allowed rows' stored vectors.
"""
from __future__ import annotations

from typing import Callable, Tuple

import numpy as np

__all__ = ["allowed_mask", "exact_filtered", "faiss_filtered", "missing_results"]


def allowed_mask(allowed, n: int, where: str = "") -> np.ndarray:
    """``allowed`` as a boolean mask of length ``n``: a boolean array of that length, or row
    positions (integers in ``[0, n)``)."""
    arr = np.asarray(allowed)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise ValueError(f"allowed rows mask has shape {arr.shape}, the index{where} has {n} rows")
        return arr
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"allowed rows must be a boolean mask or row positions, got dtype {arr.dtype}")
    arr = arr.astype(np.int64).ravel()
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise ValueError(f"allowed row positions must be in [0, {n}), the index{where} has {n} rows")
    mask = np.zeros(n, dtype=bool)
    mask[arr] = True
    return mask


def missing_results(nq: int, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """(scores, rows) of ``nq`` queries with ``k`` missing results each."""
    return np.full((nq, k), -np.inf, dtype=np.float32), np.full((nq, k), -1, dtype=np.int64)


def exact_filtered(matrix: np.ndarray, queries: np.ndarray, k: int, allowed: np.ndarray,
                   search: Callable[[np.ndarray, np.ndarray, int], Tuple[np.ndarray, np.ndarray]]
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """Top ``k`` of the allowed rows of ``matrix``; ``search(sub_matrix, queries, k)`` is the
    unfiltered exact search (rows of the sub-matrix), so ties keep the row order of an index built
    from those rows alone."""
    rows = np.flatnonzero(allowed)
    scores, out_rows = missing_results(len(queries), k)
    found = min(k, len(rows))
    if found == 0 or len(queries) == 0:
        return scores, out_rows
    sub = matrix if len(rows) == len(matrix) else matrix[rows]
    s, r = search(sub, queries, found)
    scores[:, :found], out_rows[:, :found] = s, rows[r]
    return scores, out_rows


def _selector(faiss, allowed: np.ndarray):
    # faiss reads bit i of the bitmap as byte i >> 3, bit i & 7 (least significant first)
    bits = np.packbits(allowed, bitorder="little")
    selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
    selector.bits_owner = bits  # faiss keeps a raw pointer: the array must live as long as the selector
    return selector


def _short(rows: np.ndarray, want: int) -> np.ndarray:
    return np.flatnonzero((rows[:, :want] < 0).any(axis=1)) if want else np.zeros(0, np.int64)


def faiss_filtered(index, backend: str, queries: np.ndarray, k: int, allowed: np.ndarray, options,
                   stored_vectors: Callable[[np.ndarray], np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """Top ``k`` allowed rows of a faiss index (see the module docstring); ``stored_vectors(rows)``
    gives the stored vectors of rows (HNSW's exact fallback)."""
    from retrieval.indexing.exact import exact_search
    from retrieval.indexing.faiss_backend import import_faiss

    faiss = import_faiss()
    scores, rows = missing_results(len(queries), k)
    want = min(k, int(allowed.sum()))
    if want == 0 or len(queries) == 0:
        return scores, rows
    selector = _selector(faiss, allowed)

    def run(x: np.ndarray, params) -> Tuple[np.ndarray, np.ndarray]:
        s, r = index.search(x, want, params=params)
        r = r.astype(np.int64, copy=False)
        return np.where(r < 0, -np.inf, s).astype(np.float32), r

    if backend in ("faiss-ivf", "faiss-ivfpq"):
        nprobe = int(min(options.nprobe, index.nlist))
        todo = np.arange(len(queries))
        while len(todo):
            params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
            s, r = run(queries[todo], params)
            scores[todo, :want], rows[todo, :want] = s, r
            if nprobe >= index.nlist:
                break
            todo = todo[_short(r, want)]
            nprobe = min(2 * nprobe, int(index.nlist))
        return scores, rows
    if backend == "faiss-hnsw":
        params = faiss.SearchParametersHNSW(sel=selector, efSearch=int(max(options.ef_search, want)))
    else:
        params = faiss.SearchParameters(sel=selector)
    scores[:, :want], rows[:, :want] = run(queries, params)
    short = _short(rows, want)
    if len(short):  # the graph walk ran out of allowed neighbours: answer these exactly
        allowed_rows = np.flatnonzero(allowed)
        s, r, _ = exact_search(stored_vectors(allowed_rows), queries[short], want)
        scores[short, :want], rows[short, :want] = s, allowed_rows[r]
    return scores, rows
