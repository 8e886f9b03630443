"""Query expansion and database-side augmentation: post-processing of L2-normalised global vectors,
followed by a new search with :class:`retrieval.indexing.index.Index`.

* Average query expansion (AQE, Chum et al. ICCV 2007): ``q' = L2(q + sum_{i<=n} d_i)`` over the top
  ``n`` database vectors of the first search.
* alpha-QE (Radenovic et al. TPAMI 2019): ``q' = L2(q + sum_{i<=n} max(s_i, 0)^alpha d_i)`` with
  ``s_i`` the cosine similarity of ``d_i`` to ``q`` (the query itself has weight ``1 = 1^alpha``).
  ``alpha = 0`` gives every neighbour weight 1, i.e. AQE (``0^0 = 1``).
* Database-side augmentation (DBA, Arandjelovic & Zisserman CVPR 2012; weighted as in Radenovic et
  al.): every database vector replaced by ``L2(sum_{i<=n} max(s_i, 0)^alpha d_i)`` over its top ``n``
  database neighbours, itself included (it is its own nearest neighbour, similarity 1).

All are one k-NN search plus a weighted sum of gathered rows, in blocks of rows (bounded memory).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from retrieval.core.vectors import l2_normalize_rows

__all__ = ["average_query_expansion", "alpha_query_expansion", "database_side_augmentation",
           "weighted_neighbour_sum"]

_BLOCK_ROWS = 4096


def _unit_rows(x, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{what} must be 2-D (N, D), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what} contain NaN or infinite values")
    return l2_normalize_rows(x, eps=0.0, what=what, copy=True)


def _search(database: np.ndarray, queries: np.ndarray, n: int, index=None, backend: str = "exact"):
    """(indices, scores) of the top ``n`` database rows per query, via :class:`retrieval.indexing.index.Index`."""
    from retrieval.indexing.index import Index

    if index is None:
        index = Index(database, backend=backend)
    elif len(index) != len(database):
        raise ValueError(f"the index holds {len(index)} vectors but {len(database)} database vectors were given")
    ranking = index.search(queries, k=n)
    return ranking.indices, ranking.scores


def weighted_neighbour_sum(base: Optional[np.ndarray], database: np.ndarray, indices: np.ndarray,
                           scores: np.ndarray, alpha: float) -> np.ndarray:
    """``L2(base + sum_i max(s_i, 0)^alpha * database[indices_i])`` per row (``base`` may be None);
    missing neighbours (index -1) are skipped."""
    out = np.zeros((len(indices), database.shape[1]), dtype=np.float32)
    for lo in range(0, len(indices), _BLOCK_ROWS):
        hi = min(len(indices), lo + _BLOCK_ROWS)
        idx = indices[lo:hi]
        w = np.power(np.maximum(scores[lo:hi].astype(np.float64), 0.0), alpha)  # 0**0 == 1
        w = np.where(idx >= 0, w, 0.0).astype(np.float32)
        block = np.einsum("qn,qnd->qd", w, database[np.maximum(idx, 0)])
        if base is not None:
            block += base[lo:hi]
        out[lo:hi] = block
    return l2_normalize_rows(out, eps=0.0)


def alpha_query_expansion(queries, database, n: int = 10, alpha: float = 3.0, index=None,
                          backend: str = "exact") -> np.ndarray:
    """alpha-QE of every query over its top ``n`` database vectors (module docstring). ``index``: an
    existing :class:`retrieval.indexing.index.Index` over ``database`` (built here otherwise)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    q = _unit_rows(queries, "query vectors")
    db = _unit_rows(database, "database vectors")
    if q.shape[1] != db.shape[1]:
        raise ValueError(f"query vectors are {q.shape[1]}-d, database vectors {db.shape[1]}-d")
    if len(db) == 0 or len(q) == 0:
        return q
    idx, sims = _search(db, q, min(n, len(db)), index, backend)
    return weighted_neighbour_sum(q, db, idx, sims, alpha)


def average_query_expansion(queries, database, n: int = 5, index=None, backend: str = "exact") -> np.ndarray:
    """AQE: ``L2(q + sum of the top n database vectors)`` (= alpha-QE with alpha = 0)."""
    return alpha_query_expansion(queries, database, n=n, alpha=0.0, index=index, backend=backend)


def database_side_augmentation(database, n: int = 10, alpha: float = 3.0, index=None,
                               backend: str = "exact") -> np.ndarray:
    """DBA: every database vector replaced by the weighted mean of its top ``n`` database neighbours,
    itself included; rows stay unit-norm (module docstring)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    db = _unit_rows(database, "database vectors")
    if len(db) == 0:
        return db
    idx, sims = _search(db, db, min(n, len(db)), index, backend)
    return weighted_neighbour_sum(None, db, idx, sims, alpha)
