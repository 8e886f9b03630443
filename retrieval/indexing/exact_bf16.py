"""Exact top-k with a bfloat16 pre-selection: the same result as the float32 search, about half the
arithmetic where the CPU multiplies bfloat16 natively.

The bulk of an exact search is the product ``Q @ D^T``. On CPUs with AVX512-BF16 or AMX
(``avx512_bf16`` / ``amx_bf16``), torch's bfloat16 GEMM (oneDNN, float32 accumulation) runs about twice
as fast as float32 sgemm (0.74 s against 1.30 s for 1,000 queries against 100,000 x 1,280 on the 2-core
AMD EPYC here: ``benchmarks/bench_index.py --products``). Its scores are off by at most a bound ``E`` (below), which is enough to find a candidate
set that provably holds the float32 top k; only the candidates are then scored in float32:

* ``s_j = q . d_j`` (float32), ``t_j`` its bfloat16 estimate, ``|t_j - s_j| <= E`` for every ``j``;
* ``T`` = the k-th largest ``t``. The k items with ``t >= T`` all have ``s >= T - E``, so the k-th
  largest ``s`` is ``>= T - E``, and every item of the true top k (ties included) has
  ``t >= s - E >= T - 2E``;
* candidates: ``t_j >= T - 2E``; they are re-scored in float32 and ordered by score, equal scores by
  lower row, as :func:`retrieval.indexing.exact.exact_search` orders them.

The bound: rounding a vector's entries to bfloat16 (unit roundoff ``u = 2^-8``) moves ``q . d`` by at
most ``(2u + u^2) |q| |d|`` (Cauchy-Schwarz on ``sum |q_i| |d_i|``); float32 accumulation of ``n``
products adds at most ``n 2^-24 (1 + u)^2 |q| |d|``; the result rounded to bfloat16 at most
``u (1 + u)^2 |q| |d|`` more. ``E = |q| max|d| (3u + 2u^2 + u^3 + 2 n 2^-24)``, rounded up
by a safety factor of 1.25. A one-time self-test on random unit vectors checks that this machine's
bfloat16 GEMM stays inside the bound (it would not if it accumulated in bfloat16); if it does not,
or the CPU lacks native bfloat16, the float32 path is used.

The number of candidates depends on the data: a few per query beyond k where the top k stands
apart (clustered descriptors: ~340 for k = 100 of 100,000 at d = 1,280 in ``benchmarks/bench_index.py
--clusters 1000``, ~100 for k = 10), many where the scores crowd together near the k-th (isotropic
random vectors: ~1,300). Re-scoring reads one database row per candidate, so ``precision="auto"``
probes the first queries and keeps float32 where the candidates would cost more than they save
(:func:`use_bf16`); :func:`topk_bf16` reports the mean.
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import numpy as np

__all__ = ["bf16_available", "error_bound", "max_row_norm", "topk_bf16", "use_bf16"]

_U = 2.0 ** -8          # bfloat16 unit roundoff (8 significant bits)
_U32 = 2.0 ** -24       # float32 unit roundoff
_SAFETY = 1.25
#: queries whose candidate count decides whether the bfloat16 pre-selection pays (precision="auto")
PROBE_QUERIES = 32


def error_bound(dim: int, query_norms: np.ndarray, max_db_norm: float) -> np.ndarray:
    """Per-query bound ``E`` on ``|bf16 estimate - float32 score|`` (module docstring)."""
    factor = 3 * _U + 2 * _U ** 2 + _U ** 3 + 2 * dim * _U32
    return (_SAFETY * factor * max_db_norm) * np.asarray(query_norms, dtype=np.float64)


def _cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


@functools.lru_cache(maxsize=None)
def bf16_available() -> bool:
    """Native bfloat16 on this CPU and a GEMM that keeps inside :func:`error_bound` (checked once on
    seeded random unit vectors, the worst-aligned pairs included)."""
    if not _cpu_has_native_bf16():
        return False
    import torch

    rng = np.random.default_rng(0)
    dim = 1280
    a = rng.standard_normal((64, dim)).astype(np.float32)
    b = np.concatenate([a[:32] + 0.01 * rng.standard_normal((32, dim)).astype(np.float32),
                        rng.standard_normal((2016, dim)).astype(np.float32)])
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    exact = a.astype(np.float64) @ b.T.astype(np.float64)
    with torch.inference_mode():
        approx = torch.mm(torch.from_numpy(a).bfloat16(), torch.from_numpy(b).bfloat16().T).float().numpy()
    return bool(np.abs(approx - exact).max() <= error_bound(dim, np.ones(1), 1.0)[0] / _SAFETY)


def _cut_as_bf16(cut: np.ndarray):
    """The smallest bfloat16 at or above each float cut: ``estimate >= it`` (bfloat16) selects exactly
    the estimates ``>= cut`` without widening the float copy of the score block."""
    import torch

    want = torch.from_numpy(cut.astype(np.float32))
    rounded = want.bfloat16()
    low = rounded.float() < want
    return torch.where(low, torch.nextafter(rounded, torch.full_like(rounded, float("inf"))), rounded)


def _rescore(database: np.ndarray, queries: np.ndarray, q0: int, rows: np.ndarray, cols: np.ndarray, k: int,
             out_scores: np.ndarray, out_rows: np.ndarray) -> None:
    """float32 scores of the candidate pairs ``(rows, cols)`` (rows ascending, columns ascending per
    row) and each query's top k, best first, equal scores by lower row."""
    starts = np.searchsorted(rows, np.arange(len(queries) + 1))
    for r in range(len(queries)):
        cand = cols[starts[r]:starts[r + 1]]
        scores = database[cand] @ queries[r]
        best = np.lexsort((cand, -scores))[:k]
        out_scores[q0 + r] = scores[best]
        out_rows[q0 + r] = cand[best]


def max_row_norm(database: np.ndarray) -> float:
    """The largest L2 norm of a row (0 for an empty database): the database side of the bound."""
    return float(np.sqrt(np.einsum("ij,ij->i", database, database).max())) if len(database) else 0.0


def topk_bf16(database: np.ndarray, database_bf16, queries: np.ndarray, k: int, query_block: int,
              max_candidates: Optional[float] = None, max_db_norm: Optional[float] = None
              ) -> Optional[Tuple[np.ndarray, np.ndarray, float]]:
    """Exact top-``k`` rows of ``database`` (float32, (N, D)) by inner product for each query:
    ``(scores (Q, k) float32, rows (Q, k) int64, mean candidates per query)``. ``database_bf16`` is
    ``database`` as a bfloat16 torch tensor (kept by the caller across searches); queries are taken
    ``query_block`` at a time (the whole database per block). ``max_db_norm``: :func:`max_row_norm`
    of ``database`` when the caller keeps it (computed here otherwise).

    ``max_candidates``: the first :data:`PROBE_QUERIES` queries go first; when they average more
    candidates than this, re-scoring would cost more than the bfloat16 product saves and ``None``
    is returned (the caller searches in float32)."""
    import torch

    nq = queries.shape[0]
    out_scores = np.empty((nq, k), dtype=np.float32)
    out_rows = np.empty((nq, k), dtype=np.int64)
    if max_db_norm is None:
        max_db_norm = max_row_norm(database)
    bound = error_bound(database.shape[1], np.linalg.norm(queries, axis=1), max_db_norm)
    queries_t = torch.from_numpy(queries)
    candidates = 0
    starts = [0] + list(range(min(PROBE_QUERIES, nq) if max_candidates is not None else 0, nq, query_block))
    starts = sorted(set(starts) - {nq})
    with torch.inference_mode():
        for q0, q1 in zip(starts, starts[1:] + [nq]):
            q = queries_t[q0:q1]
            estimate = torch.mm(q.bfloat16(), database_bf16.T)
            kth = torch.topk(estimate, k, dim=1, sorted=False).values.min(dim=1).values.float().numpy()
            cut = _cut_as_bf16(kth.astype(np.float64) - 2 * bound[q0:q0 + len(q)])
            rows, cols = torch.nonzero(estimate >= cut[:, None], as_tuple=True)
            del estimate
            candidates += len(cols)
            if q0 == 0 and max_candidates is not None and len(cols) > max_candidates * len(q):
                return None
            _rescore(database, queries[q0:q1], q0, rows.numpy(), cols.numpy(), k, out_scores, out_rows)
    return out_scores, out_rows, candidates / max(nq, 1)


def use_bf16(num_db: int, k: int, precision: str, whole_rows: bool) -> Tuple[bool, Optional[float]]:
    """``(try the bfloat16 pre-selection, max_candidates for topk_bf16)``: only with the whole
    database in one score block (``whole_rows``) and native bfloat16; ``precision="bfloat16"`` then
    always (no limit), ``"auto"`` when the database is big enough for the product to dominate and k
    small against it, falling back to float32 when the probe queries average more than
    ``max(4 k, N / 256)`` candidates. That limit is about where re-scoring (a gather of ``D`` floats
    per candidate, ~1.2 us here) costs what the bfloat16 product saves (~0.6 ms a query at
    N = 100,000, D = 1,280 on the 2-core AMD EPYC: 343 candidates a query came out level with
    float32 in ``benchmarks/bench_index.py``, 100 gained a third)."""
    if precision == "float32" or not whole_rows or not bf16_available():
        return False, None
    if precision == "bfloat16":
        return True, None
    return num_db >= 8192 and k * 16 <= num_db, max(4.0 * k, num_db / 256)
