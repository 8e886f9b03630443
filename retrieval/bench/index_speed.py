"""The ranking stage: the exact backend (numpy BLAS GEMM + torch top-k) against faiss' IndexFlatIP
(and, with --approx, the approximate faiss backends).

Seeded random unit vectors (default 100,000 x 1,280 database, 1,000 queries, top-100). For each
backend: build time, search time (warm-up first, then the median of --repeats full searches),
queries per second, the throughput ratio against faiss Flat measured in this same run, agreement
with the exact ranking (scores within --tol, and the same ids wherever the scores are not tied
within --tol), recall@k against the exact ranking (approximate backends), peak memory and the
block shape the exact backend used.

    python benchmarks/bench_index.py                 # full size
    python benchmarks/bench_index.py --quick         # 20,000 x 1,280, 200 queries
    python benchmarks/bench_index.py --approx        # also IVF-Flat, IVF-PQ, HNSW
    python benchmarks/bench_index.py --quick --approx --clusters 1000   # clustered data

Isotropic random vectors have no structure for the approximate backends to exploit (their recall
there is a lower bound); ``--clusters`` draws vectors around random centres instead.

Writes results.json + results.md to --out (default results/bench_index/) and prints the table.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List, Tuple

import numpy as np

from retrieval.indexing.index import Index, Ranking
from retrieval.core.report import peak_rss_mb, write_results
from retrieval.scale.sources import unit_vectors


def time_search(search: Callable[[], Ranking], repeats: int) -> Tuple[Ranking, List[float]]:
    search()  # warm-up: thread pools, page faults of the score buffers
    times, ranking = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        ranking = search()
        times.append(time.perf_counter() - start)
    return ranking, times


def agreement(ranking: Ranking, reference: Ranking, tol: float) -> Dict[str, float]:
    """Score lists equal within ``tol``; ids equal wherever the reference score at that rank is
    separated from its neighbours by more than ``tol`` (tied items may come in either order)."""
    score_diff = float(np.abs(ranking.scores - reference.scores).max()) if ranking.scores.size else 0.0
    ref = reference.scores.astype(np.float64)
    gap = np.full(ref.shape, np.inf)
    if ref.shape[1] > 1:
        step = np.abs(np.diff(ref, axis=1))
        gap[:, 1:] = np.minimum(gap[:, 1:], step)
        gap[:, :-1] = np.minimum(gap[:, :-1], step)
    # the last place can also tie with the first item left out: scores within tol of the cut
    gap[:, -1] = np.minimum(gap[:, -1], tol / 2)
    separated = gap > tol
    id_mismatch = int(((ranking.indices != reference.indices) & separated).sum())
    return {"max_score_diff": score_diff, "id_mismatches": id_mismatch,
            "identical_rows": float((ranking.indices == reference.indices).all(axis=1).mean()),
            "agree": bool(score_diff <= tol and id_mismatch == 0)}


def recall_at_k(ranking: Ranking, reference: Ranking) -> float:
    k = reference.indices.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ranking.indices.tolist(),
                                                                   reference.indices.tolist())]))


def product_times(database: np.ndarray, queries: np.ndarray, k: int, rows: int, repeats: int) -> Dict[str, float]:
    """Best-of-``repeats`` seconds of the pieces of one exact search over all queries, ``rows``
    queries a block: the float32 product through numpy's BLAS (what the exact backend uses) and
    through torch (MKL in the CPU wheel), the bfloat16 product (torch, oneDNN) and the top-k."""
    import torch

    q_t, d_t = torch.from_numpy(queries), torch.from_numpy(database)
    d_bf16 = d_t.bfloat16()
    blocks = [slice(i, i + rows) for i in range(0, len(queries), rows)]
    scores = np.empty((min(rows, len(queries)), len(database)), dtype=np.float32)

    def numpy_f32():
        for b in blocks:
            np.matmul(queries[b], database.T, out=scores[: len(queries[b])])

    def torch_f32():
        for b in blocks:
            torch.mm(q_t[b], d_t.T, out=torch.from_numpy(scores[: len(queries[b])]))

    def torch_bf16():
        for b in blocks:
            torch.mm(q_t[b].bfloat16(), d_bf16.T)

    def topk():
        for b in blocks:
            torch.topk(torch.from_numpy(scores[: len(queries[b])]), k, dim=1)

    out = {}
    for name, fn in (("float32 product, numpy BLAS", numpy_f32), ("float32 product, torch", torch_f32),
                     ("bfloat16 product, torch", torch_bf16), ("top-k of the float32 scores", topk)):
        fn()
        out[name] = min(_timed(fn) for _ in range(repeats))
        print(f"  {name}: {out[name]:.3f} s", flush=True)
    return out


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def threads() -> str:
    """The thread pools that do the work: numpy's BLAS (the exact backend's GEMM), torch (its
    top-k) and faiss' OpenMP."""
    import torch
    from threadpoolctl import threadpool_info

    blas = [f"{pool['internal_api']} {pool['num_threads']}" for pool in threadpool_info()
            if pool["user_api"] == "blas" and "numpy" in pool["filepath"].replace("_", "")]
    text = f"numpy BLAS {', '.join(blas) or 'unknown'}; torch {torch.get_num_threads()}"
    try:
        import faiss
        text += f"; faiss {faiss.omp_get_max_threads()}"
    except ImportError:
        pass
    return text


def run(args) -> int:
    """The benchmark (module docstring) of the options ``args`` (``retrieval bench index-speed``,
    :mod:`retrieval.cli.bench_commands`: n, dim, queries, k, repeats, memory_mb, tol, seed, clusters,
    spread, approx, products, quick, out)."""
    if args.quick:
        args.n, args.queries, args.repeats = min(args.n, 20_000), min(args.queries, 200), min(args.repeats, 2)

    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    centres = unit_vectors(rng, args.clusters, args.dim) if args.clusters > 0 else None
    database = unit_vectors(rng, args.n, args.dim, centres, args.spread)
    queries = unit_vectors(rng, args.queries, args.dim, centres, args.spread)
    kind = f"{args.clusters} clusters, spread {args.spread}" if centres is not None else "isotropic"
    print(f"data ({kind}): {args.n} x {args.dim} database, {args.queries} queries, top-{args.k} "
          f"({time.perf_counter() - t0:.1f} s to generate); threads: {threads()}", flush=True)

    rows: List[dict] = []
    search_options = {"exact": {"memory_mb": args.memory_mb},
                      "exact-float32": {"memory_mb": args.memory_mb, "precision": "float32"}}

    def build(name: str, make: Callable[[], Index]) -> Index:
        start = time.perf_counter()
        index = make()
        rows.append({"backend": name, "build_s": time.perf_counter() - start})
        return index

    def record(name: str, times: List[float]) -> None:
        row = next(r for r in rows if r["backend"] == name)
        median = statistics.median(times)
        row.update({"search_s": median, "search_s_all": ", ".join(f"{t:.2f}" for t in times),
                    "qps": args.queries / median, "peak_rss_mb": peak_rss_mb()})
        print(f"{name}: build {row['build_s']:.2f} s, search {median:.3f} s (median of "
              f"{row['search_s_all']}) -> {args.queries / median:.0f} queries/s", flush=True)

    # exact and faiss Flat are timed in alternation (warm-up of each first), so a load change on
    # a shared machine hits both alike; the ratio is also taken pair by pair
    indexes = {"exact": build("exact", lambda: Index(database, normalize=False))}
    # the same index searched with the float32 product throughout (precision="auto" may pre-select
    # in bfloat16, retrieval.indexing.exact_bf16)
    indexes["exact-float32"] = indexes["exact"]
    rows.append({"backend": "exact-float32", "build_s": rows[0]["build_s"]})
    try:
        import faiss  # noqa: F401
    except ImportError:
        print("faiss is not installed (pip install hybrid-retrieval[faiss]): exact backend only")
    else:
        indexes["faiss-flat"] = build("faiss-flat", lambda: Index(database, backend="faiss-flat",
                                                                  normalize=False))
    rankings: Dict[str, Ranking] = {}
    times: Dict[str, List[float]] = {name: [] for name in indexes}
    precision: Dict[str, str] = {}
    for name, index in indexes.items():
        index.search(queries[: max(1, args.queries // 10)], k=args.k, **search_options.get(name, {}))
    for _ in range(args.repeats):
        for name, index in indexes.items():
            start = time.perf_counter()
            rankings[name] = index.search(queries, k=args.k, **search_options.get(name, {}))
            times[name].append(time.perf_counter() - start)
            if name.startswith("exact"):
                precision[name] = index.last_precision + (f" ({index.last_candidates:.0f} candidates / query)"
                                                          if index.last_candidates is not None else "")
    for name in indexes:
        record(name, times[name])
    for row in rows:
        if row["backend"].startswith("exact"):
            row["block"] = "x".join(map(str, indexes["exact"].last_block_shape))
            row["precision"] = precision[row["backend"]]
    exact = rankings["exact-float32"]
    ratio = None
    by_name = {row["backend"]: row for row in rows}
    if "faiss-flat" in indexes:
        for name in indexes:
            by_name[name].update(agreement(rankings[name], exact, args.tol))
            by_name[name]["recall@k"] = recall_at_k(rankings[name], exact)
            by_name[name]["qps_vs_faiss_flat"] = statistics.median(
                f / e for f, e in zip(times["faiss-flat"], times[name]))
        ratio = by_name["exact"]["qps_vs_faiss_flat"]
    block_rows = indexes["exact"].last_block_shape[0]
    del indexes
    products: Dict[str, float] = {}
    if args.products:
        print(f"pieces of one exact search ({block_rows} queries a block, best of {args.repeats}):", flush=True)
        products = product_times(database, queries, args.k, block_rows, args.repeats)
    if args.approx and ratio is not None:
        flat_s = by_name["faiss-flat"]["search_s"]
        # (backend, build options, search options); defaults otherwise (see retrieval.indexing.index)
        approx = [("faiss-ivf", {"seed": args.seed}, {"nprobe": 16}),
                  ("faiss-ivfpq", {"seed": args.seed}, {"nprobe": 16}),
                  ("faiss-hnsw", {}, {"ef_search": 128})]
        for backend, build_options, options in approx:
            index = build(backend, lambda b=backend, o=build_options: Index(database, backend=b,
                                                                            normalize=False, **o))
            ranking, approx_times = time_search(lambda: index.search(queries, k=args.k, **options), args.repeats)
            record(backend, approx_times)
            rows[-1]["recall@k"] = recall_at_k(ranking, exact)
            rows[-1]["qps_vs_faiss_flat"] = flat_s / rows[-1]["search_s"]   # not interleaved
            rows[-1]["options"] = ", ".join(f"{key}={value}" for key, value in index.options.items())
            del index
    columns = ["backend", "precision", "build_s", "search_s", "qps", "qps_vs_faiss_flat", "recall@k", "agree",
               "max_score_diff", "id_mismatches", "block", "peak_rss_mb", "search_s_all", "options"]
    table = write_results(rows, args.out, columns=columns,
                          title=f"Index search: {args.n} x {args.dim} database ({kind}), {args.queries} "
                                f"queries, top-{args.k}",
                          extra={"args": vars(args), "threads": threads(), "products_s": products})
    print(table)
    if ratio is not None:
        print(f"\nexact / faiss-flat throughput ratio (median of {args.repeats} interleaved pairs): {ratio:.2f}")
    return 0
