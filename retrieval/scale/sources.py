"""Vector sources: what the large-scale index builder reads, one chunk at a time.

A source is any object with

* ``dim`` (int) and ``n`` (int): vector dimension and row count,
* ``config`` (dict): the extractor configuration the vectors were made with (stored in the index),
* ``iter_chunks()``: yields ``(ids, vectors)`` in row order, ``ids`` a 1-D array of ``len(vectors)``
  ids and ``vectors`` a float32 ``(rows, dim)`` array; the whole store is never held at once.

Adapters here: :class:`ArraySource` (an in-memory matrix, for tests and small data),
:class:`H5GlobalSource` (one HDF5 global feature file as :mod:`retrieval.features.store` writes it,
read by h5py slicing), :class:`ConcatSource` (several sources - shards - read as one, in order;
:func:`h5_shards` for a list of files) and :class:`ShardedStoreSource` (the sharded store that
``retrieval extract ... --engine ray`` writes, one checksummed shard at a time).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import h5py
import numpy as np

from retrieval.features.store import FORMAT_VERSION, GLOBAL_FORMAT, FeatureFileError, GlobalFeatureWriter
from retrieval.core.fileio import check_header

PathLike = Union[str, os.PathLike]
Chunk = Tuple[np.ndarray, np.ndarray]

__all__ = ["ArraySource", "H5GlobalSource", "ConcatSource", "ShardedStoreSource", "h5_shards", "unit_vectors",
           "write_synthetic_shards", "DEFAULT_CHUNK_ROWS"]

DEFAULT_CHUNK_ROWS = 50_000


class ArraySource:
    """An in-memory ``(n, dim)`` matrix with ids (default ``0..n-1``) served in chunks."""

    def __init__(self, vectors: np.ndarray, ids: Optional[Sequence] = None, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                 config: Optional[dict] = None):
        self.vectors = np.asarray(vectors, dtype=np.float32)
        if self.vectors.ndim != 2:
            raise ValueError(f"vectors must be (n, dim), got shape {self.vectors.shape}")
        self.ids = np.arange(len(self.vectors)) if ids is None else np.asarray(ids)
        if len(self.ids) != len(self.vectors):
            raise ValueError(f"{len(self.ids)} ids for {len(self.vectors)} vectors")
        self.n, self.dim = self.vectors.shape
        self.chunk_rows = int(chunk_rows)
        self.config = dict(config or {})

    def iter_chunks(self) -> Iterator[Chunk]:
        for lo in range(0, self.n, self.chunk_rows):
            yield self.ids[lo:lo + self.chunk_rows], self.vectors[lo:lo + self.chunk_rows]


class H5GlobalSource:
    """One global feature file (``retrieval.features.store`` format: ``ids``, ``vectors``, header
    attributes) read ``chunk_rows`` rows at a time. The header is checked on opening (format,
    version, complete row count, and the configuration when ``expect_config`` is given)."""

    def __init__(self, path: PathLike, chunk_rows: int = DEFAULT_CHUNK_ROWS, expect_config: Optional[dict] = None):
        self.path = Path(path)
        self.chunk_rows = int(chunk_rows)
        if not self.path.is_file():
            raise FeatureFileError(self.path, "no such global-feature file")
        try:
            with h5py.File(self.path, "r") as f:
                check_header(self.path, f.attrs, GLOBAL_FORMAT, FORMAT_VERSION, error=FeatureFileError)
                self.config = json.loads(f.attrs.get("config", "{}"))
                self.n = int(f.attrs.get("count", -1))
                shape = f["vectors"].shape
                n_ids = f["ids"].shape[0]
        except (OSError, KeyError) as exc:
            raise FeatureFileError(self.path, f"not a readable global-feature file ({exc})") from None
        if self.n < 0 or n_ids < self.n or shape[0] < self.n:
            raise FeatureFileError(self.path, f"incomplete: header says {self.n} rows, file has {n_ids} ids "
                                              f"and {shape[0]} vectors (an interrupted run?)")
        self.dim = int(shape[1])
        if expect_config is not None and json.dumps(self.config, sort_keys=True, default=str) != \
                json.dumps(expect_config, sort_keys=True, default=str):
            raise FeatureFileError(self.path, f"made with configuration {self.config}, expected {expect_config}")

    def iter_chunks(self) -> Iterator[Chunk]:
        with h5py.File(self.path, "r") as f:
            ids_ds, vec_ds = f["ids"], f["vectors"]
            for lo in range(0, self.n, self.chunk_rows):
                hi = min(lo + self.chunk_rows, self.n)
                ids = ids_ds.asstr()[lo:hi]
                yield np.asarray(ids, dtype=str), np.asarray(vec_ds[lo:hi], dtype=np.float32)


class ConcatSource:
    """Several sources (shards) read one after the other as one logical store. They must share the
    dimension and the configuration."""

    def __init__(self, sources: Sequence):
        self.sources = list(sources)
        if not self.sources:
            raise ValueError("no shards given")
        first = self.sources[0]
        for s in self.sources[1:]:
            if s.dim != first.dim:
                raise ValueError(f"shard {getattr(s, 'path', s)} has dimension {s.dim}, the first has {first.dim}")
            if json.dumps(s.config, sort_keys=True, default=str) != json.dumps(first.config, sort_keys=True,
                                                                                 default=str):
                raise ValueError(f"shard {getattr(s, 'path', s)} was made with configuration {s.config}, "
                                 f"the first with {first.config}")
        self.dim, self.config = first.dim, first.config
        self.n = sum(s.n for s in self.sources)

    def iter_chunks(self) -> Iterator[Chunk]:
        for s in self.sources:
            yield from s.iter_chunks()


class ShardedStoreSource:
    """A global :class:`retrieval.features.shards.ShardedStore` (``retrieval extract global
    --engine ray`` output) as a source: one chunk per shard, each checksummed against the manifest."""

    def __init__(self, store):
        self.store = store
        entries = store.entries()
        if not entries:
            raise FeatureFileError(store.root, "the sharded store has no complete shards")
        self.n = sum(len(e["ids"]) for e in entries.values())
        with h5py.File(store.shard_path(min(entries)), "r") as f:
            self.dim = int(f["vectors"].shape[1])
        self.config = dict(store.config)

    def iter_chunks(self) -> Iterator[Chunk]:
        for ids, vectors in self.store.iter_global():
            yield np.asarray(ids, dtype=str), vectors


def h5_shards(paths: Sequence[PathLike], chunk_rows: int = DEFAULT_CHUNK_ROWS,
              expect_config: Optional[dict] = None) -> ConcatSource:
    """HDF5 global feature shard files (in the given order) as one source."""
    return ConcatSource([H5GlobalSource(p, chunk_rows, expect_config) for p in paths])


def unit_vectors(rng: np.random.Generator, n: int, dim: int, centres: Optional[np.ndarray] = None,
                 spread: float = 0.5, chunk: int = 20_000) -> np.ndarray:
    """(n, dim) float32 Gaussian vectors scaled to unit length, generated in chunks (no float64
    copy). With ``centres`` each vector is a random centre plus noise of norm about ``spread``
    (clustered, as real descriptors are; isotropic data is the worst case for approximate search)."""
    out = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - lo), dim), dtype=np.float32)
        if centres is not None:
            block *= spread / np.sqrt(dim)
            block += centres[rng.integers(0, len(centres), len(block))]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[lo:lo + len(block)] = block
    return out


def write_synthetic_shards(out_dir: PathLike, n: int, dim: int, shards: int, clusters: int = 0,
                           spread: float = 0.5, seed: int = 0, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                           queries: int = 0) -> Tuple[List[Path], np.ndarray]:
    """Seeded unit vectors (clustered around ``clusters`` random centres, or isotropic) written as
    ``shards`` global feature files ``shard-00000.h5 ...`` of about ``n / shards`` rows, ids
    ``"<shard>-<row>"``; never more than ``chunk_rows`` rows in memory. Also returns ``queries`` held-out
    vectors from the same distribution. Existing complete shards of the same size are kept (resume)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centres = unit_vectors(rng, clusters, dim) if clusters > 0 else None
    query_vectors = unit_vectors(rng, queries, dim, centres, spread)
    bounds = np.linspace(0, n, shards + 1).astype(int)
    paths = []
    config = {"synthetic": True, "dim": dim, "clusters": clusters, "spread": spread, "seed": seed}
    for s in range(shards):
        path = out_dir / f"shard-{s:05d}.h5"
        rows = int(bounds[s + 1] - bounds[s])
        paths.append(path)
        shard_rng = np.random.default_rng([seed, s])  # each shard reproducible on its own
        try:
            if H5GlobalSource(path).n == rows:
                continue
        except FeatureFileError:
            pass
        tmp = path.with_name(path.name + ".tmp")
        with GlobalFeatureWriter(tmp, dim, config=config, overwrite=True) as writer:
            for lo in range(0, rows, chunk_rows):
                m = min(chunk_rows, rows - lo)
                writer.append([f"{s:05d}-{lo + i:07d}" for i in range(m)],
                              unit_vectors(shard_rng, m, dim, centres, spread))
        os.replace(tmp, path)
    return paths, query_vectors
