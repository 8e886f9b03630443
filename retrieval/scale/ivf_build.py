"""faiss IVF-Flat / IVF-PQ indexes built from stores larger than memory, and their exact re-ranking.

Build (:func:`build_index`): a seeded sample of rows (``train_size``, default about 50 per coarse
list) is gathered in one pass over the source and the index is trained on it exactly as
:class:`retrieval.indexing.index.Index` trains (:meth:`Index.trained`); a second pass adds the vectors
chunk by chunk. Only the sample, one chunk and the index itself are ever in memory: for IVF-PQ the
index holds ``m`` bytes of code + 8 bytes of list id per vector instead of ``4 d`` bytes.

Per-shard indexes (:func:`build_sharded_index` / :class:`ShardedIndex`): the trained, empty index is
saved once and copied per shard; each shard's vectors go into their own index file (today's
:class:`Index` file: checksum, version, dimension). A search asks every shard for its top-k with the
same coarse quantiser and probes, so the merged top-k is what one index over all shards returns.
With ``resident=False`` shards are loaded one at a time per search (IVF-Flat larger than memory);
``on_disk=True`` merges the shards into one index whose inverted lists stay in a file on disk
(:mod:`retrieval.scale.ondisk`).

Exact search over a source (:func:`exact_topk`) and exact re-ranking of an approximate shortlist
(:func:`rerank_exact`) stream the source once; they give the ground truth for recall and lift
IVF-PQ's recall: search PQ codes for a shortlist of ``k * shortlist_factor`` rows, re-score them
with the stored vectors, keep the top ``k``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Hashable, List, Optional, Sequence, Tuple, Union

import numpy as np

from retrieval.indexing.faiss_backend import default_nlist
from retrieval.indexing.exact import merge_topk
from retrieval.indexing.index import Index, IndexFileError, Ranking, exact_search, normalize_rows
from retrieval.scale.manifest import (MANIFEST, SHARDED_FORMAT, SHARDED_VERSION, check_shard, check_unique_ids, ids_digest,
                       read_manifest, write_manifest)

PathLike = Union[str, os.PathLike]

__all__ = ["build_index", "build_sharded_index", "ShardedIndex", "sample_rows", "gather_rows",
           "merge_topk", "exact_topk", "rerank_exact", "recall_at_k"]


def sample_rows(n: int, size: int, seed: int = 0) -> np.ndarray:
    """``size`` distinct row positions of ``0..n-1`` drawn with ``default_rng(seed)``, sorted (all
    rows, in order, when ``size >= n``)."""
    if size >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False)).astype(np.int64)


def gather_rows(source, rows: np.ndarray) -> np.ndarray:
    """The vectors at sorted row positions ``rows`` of ``source``, in one pass over its chunks."""
    out = np.empty((len(rows), source.dim), dtype=np.float32)
    lo, filled = 0, 0
    for _, vectors in source.iter_chunks():
        hi = lo + len(vectors)
        a, b = np.searchsorted(rows, [lo, hi])
        out[a:b] = vectors[rows[a:b] - lo]
        filled += b - a
        lo = hi
    if filled != len(rows):
        raise ValueError(f"source yielded {lo} rows, fewer than its n={source.n}")
    return out


def _build_options(source, backend: str, train_size: Optional[int], seed: int, options: dict) -> Tuple[dict, int]:
    if backend not in ("faiss-ivf", "faiss-ivfpq"):
        raise ValueError(f"backend must be 'faiss-ivf' or 'faiss-ivfpq', not {backend!r}")
    if source.n == 0:
        raise ValueError("the source holds no vectors")
    options = dict(options)
    if options.get("nlist") is None:
        options["nlist"] = default_nlist(source.n)  # from the full size, not the sample's
    options.setdefault("seed", seed)
    if train_size is None:
        nbits = int(options.get("nbits") or 8)
        train_size = max(50 * int(options["nlist"]), 2 ** nbits if backend == "faiss-ivfpq" else 0, 10_000)
    return options, int(min(train_size, source.n))


def build_index(source, backend: str = "faiss-ivfpq", train_size: Optional[int] = None, seed: int = 0,
                normalize: bool = True, progress: bool = True, **options) -> Index:
    """An IVF index over every vector of ``source`` (see the module docstring), without holding
    them all. ``options`` are the backend's (``nlist``, ``m``, ``nbits``, ``nprobe``, ``seed``);
    ``train_size`` rows sampled with ``seed`` train it (all rows, in order, when ``train_size >= n``:
    the result then equals ``Index(all_vectors, backend=...)``)."""
    from tqdm.auto import tqdm

    options, train_size = _build_options(source, backend, train_size, seed, options)
    index = Index.trained(gather_rows(source, sample_rows(source.n, train_size, seed)), backend,
                          normalize=normalize, config=source.config, **options)
    with tqdm(total=source.n, desc=f"add {backend}", unit="vec", disable=not progress, leave=False) as bar:
        for ids, vectors in source.iter_chunks():
            index.add(vectors, ids)
            bar.update(len(vectors))
    return index


def _shards_of(source) -> list:
    return list(getattr(source, "sources", [source]))


def build_sharded_index(source, out_dir: PathLike, backend: str = "faiss-ivfpq", train_size: Optional[int] = None,
                        seed: int = 0, normalize: bool = True, progress: bool = True, on_disk: bool = False,
                        **options) -> Path:
    """One index file per shard of ``source`` (a :class:`~retrieval.scale.sources.ConcatSource`'s
    shards, else the whole source as one shard), all sharing one trained quantiser, plus
    ``manifest.json``. Shard files already written by an earlier run with the same trained index
    are kept (resume). ``on_disk``: also merge them into one index whose inverted lists stay on
    disk (:func:`retrieval.scale.ondisk.merge_on_disk`; open it with ``load_on_disk``). Returns
    ``out_dir``."""
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    options, train_size = _build_options(source, backend, train_size, seed, options)
    trained_path = out / "trained.npz"
    if not trained_path.is_file():
        Index.trained(gather_rows(source, sample_rows(source.n, train_size, seed)), backend,
                      normalize=normalize, config=source.config, **options).save(trained_path)
    entries = []
    previous = read_manifest(out) if (out / MANIFEST).is_file() else {}
    recorded = {e["file"]: e.get("ids_sha256") for e in previous.get("shards", [])}
    for s, shard in enumerate(tqdm(_shards_of(source), desc="index shards", unit="shard", disable=not progress)):
        path = out / f"shard-{s:05d}.npz"
        index = None
        if path.is_file():
            try:
                index = Index.load(path)
            except IndexFileError:
                index = None
            # resumed only when it holds this shard's vectors (a copy of another shard is rebuilt)
            if index is not None and (len(index) != shard.n
                                      or recorded.get(path.name) not in (None, ids_digest(index.ids))):
                index = None
        if index is None:
            index = Index.load(trained_path)
            for ids, vectors in shard.iter_chunks():
                index.add(vectors, ids)
            index.save(path)
        entries.append({"file": path.name, "count": int(shard.n), "ids_sha256": ids_digest(index.ids)})
        del index
    manifest = {"format": SHARDED_FORMAT, "version": SHARDED_VERSION, "backend": backend, "dim": int(source.dim),
                "count": int(source.n), "trained": trained_path.name, "shards": entries}
    if "on_disk" in previous:  # kept: merge_on_disk decides whether it is still current
        manifest["on_disk"] = previous["on_disk"]
    write_manifest(out, manifest)
    if on_disk:
        from retrieval.scale.ondisk import merge_on_disk

        merge_on_disk(out, progress=progress)
    return out


class ShardedIndex:
    """Per-shard index files written by :func:`build_sharded_index`, searched as one index."""

    def __init__(self, paths: List[Path], counts: List[int], resident: bool = True,
                 entries: Optional[List[dict]] = None):
        self.paths, self.counts = paths, counts
        # each shard's manifest entry (count, ids digest), checked whenever the shard is loaded
        self.entries = entries if entries is not None else [{"count": c} for c in counts]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.resident = resident
        self._shards = [self._load(s) for s in range(len(paths))] if resident else None
        if resident:
            check_unique_ids(paths[0].parent, [p.name for p in paths], [x.ids for x in self._shards])
        self.dim = (self._shards[0] if resident else self._load(0)).dim

    def _load(self, s: int) -> Index:
        index = Index.load(self.paths[s])
        check_shard(self.paths[s], self.entries[s], index)
        return index

    @classmethod
    def load(cls, out_dir: PathLike, resident: bool = True) -> "ShardedIndex":
        out = Path(out_dir)
        manifest = read_manifest(out)
        total = sum(int(e["count"]) for e in manifest["shards"])
        if total != manifest["count"]:
            raise IndexFileError(out / MANIFEST, f"its shards hold {total} vectors, its count says "
                                                 f"{manifest['count']}: edited; rebuild the sharded index")
        return cls([out / e["file"] for e in manifest["shards"]], [int(e["count"]) for e in manifest["shards"]],
                   resident=resident, entries=manifest["shards"])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _indexes(self):
        return self._shards if self.resident else (self._load(s) for s in range(len(self.paths)))

    def search(self, queries, k: int = 100, query_ids: Optional[Sequence[Hashable]] = None,
               **search_options) -> Ranking:
        """Every shard's top-``k`` (search options passed per call), merged."""
        scores, rows, ids = [], [], []
        for offset, index in zip(self.offsets, self._indexes()):
            ranking = index.search(queries, k=k, **search_options)
            scores.append(ranking.scores)
            rows.append(np.where(ranking.indices < 0, -1, ranking.indices + offset))
            ids.append(index.ids)
            if len(ids) > 1 and ids[-1].dtype.kind != ids[0].dtype.kind:
                raise IndexFileError(self.paths[len(ids) - 1], "shards mix string and integer ids")
        if not self.resident:
            check_unique_ids(self.paths[0].parent, [p.name for p in self.paths], ids)
        best_scores, best_rows = merge_topk(scores, rows, min(k, len(self)))
        all_ids = np.concatenate(ids)
        out_ids = all_ids[np.maximum(best_rows, 0)]
        return Ranking(ids=out_ids, scores=best_scores, indices=best_rows, query_ids=query_ids)


def _unit(queries, normalize: bool) -> np.ndarray:
    q = np.ascontiguousarray(queries, dtype=np.float32)
    return normalize_rows(q, "query vectors") if normalize else q


def exact_topk(source, queries, k: int, normalize: bool = True, memory_mb: float = 256.0) -> Tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` (scores, global rows) of every query over ``source``, one chunk at a time."""
    q = _unit(queries, normalize)
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_r = np.zeros((len(q), 0), np.int64)
    lo = 0
    for _, vectors in source.iter_chunks():
        db = normalize_rows(vectors) if normalize else np.ascontiguousarray(vectors, dtype=np.float32)
        s, r, _ = exact_search(db, q, k, memory_mb)
        best_s, best_r = merge_topk([best_s, s], [best_r, r + lo], k)
        lo += len(vectors)
    return best_s, best_r


def rerank_exact(source, queries, candidates: np.ndarray, k: int, normalize: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """Re-score each query's candidate rows (``(Q, K)`` global rows, -1 = none) with the exact
    vectors of ``source`` (one pass) and keep the top ``k``: (scores, rows)."""
    q = _unit(queries, normalize)
    candidates = np.array(candidates, dtype=np.int64)
    order = np.argsort(candidates, axis=1, kind="stable")
    ranked = np.take_along_axis(candidates, order, 1)
    repeat = np.zeros(candidates.shape, dtype=bool)
    repeat[:, 1:] = ranked[:, 1:] == ranked[:, :-1]
    np.put_along_axis(candidates, order, np.where(repeat, -1, ranked), 1)  # a row listed twice counts once
    exact = np.full(candidates.shape, -np.inf, dtype=np.float32)
    lo = 0
    for _, vectors in source.iter_chunks():
        hi = lo + len(vectors)
        qi, ci = np.nonzero((candidates >= lo) & (candidates < hi))
        if len(qi):
            db = vectors[candidates[qi, ci] - lo]
            if normalize:
                db = normalize_rows(db)
            exact[qi, ci] = np.einsum("ij,ij->i", q[qi], db)
        lo = hi
    return merge_topk([exact], [candidates], k)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found row set ∩ true row set| / k (k = truth's width)."""
    k = truth.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found.tolist(), truth.tolist())]))
