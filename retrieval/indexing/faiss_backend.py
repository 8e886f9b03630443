"""The faiss side of :class:`retrieval.indexing.index.Index`: building a backend's faiss index from checked
options (:mod:`retrieval.indexing.index_options`) and searching it with per-call SearchParameters, so that
threads sharing one index may use different ``nprobe`` / ``ef_search`` at once. faiss is imported only
when a faiss backend is used."""
from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import numpy as np

__all__ = ["import_faiss", "default_nlist", "default_pq_m", "build_faiss", "faiss_search"]


def import_faiss():
    from retrieval.core.extras import require

    require("faiss", "faiss", "the faiss backends")   # one line naming the extra when it is missing
    import faiss

    return faiss


def default_nlist(n: int) -> int:
    # faiss wants >= 39 training points per centroid; 4 sqrt(N) lists is the usual starting point
    return max(1, min(int(round(4 * math.sqrt(n))), n // 39))


def default_pq_m(dim: int) -> int:
    # at least 16 dimensions per sub-quantiser: faiss trains tiny sub-spaces slowly (m=64 on 256-D
    # takes ~20x longer than m=16) for little recall; at most 64 bytes per code
    divisors = [m for m in range(1, min(dim, 64) + 1) if dim % m == 0 and dim // m >= 16]
    return max(divisors) if divisors else 1


def build_faiss(backend: str, d: int, vectors: np.ndarray, opt) -> Tuple[Any, Optional[Any], Any]:
    """(faiss index, its quantiser or None, the options with defaults filled in) for ``backend``; the IVF
    backends train on ``vectors``. The caller must keep the quantiser alive: faiss holds a raw pointer."""
    faiss = import_faiss()
    n = vectors.shape[0]
    if backend == "faiss-flat":
        return faiss.IndexFlatIP(d), None, opt
    if backend == "faiss-hnsw":
        index = faiss.IndexHNSWFlat(d, opt.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = opt.ef_construction
        return index, None, opt
    # IVF backends train on the first vectors given
    if n == 0:
        raise ValueError(f"backend {backend!r} trains on the database vectors; an empty index "
                         "cannot be built (use 'exact' or 'faiss-flat', or build with vectors)")
    if opt.nlist is None:
        opt = opt.override(nlist=default_nlist(n))
    nlist = opt.nlist
    if not 1 <= nlist <= n:
        raise ValueError(f"nlist={nlist} must be between 1 and the number of vectors ({n})")
    quantizer = faiss.IndexFlatIP(d)
    if backend == "faiss-ivf":
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        if opt.m is None:
            opt = opt.override(m=default_pq_m(d))
        m, nbits = opt.m, opt.nbits
        if d % m:
            raise ValueError(f"faiss-ivfpq: m={m} sub-quantisers must divide the dimension {d}")
        if n < 2 ** nbits:
            raise ValueError(f"faiss-ivfpq: nbits={nbits} needs at least {2 ** nbits} training vectors, "
                             f"got {n}; pass a smaller nbits")
        index = faiss.IndexIVFPQ(quantizer, d, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
        index.pq.cp.seed = opt.seed
    index.cp.seed = opt.seed
    index.train(vectors)
    return index, quantizer, opt


def faiss_search(index, backend: str, queries: np.ndarray, k: int, options) -> Tuple[np.ndarray, np.ndarray]:
    """(scores, rows) of the top ``k``; the per-call options go to faiss as SearchParameters, never onto
    the shared index. Missing results: row -1, score -inf."""
    faiss = import_faiss()
    params = None
    if backend in ("faiss-ivf", "faiss-ivfpq"):
        params = faiss.SearchParametersIVF()
        params.nprobe = int(min(options.nprobe, index.nlist))
    elif backend == "faiss-hnsw":
        params = faiss.SearchParametersHNSW()
        params.efSearch = int(max(options.ef_search, k))
    scores, rows = index.search(queries, k, params=params)
    rows = rows.astype(np.int64, copy=False)
    scores = np.where(rows < 0, -np.inf, scores).astype(np.float32)
    return scores, rows
