"""The common ranking stage: an inner-product (cosine) index over L2-normalised float32 vectors.

Every global method (BoW, VLAD, Fisher, EfficientNet, multi-view) ends here: build an
:class:`Index` from the database vectors, :meth:`Index.search` the query vectors, get a
:class:`Ranking` (database ids, scores and row positions, best first), hand
:meth:`Ranking.to_predictions` to :mod:`retrieval.metrics`.

Backends
--------
``"exact"``
    Brute force in torch: ``scores = Q_block @ D_block^T`` (multi-threaded BLAS sgemm) followed by a
    partial top-k (``torch.topk``), never a full sort. Queries and database are cut into blocks
    sized from ``memory_mb`` so the score matrix held at once never exceeds that budget; block
    results are merged exactly. Ties are ordered deterministically: equal scores, lower database
    row first (also at the k-th position).
``"faiss-flat"``
    ``faiss.IndexFlatIP`` (exact, faiss' own BLAS + heap).
``"faiss-ivf"``
    ``faiss.IndexIVFFlat`` with inner product; options ``nlist`` (default ``4 sqrt(N)``, at most
    ``N/39``), ``nprobe`` (default 16), ``seed``.
``"faiss-ivfpq"``
    ``faiss.IndexIVFPQ``; options ``nlist``, ``m`` (sub-quantisers, must divide the dimension;
    default the largest divisor of ``D`` that is <= 64 and leaves >= 16 dimensions per
    sub-quantiser: 64 for 1280-D, 16 for 256-D), ``nbits``
    (default 8), ``nprobe``, ``seed``.
``"faiss-hnsw"``
    ``faiss.IndexHNSWFlat`` with inner product; options ``hnsw_m`` (links per node, default 32),
    ``ef_construction`` (default 80), ``ef_search`` (default 128). ``efConstruction`` /
    ``efSearch`` are accepted as aliases.

Every option is checked (:mod:`retrieval.index_options`, one :class:`retrieval.config.Config` per
backend) before faiss sees it: a bad value is a ValueError naming it, never a faiss abort or hang.
Per-call search options go to faiss as SearchParameters, never onto the shared index, so threads
may search one index with different options at once.

The faiss backends need the optional extra: ``pip install hybrid-retrieval[faiss]``; faiss is
imported only when one of them is used.

Vectors
-------
With ``normalize=True`` (default) database and query vectors are L2-normalised here, so the score
is the cosine similarity. With ``normalize=False`` vectors must already have unit norm (within
``1e-3``); anything else is refused rather than silently ranked by an unnormalised inner product.
Vectors are converted to float32; they must be 2-D, finite, of a real floating dtype and of the
index's dimension.

Files
-----
:meth:`Index.save` writes one ``.npz`` archive (no pickle) holding the arrays (vectors or the
serialised faiss index as uint8, ids) and a JSON header: format name and version, dimension,
count, metric, backend, backend options, the extractor configuration given at construction and a
SHA-256 checksum of the header and arrays. :meth:`Index.load` refuses truncated, altered or
other-version files with :class:`IndexFileError`.
"""
from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Hashable, List, Optional, Sequence, Tuple, Union

import numpy as np

from .config import ConfigError
from .fileio import (FileFormatError, atomic_write_text, check_header, digest, pop_header, read_json,
                     read_npz, save_npz)
from .index_options import DEFAULT_MEMORY_MB, resolve_options, search_options as _search_options

__all__ = ["Index", "Ranking", "IndexFileError", "BACKENDS", "normalize_rows"]

PathLike = Union[str, os.PathLike]
INDEX_FORMAT = "hybrid-retrieval/index"
RANKING_FORMAT = "hybrid-retrieval/ranking"
FORMAT_VERSION = 1
METRIC = "inner_product"
BACKENDS = ("exact", "faiss-flat", "faiss-ivf", "faiss-ivfpq", "faiss-hnsw")
UNIT_NORM_TOLERANCE = 1e-3


class IndexFileError(FileFormatError):
    """An index or ranking file is missing, truncated, altered, or of another format/version."""


# ---------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------

def _as_matrix(vectors, what: str) -> np.ndarray:
    """``vectors`` as a C-contiguous float32 (n, d) array, or a ValueError saying what is wrong."""
    if hasattr(vectors, "detach") and hasattr(vectors, "cpu"):  # a torch tensor
        vectors = vectors.detach().cpu().numpy()
    arr = np.asarray(vectors)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{what} must be a real floating-point array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{what} must be 2-D (n, dim), got shape {arr.shape}"
                         + ("; for a single vector use v[None, :]" if arr.ndim == 1 else ""))
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.size and not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        raise ValueError(f"{what} contain NaN or infinite values (rows {bad[:10].tolist()}"
                         f"{' ...' if bad.size > 10 else ''})")
    return arr


def normalize_rows(vectors: np.ndarray, what: str = "vectors") -> np.ndarray:
    """Rows divided by their L2 norm (float32, a new array); a zero row cannot be normalised and is
    refused (:func:`retrieval.vectors.l2_normalize_rows`)."""
    from .vectors import l2_normalize_rows

    return l2_normalize_rows(vectors, eps=0.0, zero_rows="error", what=what, copy=True)


def _check_unit_norm(vectors: np.ndarray, what: str) -> None:
    if not vectors.size:
        return
    norms = np.linalg.norm(vectors, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > UNIT_NORM_TOLERANCE)
    if bad.size:
        raise ValueError(f"{what} are not L2-normalised (row {int(bad[0])} has norm {norms[bad[0]]:.4g}; "
                         f"{bad.size} rows off by more than {UNIT_NORM_TOLERANCE}); normalise them or "
                         "build the index with normalize=True")


def _id_array(ids: Sequence[Hashable], what: str = "ids") -> np.ndarray:
    """Ids as a 1-D numpy array: int64 when all are integers, unicode when all are strings."""
    if not isinstance(ids, np.ndarray):
        ids = list(ids)
        kinds = {str if isinstance(x, str) else int if isinstance(x, (int, np.integer))
                 and not isinstance(x, bool) else type(x) for x in ids}
        if kinds - {str, int} or len(kinds) > 1:
            raise ValueError(f"{what} must be all strings or all integers, got types "
                             f"{sorted(t.__name__ for t in kinds)}")
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a flat sequence, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64)
    if arr.dtype.kind == "U":
        return arr
    if arr.dtype.kind == "S":
        return arr.astype(str)
    raise ValueError(f"{what} must be all strings or all integers, got dtype {arr.dtype} "
                     f"(first id {arr.flat[0]!r})")


# ---------------------------------------------------------------------------------------------
# Ranking
# ---------------------------------------------------------------------------------------------

_RANKING_KEYS = frozenset({"format", "version", "num_queries", "k", "id_type", "query_ids", "ids", "scores",
                           "indices", "sha256"})


def _ranking_digest(payload: dict) -> str:
    """SHA-256 of a ranking file's content (every key but ``sha256``, as sorted-keys JSON)."""
    import hashlib

    body = {key: value for key, value in payload.items() if key != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass
class Ranking:
    """Search results for ``Q`` queries, best first.

    ``ids``: (Q, k) database ids; ``scores``: (Q, k) float32 inner products (cosine similarity);
    ``indices``: (Q, k) int64 database row positions. Approximate faiss backends may find fewer
    than ``k`` results for a query: the missing entries have ``indices == -1``, ``scores == -inf``
    and an empty id (``""`` or ``-1``); :meth:`to_predictions` drops them. ``query_ids`` is
    optional and names the rows."""

    ids: np.ndarray
    scores: np.ndarray
    indices: np.ndarray
    query_ids: Optional[List[Hashable]] = None

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids)
        self.scores = np.asarray(self.scores, dtype=np.float32)
        self.indices = np.asarray(self.indices, dtype=np.int64)
        if not (self.ids.shape == self.scores.shape == self.indices.shape) or self.ids.ndim != 2:
            raise ValueError(f"Ranking arrays must all be (Q, k); got ids {self.ids.shape}, scores "
                             f"{self.scores.shape}, indices {self.indices.shape}")
        if self.query_ids is not None:
            self.query_ids = list(self.query_ids)
            if len(self.query_ids) != self.ids.shape[0]:
                raise ValueError(f"{len(self.query_ids)} query ids for {self.ids.shape[0]} ranked queries")

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def k(self) -> int:
        return self.ids.shape[1]

    def to_predictions(self, query_ids: Optional[Sequence[Hashable]] = None) -> Dict[Hashable, List[Hashable]]:
        """``{query_id: [db ids best first]}`` as :mod:`retrieval.metrics` takes it. ``query_ids``
        names the rows (defaults to the ranking's own ``query_ids``, else 0..Q-1)."""
        if query_ids is None:
            query_ids = self.query_ids if self.query_ids is not None else list(range(len(self)))
        query_ids = list(query_ids)
        if len(query_ids) != len(self):
            raise ValueError(f"{len(query_ids)} query ids given for a ranking of {len(self)} queries")
        if len(set(query_ids)) != len(query_ids):
            raise ValueError("query ids must be unique")
        ids = self.ids.tolist()
        if (self.indices < 0).any():
            valid = (self.indices >= 0).tolist()
            return {q: [i for i, ok in zip(row, mask) if ok] for q, row, mask in zip(query_ids, ids, valid)}
        return dict(zip(query_ids, ids))

    def save(self, path: PathLike) -> Path:
        """Write the ranking as JSON (atomically): format, version, query ids, and per query the
        database ids, scores and row positions, with a SHA-256 of it all (``sha256``) that
        :meth:`load` checks."""
        path = Path(path)
        payload = {
            "format": RANKING_FORMAT, "version": FORMAT_VERSION,
            "num_queries": len(self), "k": self.k,
            "id_type": "int" if np.issubdtype(self.ids.dtype, np.integer) else "str",
            "query_ids": self.query_ids,
            "ids": self.ids.tolist(),
            "scores": [[float(s) if math.isfinite(s) else None for s in row] for row in self.scores.tolist()],
            "indices": self.indices.tolist(),
        }
        payload["sha256"] = _ranking_digest(payload)
        atomic_write_text(path, json.dumps(payload))
        return path

    @classmethod
    def load(cls, path: PathLike) -> "Ranking":
        """Read a ranking written by :meth:`save`; refuses other formats and versions."""
        payload = read_json(path, "ranking", error=IndexFileError)
        check_header(path, payload, RANKING_FORMAT, FORMAT_VERSION, error=IndexFileError)
        missing = [key for key in ("num_queries", "k", "ids", "scores", "indices") if key not in payload]
        if missing:
            raise IndexFileError(path, f"ranking file lacks the key(s) {missing}; write it with "
                                       "'retrieval index search' (Ranking.save)")
        unknown = sorted(set(payload) - _RANKING_KEYS)
        if unknown:
            raise IndexFileError(path, f"ranking file has unknown key(s) {unknown}: altered or damaged")
        # files written before the checksum have none; any file that has one must match it
        if "sha256" in payload and payload.pop("sha256") != _ranking_digest(payload):
            raise IndexFileError(path, "checksum mismatch: the ranking file was altered or damaged; "
                                       "search again to rewrite it")
        try:
            q, k = int(payload["num_queries"]), int(payload["k"])
            dtype = np.int64 if payload.get("id_type") == "int" else str
            ids = np.asarray(payload["ids"], dtype=dtype).reshape(q, k)
            scores = np.asarray([[-np.inf if s is None else s for s in row] for row in payload["scores"]],
                                dtype=np.float32).reshape(q, k)
            indices = np.asarray(payload["indices"], dtype=np.int64).reshape(q, k)
            return cls(ids=ids, scores=scores, indices=indices, query_ids=payload.get("query_ids"))
        except (TypeError, ValueError, OverflowError) as exc:
            raise IndexFileError(path, f"ranking arrays do not match num_queries={payload['num_queries']!r}, "
                                       f"k={payload['k']!r} or are not numbers ({exc})") from None


# ---------------------------------------------------------------------------------------------
# exact search
# ---------------------------------------------------------------------------------------------

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
    ``memory_mb``; per block ``torch.mm`` then ``torch.topk``; database blocks are merged with a
    stable sort, which keeps equal scores in row order."""
    import torch
    nq, n = queries.shape[0], database.shape[0]
    k = min(k, n)
    qb, dbb = exact_block_shape(nq, n, k, memory_mb)
    out_scores = np.empty((nq, k), dtype=np.float32)
    out_rows = np.empty((nq, k), dtype=np.int64)
    if nq == 0 or k == 0:
        return out_scores, out_rows, (qb, dbb)
    db_t = torch.from_numpy(database)
    q_t = torch.from_numpy(queries)
    # one flat buffer reused for every score block (no 100s of MB allocated and faulted per block);
    # each block is a contiguous view of its front, so torch.mm writes into it directly
    buffer = torch.empty(qb * dbb, dtype=torch.float32)
    with torch.inference_mode():
        for q0 in range(0, nq, qb):
            q = q_t[q0:q0 + qb]
            best_vals = best_idx = None
            for d0 in range(0, n, dbb):
                block = db_t[d0:d0 + dbb]
                scores = torch.mm(q, block.T, out=buffer[:q.shape[0] * block.shape[0]].view(q.shape[0], -1))
                vals, idx = _block_topk(scores, k)
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


# ---------------------------------------------------------------------------------------------
# faiss
# ---------------------------------------------------------------------------------------------

def _import_faiss():
    try:
        import faiss  # noqa: F401
    except ImportError as exc:
        raise ImportError("the faiss backends need faiss: pip install hybrid-retrieval[faiss] "
                          f"(or pip install faiss-cpu); import failed with: {exc}") from None
    return faiss


def _default_nlist(n: int) -> int:
    # faiss wants >= 39 training points per centroid; 4 sqrt(N) lists is the usual starting point
    return max(1, min(int(round(4 * math.sqrt(n))), n // 39))


def _default_pq_m(dim: int) -> int:
    # at least 16 dimensions per sub-quantiser: faiss trains tiny sub-spaces slowly (m=64 on 256-D
    # takes ~20x longer than m=16) for little recall; at most 64 bytes per code
    divisors = [m for m in range(1, min(dim, 64) + 1) if dim % m == 0 and dim // m >= 16]
    return max(divisors) if divisors else 1


# ---------------------------------------------------------------------------------------------
# Index
# ---------------------------------------------------------------------------------------------

class Index:
    """Inner-product index over L2-normalised float32 vectors with database ids.

    ``Index(vectors, ids=None, backend="exact", normalize=True, config=None, **options)``:
    ``vectors`` (N, D); ``ids`` N unique strings or integers (default ``0..N-1``); ``backend`` one
    of :data:`BACKENDS`; ``config`` the extractor configuration, stored in saved files;
    ``options`` backend options (see the module docstring). ``vectors`` may be (0, D): an empty
    index that :meth:`add` fills (exact, faiss-flat and faiss-hnsw only; the IVF backends train on
    their first vectors).
    """

    def __init__(self, vectors, ids: Optional[Sequence[Hashable]] = None, backend: str = "exact",
                 normalize: bool = True, config: Optional[dict] = None, **options):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
        self.backend = backend
        self.normalize = bool(normalize)
        self.config = dict(config or {})
        # every option is checked here, before faiss sees it (faiss crashes on some bad values)
        self.option_config = resolve_options(backend, options)
        self._lock = threading.Lock()  # guards the exact backend's consolidation of added vectors
        self.source: Optional[str] = None  # file this index was loaded from (for error messages)
        self.last_block_shape: Optional[Tuple[int, int]] = None
        vectors = self._prepare(vectors, "database vectors")
        self.dim = int(vectors.shape[1])
        if self.dim == 0:
            raise ValueError("database vectors have dimension 0")
        self._ids = np.zeros(0, dtype=np.int64)
        self._id_set: set = set()
        self._vectors = np.zeros((0, self.dim), dtype=np.float32)  # exact backend only
        self._pending: List[np.ndarray] = []  # exact: vectors added since the last consolidation
        self._faiss = None
        if backend != "exact":
            self._faiss = self._build_faiss(vectors)
        self._append(vectors, ids)

    # -- construction ------------------------------------------------------------------------

    @property
    def options(self) -> Dict[str, Any]:
        """The backend options as a dict (with the values chosen from the data filled in)."""
        return self.option_config.to_dict()

    def _prepare(self, vectors, what: str) -> np.ndarray:
        arr = _as_matrix(vectors, what)
        if self.normalize:
            return normalize_rows(arr, what) if arr.size else arr
        _check_unit_norm(arr, what)
        return arr

    def _build_faiss(self, vectors: np.ndarray):
        faiss = _import_faiss()
        d, n, opt = self.dim, vectors.shape[0], self.option_config
        if self.backend == "faiss-flat":
            return faiss.IndexFlatIP(d)
        if self.backend == "faiss-hnsw":
            index = faiss.IndexHNSWFlat(d, opt.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = opt.ef_construction
            return index
        # IVF backends train on the first vectors given
        if n == 0:
            raise ValueError(f"backend {self.backend!r} trains on the database vectors; an empty index "
                             "cannot be built (use 'exact' or 'faiss-flat', or build with vectors)")
        if opt.nlist is None:
            opt = opt.override(nlist=_default_nlist(n))
        nlist = opt.nlist
        if not 1 <= nlist <= n:
            raise ValueError(f"nlist={nlist} must be between 1 and the number of vectors ({n})")
        quantizer = faiss.IndexFlatIP(d)
        if self.backend == "faiss-ivf":
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            if opt.m is None:
                opt = opt.override(m=_default_pq_m(d))
            m, nbits = opt.m, opt.nbits
            if d % m:
                raise ValueError(f"faiss-ivfpq: m={m} sub-quantisers must divide the dimension {d}")
            if n < 2 ** nbits:
                raise ValueError(f"faiss-ivfpq: nbits={nbits} needs at least {2 ** nbits} training vectors, "
                                 f"got {n}; pass a smaller nbits")
            index = faiss.IndexIVFPQ(quantizer, d, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
            index.pq.cp.seed = opt.seed
        index.cp.seed = opt.seed
        self.option_config = opt
        index.train(vectors)
        # faiss keeps a raw pointer to the quantiser: keep the Python object alive with the index
        self._quantizer = quantizer
        return index

    @classmethod
    def trained(cls, sample, backend: str, normalize: bool = True, config: Optional[dict] = None,
                **options) -> "Index":
        """An IVF index (``faiss-ivf`` / ``faiss-ivfpq``) trained on ``sample`` exactly as
        ``Index(sample, backend=...)`` trains, but holding no vectors: :meth:`add` then fills it
        chunk by chunk (:mod:`retrieval.scale` builds indexes larger than memory this way)."""
        if backend not in ("faiss-ivf", "faiss-ivfpq"):
            raise ValueError(f"only the IVF backends are trained apart from their vectors, not {backend!r}")
        index = cls(sample, backend=backend, normalize=normalize, config=config, **options)
        index._faiss.reset()  # keeps the trained quantiser (and PQ codebooks), drops the sample
        index._ids = np.zeros(0, dtype=np.int64)
        index._id_set = set()
        return index

    def _append(self, vectors: np.ndarray, ids: Optional[Sequence[Hashable]]) -> None:
        n_old, n_new = len(self._ids), vectors.shape[0]
        if ids is None:
            if n_old and not np.issubdtype(self._ids.dtype, np.integer):
                raise ValueError("this index has string ids; give ids for the added vectors")
            new_ids = np.arange(n_old, n_old + n_new, dtype=np.int64)
        else:
            new_ids = _id_array(ids)
            if new_ids.shape[0] != n_new:
                raise ValueError(f"{new_ids.shape[0]} ids given for {n_new} vectors")
            if n_old and n_new and (np.issubdtype(new_ids.dtype, np.integer)
                                    != np.issubdtype(self._ids.dtype, np.integer)):
                raise ValueError("ids must be all strings or all integers, as the index's existing ids")
        new_list = new_ids.tolist()
        new_set = set(new_list)
        if len(new_set) != n_new:
            seen, dup = set(), None
            for x in new_list:
                if x in seen:
                    dup = x
                    break
                seen.add(x)
            raise ValueError(f"ids must be unique; {dup!r} appears more than once")
        clash = new_set & self._id_set
        if clash:
            raise ValueError(f"ids already in the index: {sorted(clash, key=str)[:5]}")
        if self._faiss is not None:
            if n_new:
                self._faiss.add(vectors)
        elif n_new:
            # concatenated once, at the next search or save: many small adds stay linear
            self._pending.append(vectors)
        self._ids = new_ids if n_old == 0 else np.concatenate([self._ids, new_ids])
        self._id_set |= new_set

    def add(self, vectors, ids: Optional[Sequence[Hashable]] = None) -> None:
        """Append database vectors (and their ids; default continues ``N, N+1, ...`` when the
        index has integer ids). IVF indexes keep the coarse quantiser trained at construction."""
        arr = self._prepare(vectors, "added vectors")
        if arr.shape[1] != self.dim:
            raise ValueError(f"added vectors have dimension {arr.shape[1]} but the index has dimension {self.dim}")
        self._append(arr, ids)

    def _matrix(self) -> np.ndarray:
        """The exact backend's (N, D) matrix, with pending additions concatenated in (under a lock:
        threads searching one index must not concatenate the same additions twice)."""
        with self._lock:
            if self._pending:
                parts = ([self._vectors] if len(self._vectors) else []) + self._pending
                self._vectors = parts[0] if len(parts) == 1 else np.concatenate(parts)
                self._pending = []
            return self._vectors

    # -- properties ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> np.ndarray:
        """Database ids in row order."""
        return self._ids

    @property
    def vectors(self) -> np.ndarray:
        """The stored (normalised) database vectors: exact backend, and faiss-flat / faiss-hnsw
        via faiss reconstruction."""
        if self._faiss is None:
            return self._matrix()
        if self.backend in ("faiss-flat", "faiss-hnsw"):
            return self._faiss.reconstruct_n(0, len(self)) if len(self) else np.zeros((0, self.dim), np.float32)
        raise ValueError(f"backend {self.backend!r} does not keep the original vectors")

    def __repr__(self) -> str:
        return f"Index(backend={self.backend!r}, n={len(self)}, dim={self.dim})"

    # -- search --------------------------------------------------------------------------------

    def search(self, queries, k: int = 100, query_ids: Optional[Sequence[Hashable]] = None,
               **search_options) -> Ranking:
        """Top-``k`` database items for each query, best first. ``k`` larger than the database is
        clamped to its size. ``search_options`` override ``memory_mb`` (exact), ``nprobe`` (IVF) or
        ``ef_search`` (HNSW) for this call only: they are passed to faiss per call (its
        SearchParameters), never set on the shared index, so threads may search one index with
        different options at once and each gets exactly its serial result."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        where = f" loaded from {self.source}" if self.source else ""
        arr = _as_matrix(queries, "query vectors")
        if arr.shape[1] != self.dim:
            raise ValueError(f"query vectors have dimension {arr.shape[1]} but the index{where} has "
                             f"dimension {self.dim}")
        arr = self._prepare(arr, "query vectors")
        options = _search_options(self.backend, self.option_config, search_options)
        k = int(min(k, len(self)))
        nq = arr.shape[0]
        if k == 0 or nq == 0:
            scores = np.zeros((nq, k), np.float32)
            rows = np.zeros((nq, k), np.int64)
        elif self._faiss is None:
            scores, rows, self.last_block_shape = exact_search(self._matrix(), arr, k, options.memory_mb)
        else:
            scores, rows = self._faiss_search(arr, k, options)
        return self._ranking(scores, rows, query_ids)

    def _faiss_search(self, queries: np.ndarray, k: int, options) -> Tuple[np.ndarray, np.ndarray]:
        faiss = _import_faiss()
        index, params = self._faiss, None
        if self.backend in ("faiss-ivf", "faiss-ivfpq"):
            params = faiss.SearchParametersIVF()
            params.nprobe = int(min(options.nprobe, index.nlist))
        elif self.backend == "faiss-hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = int(max(options.ef_search, k))
        scores, rows = index.search(queries, k, params=params)
        rows = rows.astype(np.int64, copy=False)
        scores = np.where(rows < 0, -np.inf, scores).astype(np.float32)
        return scores, rows

    def _ranking(self, scores: np.ndarray, rows: np.ndarray, query_ids) -> Ranking:
        if self._ids.size:
            ids = self._ids[np.maximum(rows, 0)]
            missing = rows < 0
            if missing.any():
                ids = ids.copy()
                ids[missing] = -1 if np.issubdtype(ids.dtype, np.integer) else ""
        else:
            ids = np.zeros(rows.shape, dtype=np.int64)
        return Ranking(ids=ids, scores=scores, indices=rows, query_ids=query_ids)

    # -- files ---------------------------------------------------------------------------------

    def _arrays(self) -> Dict[str, np.ndarray]:
        arrays = {"ids": self._ids}
        if self._faiss is None:
            arrays["vectors"] = self._matrix()
        else:
            faiss = _import_faiss()
            arrays["faiss_index"] = faiss.serialize_index(self._faiss)
        return arrays

    def _header(self) -> dict:
        return {
            "format": INDEX_FORMAT, "format_version": FORMAT_VERSION,
            "dim": self.dim, "count": len(self), "metric": METRIC,
            "backend": self.backend, "backend_options": self.options,
            "normalize": self.normalize, "config": self.config,
            "id_type": "int" if np.issubdtype(self._ids.dtype, np.integer) else "str",
        }

    def save(self, path: PathLike) -> Path:
        """Write the index to ``path`` (one ``.npz`` archive, exactly that name), atomically."""
        arrays = self._arrays()
        header = self._header()
        header["sha256"] = digest(arrays, header)
        return save_npz(path, arrays, header)

    @classmethod
    def load(cls, path: PathLike, expect_config: Optional[dict] = None) -> "Index":
        """Read an index written by :meth:`save`. Refuses (:class:`IndexFileError`) a missing,
        truncated or altered file (SHA-256 mismatch), another format or format version, and, with
        ``expect_config``, an index built with another extractor configuration."""
        path = Path(path)
        contents = read_npz(path, "index", error=IndexFileError)
        header = pop_header(path, contents, error=IndexFileError)
        check_header(path, header, INDEX_FORMAT, FORMAT_VERSION, version_key="format_version",
                     error=IndexFileError, hint="rebuild the index")
        stored = header.pop("sha256", None)
        if stored != digest(contents, header):
            raise IndexFileError(path, "checksum mismatch: the file was altered or damaged; rebuild the index")
        if expect_config is not None and json.dumps(expect_config, sort_keys=True, default=str) != \
                json.dumps(header["config"], sort_keys=True, default=str):
            raise IndexFileError(path, f"built with extractor configuration {header['config']}, expected "
                                       f"{expect_config}")
        index = cls.__new__(cls)
        index.backend = header["backend"]
        index.normalize = header["normalize"]
        index.config = header["config"]
        try:
            if index.backend not in BACKENDS:
                raise ConfigError(f"unknown backend {index.backend!r}")
            index.option_config = resolve_options(index.backend, header["backend_options"])
        except (ConfigError, TypeError, AttributeError) as exc:
            raise IndexFileError(path, f"invalid backend options ({exc}); rebuild the index") from None
        index._lock = threading.Lock()
        index.dim = int(header["dim"])
        index.source = str(path)
        index.last_block_shape = None
        index._ids = contents["ids"]
        if header["id_type"] == "int":
            index._ids = index._ids.astype(np.int64)
        index._id_set = set(index._ids.tolist())
        index._vectors = np.zeros((0, index.dim), dtype=np.float32)
        index._pending = []
        index._faiss = None
        if index.backend == "exact":
            index._vectors = np.ascontiguousarray(contents["vectors"], dtype=np.float32)
            count = index._vectors.shape[0]
        else:
            faiss = _import_faiss()
            index._faiss = faiss.deserialize_index(contents["faiss_index"])
            count = index._faiss.ntotal
        if count != header["count"] or len(index._ids) != count:
            raise IndexFileError(path, f"header says {header['count']} vectors, file holds {count} "
                                       f"vectors and {len(index._ids)} ids")
        return index

