"""An embedded vector database against faiss, on the same seeded vectors: ``retrieval bench vector-db``
(``benchmarks/vector_db.py``).

Data: ``--n`` x ``--dim`` (default 1,000,000 x 256) float32 unit vectors drawn around ``--clusters``
(default 1,000) random unit centres with Gaussian noise of norm about ``--spread`` (0.5), then
normalised (:func:`retrieval.scale.sources.unit_vectors`), seed ``--seed``; ``--queries`` (1,000)
held-out vectors from the same mixture; a ``bucket`` column, uniform 0..99 per row, for the filters
(passing 1 %, 10 %, 50 % of the rows). Written once to ``--work`` (default cache/vector_db) and reused.

Backends, each built and measured in its own child process (peak RSS its own, the 1 GB input array
it loads included): faiss exact (IndexFlatIP; its results are the truth for recall@k), faiss IVF-Flat
(nlist = 4 sqrt(N), trained on 40 points per list; nprobe 8 / 32 / 128), faiss HNSW (M 32,
efConstruction 80; efSearch 64 / 128 / 256), LanceDB IVF-PQ (:mod:`retrieval.indexing.lancedb_backend`;
nprobes 20 with refine_factor 4, nprobes 50 with refine_factor 10). For each: build seconds, recall@k against exact, queries/s as
one batch of all queries and one query at a time (``--single`` of them), resident memory after the
build (input freed), on-disk size; and filtered searches (filter inside the search; for faiss the
smallest nprobe / efSearch, doubling, at which every query gets k results).

Writes results.json (every figure) and results.md (the two tables) to ``--out``."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Dict, List

from retrieval.bench import vector_db_jobs as jobs
from retrieval.core.report import markdown_table, write_results
from retrieval.scale.measure import run_measured

__all__ = ["run", "BACKENDS"]

BACKENDS = ("faiss-flat", "faiss-ivf", "faiss-hnsw", "lancedb")


def _data(opts, work: Path) -> Dict:
    params = {key: getattr(opts, key) for key in ("n", "dim", "queries", "clusters", "spread", "seed")}
    meta = work / "data.json"
    if meta.is_file() and json.loads(meta.read_text()) == params and (work / "bucket.npy").is_file():
        print(f"[data] reusing {work}", flush=True)
        return {"reused": True}
    work.mkdir(parents=True, exist_ok=True)
    (work / "truth.npz").unlink(missing_ok=True)
    _, stats = run_measured(jobs.make_data, work=str(work), **params)
    meta.write_text(json.dumps(params))
    print(f"[data] {opts.n} x {opts.dim} in {stats['seconds']:.0f} s", flush=True)
    return {"seconds": round(stats["seconds"], 1)}


def _jobs(opts) -> Dict[str, tuple]:
    nlist = max(1, min(int(round(4 * opts.n ** 0.5)), opts.n // 39))
    common = dict(k=opts.k, single=opts.single)
    return {
        "faiss-flat": (jobs.faiss_job, dict(kind="flat", settings=[], **common), "faiss IndexFlatIP"),
        "faiss-ivf": (jobs.faiss_job, dict(kind="ivf", nlist=nlist, train=min(opts.n, 40 * nlist),
                                          settings=[8, 32, 128], **common), f"faiss IVF-Flat nlist={nlist}"),
        "faiss-hnsw": (jobs.faiss_job, dict(kind="hnsw", hnsw_m=32, ef_construction=80, settings=[64, 128, 256],
                                           **common), "faiss HNSW M=32 efC=80"),
        "lancedb": (jobs.lancedb_job, dict(build=dict(index_type="IVF_PQ", num_partitions=opts.lance_partitions),
                                          settings=[dict(nprobes=20, refine_factor=4),
                                                    dict(nprobes=50, refine_factor=10)],
                                          filter_queries=min(opts.queries, 200), **common),
                    "LanceDB IVF-PQ"),
    }


def _rows(name: str, label: str, result: Dict, stats: Dict) -> (List[Dict], List[Dict]):
    search_rows = [{"backend": label, "setting": s["setting"], "build_s": result["build_s"],
                    "recall@k": s["recall"], "batch_qps": s["batch_qps"], "single_qps": s["single_qps"],
                    "peak_rss_mb": round(stats["peak_rss_mb"]), "rss_after_build_mb": result["rss_after_build_mb"],
                    "disk_mb": result["disk_mb"]} for s in result["searches"]]
    filter_rows = []
    for f in result["filtered"]:
        knob = {key: f[key] for key in ("nprobe", "ef_search", "nprobes", "route") if key in f}
        filter_rows.append({"backend": label, "filter_pct": f["filter_pct"],
                            "how": ", ".join(f"{k}={v}" for k, v in knob.items()) or "exact",
                            "seconds": f["seconds"], "qps": f["qps"], "all_k": f["all_k"],
                            "only_allowed": f["only_allowed"], "recall@k": f["recall"]})
    return search_rows, filter_rows


def run(opts) -> Dict:
    """``opts``: n, dim, queries, k, clusters, spread, seed, single, backends, lance_partitions, work, out
    (see :mod:`retrieval.cli.bench_commands`)."""
    work, out = Path(opts.work), Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    data = _data(opts, work)
    table = _jobs(opts)
    names = [name for name in BACKENDS if name in opts.backends]
    if names and names[0] != "faiss-flat" and not (work / "truth.npz").is_file():
        names.insert(0, "faiss-flat")   # the exact results every recall is scored against
    search_rows, filter_rows, raw = [], [], {}
    for name in names:
        fn, kwargs, label = table[name]
        print(f"[{name}] building and searching ...", flush=True)
        started = time.perf_counter()
        result, stats = run_measured(fn, work=str(work), **kwargs)
        raw[name] = {**result, **stats}
        s_rows, f_rows = _rows(name, label, result, stats)
        search_rows += s_rows
        filter_rows += f_rows
        print(f"[{name}] done in {time.perf_counter() - started:.0f} s: build {result['build_s']} s, peak RSS "
              f"{stats['peak_rss_mb']:.0f} MB", flush=True)
    extra = {"params": {key: getattr(opts, key) for key in ("n", "dim", "queries", "k", "clusters", "spread",
                                                              "seed", "single")},
             "data": data, "filtered": filter_rows, "raw": raw,
             "load_average": [round(v, 2) for v in os.getloadavg()], "cpu_count": os.cpu_count()}
    title = (f"Vector database backends: {opts.n:,} x {opts.dim} clustered unit vectors, {opts.queries} queries, "
             f"top {opts.k}")
    search_table = write_results(search_rows, out, title=title, extra=extra)
    filter_table = markdown_table(filter_rows)
    with open(out / "results.md", "a") as f:
        f.write(f"\n## Filtered search (filter inside the search)\n\n{filter_table}\n")
    print(f"\n{title}\n\n{search_table}\n\nFiltered search\n\n{filter_table}\n\nload average "
          f"{extra['load_average']} on {extra['cpu_count']} CPUs (loaded machine)")
    return extra
