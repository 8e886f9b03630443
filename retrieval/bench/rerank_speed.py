"""Re-ranking speed, old path beside new in one run: spatial verification (SV: ``affine-ransac-mutual``
on ``rootsift-upright-c02-4k``) and the ratio test (E5: ratio 0.8 on ``rootsift-1k``) of the Oxford
subset's E1 top 100, each with the float32 matcher (one float32 GEMM per pair, ``precision="float32"``)
and with the bfloat16 pre-selection and exact check (:mod:`retrieval.rerank.matching_bf16`,
``precision="auto"``).

Per re-ranker and path: ms per query (wall, the scorers' default thread pool; and the process's CPU
ms, which a shared machine's load distorts less), SV's matching and RANSAC shares, the pairs whose
scores differ between the paths, and each path's cross-fitted mAP under the official and the
landmark-level protocol (the ladder's chooser: :func:`retrieval.steps.choose.choose` over
:meth:`retrieval.rerank.fusion.FusionSettings.candidates`). Queries alternate which path goes first,
so that the load of a shared machine weighs on both alike; the features are read into memory first
(the stores' read time per image is reported on its own line), as the ladder does.

It reads the cache of ``retrieval run spatial`` (its E1 shortlist and both RootSIFT stores): run that
first. ``python benchmarks/rerank_speed.py`` is an alias.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

__all__ = ["run", "COLUMNS", "DEFAULT_CACHE"]

COLUMNS = ["reranker", "path", "queries", "ms_per_query", "cpu_ms_per_query", "matching_ms", "ransac_ms",
           "official_map", "landmark_map", "pairs_other_score", "speed_up"]
DEFAULT_CACHE = "cache/spatial/full/landmark/oxford5k_subset"
SV_STORE = "sift_rootsift-upright-c02-4k.h5"
E5_STORE = "sift.h5"
PATHS = ("float32", "auto")


def _load(store_path: Path, ids) -> (Dict[str, object], float):
    from retrieval.features.store import LocalFeatureStore

    start = time.perf_counter()
    with LocalFeatureStore(store_path, "r") as store:
        feats = {i: store.get(i) for i in ids}
    return feats, (time.perf_counter() - start) / max(1, len(feats)) * 1000


def _scorers(name: str) -> Dict[str, object]:
    from retrieval.rerank.ratio import RatioTestScorer
    from retrieval.rerank.spatial import SPATIAL_CONFIGS, SpatialVerifier

    if name == "SV":
        return {p: SpatialVerifier(SPATIAL_CONFIGS.get("affine-ransac-mutual"), precision=p) for p in PATHS}
    return {p: RatioTestScorer(ratio=0.8, precision=p) for p in PATHS}


def _time(shortlist, rows, feats, scorers) -> Dict[str, dict]:
    """Scores and times of every path, paths alternating first query by query."""
    out = {p: {"scores": np.zeros((len(rows), shortlist.k)), "wall": 0.0, "cpu": 0.0, "matching": 0.0,
               "ransac": 0.0} for p in scorers}
    order = list(scorers)
    for n, row in enumerate(rows):
        query = feats[shortlist.query_ids[row]]
        items = [feats[i] for i in shortlist.db_ids[row]]
        for path in (order if n % 2 == 0 else order[::-1]):
            scorer = scorers[path]
            wall, cpu = time.perf_counter(), time.process_time()
            out[path]["scores"][n] = scorer.score(query, items)
            out[path]["wall"] += time.perf_counter() - wall
            out[path]["cpu"] += time.process_time() - cpu
            for part, sec in getattr(scorer, "last_timings", {}).items():
                out[path][part] += sec
    return out


def _maps(shortlist, dataset, scores: np.ndarray) -> Dict[str, float]:
    """Cross-fitted mAP (percent) of ``scores`` under the official and landmark-level protocols, as
    the ladder reports it."""
    from retrieval.rerank.fusion import FusionSettings
    from retrieval.steps.choose import choose, fusion_rankings, query_groups, relevances

    settings = FusionSettings()
    shortlist.set_local_scores("bench", scores)
    candidates = {c.label: c for c in settings.candidates("count")}
    rels = relevances(dataset, ["oxford", "landmark"])
    choices = choose("bench", candidates, fusion_rankings(shortlist, "bench"), rels,
                     query_groups(dataset, settings.folds), settings.min_gain)
    return {name: round(100 * c.fit["score"]["all"], 2) for name, c in choices.items()}


def run(args) -> Path:
    """The measurement of ``retrieval bench rerank-speed`` (options: ``args``); returns the results folder."""
    import torch

    from retrieval.core.checks import CLIError
    from retrieval.core.paths import data_root
    from retrieval.core.report import write_results
    from retrieval.datasets.open import DatasetConfig, open_dataset
    from retrieval.indexing.exact_bf16 import bf16_available
    from retrieval.rerank import Shortlist

    cache = Path(args.cache)
    needed = [cache / "shortlist_e1.json", cache / SV_STORE, cache / E5_STORE]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise CLIError(f"{missing[0]}: missing; run 'retrieval run spatial' first (its cache is the input)")
    shortlist = Shortlist.load(cache / "shortlist_e1")
    rows = list(range(shortlist.num_queries if args.queries is None else min(args.queries, shortlist.num_queries)))
    path = args.data if args.data is not None else str(data_root() / "oxford5k_subset")
    dataset = open_dataset(DatasetConfig(kind="oxford", path=path)) if len(rows) == shortlist.num_queries else None
    ids = sorted({str(shortlist.query_ids[r]) for r in rows} | {i for r in rows for i in shortlist.db_ids[r]})
    load_before = os.getloadavg()
    results: List[dict] = []
    for name, store in (("SV", SV_STORE), ("E5", E5_STORE)):
        feats, read_ms = _load(cache / store, ids)
        print(f"  {name}: {store} read into memory, {read_ms:.1f} ms an image ({len(ids)} images)", flush=True)
        timed = _time(shortlist, rows, feats, _scorers(name))
        base = timed["float32"]
        for p in PATHS:
            t = timed[p]
            differ = int(np.sum(t["scores"] != base["scores"]))
            maps = _maps(shortlist, dataset, t["scores"]) if dataset is not None else {}
            row = {"reranker": name, "path": "float32 (old)" if p == "float32" else "bfloat16 + exact check (new)",
                   "queries": len(rows), "ms_per_query": round(1000 * t["wall"] / len(rows), 1),
                   "cpu_ms_per_query": round(1000 * t["cpu"] / len(rows), 1),
                   "matching_ms": round(1000 * t["matching"] / len(rows), 1) if name == "SV" else None,
                   "ransac_ms": round(1000 * t["ransac"] / len(rows), 1) if name == "SV" else None,
                   "official_map": maps.get("oxford"), "landmark_map": maps.get("landmark"),
                   "pairs_other_score": differ, "speed_up": round(base["wall"] / t["wall"], 2),
                   "store_read_ms_per_image": round(read_ms, 1)}
            results.append(row)
            print(f"  {name} {row['path']}: {row['ms_per_query']} ms/query ({row['cpu_ms_per_query']} CPU ms), "
                  f"mAP {row['official_map']} / {row['landmark_map']}, {differ} pairs scored otherwise", flush=True)
        del feats
    extra = {"cache": str(cache), "dataset": path, "bf16_native": bf16_available(), "torch": torch.__version__,
             "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
             "load_average_before": [round(x, 2) for x in load_before],
             "load_average_after": [round(x, 2) for x in os.getloadavg()]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = write_results(results, out, COLUMNS, title="Re-ranking speed, old and new matcher (E1 top 100)",
                          extra=extra)
    print(table)
    print(f"load average {extra['load_average_before']} before, {extra['load_average_after']} after, "
          f"{extra['cpu_count']} CPUs")
    return out
