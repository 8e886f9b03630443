"""Speed of the local features and matchers of re-ranking on CPU: extraction ms/image of RootSIFT,
XFeat and DISK on the same images at the same size, and re-ranking ms/query for a top 100 of each
matcher (mutual NN + ratio, LighterGlue, LightGlue; each followed by the same affine RANSAC).

Protocol: ``--images`` database images spread over the dataset are extracted by every extractor in
turn, image by image (so that a shared machine's changing load weighs on all alike), in
one thread (torch and OpenCV both single-threaded: the per-image cost, not a parallel throughput),
after one untimed warm-up image. For re-ranking every query (cropped to its box) is verified against
the same 100 database images (the cost depends on keypoint counts, not on which images are
shortlisted), ``--queries`` of them for the nearest-neighbour matchers; the learned matchers cost
seconds per pair on CPU, so ``--glue-pairs`` pairs of one query are timed and the figure per query is
100 times the mean per pair (the ``estimated`` column says so). Matchers use the default thread pool
of :class:`retrieval.rerank.spatial.SpatialVerifier` (the usable CPUs, single-threaded torch per pair).

A feature or matcher entry may carry overrides, ``NAME+KEY=VALUE[,KEY=VALUE]``: ``xfeat-4k+precision=float32`` is
XFeat's float32 network beside the default ``xfeat-4k`` (``precision="auto"``: bfloat16 where this CPU
has it natively, :mod:`retrieval.features.learned_precision`), so the extraction rows compare them in one
run, and ``xfeat-512:affine-ransac-mnn+precision=bfloat16`` times the bfloat16 products of matching
(:mod:`retrieval.rerank.matching_bf16`) where ``auto`` takes float32 ones. The quick rerun (about 2 minutes on a quiet 2-core machine)::

    .venv/bin/python benchmarks/learned_speed.py --data ../shared/data/oxford5k_subset --images 16 --queries 5 \
        --features rootsift-upright-c02-4k,xfeat-4k,xfeat-4k+precision=float32 \
        --matchers rootsift-upright-c02-4k:affine-ransac-mutual,xfeat-512:affine-ransac-mnn,xfeat-1k:affine-ransac-mnn

    .venv/bin/python benchmarks/learned_speed.py --data ../shared/data/oxford5k_subset --out results/learned_speed
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import List, Sequence

import numpy as np

__all__ = ["run", "COLUMNS"]

COLUMNS = ["what", "features", "precision", "matcher", "images", "ms_per_image", "keypoints", "ms_per_query",
           "estimated", "split"]
FEATURES = ("rootsift-upright-c02-4k", "rootsift-2k", "xfeat-4k", "xfeat-4k+precision=float32", "xfeat-1k",
            "xfeat-512", "disk-2k")
MATCHERS = ("rootsift-upright-c02-4k:affine-ransac-mutual", "xfeat-4k:affine-ransac-mnn",
            "xfeat-1k:affine-ransac-mnn", "xfeat-512:affine-ransac-mnn", "disk-2k:affine-ransac-mnn",
            "xfeat-1k:lighterglue-xfeat", "disk-2k:lightglue-disk")
SHORTLIST = 100


def _spread(items: Sequence, n: int) -> list:
    idx = np.unique(np.linspace(0, len(items) - 1, num=min(n, len(items))).round().astype(int))
    return [items[i] for i in idx]


def _extractor(entry: str):
    from retrieval.features.local_extractors import local_extractor

    return local_extractor(entry)  # NAME+KEY=VALUE,... overrides included


def extraction_rows(names: Sequence[str], paths: Sequence[str]) -> List[dict]:
    """ms/image of each extractor; the extractors take turns image by image, so that the load of a
    shared machine, which changes by the minute, weighs on all of them alike."""
    extractors = [_extractor(n) for n in names]
    for ex in extractors:
        ex.extract_path(paths[0])  # warm-up: network built, caches filled
    seconds, counts = np.zeros(len(names)), np.zeros(len(names))
    for p in paths:
        for j, ex in enumerate(extractors):
            t0 = time.perf_counter()
            counts[j] += len(ex.extract_path(p))
            seconds[j] += time.perf_counter() - t0
    rows = []
    for j, name in enumerate(names):
        ms = seconds[j] / len(paths) * 1000
        print(f"  extraction {name:24s} {ms:8.1f} ms/image  {counts[j] / len(paths):6.0f} keypoints", flush=True)
        precision = getattr(extractors[j], "precision", "")
        rows.append({"what": "extraction", "features": name, "precision": precision, "matcher": "", "images": len(paths),
                     "ms_per_image": round(ms, 1), "keypoints": int(counts[j] / len(paths)), "ms_per_query": None,
                     "estimated": "", "split": ""})
    return rows


def _features(name: str, ds, cache: Path, n_db: int, query_rows: Sequence[int]):
    """Features of the first ``n_db`` database images and of the queries ``query_rows`` (cropped), from
    resumable stores (a rerun extracts nothing)."""
    from retrieval.features.extract import extract_local_features
    from retrieval.features.store import LocalFeatureStore

    ex = _extractor(name)
    db_ids = [str(i) for i in ds.db_ids[:n_db]]
    q_ids = [str(ds.query_ids[r]) for r in query_rows]
    boxes = list(ds.query_boxes or [None] * len(ds.query_ids))
    extract_local_features(db_ids, ds.db_paths[:n_db], ex, cache / f"{name}_db.h5", n_jobs=2, progress=False)
    extract_local_features(q_ids, [ds.query_paths[r] for r in query_rows], ex, cache / f"{name}_q.h5", n_jobs=2,
                           boxes=[boxes[r] for r in query_rows], progress=False)
    with LocalFeatureStore(cache / f"{name}_db.h5") as db, LocalFeatureStore(cache / f"{name}_q.h5") as q:
        return [db.get(i) for i in db_ids], [q.get(i) for i in q_ids]


def rerank_row(name: str, spatial: str, ds, cache: Path, n_queries: int, glue_pairs: int) -> dict:
    from retrieval.rerank.matching_bf16 import use_bf16_matching
    from retrieval.rerank.spatial import SPATIAL_CONFIGS, GlueSpatialConfig, SpatialVerifier

    from retrieval.features.local_extractors import split_config_name

    spatial_name, spatial_overrides = split_config_name(spatial)
    verifier = SpatialVerifier(SPATIAL_CONFIGS.get(spatial_name), **spatial_overrides)
    glue = isinstance(verifier.config, GlueSpatialConfig)
    rows = _spread(list(range(len(ds.query_ids))), 1 if glue else n_queries)
    db, queries = _features(name, ds, cache, glue_pairs if glue else SHORTLIST, rows)
    verifier.score(queries[0], db[:2])  # warm-up
    if glue:
        t0 = time.perf_counter()
        verifier.score(queries[0], db)
        ms = (time.perf_counter() - t0) / len(db) * SHORTLIST * 1000
        timed, split = f"{len(db)} pairs x {SHORTLIST / len(db):g}", ""
    else:
        t0, parts = time.perf_counter(), np.zeros(2)
        for q in queries:
            verifier.score(q, db)
            parts += [verifier.last_timings["matching"], verifier.last_timings["ransac"]]
        ms = (time.perf_counter() - t0) / len(queries) * 1000
        timed, split = "", "matching {:.0f} + RANSAC {:.0f} ms".format(*(parts / len(queries) * 1000))
    print(f"  re-ranking {name:24s} {spatial:22s} {ms:9.0f} ms/query {timed}{split}", flush=True)
    c = verifier.config
    products = "" if glue else ("bfloat16" if use_bf16_matching(c.precision, c.ratio, queries[0].descriptors.shape[1])
                                else "float32")
    return {"what": "re-ranking top 100", "features": name, "precision": products, "matcher": spatial,
            "images": SHORTLIST, "ms_per_image": None, "keypoints": int(np.mean([len(f) for f in db])),
            "ms_per_query": round(ms), "estimated": timed, "split": split}


def run(args) -> Path:
    """The measurement of ``retrieval bench learned-speed`` (its options: ``args``); returns the results folder."""
    import cv2
    import torch

    from retrieval.core.config import ConfigError
    from retrieval.datasets.open import DatasetConfig, open_dataset
    from retrieval.features.local_extractors import local_config_names, split_config_name
    from retrieval.core.paths import data_root
    from retrieval.core.report import write_results

    names = [n for n in (args.features if args.features is not None else ",".join(FEATURES)).split(",") if n]
    unknown = [n for n in names if split_config_name(n)[0] not in local_config_names()]
    if unknown:
        raise ConfigError(f"unknown local feature configurations {unknown}; known: {', '.join(local_config_names())}")
    path = args.data if args.data is not None else str(data_root() / "oxford5k_subset")
    ds = open_dataset(DatasetConfig(kind=args.dataset, path=path))
    out = Path(args.out)
    cache = Path(args.cache) if args.cache else out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    paths = _spread([str(p) for p in ds.db_paths], args.images)
    rows: List[dict] = extraction_rows(names, paths)
    matchers = args.matchers if args.matchers is not None else ",".join(MATCHERS)
    pairs = [m.split(":", 1) for m in matchers.split(",") if m]
    bad = [m for m in pairs if len(m) != 2 or split_config_name(m[0])[0] not in local_config_names()]
    if bad:
        raise ConfigError(f"--matchers: not FEATURES:SPATIAL pairs of known configurations: {bad}")
    torch.set_num_threads(2)  # the matchers' own pools decide (see the module docstring)
    cv2.setNumThreads(2)
    rows += [rerank_row(n, s, ds, cache, args.queries, args.glue_pairs) for n, s in pairs]
    extra = {"dataset": str(path), "images": args.images, "queries": args.queries, "glue_pairs": args.glue_pairs,
             "torch": torch.__version__, "opencv": cv2.__version__,
             "note": "2-core CPU shared with other jobs: figures are upper bounds of an idle machine's"}
    table = write_results(rows, out, COLUMNS, extra=extra,
                          title="Local features and matchers of re-ranking: CPU cost (1 thread extraction)")
    print(table)
    return out
