"""The common ranking stage: an inner-product (cosine) index over L2-normalised float32 vectors.

Every global method (BoW, VLAD, Fisher, EfficientNet, multi-view) ends here: build an
:class:`Index` from the database vectors, :meth:`Index.search` the query vectors, get a
:class:`Ranking` (database ids, scores and row positions, best first), hand
:meth:`Ranking.to_predictions` to :mod:`retrieval.evaluation.metrics`.

Backends
--------
``"exact"``
    Brute force: ``scores = Q_block @ D_block^T`` (numpy's multi-threaded BLAS sgemm) followed by a
    partial top-k (``torch.topk``), never a full sort. Where the CPU multiplies bfloat16 natively,
    ``precision="auto"`` (default) finds the top k with a bfloat16 product whose error is bounded,
    then re-scores the candidates in float32: the same top k at about half the arithmetic
    (:mod:`retrieval.indexing.exact_bf16`); ``precision="float32"`` keeps float32 throughout. Blocks sized from
    ``memory_mb`` bound the score matrix held at once; block results are merged exactly. Ties are ordered deterministically: equal scores, lower database
    row first (also at the k-th position).
``"faiss-flat"``
    ``faiss.IndexFlatIP`` (exact, faiss' own BLAS + heap).
``"faiss-ivf"``
    ``faiss.IndexIVFFlat`` with inner product; options ``nlist`` (default ``4 sqrt(N)``, at most
    ``N/39``), ``nprobe`` (default 16), ``seed``.
``"faiss-ivfpq"``
    ``faiss.IndexIVFPQ``; options ``nlist``, ``m`` (sub-quantisers dividing ``D``; default the largest
    divisor <= 64 leaving >= 16 dimensions each), ``nbits`` (default 8), ``nprobe``, ``seed``.
``"faiss-hnsw"``
    ``faiss.IndexHNSWFlat`` with inner product; options ``hnsw_m`` (links per node, default 32),
    ``ef_construction`` (default 80), ``ef_search`` (default 128) (aliases efConstruction / efSearch).

Every option is checked (:mod:`retrieval.indexing.index_options`, one :class:`retrieval.core.config.Config` per
backend) before faiss sees it: a bad value is a ValueError naming it, never a faiss abort or hang.
Per-call search options go to faiss as SearchParameters, never onto the shared index, so threads
may search one index with different options at once.

The faiss backends need the ``faiss`` extra; faiss is imported only when one of them is used.

Vectors
-------
With ``normalize=True`` (default) database and query vectors are L2-normalised here, so the score
is the cosine similarity. With ``normalize=False`` vectors must already have unit norm (within
``1e-3``); anything else is refused rather than silently ranked by an unnormalised inner product.
Vectors are converted to float32; they must be 2-D, finite, of a real floating dtype and of the
index's dimension. An all-zero row (an image without keypoints) has no direction: it is refused,
unless ``zero_rows="keep"`` (recorded in the file), which keeps it as zero: it scores 0 against
everything, database or query.

Files
-----
:meth:`Index.save` writes one ``.npz`` archive (no pickle): the arrays (vectors or the serialised faiss
index as uint8, ids, removed rows) and a JSON header (format, version, dimension, count, backend and
options, extractor configuration, SHA-256 of it all); :meth:`Index.load` refuses truncated, altered or
other-version files with :class:`IndexFileError`. Growing collections: :mod:`retrieval.indexing.collection`.
"""
from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Hashable, List, Optional, Sequence, Tuple, Union

import numpy as np

from retrieval.indexing.exact_bf16 import max_row_norm, topk_bf16, use_bf16
from retrieval.indexing.exact import exact_block_shape, exact_search
from retrieval.indexing.faiss_backend import build_faiss, faiss_search, import_faiss
from retrieval.core.fileio import digest, save_npz
from retrieval.indexing.filtered import allowed_mask, exact_filtered, faiss_filtered, missing_results
from retrieval.indexing.index_file import index_from_parts, load_index
from retrieval.indexing.index_options import DEFAULT_MEMORY_MB, resolve_options, search_options as _search_options
from retrieval.indexing.ranking import FORMAT_VERSION, IndexFileError, Ranking
from retrieval.core.vectors import as_matrix as _as_matrix, check_unit_norm as _check_unit_norm, id_array as _id_array
from retrieval.core.vectors import l2_normalize_rows, normalize_rows

# Ranking, IndexFileError, exact_search, exact_block_shape, DEFAULT_MEMORY_MB, normalize_rows: importable here
__all__ = ["Index", "Ranking", "IndexFileError", "BACKENDS", "normalize_rows", "exact_search", "exact_block_shape",
           "DEFAULT_MEMORY_MB"]

PathLike = Union[str, os.PathLike]
INDEX_FORMAT = "hybrid-retrieval/index"
METRIC = "inner_product"
BACKENDS = ("exact", "faiss-flat", "faiss-ivf", "faiss-ivfpq", "faiss-hnsw")


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
                 normalize: bool = True, config: Optional[dict] = None, zero_rows: str = "error", **options):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
        if zero_rows not in ("error", "keep"):
            raise ValueError(f"zero_rows must be 'error' or 'keep', got {zero_rows!r}")
        self.backend, self.zero_rows = backend, zero_rows
        self.normalize = bool(normalize)
        self.config = dict(config or {})
        # every option is checked here, before faiss sees it (faiss crashes on some bad values)
        self.option_config = resolve_options(backend, options)
        self._lock = threading.Lock()  # guards the exact backend's consolidation of added vectors
        self.source: Optional[str] = None  # file this index was loaded from (for error messages)
        self._reset_search_state()
        vectors = self._prepare(vectors, "database vectors")
        self.dim = int(vectors.shape[1])
        if self.dim == 0:
            raise ValueError("database vectors have dimension 0")
        self._ids = np.zeros(0, dtype=np.int64)
        self._id_set: set = set()
        self._vectors = np.zeros((0, self.dim), dtype=np.float32)  # exact backend only
        self._pending: List[np.ndarray] = []  # exact: vectors added since the last consolidation
        self._faiss = None
        self.removed: Optional[np.ndarray] = None  # faiss backends: rows removed but still stored
        if backend != "exact":
            self._faiss = self._build_faiss(vectors)
        self._append(vectors, ids)

    # -- construction ------------------------------------------------------------------------

    def _reset_search_state(self) -> None:
        # what the last exact search did (block shape, precision, bfloat16 candidates per query)
        self.last_block_shape: Optional[Tuple[int, int]] = None
        self.last_precision: Optional[str] = None
        self.last_candidates: Optional[float] = None
        self._bf16 = None  # (float32 matrix it was made from, its bfloat16 copy, its largest row norm)

    @property
    def options(self) -> Dict[str, Any]:
        """The backend options as a dict (with the values chosen from the data filled in)."""
        return self.option_config.to_dict()

    def _prepare(self, vectors, what: str) -> np.ndarray:
        arr = _as_matrix(vectors, what)
        keep = self.zero_rows == "keep"  # an all-zero row (an image without keypoints) scores 0 against all
        if self.normalize:
            return l2_normalize_rows(arr, 0.0, "keep" if keep else "error", what, copy=True) if arr.size else arr
        _check_unit_norm(arr[np.any(arr != 0, axis=1)] if keep else arr, what)
        return arr

    def _build_faiss(self, vectors: np.ndarray):
        index, self._quantizer, self.option_config = build_faiss(self.backend, self.dim, vectors, self.option_config)
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
            dup = next(x for x, c in Counter(new_list).items() if c > 1)
            raise ValueError(f"ids must be unique; {dup!r} appears more than once")
        clash = new_set & self._id_set  # a removed id may come back (as a new row)
        if clash:
            raise ValueError(f"ids already in the index: {sorted(clash, key=str)[:5]}")
        if self._faiss is not None:
            if n_new:
                self._faiss.add(vectors)
                if self.removed is not None:
                    self.removed = np.concatenate([self.removed, np.zeros(n_new, bool)])
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

    def remove(self, ids: Sequence[Hashable]) -> int:
        """Remove the rows of ``ids`` (every one must be in the index); returns how many. The exact
        backend drops them; faiss backends keep them stored but never return them (:attr:`removed`)
        until the index is rebuilt (:mod:`retrieval.indexing.collection` compacts)."""
        wanted = _id_array(ids).tolist()
        unknown = [i for i in wanted if i not in self._id_set]
        if unknown:
            raise KeyError(f"ids not in the index: {unknown[:5]}")
        drop = np.isin(self._ids, np.asarray(wanted, dtype=self._ids.dtype))
        if self.removed is not None:
            drop &= ~self.removed
        if self._faiss is None:
            with self._lock:
                self._vectors, self._pending = self._matrix_unlocked()[~drop], []
                self._ids = self._ids[~drop]
                self._bf16 = None
        else:
            self.removed = drop if self.removed is None else (self.removed | drop)
        self._id_set -= set(wanted)
        return int(drop.sum())

    def _matrix_unlocked(self) -> np.ndarray:
        if self._pending:
            parts = ([self._vectors] if len(self._vectors) else []) + self._pending
            self._vectors = parts[0] if len(parts) == 1 else np.concatenate(parts)
            self._pending = []
        return self._vectors

    def _matrix(self) -> np.ndarray:
        """The exact backend's (N, D) matrix, with pending additions concatenated in (under a lock:
        threads searching one index must not concatenate the same additions twice)."""
        with self._lock:
            return self._matrix_unlocked()

    # -- properties ----------------------------------------------------------------------------

    def __len__(self) -> int:
        """Searchable vectors (removed rows not counted)."""
        return len(self._ids) - (int(self.removed.sum()) if self.removed is not None else 0)

    @property
    def rows(self) -> int:
        """Stored rows, removed ones included."""
        return len(self._ids)

    @property
    def ids(self) -> np.ndarray:
        """Database ids in row order (removed rows included: see :attr:`live_ids`)."""
        return self._ids

    @property
    def live_ids(self) -> np.ndarray:
        """Ids of the rows a search may return, in row order."""
        return self._ids if self.removed is None else self._ids[~self.removed]

    @property
    def vectors(self) -> np.ndarray:
        """The stored (normalised) database vectors: exact backend, and faiss-flat / faiss-hnsw
        via faiss reconstruction."""
        if self._faiss is None:
            return self._matrix()
        if self.backend in ("faiss-flat", "faiss-hnsw"):
            return self._faiss.reconstruct_n(0, self.rows) if self.rows else np.zeros((0, self.dim), np.float32)
        raise ValueError(f"backend {self.backend!r} does not keep the original vectors")

    def __repr__(self) -> str:
        return f"Index(backend={self.backend!r}, n={len(self)}, dim={self.dim})"

    # -- search --------------------------------------------------------------------------------

    def search(self, queries, k: int = 100, query_ids: Optional[Sequence[Hashable]] = None,
               allowed=None, **search_options) -> Ranking:
        """Top-``k`` database items for each query, best first. ``k`` larger than the database is
        clamped to its size. ``allowed``: a boolean mask over rows (or row positions) a result may
        come from, applied inside the search (:mod:`retrieval.indexing.filtered`); a query then has
        ``min(k, allowed rows)`` results, the rest missing. ``search_options`` override ``memory_mb`` (exact), ``nprobe`` (IVF) or
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
        if allowed is not None or self.removed is not None:
            mask = allowed_mask(allowed, self.rows, where) if allowed is not None else ~self.removed
            if self.removed is not None and allowed is not None:
                mask = mask & ~self.removed
            scores, rows = self._filtered_search(arr, k, mask, options)
        elif k == 0 or nq == 0:
            scores = np.zeros((nq, k), np.float32)
            rows = np.zeros((nq, k), np.int64)
        elif self._faiss is None:
            scores, rows = self._exact_search(arr, k, options)
        else:
            scores, rows = self._faiss_search(arr, k, options)
        return self._ranking(scores, rows, query_ids)

    def _exact_search(self, queries: np.ndarray, k: int, options) -> Tuple[np.ndarray, np.ndarray]:
        matrix = self._matrix()
        qb, dbb = exact_block_shape(len(queries), len(matrix), k, options.memory_mb)
        bf16, max_candidates = use_bf16(len(matrix), k, options.precision, whole_rows=dbb == len(matrix))
        if bf16:
            with self._lock:  # the bfloat16 copy, made once per database state (+50% memory)
                if self._bf16 is None or self._bf16[0] is not matrix:
                    import torch
                    self._bf16 = (matrix, torch.from_numpy(matrix).bfloat16(), max_row_norm(matrix))
                _, database_bf16, max_norm = self._bf16
            found = topk_bf16(matrix, database_bf16, queries, k, qb, max_candidates, max_norm)
            if found is not None:
                scores, rows, self.last_candidates = found
                self.last_block_shape, self.last_precision = (qb, dbb), "bfloat16"
                return scores, rows
        scores, rows, self.last_block_shape = exact_search(matrix, queries, k, options.memory_mb)
        self.last_precision, self.last_candidates = "float32", None
        return scores, rows

    def _filtered_search(self, queries: np.ndarray, k: int, mask: np.ndarray, options):
        if k == 0 or len(queries) == 0:
            return missing_results(len(queries), k)
        if self._faiss is None:
            def search(sub, q, kk):
                return exact_search(sub, q, kk, options.memory_mb)[:2]
            return exact_filtered(self._matrix(), queries, k, mask, search)
        return faiss_filtered(self._faiss, self.backend, queries, k, mask, options, self._faiss.reconstruct_batch)

    def _faiss_search(self, queries: np.ndarray, k: int, options) -> Tuple[np.ndarray, np.ndarray]:
        return faiss_search(self._faiss, self.backend, queries, k, options)

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
            faiss = import_faiss()
            arrays["faiss_index"] = faiss.serialize_index(self._faiss)
            if self.removed is not None and self.removed.any():
                arrays["removed"] = self.removed
        return arrays

    def _header(self) -> dict:
        return {
            "format": INDEX_FORMAT, "format_version": FORMAT_VERSION,
            "dim": self.dim, "count": self.rows, "metric": METRIC,
            "backend": self.backend, "backend_options": self.options,
            "normalize": self.normalize, "config": self.config, "zero_rows": self.zero_rows,
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
        return load_index(cls, path, INDEX_FORMAT, expect_config)

    @classmethod
    def from_parts(cls, backend: str, options: dict, ids: np.ndarray, dim: int, normalize: bool = True,
                   config: Optional[dict] = None, source: Optional[PathLike] = None, int_ids: bool = True,
                   vectors: Optional[np.ndarray] = None, faiss_index: Any = None,
                   zero_rows: str = "error", removed: Optional[np.ndarray] = None) -> "Index":
        """An index around stored parts: ``vectors`` (exact backend) or a ready ``faiss_index``
        (e.g. one whose inverted lists stay on disk, :mod:`retrieval.scale.ondisk`), its ``ids``
        (row order), backend ``options`` and the ``removed`` rows mask (faiss backends of a
        collection). Inconsistent parts are an :class:`IndexFileError` naming ``source``."""
        return index_from_parts(cls.__new__(cls), BACKENDS, backend, options, ids, dim, normalize, config, source, int_ids,
                                vectors, faiss_index, zero_rows, removed)
