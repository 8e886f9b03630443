"""``retrieval bench scale`` (``benchmarks/scale.py``): the ranking stage and GLDv2's CSVs at their real size, the Ray engine's
figures, and a cost model of E1-E7 on full GLDv2.

1. IVF-PQ from shards: ``n`` seeded clustered vectors written as HDF5 shards, the index built from them
   in a child process (:func:`retrieval.scale.ivf_build.build_index`; its peak resident memory
   against the ``n x d x 4`` bytes of the vectors), then recall@100 of 1,000 queries against streamed
   exact search: raw PQ and PQ shortlist re-ranked with the exact vectors. The same index is built
   again as per-shard indexes merged into on-disk inverted lists (:mod:`retrieval.scale.ondisk`, in
   a child process: peak memory, file sizes) and must return the same rows.
2. GLDv2 CSVs at full size (:func:`retrieval.datasets.gldv2_synth.generate_gldv2`, written once into
   the work folder), read by :func:`retrieval.datasets.gldv2_tables.read_gldv2_tables` in a child
   process: seconds and peak memory.
3. The Ray figures from ``retrieval.bench.engine_speed.measure_engine`` (:func:`engine_figures`).
4. The cost model (:mod:`retrieval.bench.scale_cost`).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from retrieval.core.fileio import atomic_write_text
from retrieval.core.report import markdown_table
from retrieval.bench import scale_cost

QUICK = {"n": 20_000, "dim": 32, "shards": 4, "queries": 100, "nlist": 64, "m": 8, "gldv2_scale": 0.002,
         "cost_images": 1}
FULL = {"n": 1_000_000, "dim": 256, "shards": 10, "queries": 1000, "nlist": 1024, "m": 32, "gldv2_scale": 1.0,
        "cost_images": 8}


def build_from_shards(shard_dir: str, out_path: str, nlist: int, m: int, nbits: int = 8, seed: int = 0) -> dict:
    """The child process' job: IVF-PQ over every shard file under ``shard_dir``, saved to ``out_path``."""
    from retrieval.scale.ivf_build import build_index
    from retrieval.scale.sources import h5_shards

    source = h5_shards(sorted(Path(shard_dir).glob("shard-*.h5")))
    index = build_index(source, backend="faiss-ivfpq", nlist=nlist, m=m, nbits=nbits, seed=seed, progress=False)
    index.save(out_path)
    return {"n": source.n, "dim": source.dim, "options": index.options}


def build_on_disk_from_shards(shard_dir: str, out_dir: str, nlist: int, m: int, nbits: int = 8, seed: int = 0) -> dict:
    """The child process' job: per-shard IVF-PQ indexes under ``out_dir`` merged into one index with
    on-disk inverted lists (:mod:`retrieval.scale.ondisk`)."""
    from retrieval.scale.ivf_build import build_sharded_index
    from retrieval.scale.sources import h5_shards

    source = h5_shards(sorted(Path(shard_dir).glob("shard-*.h5")))
    build_sharded_index(source, out_dir, backend="faiss-ivfpq", nlist=nlist, m=m, nbits=nbits, seed=seed,
                        progress=False, on_disk=True)
    return {"n": source.n}


def read_tables_job(root: str) -> dict:
    from retrieval.datasets.gldv2_tables import read_gldv2_tables
    t = read_gldv2_tables(root)
    return {"train": len(t.train_ids), "train_clean": len(t.clean_ids), "index": len(t.index_ids),
            "test": len(t.test_ids), "solution": len(t.solution_ids)}


def index_at_scale(work: Path, n: int, dim: int, shards: int, queries: int, nlist: int, m: int,
                   nprobe: int = 32, shortlist: int = 1000, k: int = 100, seed: int = 0) -> dict:
    """Part 1 of the module docstring; returns its figures."""
    from retrieval.indexing.index import Index
    from retrieval.scale.ivf_build import exact_topk, recall_at_k, rerank_exact
    from retrieval.scale.ondisk import load_on_disk
    from retrieval.scale.measure import run_measured
    from retrieval.scale.sources import h5_shards, write_synthetic_shards

    shard_dir = work / f"vectors-{n}x{dim}"
    t0 = time.perf_counter()
    paths, query_vectors = write_synthetic_shards(shard_dir, n, dim, shards, clusters=max(10, n // 1000),
                                                  seed=seed, queries=queries)
    print(f"[index] {n} x {dim} vectors in {shards} shards ({time.perf_counter() - t0:.0f} s)", flush=True)
    index_path = work / f"ivfpq-{n}x{dim}.npz"
    built, stats = run_measured(build_from_shards, shard_dir=str(shard_dir),
                                out_path=str(index_path), nlist=nlist, m=m, seed=seed)
    print(f"[index] IVF-PQ built in {stats['seconds']:.0f} s, peak RSS {stats['peak_rss_mb']:.0f} MB", flush=True)
    source = h5_shards(paths)
    t0 = time.perf_counter()
    _, truth = exact_topk(source, query_vectors, k)
    exact_s = time.perf_counter() - t0
    index = Index.load(index_path)
    t0 = time.perf_counter()
    raw = index.search(query_vectors, k=k, nprobe=nprobe)
    pq_s = time.perf_counter() - t0
    # the same index with its lists on disk, built shard by shard in a child process
    on_disk_dir = work / f"ivfpq-{n}x{dim}-on-disk"
    shutil.rmtree(on_disk_dir, ignore_errors=True)
    _, disk_stats = run_measured(build_on_disk_from_shards, shard_dir=str(shard_dir),
                                 out_dir=str(on_disk_dir), nlist=nlist, m=m, seed=seed)
    on_disk = load_on_disk(on_disk_dir)
    t0 = time.perf_counter()
    disk_raw = on_disk.search(query_vectors, k=k, nprobe=nprobe)
    disk_s = time.perf_counter() - t0
    disk_mb = sum(f.stat().st_size for f in on_disk_dir.iterdir() if f.name.startswith("on-disk")) / 2 ** 20
    print(f"[index] on-disk IVF-PQ from shards in {disk_stats['seconds']:.0f} s, peak RSS "
          f"{disk_stats['peak_rss_mb']:.0f} MB", flush=True)
    del on_disk
    t0 = time.perf_counter()
    short = index.search(query_vectors, k=shortlist, nprobe=nprobe)
    _, reranked = rerank_exact(source, query_vectors, short.indices, k)
    rerank_s = time.perf_counter() - t0
    return {"n": n, "dim": dim, "shards": shards, "queries": queries, "options": built["options"],
            "nprobe": nprobe, "shortlist": shortlist,
            "index_build_s": stats["seconds"], "index_build_peak_rss_mb": stats["peak_rss_mb"],
            "index_build_baseline_rss_mb": stats["baseline_rss_mb"],
            "vectors_mb": n * dim * 4 / 2 ** 20, "index_file_mb": index_path.stat().st_size / 2 ** 20,
            "ivfpq_recall_at_100_raw": recall_at_k(raw.indices, truth),
            "ivfpq_recall_at_100": recall_at_k(reranked, truth),
            "exact_streamed_s_per_query": exact_s / queries, "ivfpq_s_per_query": pq_s / queries,
            "ivfpq_rerank_s_per_query": rerank_s / queries,
            "on_disk_build_s": disk_stats["seconds"], "on_disk_build_peak_rss_mb": disk_stats["peak_rss_mb"],
            "on_disk_files_mb": disk_mb, "on_disk_s_per_query": disk_s / queries,
            "on_disk_identical_to_in_memory": bool(np.array_equal(disk_raw.indices, raw.indices))}


def gldv2_csvs(work: Path, data_root: Path, scale: float) -> dict:
    """Part 2: generate (once) and read the GLDv2 CSVs; seconds and peak memory of the read."""
    from retrieval.datasets.gldv2_synth import generate_gldv2
    from retrieval.scale.measure import run_measured

    root = work / f"gldv2-{scale:g}"
    if not (root / "gldv2_pool.json").is_file():
        t0 = time.perf_counter()
        generate_gldv2(root, [data_root / "oxford5k_subset" / "images"], scale=scale, progress=False)
        print(f"[gldv2] generated at scale {scale:g} in {time.perf_counter() - t0:.0f} s", flush=True)
    counts, stats = run_measured(read_tables_job, root=str(root))
    csv_mb = sum(p.stat().st_size for p in root.glob("*.csv")) / 2 ** 20
    print(f"[gldv2] read {counts} in {stats['seconds']:.1f} s, peak RSS {stats['peak_rss_mb']:.0f} MB", flush=True)
    return {"gldv2_scale": scale, "gldv2_rows": counts, "gldv2_csv_mb": csv_mb, "gldv2_csv_read_s": stats["seconds"],
            "gldv2_csv_peak_rss_mb": stats["peak_rss_mb"]}


ENGINE_KEYS = ("sift_scaling_2_vs_1", "ray_vs_local", "killed_worker_identical")


def engine_figures(data_root: Path, quick: bool, work_dir: Optional[Path] = None) -> Dict[str, object]:
    """The Ray figures, from :func:`retrieval.bench.engine_speed.measure_engine` on
    Oxford images (``quick``: its 16-image mode). Recorded as absent with the reason when Ray is not
    installed or the measurement fails (never invented)."""
    try:
        from retrieval.bench.engine_speed import measure_engine
        files = sorted((data_root / "oxford5k_subset" / "images").glob("*.jpg"))[: 16 if quick else 64]
        figures = measure_engine(files, quick=quick, work_dir=None if work_dir is None else work_dir / "engine")
    except Exception as exc:  # ImportError (no ray), or a failed run: say so in the results
        return {key: None for key in ENGINE_KEYS} | {"engine_note": f"absent: measure_engine failed "
                                                                    f"({type(exc).__name__}: {exc})"}
    return {f"engine_{k}" if k not in ENGINE_KEYS else k: v for k, v in figures.items()}


def default_work_dir(quick: bool) -> Path:
    """``cache/scale`` (full) or ``cache/scale-quick``: a quick run's shards (other sizes) never meet a
    full run's."""
    return Path("cache/scale-quick" if quick else "cache/scale")


def run(out_dir: Path, work_dir: Path, data_root: Path, quick: bool = False, workers: int = 32, gpus: int = 4,
        gpu_img_per_s: float = 400.0, skip: Optional[List[str]] = None) -> dict:
    """Every part; writes ``results.json`` and ``results.md`` to ``out_dir``; returns the results."""
    skip = set(skip or [])
    p = QUICK if quick else FULL
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    # the machine's state is measured, not assumed: figures taken under load have not reproduced
    load = [round(x, 2) for x in os.getloadavg()]
    results: Dict[str, object] = {"quick": quick, "machine_note": f"{os.cpu_count()} CPUs, load average at start {load}"}
    if "index" not in skip:
        results.update(index_at_scale(work_dir, p["n"], p["dim"], p["shards"], p["queries"], p["nlist"], p["m"]))
    if "gldv2" not in skip:
        results.update(gldv2_csvs(work_dir, data_root, p["gldv2_scale"]))
    if "engine" not in skip:
        results.update(engine_figures(data_root, quick, work_dir))
    if "cost" not in skip:
        stages = scale_cost.measure_stages(data_root, n_images=p["cost_images"])
        if "index_build_s" in results:
            stages["index_build"] = {"s_per_item": results["index_build_s"] / results["n"],
                                     "bytes_per_item": results["index_file_mb"] * 2 ** 20 / results["n"],
                                     "per": f"vector ({results['dim']}-d, IVF-PQ m={results['options']['m']})"}
            stages["search"] = {"s_per_item": results["ivfpq_rerank_s_per_query"], "bytes_per_item": 0.0,
                                "per": f"query (IVF-PQ top-{results['shortlist']} + exact re-rank, "
                                       f"{results['n']} vectors)"}
        else:
            stages["index_build"] = stages["search"] = {"s_per_item": 0.0, "bytes_per_item": 0.0, "per": "not measured"}
        results["cost_stages"] = scale_cost.stage_rows(stages)
        results["cost_assumptions"] = {"cpu_workers": workers, "gpus": gpus, "gpu_img_per_s": gpu_img_per_s,
                                       "epochs": 1, "train_factor": 3.0, "cpu_efficiency": 0.9}
        results["e1_e7_projection"] = scale_cost.project(stages, cpu_workers=workers, gpus=gpus,
                                                         gpu_img_per_s=gpu_img_per_s)
    results["e1_thesis_protocol"] = ("measured apart (101,000 images): retrieval run gldv2-thesis-e1 --data "
                                     f"{work_dir / 'gldv2-1'} --out results/gldv2-thesis-e1 (results.json 'stages')")
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2, default=str))
    atomic_write_text(out_dir / "results.md", results_markdown(results))
    return results


def results_markdown(r: dict) -> str:
    keys = ["index_build_peak_rss_mb", "vectors_mb", "index_file_mb", "index_build_s", "ivfpq_recall_at_100",
            "ivfpq_recall_at_100_raw", "on_disk_build_peak_rss_mb", "on_disk_files_mb", "on_disk_identical_to_in_memory",
            "gldv2_csv_read_s", "gldv2_csv_peak_rss_mb", *ENGINE_KEYS]
    lines = [f"## Scale ({'quick' if r.get('quick') else 'full'}; {r['machine_note']})", "",
             markdown_table([{"figure": k, "value": r.get(k, "absent")} for k in keys if k in r or k in ENGINE_KEYS])]
    if "n" in r:
        lines += ["", f"IVF-PQ: {r['n']:,} x {r['dim']} vectors in {r['shards']} shards, {r['options']}, "
                      f"nprobe {r['nprobe']}, recall over {r['queries']} queries; re-ranked: top-{r['shortlist']} PQ "
                      f"shortlist re-scored with the exact vectors (one streamed pass over the shards)."]
    if r.get("engine_note"):
        lines += ["", f"Ray figures: {r['engine_note']}."]
    if "cost_stages" in r:
        lines += ["", "### Cost per image (measured here)", "", markdown_table(r["cost_stages"]),
                  "", f"### Projected wall hours of E1-E7 on full GLDv2 ({r['cost_assumptions']})", "",
                  markdown_table(r["e1_e7_projection"])]
    lines += ["", f"E1 on the thesis protocol: {r['e1_thesis_protocol']}.", ""]
    return "\n".join(lines)
