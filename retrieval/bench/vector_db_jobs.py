"""The jobs of ``retrieval bench vector-db`` (:mod:`retrieval.bench.vector_db`), each run in its own child
process (:func:`retrieval.scale.measure.run_measured`) so its peak memory is its own: the seeded data,
then one backend each (faiss exact, IVF, HNSW; LanceDB), every one reading the same vectors from the
work folder and scoring recall against the exact results the faiss exact job writes there.

Filters pass the rows whose ``bucket`` (uniform 0..99 per row) is below the filter's percentage; faiss
gets them as a bitmap (``IDSelectorBitmap`` in its SearchParameters), LanceDB as the SQL predicate
``bucket < P`` over a column of its table (prefiltered). A filtered search "returns k" when every query
got k results (every filter here passes >= 10,000 rows)."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np

FILTERS = (1, 10, 50)   # percent of rows a filter passes


def make_data(work: str, n: int, dim: int, queries: int, clusters: int, spread: float, seed: int) -> Dict:
    """Write vectors.npy (n, dim), queries.npy and bucket.npy (uint8, uniform 0..99) to ``work``."""
    from retrieval.scale.sources import unit_vectors

    rng = np.random.default_rng(seed)
    centres = unit_vectors(rng, clusters, dim)
    work_path = Path(work)
    np.save(work_path / "vectors.npy", unit_vectors(rng, n, dim, centres, spread))
    np.save(work_path / "queries.npy", unit_vectors(rng, queries, dim, centres, spread))
    np.save(work_path / "bucket.npy", rng.integers(0, 100, n).astype(np.uint8))
    return {"n": n, "dim": dim}


def _load(work: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    w = Path(work)
    return np.load(w / "vectors.npy"), np.load(w / "queries.npy"), np.load(w / "bucket.npy")


def _timed(fn: Callable[[], object]) -> Tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _recall(rows: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(np.intersect1d(a[a >= 0], b)) / k for a, b in zip(rows, truth)]))


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(float(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def _size_mb(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2 ** 20
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2 ** 20


def _search_speeds(search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray, truth: np.ndarray,
                   single: int) -> Dict:
    """Recall@k and queries/s of one batch of all queries and of ``single`` queries one at a time."""
    search(queries[:10])  # warm-up: thread pools, caches
    rows, batch_s = _timed(lambda: search(queries))
    _, single_s = _timed(lambda: [search(queries[i:i + 1]) for i in range(single)])
    return {"recall": round(_recall(rows, truth), 4), "batch_qps": round(len(queries) / batch_s, 1),
            "single_qps": round(single / single_s, 1)}


def _filter_result(rows: np.ndarray, seconds: float, bucket: np.ndarray, pct: int, truth: np.ndarray,
                   k: int, **extra) -> Dict:
    valid = rows >= 0
    return {"filter_pct": pct, "seconds": round(seconds, 3), "qps": round(len(rows) / seconds, 1),
            "all_k": bool((valid.sum(axis=1) == k).all()), "only_allowed": bool((bucket[rows[valid]] < pct).all()),
            "recall": round(_recall(rows, truth), 4), **extra}


# -------------------------------------------------------------------------------------------- faiss

def _bitmap_params(faiss, mask: np.ndarray, params):
    bits = np.packbits(mask, bitorder="little")
    params.sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
    return params, bits   # the caller keeps ``bits`` alive: faiss holds a raw pointer


def _faiss_filtered(faiss, index, kind: str, queries, k, bucket, truths, start: int) -> List[Dict]:
    """Each filter at the smallest nprobe (IVF) / efSearch (HNSW), doubling from ``start``, at which
    every query gets k results (HNSW: up to efSearch 2048, where it stops whether or not they all do);
    flat: one exact filtered search."""
    out = []
    for pct in FILTERS:
        mask = bucket < pct
        knob, limit = start, (index.nlist if kind == "ivf" else 2048)
        while True:
            params = {"flat": faiss.SearchParameters, "ivf": faiss.SearchParametersIVF,
                      "hnsw": faiss.SearchParametersHNSW}[kind]()
            if kind == "ivf":
                params.nprobe = knob
            elif kind == "hnsw":
                params.efSearch = max(knob, k)
            params, bits = _bitmap_params(faiss, mask, params)
            (_, rows), seconds = _timed(lambda: index.search(queries, k, params=params))
            done = (rows >= 0).sum(axis=1).min() == k
            if kind == "flat" or done or knob >= limit:
                break
            knob = min(2 * knob, limit)
        extra = {"nprobe": knob} if kind == "ivf" else {"ef_search": knob} if kind == "hnsw" else {}
        out.append(_filter_result(rows, seconds, bucket, pct, truths[pct], k, **extra))
    return out


def faiss_job(work: str, kind: str, k: int, single: int, settings: List[int], train: int = 0,
              nlist: int = 0, hnsw_m: int = 32, ef_construction: int = 80) -> Dict:
    """Build one faiss index (``kind``: flat, ivf or hnsw) over the work folder's vectors; time searches at
    each of ``settings`` (nprobe / efSearch); filtered searches. The flat job also writes the exact
    results (truth.npz: unfiltered and per filter) the other jobs score against."""
    import faiss

    x, queries, bucket = _load(work)
    n, d = x.shape
    start = time.perf_counter()
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
    else:
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = 0
        sample = np.random.default_rng(0).choice(n, size=min(n, train), replace=False)
        index.train(x[np.sort(sample)])
    index.add(x)
    build_s = time.perf_counter() - start
    del x
    rss_after_build = _rss_mb()
    path = Path(work) / f"faiss-{kind}.index"
    faiss.write_index(index, str(path))
    disk_mb = _size_mb(path)
    path.unlink()
    truth_path = Path(work) / "truth.npz"
    if kind == "flat":
        truth = {"all": index.search(queries, k)[1]}
        for pct in FILTERS:
            params, bits = _bitmap_params(faiss, bucket < pct, faiss.SearchParameters())
            truth[f"f{pct}"] = index.search(queries, k, params=params)[1]
        np.savez(truth_path, **truth)
    truth = np.load(truth_path)
    truths = {pct: truth[f"f{pct}"] for pct in FILTERS}
    rows = []
    for value in settings or [0]:
        if kind == "ivf":
            index.nprobe = value
        elif kind == "hnsw":
            index.hnsw.efSearch = max(value, k)
        rows.append({"setting": {"ivf": f"nprobe={value}", "hnsw": f"efSearch={value}"}.get(kind, "exact"),
                     **_search_speeds(lambda q: index.search(q, k)[1], queries, truth["all"], single)})
    filtered = _faiss_filtered(faiss, index, kind, queries, k, bucket, truths, settings[0] if settings else 0)
    return {"build_s": round(build_s, 1), "rss_after_build_mb": round(rss_after_build), "disk_mb": round(disk_mb),
            "searches": rows, "filtered": filtered, "threads": faiss.omp_get_max_threads()}


# ------------------------------------------------------------------------------------------ lancedb

def lancedb_job(work: str, k: int, single: int, build: Dict, settings: List[Dict], filter_queries: int = 200) -> Dict:
    """Build the LanceDB backend (options ``build``) over the work folder's vectors, with ``bucket`` as a
    metadata column; time searches at each of ``settings`` (search options); filtered searches at the
    first setting (``bucket < P`` prefiltered inside the index search; exact_below=0, so the ANN path is
    what is timed) on the first ``filter_queries`` queries: LanceDB's prefilter over 1M rows held 15 GB
    for a 50 % filter. Each figure is also printed as it comes."""
    from retrieval.indexing import lancedb_backend as ldb
    from retrieval.indexing.lancedb_options import LanceDBOptions

    x, queries, bucket = _load(work)
    folder = Path(work) / "lancedb"
    shutil.rmtree(folder, ignore_errors=True)
    opt = LanceDBOptions(**build)
    (store, build_s) = _timed(lambda: ldb.build(x, folder, opt, columns={"bucket": bucket}))
    del x
    rss_after_build = _rss_mb()
    disk_mb = _size_mb(folder)
    truth = np.load(Path(work) / "truth.npz")
    print(f"[lancedb] built in {build_s:.0f} s, {rss_after_build:.0f} MB resident", flush=True)
    rows = []
    for setting in settings:
        print(f"[lancedb] searching with {setting}", flush=True)
        o = opt.with_search(**setting)
        label = ", ".join(f"{key}={value}" for key, value in setting.items())
        rows.append({"setting": label, **_search_speeds(lambda q: ldb.search(store, q, k, o)[1], queries,
                                                        truth["all"], single)})
        print(f"[lancedb] {rows[-1]}", flush=True)
    queries = queries[:filter_queries]
    truth = {key: truth[key][:filter_queries] for key in truth.files}
    o = opt.with_search(**settings[0], exact_below=0)
    filtered = []
    for pct in FILTERS:
        print(f"[lancedb] filter bucket < {pct}", flush=True)
        (_, found), seconds = _timed(lambda: ldb.search(store, queries, k, o, where=f"bucket < {pct}"))
        filtered.append(_filter_result(found, seconds, bucket, pct, truth[f"f{pct}"], k,
                                       nprobes=f">={o.nprobes}"))
        print(f"[lancedb] {filtered[-1]}", flush=True)
    # the backend's own route for a narrow filter: exact over the passing rows (read back)
    o = opt.with_search(**settings[0])
    (_, found), seconds = _timed(lambda: ldb.search(store, queries, k, o, where=f"bucket < {FILTERS[0]}"))
    filtered.append(_filter_result(found, seconds, bucket, FILTERS[0], truth[f"f{FILTERS[0]}"], k,
                                   route=f"exact over passing rows (exact_below={o.exact_below})"))
    # the same filter as a boolean mask over rows (row IN (...) inside the search)
    mask = bucket < FILTERS[1]
    o = opt.with_search(**settings[0], exact_below=0)
    (_, found), seconds = _timed(lambda: ldb.search(store, queries, k, o, allowed=mask))
    filtered.append(_filter_result(found, seconds, bucket, FILTERS[1], truth[f"f{FILTERS[1]}"], k,
                                   route="bool mask, " + ("exact, table streamed" if int(mask.sum()) > ldb.MASK_IN_LIMIT
                                                          else "row IN (...) prefiltered")))
    shutil.rmtree(folder, ignore_errors=True)
    return {"build_s": round(build_s, 1), "rss_after_build_mb": round(rss_after_build), "disk_mb": round(disk_mb),
            "searches": rows, "filtered": filtered, "threads": os.cpu_count()}
