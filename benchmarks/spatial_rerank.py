"""Spatial-verification re-ranking of a global shortlist on Oxford5k (the annotated subset).

Protocol: ``oxford5k_subset`` with its official ground truth; queries cropped to their boxes (scaled
by 0.5 to the half-size images); AP as the official ``compute_ap`` (good + ok positive, junk removed).

Steps (each cached under ``--cache/spatial_rerank/``, so a rerun resumes):

1. global ranking: EfficientNet-Lite0, GeM, single scale, longest side 512 px
   (``features.efficientnet.EfficientNetExtractor("lite0-gem-512")``), or the vectors of ``--global-db`` / ``--global-queries`` (``features.store`` global feature files);
2. local features: RootSIFT (``features.sift`` + ``features.extract``), database and query
   configurations chosen separately (``--db-local``, ``--query-local``);
3. shortlist: the global top ``--k`` (100) per query, cached with its scores (:class:`rerank.Shortlist`);
4. local scores of every variant (:data:`VARIANTS`: model, estimator, threshold, ratio, mutual): the
   matching is done once per (ratio, mutual) and shared by the variants using it;
5. fusion ``v * global + (1 - v) * N(inliers)`` swept over v for each normalisation N, and the DELG rule
   swept over its inlier threshold: re-sorting the cached scores only;
6. timing on ``--timing-queries`` queries, in one run: the straightforward pipeline (``cv2.BFMatcher``
   ``knnMatch`` per pair + ratio test, then the variant's RANSAC per pair, one after another) against
   ours (batched matching, then RANSAC in a thread pool), ms per query for its k pairs;
7. v chosen fairly, two ways: a priori (``--v-prior``, 0.4 with min-max, fixed before looking), and by
   2-fold cross-validation over queries (odd / even query numbers, so every landmark is in both folds):
   normalisation, T and v chosen on one fold, AP measured on the other; both shown with the full sweep.

Outputs in ``--out``: results.json, results.md, map_vs_v.png.

    .venv/bin/python benchmarks/spatial_rerank.py                    # full run
    .venv/bin/python benchmarks/spatial_rerank.py --quick            # 8 queries, small database
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.features.extract import extract_local_features  # noqa: E402
from retrieval.features.sift import SiftExtractor  # noqa: E402
from retrieval.features.store import GlobalFeatureWriter, LocalFeatureStore, load_global  # noqa: E402
from retrieval.rerank.fusion import delg_order, fuse, fusion_order  # noqa: E402
from retrieval.rerank.matching import default_workers, match_shortlist  # noqa: E402
from retrieval.rerank.shortlist import Shortlist  # noqa: E402
from retrieval.rerank.spatial import SPATIAL_CONFIGS, SpatialConfig, SpatialVerifier, fit_model  # noqa: E402
from retrieval.datasets import read_oxford  # noqa: E402
from retrieval.datasets.base import RetrievalDataset  # noqa: E402
from retrieval.imageio import load_image  # noqa: E402
from retrieval.index import Index  # noqa: E402
from retrieval.metrics import oxford_ap  # noqa: E402
from retrieval.paths import data_root  # noqa: E402
from retrieval.report import markdown_table, peak_rss_mb, write_results  # noqa: E402

NAME = "spatial_rerank"

#: spatial-verification variants compared: the named configurations of rerank.spatial; MAIN_VARIANT is
#: the one timed and plotted
VARIANTS: Dict[str, SpatialConfig] = dict(SPATIAL_CONFIGS)
MAIN_VARIANT = "affine-ransac-mutual"
#: local features of database images and queries (landmarks are photographed upright; a lower contrast
#: threshold finds ~15% more keypoints at 512 px)
DEFAULT_LOCAL = "rootsift-upright-4k:contrast_threshold=0.02"

#: local-score normalisations swept (label -> (method, T))
NORMS: Dict[str, Tuple[str, Optional[float]]] = {
    "minmax": ("minmax", None),
    "zscore": ("zscore", None),
    "saturate-10": ("saturate", 10.0),
    "saturate-20": ("saturate", 20.0),
    "saturate-40": ("saturate", 40.0),
    "exp-10": ("exp", 10.0),
    "exp-20": ("exp", 20.0),
    "exp-40": ("exp", 40.0),
}
DELG_THRESHOLDS = (4, 6, 8, 10, 12, 15, 20, 25, 30, 40)
V_GRID = tuple(np.round(np.linspace(0.0, 1.0, 21), 2))


# ---------------------------------------------------------------------------------------------
# data and features
# ---------------------------------------------------------------------------------------------

def load_dataset(data: Path, quick: bool, seed: int = 0) -> RetrievalDataset:
    """Oxford5k subset; ``quick`` keeps 8 queries (every 7th) and a 150-image database: half drawn from
    their positives and junk, half from the other images (seeded); positives not in that database are
    dropped from the ground truth (the quick mAP is a smoke test, not comparable to the full one)."""
    ds = read_oxford(Path(data) / "oxford5k_subset")
    if not quick:
        return ds
    rng = np.random.default_rng(seed)
    keep_q = list(range(0, len(ds.query_ids), 7))[:8]
    qids = [ds.query_ids[i] for i in keep_q]
    related = sorted(set().union(*(ds.ground_truth[q].positives | ds.ground_truth[q].junk for q in qids)))
    others = sorted(set(ds.db_ids) - set(related))
    pick = set(rng.choice(related, size=min(75, len(related)), replace=False).tolist())
    pick |= set(rng.choice(others, size=min(75, len(others)), replace=False).tolist())
    keep_db = [i for i, d in enumerate(ds.db_ids) if d in pick]
    return replace(ds, db_ids=[ds.db_ids[i] for i in keep_db], db_paths=[ds.db_paths[i] for i in keep_db],
                   query_ids=qids, query_paths=[ds.query_paths[i] for i in keep_q],
                   query_boxes=[ds.query_boxes[i] for i in keep_q],
                   query_labels=[ds.query_labels[i] for i in keep_q] if ds.query_labels else None,
                   ground_truth={q: replace(ds.ground_truth[q], positives=ds.ground_truth[q].positives & pick,
                                            junk=ds.ground_truth[q].junk & pick) for q in qids},
                   name=ds.name + "-quick",
                   db_labels=[ds.db_labels[i] for i in keep_db] if ds.db_labels else None,
                   db_metadata={c: [v[i] for i in keep_db] for c, v in ds.db_metadata.items()},
                   query_metadata={c: [v[i] for i in keep_q] for c, v in ds.query_metadata.items()})


def global_vectors(ds: RetrievalDataset, cache: Path, global_config: str = "lite0-gem-512",
                   db_file: Optional[str] = None, query_file: Optional[str] = None, progress: bool = True,
                   chunk: int = 32) -> Tuple[np.ndarray, np.ndarray, dict]:
    """(db vectors, query vectors, description) in dataset order: from the given global feature files,
    or computed with :class:`features.efficientnet.EfficientNetExtractor` (queries cropped to their
    boxes by the extractor) into resumable global feature files under ``cache``."""
    if db_file or query_file:
        if not (db_file and query_file):
            raise SystemExit("give both --global-db and --global-queries (or neither)")
        out = []
        for path, wanted, what in ((db_file, ds.db_ids, "database"), (query_file, ds.query_ids, "query")):
            ids, vecs, _ = load_global(path)
            row = {i: r for r, i in enumerate(ids)}
            missing = [i for i in wanted if i not in row]
            if missing:
                raise SystemExit(f"{path}: {len(missing)} {what} ids missing (e.g. {missing[:3]})")
            out.append(vecs[[row[i] for i in wanted]])
        return out[0], out[1], {"source": "files", "db": str(db_file), "queries": str(query_file)}
    from tqdm.auto import tqdm

    from retrieval.features.efficientnet import EfficientNetExtractor

    extractor = None
    out = []
    for what, ids, paths, boxes in (("db", ds.db_ids, ds.db_paths, [None] * len(ds.db_ids)),
                                    ("queries", ds.query_ids, ds.query_paths, ds.query_boxes)):
        path = cache / f"global_{global_config}_{what}.h5"
        if not _complete(path, ids):
            extractor = extractor or EfficientNetExtractor(global_config)
            with GlobalFeatureWriter(path, dim=extractor.dim, config=extractor.config) as writer:
                done = set(writer.done_ids)
                todo = [i for i, image_id in enumerate(ids) if image_id not in done]
                for lo in tqdm(range(0, len(todo), chunk), desc=f"{global_config} {what}", disable=not progress,
                               leave=False):
                    part = todo[lo:lo + chunk]
                    images = [load_image(paths[i]) for i in part]
                    part_boxes = [boxes[i] for i in part]
                    vecs = extractor.extract_arrays(images, None if all(b is None for b in part_boxes) else part_boxes)
                    writer.append([ids[i] for i in part], vecs)
        stored, vecs, config = load_global(path)
        row = {i: r for r, i in enumerate(stored)}
        out.append(vecs[[row[i] for i in ids]])
    return out[0], out[1], {"source": "efficientnet", "config": global_config, **config}


def _complete(path: Path, ids: Sequence[str]) -> bool:
    """Whether a cached global feature file already holds every id (then no model is built). A damaged
    or foreign file raises :class:`FeatureFileError` naming it."""
    if not path.is_file():
        return False
    stored, _, _ = load_global(path)
    return set(ids) <= set(stored)


def sift_extractor(spec: str) -> SiftExtractor:
    """A :class:`features.sift.SiftExtractor` from ``NAME`` or ``NAME:key=value,key=value`` (overrides of
    the named configuration, e.g. ``rootsift-upright-4k:max_side=1024,upscale=true``)."""
    name, _, rest = spec.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"bad SIFT override {item!r} in {spec!r}: expected key=value")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return SiftExtractor(name, **overrides)


def local_features(ds: RetrievalDataset, cache: Path, db_config: str, query_config: str, n_jobs: int,
                   progress: bool = True) -> Tuple[Dict[str, object], Dict[str, object], dict]:
    """RootSIFT of every database image and every (cropped) query, extracted into resumable stores and
    loaded once into memory as float32."""
    stores, info = {}, {}
    for what, ids, paths, boxes, spec in (("db", ds.db_ids, ds.db_paths, None, db_config),
                                          ("queries", ds.query_ids, ds.query_paths, ds.query_boxes, query_config)):
        extractor = sift_extractor(spec)
        path = cache / "local" / f"{extractor.name}_{what}.h5"
        extract_local_features(ids, paths, extractor, path, n_jobs=n_jobs, boxes=boxes, progress=progress,
                               desc=f"{extractor.name} {what}")
        with LocalFeatureStore(path, "r") as store:
            stores[what] = {i: store.get(i, dtype=np.float32) for i in ids}
        info[f"{what}_local"] = extractor.config
    return stores["db"], stores["queries"], info


# ---------------------------------------------------------------------------------------------
# shortlist and local scores
# ---------------------------------------------------------------------------------------------

def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def build_shortlist(ds: RetrievalDataset, db_vecs: np.ndarray, q_vecs: np.ndarray, k: int, config: dict) -> Shortlist:
    index = Index(db_vecs, ids=ds.db_ids, backend="exact")
    ranking = index.search(q_vecs, k=len(ds.db_ids), query_ids=ds.query_ids)
    return Shortlist.from_ranking(ranking, k=k, config=config)


def _group_key(c: SpatialConfig) -> Tuple[Optional[float], bool]:
    return (c.ratio, c.mutual)


def score_variants(shortlist: Shortlist, db_feats: dict, q_feats: dict, variants: Dict[str, SpatialConfig],
                   cache_path: Path, n_workers: Optional[int], progress: bool = True, save_every: int = 5) -> None:
    """Fill ``inliers:<variant>`` (and ``matches:<ratio,mutual>``) for every query still missing one,
    saving the cache every ``save_every`` queries."""
    from tqdm.auto import tqdm

    groups: Dict[Tuple[Optional[float], bool], List[str]] = {}
    for name, cfg in variants.items():
        groups.setdefault(_group_key(cfg), []).append(name)
    todo = sorted(set().union(*(shortlist.pending(f"inliers:{n}") for n in variants)))
    if not todo:
        return
    verifiers = {n: SpatialVerifier(replace(c, n_workers=n_workers)) for n, c in variants.items()}
    for count, row in enumerate(tqdm(todo, desc="spatial verification", disable=not progress, leave=False), 1):
        query = q_feats[shortlist.query_ids[row]]
        shortlist_feats = [db_feats[i] for i in shortlist.db_ids[row]]
        for (ratio, mutual), names in groups.items():
            matches = match_shortlist(query.descriptors, [f.descriptors for f in shortlist_feats], ratio=ratio,
                                      mutual=mutual, n_workers=n_workers)
            shortlist.set_local(f"matches:r{ratio}{'-mutual' if mutual else ''}", row, matches.n_matches)
            for name in names:
                results = verifiers[name].fit(query, shortlist_feats, matches)
                shortlist.set_local(f"inliers:{name}", row, [r.inliers for r in results])
        if count % save_every == 0:
            shortlist.save(cache_path)
    shortlist.save(cache_path)


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------

def _bf_matches(matcher, q_desc: np.ndarray, d_desc: np.ndarray, ratio: float):
    """The straightforward pair matcher: knnMatch(k=2) and Lowe's test in a Python loop."""
    if len(q_desc) == 0 or len(d_desc) < 2:
        return []
    return [m for m, n in (p for p in matcher.knnMatch(q_desc, d_desc, k=2) if len(p) == 2)
            if m.distance < ratio * n.distance]


def time_pipelines(shortlist: Shortlist, db_feats: dict, q_feats: dict, cfg: SpatialConfig, rows: Sequence[int],
                   n_workers: Optional[int]) -> dict:
    """ms per query (its k pairs) of the straightforward pipeline and of ours, on the same queries in this
    run, interleaved query by query so that load changes on a shared machine hit both alike.

    Straightforward: ``cv2.BFMatcher(NORM_L2).knnMatch(k=2)`` per pair + ratio test in Python, then the
    same model fit per pair one after the other. Ours: :func:`rerank.matching.match_shortlist` (with
    the variant's mutual test, which the baseline skips) + the fits in a thread pool. Wall and CPU
    seconds (all threads) are both recorded: CPU time is what a quiet machine would need."""
    verifier = SpatialVerifier(replace(cfg, n_workers=n_workers))
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    wall = {"bf_matching": [], "bf_ransac": [], "matching": [], "ransac": []}
    cpu = {key: [] for key in wall}
    row0 = rows[0]  # warm-up: thread pools, first-call costs
    verifier.verify(q_feats[shortlist.query_ids[row0]], [db_feats[i] for i in shortlist.db_ids[row0][:5]])
    for row in rows:
        query = q_feats[shortlist.query_ids[row]]
        feats = [db_feats[i] for i in shortlist.db_ids[row]]
        c0, t0 = time.process_time(), time.perf_counter()
        bf = [_bf_matches(matcher, query.descriptors, f.descriptors, cfg.ratio or 1.0) for f in feats]
        c1, t1 = time.process_time(), time.perf_counter()
        for f, ms in zip(feats, bf):
            if ms:
                fit_model(query.xy[[m.queryIdx for m in ms]], f.xy[[m.trainIdx for m in ms]], cfg)
        c2, t2 = time.process_time(), time.perf_counter()
        matches = verifier.match(query, feats)
        c3, t3 = time.process_time(), time.perf_counter()
        verifier.fit(query, feats, matches)
        c4, t4 = time.process_time(), time.perf_counter()
        for key, (w, c) in zip(wall, ((t1 - t0, c1 - c0), (t2 - t1, c2 - c1), (t3 - t2, c3 - c2), (t4 - t3, c4 - c3))):
            wall[key].append(w)
            cpu[key].append(c)
    out = {key: 1000 * float(np.mean(v)) for key, v in wall.items()}
    out.update({f"cpu_{key}": 1000 * float(np.mean(v)) for key, v in cpu.items()})
    for prefix in ("", "cpu_"):
        out[f"{prefix}total"] = out[f"{prefix}matching"] + out[f"{prefix}ransac"]
        out[f"{prefix}bf_total"] = out[f"{prefix}bf_matching"] + out[f"{prefix}bf_ransac"]
    out["matching_speedup"] = out["bf_matching"] / out["matching"]
    out["total_speedup"] = out["bf_total"] / out["total"]
    out["cpu_matching_speedup"] = out["cpu_bf_matching"] / out["cpu_matching"]
    out["queries_timed"] = len(rows)
    out["pairs_per_query"] = shortlist.k
    out["mean_query_keypoints"] = float(np.mean([len(q_feats[shortlist.query_ids[r]]) for r in rows]))
    out["mean_db_keypoints"] = float(np.mean([len(db_feats[i]) for r in rows for i in shortlist.db_ids[r]]))
    out["threads"] = n_workers or default_workers()
    return out


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------

def per_query_ap(ds: RetrievalDataset, shortlist: Shortlist, order: Optional[np.ndarray]) -> np.ndarray:
    preds = shortlist.predictions(order)
    return np.array([oxford_ap(preds[q], ds.ground_truth[q].positives, ds.ground_truth[q].junk)
                     for q in shortlist.query_ids])


def oracle_order(ds: RetrievalDataset, shortlist: Shortlist) -> np.ndarray:
    """A perfect re-ordering of each shortlist: positives first, then the rest (global order kept)."""
    rel = np.array([[i in ds.ground_truth[q].positives for i in row]
                    for q, row in zip(shortlist.query_ids, shortlist.db_ids)])
    return np.argsort(~rel, axis=1, kind="stable")


def sweep_table(ds: RetrievalDataset, shortlist: Shortlist, local: str) -> Dict[str, Dict[float, np.ndarray]]:
    """Per-query AP for every normalisation x v, and for the DELG rule per threshold."""
    scores = shortlist.local_scores(local)
    out: Dict[str, Dict[float, np.ndarray]] = {}
    for label, (method, T) in NORMS.items():
        out[label] = {v: per_query_ap(ds, shortlist, fusion_order(fuse(shortlist.global_scores, scores, v, method, T)))
                      for v in V_GRID}
    out["delg"] = {float(th): per_query_ap(ds, shortlist, delg_order(scores, th)) for th in DELG_THRESHOLDS}
    return out


def cross_validated(table: Dict[str, Dict[float, np.ndarray]], folds: np.ndarray) -> Tuple[float, list]:
    """2-fold CV over queries: the (normalisation or DELG, v or threshold) with the best mAP on one fold
    is applied to the other; returns the mAP over all queries of those held-out APs, and the choices."""
    held_out = np.zeros(len(folds))
    choices = []
    for f in (0, 1):
        train, test = folds != f, folds == f
        best = max(((label, p) for label in table for p in table[label]),
                   key=lambda lp: table[lp[0]][lp[1]][train].mean())
        held_out[test] = table[best[0]][best[1]][test]
        choices.append({"fold": f, "chosen_on_other_fold": best[0], "param": best[1],
                        "train_map": float(100 * table[best[0]][best[1]][train].mean())})
    return float(100 * held_out.mean()), choices


def query_folds(query_ids: Sequence[str]) -> np.ndarray:
    """Fold 0: odd query numbers (all_souls_1, _3, _5), fold 1: even: each landmark in both folds."""
    return np.array([int(q.rsplit("_", 1)[1]) % 2 == 0 for q in query_ids], dtype=int)


def plot_sweep(table: Dict[str, Dict[float, np.ndarray]], global_map: float, oracle_map: float, path: Path,
               title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in NORMS:
        vs = sorted(table[label])
        ax.plot(vs, [100 * table[label][v].mean() for v in vs], marker=".", label=label)
    best_delg = max(table["delg"], key=lambda th: table["delg"][th].mean())
    ax.axhline(100 * table["delg"][best_delg].mean(), color="k", ls="--", lw=1,
               label=f"DELG rule (best threshold {best_delg:g})")
    ax.axhline(global_map, color="gray", ls=":", lw=1, label="global only")
    ax.axhline(oracle_map, color="green", ls=":", lw=1, label="perfect top-k re-ordering")
    ax.set_xlabel("v (weight of the global score)")
    ax.set_ylabel("mAP (%)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------

def _describe(table_label: str, param: float) -> str:
    return f"DELG rule, threshold {param:g}" if table_label == "delg" else f"{table_label}, v={param:g}"


def run(data: Optional[str] = None, out: str = f"results/{NAME}", cache: str = "cache", quick: bool = False,
        k: int = 100, global_db: Optional[str] = None, global_queries: Optional[str] = None,
        global_config: str = "lite0-gem-512", db_local: str = DEFAULT_LOCAL,
        query_local: Optional[str] = None, variants: Optional[Sequence[str]] = None,
        main_variant: str = MAIN_VARIANT, v_prior: float = 0.4, norm_prior: str = "minmax",
        timing_queries: int = 20, n_workers: Optional[int] = None, n_jobs: int = 2,
        progress: bool = True) -> dict:
    """The whole benchmark (module docstring); returns the results dict also written to ``out``.

    ``global_db`` / ``global_queries``: global feature files to rank with instead of EfficientNet
    (what ``benchmarks/classical.py`` passes); ``db_local`` / ``query_local``: SIFT specifications
    (:func:`sift_extractor`); ``variants``: names from :data:`VARIANTS`."""
    t_start = time.perf_counter()
    data = Path(data) if data else data_root()
    out_dir, cache_dir = Path(out), Path(cache) / NAME
    cache_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    variants = list(variants or VARIANTS)
    if main_variant not in variants:
        variants.append(main_variant)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
    if norm_prior not in NORMS:
        raise SystemExit(f"unknown normalisation {norm_prior!r}; known: {sorted(NORMS)}")
    if v_prior not in V_GRID:
        raise SystemExit(f"--v-prior must be on the sweep grid {V_GRID}")
    query_local = query_local or db_local
    if quick:
        k = min(k, 50)
        timing_queries = min(timing_queries, 3)
    torch.set_num_threads(max(1, default_workers()))

    # 1-2: data, global vectors, local features
    ds = load_dataset(data, quick)
    print(ds.summary(), flush=True)
    stages = {}
    t0 = time.perf_counter()
    db_vecs, q_vecs, global_info = global_vectors(ds, cache_dir, global_config, global_db, global_queries, progress)
    stages["global_features_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    db_feats, q_feats, local_info = local_features(ds, cache_dir, db_local, query_local, n_jobs, progress)
    stages["local_features_s"] = time.perf_counter() - t0

    # 3-4: shortlist (cached) and local scores of every variant (cached, resumable)
    sl_config = {"dataset": ds.name, "queries": ds.query_ids, "db_digest": _digest(ds.db_ids), "k": k,
                 "global": global_info, "local": local_info}
    sl_path = cache_dir / f"shortlist_{_digest(sl_config)}"
    if Shortlist.exists(sl_path):
        shortlist = Shortlist.load(sl_path, expect_config=sl_config)
    else:
        shortlist = build_shortlist(ds, db_vecs, q_vecs, k, sl_config)
        shortlist.save(sl_path)
    t0 = time.perf_counter()
    score_variants(shortlist, db_feats, q_feats, {n: VARIANTS[n] for n in variants}, sl_path, n_workers, progress)
    stages["scoring_s"] = time.perf_counter() - t0

    # 6: speed, baseline and ours on the same queries in this run
    t0 = time.perf_counter()
    timed = list(range(min(timing_queries, shortlist.num_queries)))
    speed = time_pipelines(shortlist, db_feats, q_feats, VARIANTS[main_variant], timed, n_workers) if timed else {}
    stages["timing_s"] = time.perf_counter() - t0

    # 5 + 7: sweeps and fair choices
    folds = query_folds(shortlist.query_ids)
    ap_global = per_query_ap(ds, shortlist, None)
    ap_oracle = per_query_ap(ds, shortlist, oracle_order(ds, shortlist))
    global_map, oracle_map = 100 * ap_global.mean(), 100 * ap_oracle.mean()
    rows: List[dict] = [
        {"method": "global only", "variant": "-", "selection": "-", "mAP": global_map},
        {"method": f"perfect re-ordering of the top {shortlist.k}", "variant": "-", "selection": "oracle",
         "mAP": oracle_map},
    ]
    sweeps = {name: sweep_table(ds, shortlist, f"inliers:{name}") for name in variants}
    for name in variants:
        table = sweeps[name]
        cv_map, choices = cross_validated(table, folds)
        best = max(((lab, p) for lab in table for p in table[lab]), key=lambda lp: table[lp[0]][lp[1]].mean())
        best_delg = max(table["delg"], key=lambda th: table["delg"][th].mean())
        rows += [
            {"method": f"fusion: {norm_prior}, v={v_prior:g}", "variant": name, "selection": "fixed a priori",
             "mAP": 100 * table[norm_prior][v_prior].mean()},
            {"method": "fusion or DELG rule", "variant": name,
             "selection": "2-fold CV over queries: " + " / ".join(
                 _describe(c["chosen_on_other_fold"], c["param"]) for c in choices), "mAP": cv_map},
            {"method": _describe(*best), "variant": name, "selection": "best of sweep (oracle)",
             "mAP": 100 * table[best[0]][best[1]].mean()},
            {"method": _describe("delg", best_delg), "variant": name, "selection": "best threshold (oracle)",
             "mAP": 100 * table["delg"][best_delg].mean()},
        ]
    # variant, normalisation and v all chosen on the other fold
    flat = {(name, lab): sweeps[name][lab] for name in variants for lab in sweeps[name]}
    cv_all, cv_all_choices = cross_validated(flat, folds)
    rows.append({"method": "fusion or DELG rule", "variant": "chosen by CV",
                 "selection": "2-fold CV over queries of variant + normalisation + v: " + " / ".join(
                     f"{c['chosen_on_other_fold'][0]}, {_describe(c['chosen_on_other_fold'][1], c['param'])}"
                     for c in cv_all_choices), "mAP": cv_all})

    main_table = sweeps[main_variant]
    plot_sweep(main_table, global_map, oracle_map, out_dir / "map_vs_v.png",
               f"{ds.name}: top-{shortlist.k} re-ranking, {main_variant}")
    stages["total_s"] = time.perf_counter() - t_start
    extra = {
        "dataset": ds.summary(), "k": shortlist.k, "main_variant": main_variant,
        "variants": {n: VARIANTS[n].to_dict() for n in variants},
        "global": global_info, "local": local_info, "speed_ms_per_query": speed,
        "sweep_map": {name: {lab: {f"{p:g}": float(100 * aps.mean()) for p, aps in t.items()} for lab, t in tab.items()}
                      for name, tab in sweeps.items()},
        "folds": {"fold0": [q for q, f in zip(shortlist.query_ids, folds) if f == 0],
                  "fold1": [q for q, f in zip(shortlist.query_ids, folds) if f == 1]},
        "cv_choices": {"per_variant": {n: cross_validated(sweeps[n], folds)[1] for n in variants},
                       "all": [{**c, "chosen_on_other_fold": list(c["chosen_on_other_fold"])} for c in cv_all_choices]},
        "per_query_ap": {"global": dict(zip(shortlist.query_ids, ap_global.tolist()))},
        "stage_seconds": stages, "peak_rss_mb": peak_rss_mb(), "torch_threads": torch.get_num_threads(),
        "cache": str(sl_path),
    }
    title = f"Spatial re-ranking on {ds.name}: top {shortlist.k} of {global_info.get('config', 'the given global ranking')}"
    table_md = write_results(rows, out_dir, ["method", "variant", "selection", "mAP"], title=title, extra=extra)
    sections = []
    if speed:
        speed_rows = [
            {"pipeline": "BFMatcher.knnMatch per pair + sequential fits (baseline)", "matching_ms": speed["bf_matching"],
             "ransac_ms": speed["bf_ransac"], "total_ms": speed["bf_total"], "cpu_total_ms": speed["cpu_bf_total"]},
            {"pipeline": f"batched matching + threaded fits ({main_variant})", "matching_ms": speed["matching"],
             "ransac_ms": speed["ransac"], "total_ms": speed["total"], "cpu_total_ms": speed["cpu_total"]}]
        sections.append(
            f"### ms per query for its {shortlist.k} pairs ({speed['queries_timed']} queries, {speed['threads']} threads; "
            f"{speed['mean_query_keypoints']:.0f} query / {speed['mean_db_keypoints']:.0f} database keypoints on "
            f"average)\n\n{markdown_table(speed_rows)}\n\nmatching {speed['matching_speedup']:.2f}x faster "
            f"(CPU time {speed['cpu_matching_speedup']:.2f}x), whole re-ranking {speed['total_speedup']:.2f}x")
    sections.append(f"### mAP vs v ({main_variant}, local score = inliers)\n\n" + markdown_table(
        [{"normalisation": lab, **{f"v={v:g}": 100 * main_table[lab][v].mean() for v in V_GRID[::2]}} for lab in NORMS]))
    sections.append("### DELG rule\n\n" + markdown_table(
        [{"threshold": th, "mAP": 100 * aps.mean()} for th, aps in main_table["delg"].items()]))
    with open(out_dir / "results.md", "a") as f:
        f.write("\n" + "\n\n".join(sections) + "\n")
    print(table_md)
    print("\n" + "\n\n".join(sections))
    return {"rows": rows, **extra}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="data folder holding oxford5k_subset/ (default: retrieval.paths.data_root())")
    p.add_argument("--out", default=f"results/{NAME}")
    p.add_argument("--cache", default="cache")
    p.add_argument("--quick", action="store_true", help="8 queries, 150-image database, top 50")
    p.add_argument("--k", type=int, default=100, help="shortlist size")
    p.add_argument("--global-db", default=None, help="global feature file of the database (features.store format)")
    p.add_argument("--global-queries", default=None, help="global feature file of the cropped queries")
    p.add_argument("--global-config", default="lite0-gem-512",
                   help="features.efficientnet.EXTRACTOR_CONFIGS name used when no global files are given")
    p.add_argument("--db-local", default=DEFAULT_LOCAL,
                   help="features.sift configuration of the database: NAME or NAME:key=value,...")
    p.add_argument("--query-local", default=None, help="features.sift configuration of the queries (default: --db-local)")
    p.add_argument("--variants", default=None, help=f"comma-separated, from {sorted(VARIANTS)}")
    p.add_argument("--main-variant", default=MAIN_VARIANT)
    p.add_argument("--v-prior", type=float, default=0.4)
    p.add_argument("--norm-prior", default="minmax")
    p.add_argument("--timing-queries", type=int, default=20)
    p.add_argument("--workers", type=int, default=None, help="threads for matching / RANSAC (default: usable CPUs)")
    p.add_argument("--jobs", type=int, default=2, help="feature extraction workers")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    return run(data=a.data, out=a.out, cache=a.cache, quick=a.quick, k=a.k, global_db=a.global_db,
               global_queries=a.global_queries, global_config=a.global_config,
               db_local=a.db_local, query_local=a.query_local,
               variants=a.variants.split(",") if a.variants else None, main_variant=a.main_variant,
               v_prior=a.v_prior, norm_prior=a.norm_prior, timing_queries=a.timing_queries, n_workers=a.workers,
               n_jobs=a.jobs, progress=not a.no_progress)


if __name__ == "__main__":
    main()
