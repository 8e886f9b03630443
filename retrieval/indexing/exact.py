"""Exact top-k inner-product search in blocks: ``scores = Q_block @ D_block^T`` (multi-threaded BLAS
sgemm through numpy) then a partial top-k (``torch.topk``), the score matrix held at once bounded by ``memory_mb``; ties ordered
deterministically (equal scores: lower database row first). The ``"exact"`` backend of
:class:`retrieval.indexing.index.Index`."""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

from retrieval.indexing.index_options import DEFAULT_MEMORY_MB

__all__ = ["exact_search", "exact_block_shape", "merge_topk"]


def exact_block_shape(num_queries: int, num_db: int, k: int, memory_mb: float) -> Tuple[int, int]:
    """(query block, database block) so that one float32 score block ``qb x db`` fits in
    ``memory_mb``. Whole database rows are preferred (one top-k per query); the database is cut
    only when fewer than 64 query rows of it would fit, so the GEMM keeps a useful shape."""
    if not memory_mb > 0:
        raise ValueError(f"memory_mb must be positive, got {memory_mb!r}")
    budget = memory_mb * 2 ** 20 / 4  # float32 entries
    num_queries, num_db = max(num_queries, 1), max(num_db, 1)
    rows = int(budget // num_db)
    if rows >= min(64, num_queries):
        return min(num_queries, max(rows, 1)), num_db
    qb = min(64, num_queries)
    return qb, min(num_db, max(int(budget // qb), k, 1))


def _order_ties(vals, idx):
    """Among equal scores put the lower database row first (rows already sorted by score)."""
    import torch
    if vals.shape[1] < 2 or not bool((vals[:, 1:] == vals[:, :-1]).any()):
        return vals, idx
    idx, perm = torch.sort(idx, dim=1)
    vals = vals.gather(1, perm)
    vals, perm = torch.sort(vals, dim=1, descending=True, stable=True)
    return vals, idx.gather(1, perm)


def _block_topk(scores, k: int):
    """Exact top-``k`` of each row of ``scores`` (a (b, n) tensor), best first, ties by lower
    column. ``torch.topk`` does not say which of several equal values it keeps at the k-th place,
    so it is asked for one more: when the (k+1)-th value equals the k-th, that row is redone with
    a stable full sort (rare: needs an exact tie at the cut)."""
    import torch
    n = scores.shape[1]
    kk = min(k + 1, n)
    vals, idx = torch.topk(scores, kk, dim=1, largest=True, sorted=True)
    if kk > k:
        tied = torch.nonzero(vals[:, k] == vals[:, k - 1]).flatten().tolist()
        vals, idx = vals[:, :k].clone(), idx[:, :k].clone()
        for r in tied:
            v, i = torch.sort(scores[r], descending=True, stable=True)
            vals[r], idx[r] = v[:k], i[:k]
    return _order_ties(vals, idx)


def exact_search(database: np.ndarray, queries: np.ndarray, k: int,
                 memory_mb: float = DEFAULT_MEMORY_MB) -> Tuple[np.ndarray, np.ndarray, Tuple[int, int]]:
    """Top-``k`` rows of ``database`` by inner product for each query: ``(scores (Q,k) float32,
    rows (Q,k) int64, (query block, database block))``. Blocked so that no score block exceeds
    ``memory_mb``; per block a numpy ``matmul`` then ``torch.topk``; database blocks are merged with
    a stable sort, which keeps equal scores in row order.

    The product goes through numpy's BLAS (OpenBLAS in the numpy wheels, as in faiss-cpu's) rather
    than ``torch.mm``: torch's CPU wheel calls MKL, whose sgemm on the 2-core AMD EPYC here took 1.56 s
    against OpenBLAS' 1.30 s for 1,000 queries against 100,000 x 1,280 (``benchmarks/bench_index.py
    --products``, one run)."""
    import torch
    nq, n = queries.shape[0], database.shape[0]
    k = min(k, n)
    qb, dbb = exact_block_shape(nq, n, k, memory_mb)
    out_scores = np.empty((nq, k), dtype=np.float32)
    out_rows = np.empty((nq, k), dtype=np.int64)
    if nq == 0 or k == 0:
        return out_scores, out_rows, (qb, dbb)
    database = np.ascontiguousarray(database, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    # one flat buffer reused for every score block (no 100s of MB allocated and faulted per block);
    # each block is a contiguous view of its front, so matmul writes into it directly and torch
    # reads it without a copy
    buffer = np.empty(qb * dbb, dtype=np.float32)
    with torch.inference_mode():
        for q0 in range(0, nq, qb):
            q = queries[q0:q0 + qb]
            best_vals = best_idx = None
            for d0 in range(0, n, dbb):
                block = database[d0:d0 + dbb]
                scores = buffer[:q.shape[0] * block.shape[0]].reshape(q.shape[0], block.shape[0])
                np.matmul(q, block.T, out=scores)
                vals, idx = _block_topk(torch.from_numpy(scores), k)
                idx += d0
                if best_vals is None:
                    best_vals, best_idx = vals, idx
                else:
                    # earlier blocks hold lower rows, so a stable sort keeps ties in row order
                    vals = torch.cat([best_vals, vals], dim=1)
                    idx = torch.cat([best_idx, idx], dim=1)
                    vals, perm = torch.sort(vals, dim=1, descending=True, stable=True)
                    best_vals, best_idx = vals[:, :k], idx.gather(1, perm[:, :k])
            out_scores[q0:q0 + qb] = best_vals.numpy()
            out_rows[q0:q0 + qb] = best_idx.numpy()
    return out_scores, out_rows, (qb, dbb)


def merge_topk(scores: Sequence[np.ndarray], rows: Sequence[np.ndarray], k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of per-part results (``(Q, k_i)`` scores and global rows, -1 = missing): best score
    first, equal scores by lower row."""
    s = np.concatenate([np.asarray(x, dtype=np.float32) for x in scores], axis=1)
    r = np.concatenate([np.asarray(x, dtype=np.int64) for x in rows], axis=1)
    s = np.where(r < 0, -np.inf, s)
    order = np.lexsort((np.where(r < 0, np.iinfo(np.int64).max, r), -s.astype(np.float64)), axis=1)[:, :k]
    return np.take_along_axis(s, order, 1), np.take_along_axis(r, order, 1)
