"""E1 on Oxford5k (annotated subset): EfficientNet-Lite0 global descriptors from two feature maps
(the 1280-d head and the 320-d last MBConv block), average / max / GeM (p = 3 and 4) pooling,
single- vs multi-scale, with and without PCA-whitening learned on other data; plus the E7 patch
re-ranking function (:func:`patch_rerank_oxford`) that the main E1-E7 script drives.

Protocol: the standard Oxford one. Database = the 845 images (512 px longest side); queries = the
55 query images cropped to their ground-truth boxes (scaled to the half-size files,
:func:`retrieval.datasets.read_oxford`); AP over good + ok with junk ignored
(:func:`retrieval.evaluate.evaluate`, ``protocol="oxford"``), full ranking by exact cosine
(:class:`retrieval.Index`).

Steps (each cached under ``--cache/deep_oxford/`` as resumable feature files):

1. per feature layer (``--layers``), one pass of the network per scale (1, 1/sqrt(2), sqrt(2), and
   1/2) over every database image at 512 px (aspect kept) and every cropped query (at its native
   resolution, and enlarged to 512 px: both rows are reported); from the same feature map, avg, max
   and GeM (p = 3, 4) descriptors, each L2-normalised (feature files hold all of them per image);
2. descriptors: single scale = the scale-1 block; multi-scale = ``L2(sum_s L2(f_s))`` over the scale
   sets of :data:`SCALE_SETS`;
3. PCA-whitening (:class:`features.whitening.PCAWhitening`: full, partial power 0.25, PCA only)
   learned on OTHER data: COIL-100 images (``--whiten-images``, spread over all objects) through the
   same network and settings. For reference only, GeM single-scale rows whitened on the searched
   database itself (test data: not a valid E1 figure);
4. rank, evaluate per query; every row reports the two halves of the landmarks (alternate landmarks
   in sorted order, :func:`retrieval.bench.e1_e7.oxford_halves`) and all queries;
5. a held-out choice of the descriptor (``held_out`` in the JSON): the unwhitened setting with the
   best mAP on half A is reported on half B and vice versa, (a) over layer and pooling with the
   usual scale set (1, 1/sqrt2, sqrt2) and enlarged query crops (the two choices the default
   ``lite0-blocks-gem-ms-512`` made looking at Oxford), (b) over every setting. Oxford is the only
   landmark set here, so this is how a choice made on it is checked.

The single-scale / multi-scale vectors are the ones ``EfficientNetExtractor("lite0-gem-512")`` /
``("lite0-gem-ms-512")`` / ``("lite0-blocks-gem-ms-512")`` give (checked on an image at the start).

    .venv/bin/python benchmarks/deep_oxford.py --quick
    .venv/bin/python benchmarks/deep_oxford.py
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from retrieval.features.deep_extract import extract_global, extract_patches  # noqa: E402
from retrieval.features.efficientnet import EfficientNetExtractor  # noqa: E402
from retrieval.features.pooling import avg_pool, gem_pool, l2n, max_pool, resize_tensor  # noqa: E402
from retrieval.features.store import LocalFeatureStore, load_global  # noqa: E402
from retrieval.features.whitening import PCAWhitening  # noqa: E402
from retrieval.datasets import read_labelled_folder, read_oxford  # noqa: E402
from retrieval.datasets.base import RetrievalDataset  # noqa: E402
from retrieval.bench.e1_e7 import oxford_halves  # noqa: E402
from retrieval.evaluate import evaluate, evaluate_per_query  # noqa: E402
from retrieval.index import Index  # noqa: E402
from retrieval.paths import data_root  # noqa: E402
from retrieval.report import StageTimer, write_results  # noqa: E402

NAME = "deep_oxford"
POOLS = ("avg", "max", "gem3", "gem4")
POOL_NAMES = {"avg": "avg", "max": "max", "gem3": "GeM p=3", "gem4": "GeM p=4"}
SCALES = (1.0, 2 ** -0.5, 2 ** 0.5)           # the extractor's multi-scale set (lite0-gem-ms-512)
EXTRA_SCALES = (0.5,)                           # extracted separately (own cache file)
ALL_SCALES = SCALES + EXTRA_SCALES
SCALE_SETS = (("1", (1.0,)), ("1, 1/sqrt2", (1.0, 2 ** -0.5)), ("1, 1/sqrt2, sqrt2", SCALES),
              ("1, 1/sqrt2, 1/2", (1.0, 2 ** -0.5, 0.5)))
LAYERS = ("head", "blocks")
QUICK_QUERIES = ("ashmolean_1", "pitt_rivers_1")


def _pool(fmap: torch.Tensor, pool: str) -> torch.Tensor:
    if pool == "avg":
        return avg_pool(fmap)
    if pool == "max":
        return max_pool(fmap)
    return gem_pool(fmap, float(pool[3:]))


class MultiPoolExtractor:
    """Every pooling at every scale from one network pass per scale: ``describe_inputs`` returns
    (B, len(scales) * len(POOLS) * C), blocks ordered (scale, pooling), each block L2-normalised.
    Plugs into :func:`features.deep_extract.extract_global` (same ``prepare`` / ``to_input`` as
    ``base``, whose configuration fixes the layer)."""

    def __init__(self, base: EfficientNetExtractor, scales: Sequence[float] = SCALES):
        self.base = base
        self.scales = tuple(float(s) for s in scales)
        self.channels = base.model.out_dim
        self.batch_size = base.batch_size

    @property
    def dim(self) -> int:
        return len(self.scales) * len(POOLS) * self.channels

    @property
    def config(self) -> dict:
        cfg = {k: v for k, v in self.base.config.items() if k not in ("pooling", "gem_p", "scales", "name")}
        return dict(cfg, benchmark="multi-pool", pools=list(POOLS), scales=list(self.scales))

    def prepare(self, image):
        return self.base.prepare(image)

    def to_input(self, prepared):
        return self.base.to_input(prepared)

    def describe_inputs(self, x: torch.Tensor) -> np.ndarray:
        blocks = []
        with torch.inference_mode():
            for s in self.scales:
                fmap = self.base.backbone(resize_tensor(x, s)).float()
                blocks += [l2n(_pool(fmap, pool)) for pool in POOLS]
        return torch.cat(blocks, dim=1).numpy().astype(np.float32)


def select(table: np.ndarray, pool: str, scales: Sequence[float], channels: int,
           all_scales: Sequence[float] = ALL_SCALES) -> np.ndarray:
    """The ``pool`` descriptor over ``scales`` from a multi-pool table: ``L2(sum_s block(s, pool))``."""
    total = 0
    for s in scales:
        b = (list(all_scales).index(s) * len(POOLS) + POOLS.index(pool)) * channels
        total = total + table[:, b:b + channels]
    return l2n(torch.from_numpy(np.ascontiguousarray(total, dtype=np.float32))).numpy()


def _ordered(path: Path, ids: Sequence[str]) -> np.ndarray:
    got_ids, vecs, _ = load_global(path)
    pos = {i: k for k, i in enumerate(got_ids)}
    missing = [i for i in ids if i not in pos]
    if missing:
        raise SystemExit(f"{path}: {len(missing)} images have no features (failed to decode?): {missing[:3]}")
    return vecs[[pos[i] for i in ids]]


def rank_and_score(ds: RetrievalDataset, db: np.ndarray, queries: np.ndarray) -> Dict[str, float]:
    """Oxford mAP (%) of the exact cosine ranking: ``{"half A", "half B", "mAP"}`` (halves by landmark)."""
    ranking = Index(db, ids=ds.db_ids).search(queries, k=len(ds.db_ids), query_ids=ds.query_ids)
    per_query = evaluate_per_query(ds, ranking.to_predictions(), protocol="oxford")["oxford_map"]
    halves = oxford_halves(ds.query_ids, ds.query_labels)
    out = {f"half {h}": 100.0 * float(np.mean([ap for q, ap in per_query.items() if halves[q] == h]))
           for h in sorted(set(halves.values()))}
    out["mAP"] = 100.0 * float(np.mean(list(per_query.values())))
    return out


def held_out_choice(rows: Sequence[dict], n_per_half: Dict[str, int], fixed: Optional[dict] = None) -> dict:
    """The unwhitened row (among those matching ``fixed``, e.g. a scale set and query crop) with the
    best mAP on one half, reported on the other half (both ways); the cross-fitted mAP weights each
    half by its number of queries."""
    candidates = [r for r in rows if r["whitening"] == "none" and "half A" in r and "half B" in r
                  and all(r[k] == v for k, v in (fixed or {}).items())]
    out = {"fixed": dict(fixed or {}), "candidates": len(candidates)}
    for pick, report in (("A", "B"), ("B", "A")):
        best = max(candidates, key=lambda r: r[f"half {pick}"])
        out[f"chosen on {pick}"] = {k: best[k] for k in ("layer", "pooling", "scales", "query crop")}
        out[f"half {report} (chosen on {pick})"] = best[f"half {report}"]
    if n_per_half["A"] and n_per_half["B"]:
        out["cross-fitted mAP"] = ((n_per_half["A"] * out["half A (chosen on B)"] +
                                    n_per_half["B"] * out["half B (chosen on A)"]) / sum(n_per_half.values()))
    return out


def quick_subset(ds: RetrievalDataset, n_other: int = 30) -> RetrievalDataset:
    """A few queries, their positives and junk, and some other images (development only)."""
    from dataclasses import replace

    keep_q = [i for i, q in enumerate(ds.query_ids) if q in QUICK_QUERIES]
    needed = set()
    for i in keep_q:
        t = ds.ground_truth[ds.query_ids[i]]
        needed |= set(t.positives) | set(t.junk)
    others = [d for d in ds.db_ids if d not in needed][:: max(1, len(ds.db_ids) // n_other)][:n_other]
    keep_db = [k for k, d in enumerate(ds.db_ids) if d in needed or d in set(others)]
    return replace(ds, db_ids=[ds.db_ids[k] for k in keep_db], db_paths=[ds.db_paths[k] for k in keep_db],
                   query_ids=[ds.query_ids[i] for i in keep_q], query_paths=[ds.query_paths[i] for i in keep_q],
                   query_boxes=[ds.query_boxes[i] for i in keep_q],
                   query_labels=None if ds.query_labels is None else [ds.query_labels[i] for i in keep_q],
                   ground_truth={ds.query_ids[i]: ds.ground_truth[ds.query_ids[i]] for i in keep_q},
                   db_labels=None if ds.db_labels is None else [ds.db_labels[k] for k in keep_db],
                   db_metadata={}, query_metadata={})


#: the named extractor configurations that the multi-pool tables reproduce: (layer, name, pooling, scales)
CHECKED_CONFIGS = (("head", "lite0-gem-512", "gem3", (1.0,)), ("head", "lite0-gem-ms-512", "gem3", SCALES),
                   ("blocks", "lite0-blocks-gem-512", "gem4", (1.0,)),
                   ("blocks", "lite0-blocks-gem-ms-512", "gem4", SCALES))


def check_against_extractor(ds: RetrievalDataset, multi: MultiPoolExtractor, layer: str) -> float:
    """Max |difference| between the multi-pool vectors of one image and the named extractor
    configurations of ``layer`` (:data:`CHECKED_CONFIGS`)."""
    from retrieval.imageio import load_image

    image = load_image(ds.db_paths[0])
    table = multi.describe_inputs(torch.from_numpy(multi.to_input(multi.prepare(image))[None]))
    worst = 0.0
    for config_layer, name, pool, scales in CHECKED_CONFIGS:
        if config_layer != layer:
            continue
        want = EfficientNetExtractor(name, backend=multi.base.backend).extract_arrays([image])
        worst = max(worst, float(np.abs(select(table, pool, scales, multi.channels, all_scales=SCALES) - want).max()))
    return worst


def extract_tables(ds: RetrievalDataset, cache: Path, args, timer: StageTimer, layer: str) -> Dict[str, np.ndarray]:
    """Multi-pool tables of one feature layer for the database, the queries (native and enlarged
    crops), the whitening set."""
    base = EfficientNetExtractor("lite0-gem-512", backend=args.backend, layer=layer)
    native = EfficientNetExtractor("lite0-gem-512", backend=args.backend, layer=layer, upscale=False)
    multi, multi_native = MultiPoolExtractor(base), MultiPoolExtractor(native)
    diff = check_against_extractor(ds, multi, layer)
    print(f"{layer}: multi-pool vs EfficientNetExtractor configurations: max |diff| = {diff:.2e}", flush=True)
    out = {}
    jobs = (("db", multi, ds.db_ids, ds.db_paths, None),
            ("q_native", multi_native, ds.query_ids, ds.query_paths, ds.query_boxes),
            ("q_upscaled", multi, ds.query_ids, ds.query_paths, ds.query_boxes))
    for key, ext, ids, paths, boxes in jobs:
        with timer("extract database" if key == "db" else "extract queries"):
            parts = []
            for suffix, scales in (("", SCALES), ("-s0.5", EXTRA_SCALES)):
                group = MultiPoolExtractor(ext.base, scales)
                path = cache / f"{layer}-{key}{suffix}.h5"
                extract_global(group, ids, paths, path, boxes=boxes, n_jobs=args.n_jobs,
                               desc=f"{layer} {key} scales {scales}")
                parts.append(_ordered(path, ids))
            out[key] = np.concatenate(parts, axis=1)
    if args.whiten_images:
        coil = read_labelled_folder(Path(args.data_root) / "coil100")
        step = max(1, len(coil.db_ids) // args.whiten_images)
        ids, paths = coil.db_ids[::step][: args.whiten_images], coil.db_paths[::step][: args.whiten_images]
        with timer("extract whitening set (COIL-100)"):
            path = cache / f"{layer}-coil100-{len(ids)}.h5"
            extract_global(multi, ids, paths, path, n_jobs=args.n_jobs, desc=f"{layer} coil100 (whitening)")
            out["white"] = _ordered(path, ids)  # scales SCALES only
    out["channels"] = np.asarray(multi.channels)
    return out


WHITENINGS = (dict(eigen_power=0.5), dict(eigen_power=0.25), dict(eigen_power=0.0))
WHITENED_POOLS = ("gem3", "gem4")


def _whiten_rows(ds, db, q, train, source: str, base_row: dict) -> List[dict]:
    rows = []
    for w in WHITENINGS:
        white = PCAWhitening(**w).fit(train, trained_on=source)
        kind = "PCA only" if w["eigen_power"] == 0 else f"power {w['eigen_power']}"
        rows.append(dict(base_row, **{"query crop": "enlarged to 512",
                                      "whitening": f"{source}: dim {white.dim}, {kind}"},
                         **rank_and_score(ds, white.transform(db), white.transform(q))))
    return rows


def run_e1(ds: RetrievalDataset, tables: Dict[str, np.ndarray], layer: str) -> List[dict]:
    """Rows of one layer: every pooling x scale set x query crop without whitening; GeM whitened on
    COIL-100 (other data) for the single-scale and the extractor's multi-scale set; and, for
    reference only, GeM whitened on the searched Oxford database itself (not a valid E1 figure)."""
    channels = int(tables["channels"])
    rows = []
    for pool in POOLS:
        for label, scales in SCALE_SETS:
            base_row = {"layer": layer, "pooling": POOL_NAMES[pool], "scales": label}
            db = select(tables["db"], pool, scales, channels)
            for qkey, qlabel in (("q_native", "native"), ("q_upscaled", "enlarged to 512")):
                scores = rank_and_score(ds, db, select(tables[qkey], pool, scales, channels))
                rows.append(dict(base_row, **{"query crop": qlabel, "whitening": "none"}, **scores))
            q = select(tables["q_upscaled"], pool, scales, channels)
            if "white" in tables and pool in WHITENED_POOLS and scales in ((1.0,), SCALES):
                train = select(tables["white"], pool, scales, channels, all_scales=SCALES)
                rows += _whiten_rows(ds, db, q, train, f"COIL-100 ({len(train)} images)", base_row)
            if pool in WHITENED_POOLS and scales == (1.0,):
                rows += _whiten_rows(ds, db, q, db, "REFERENCE ONLY, the searched Oxford database", base_row)
            for r in rows[-2:]:
                print(f"  {r}", flush=True)
    return rows


# ------------------------------------------------------------------------------------------------
# E7: patch re-ranking of a global ranking on Oxford
# ------------------------------------------------------------------------------------------------

def patch_rerank_oxford(ds: RetrievalDataset, ranking, cache_dir, k: int = 100,
                        vs: Sequence[float] = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0),
                        methods: Sequence[str] = ("mean_max", "mutual_sum", "mutual_count"),
                        patch_config: str = "lite0-patch-224", norm: str = "minmax", backend: str = "auto",
                        n_jobs: int = 2, progress: bool = True) -> List[dict]:
    """E7: re-rank the top ``k`` of a global ``ranking`` (a :class:`retrieval.index.Ranking` over
    ``ds.db_ids``, rows = ``ds.query_ids``) with EfficientNet patch tokens.

    Patch tokens of the database and the cropped queries go into LocalFeatureStores under
    ``cache_dir`` (resumable); each :class:`rerank.patch.PatchScorer` method fills a local score of a
    cached :class:`rerank.shortlist.Shortlist`; :func:`rerank.fusion.sweep` fuses
    ``v * global + (1 - v) * N(patch score)`` (``norm``) for every ``v``. Returns one row per (method,
    v) with the Oxford mAP (v = 1 is the global ranking)."""
    from retrieval.rerank.fusion import sweep
    from retrieval.rerank.patch import PatchScorer
    from retrieval.rerank.shortlist import Shortlist

    cache_dir = Path(cache_dir)
    ext = EfficientNetExtractor(patch_config, backend=backend)
    extract_patches(ext, ds.db_ids, ds.db_paths, cache_dir / f"patches-db-{patch_config}.h5", n_jobs=n_jobs,
                    progress=progress, desc="patch tokens (db)")
    extract_patches(ext, ds.query_ids, ds.query_paths, cache_dir / f"patches-q-{patch_config}.h5",
                    boxes=ds.query_boxes, n_jobs=n_jobs, progress=progress, desc="patch tokens (queries)")
    shortlist = Shortlist.from_ranking(ranking, k=k, query_ids=ds.query_ids)
    rows = []
    with LocalFeatureStore(cache_dir / f"patches-db-{patch_config}.h5") as db_store, \
            LocalFeatureStore(cache_dir / f"patches-q-{patch_config}.h5") as q_store:
        for method in methods:
            scorer = PatchScorer(method)
            start = time.perf_counter()
            shortlist.score_with(scorer, q_store, db_store, progress=progress)
            seconds = time.perf_counter() - start
            for v, preds in sweep(shortlist, vs, local=scorer.name, norm=norm).items():
                m = 100.0 * evaluate(ds, preds, protocol="oxford")["oxford_map"]
                rows.append({"patch score": method, "patches": patch_config, "k": shortlist.k, "v": v,
                             "mAP": m, "score_s_per_query": seconds / max(1, shortlist.num_queries)})
    return rows


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="data folder (default: retrieval.paths.data_root())")
    parser.add_argument("--out", default=f"results/{NAME}")
    parser.add_argument("--cache", default="cache")
    parser.add_argument("--quick", action="store_true", help="2 queries, their positives and junk + 30 other images")
    parser.add_argument("--backend", default="auto", help="inference backend (features.fast_inference)")
    parser.add_argument("--n-jobs", type=int, default=2, help="decoding threads")
    parser.add_argument("--threads", type=int, default=None, help="torch / ONNX Runtime threads")
    parser.add_argument("--whiten-images", type=int, default=None,
                        help="COIL-100 images to learn whitening on (0 = no whitening rows; default 500, quick 40)")
    parser.add_argument("--layers", nargs="+", default=list(LAYERS), choices=list(LAYERS),
                        help="feature maps to pool: head (1280-d) and/or blocks (last MBConv block, 320-d)")
    parser.add_argument("--e7", action="store_true", help="also run the E7 patch re-ranking of the best global row")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.data_root = str(data_root(args.data))
    if args.whiten_images is None:
        args.whiten_images = 40 if args.quick else 500
    ds = read_oxford(Path(args.data_root) / "oxford5k_subset")
    if args.quick:
        ds = quick_subset(ds)
    cache = Path(args.cache) / NAME / ("quick" if args.quick else "full")
    cache.mkdir(parents=True, exist_ok=True)
    print(f"Oxford: {len(ds.db_ids)} database images, {len(ds.query_ids)} queries; cache {cache}", flush=True)
    timer = StageTimer()
    rows, tables = [], {}
    for layer in args.layers:
        tables[layer] = extract_tables(ds, cache, args, timer, layer)
        with timer("rank + evaluate"):
            rows += run_e1(ds, tables[layer], layer)
    halves = oxford_halves(ds.query_ids, ds.query_labels)
    n = {h: sum(1 for q in ds.query_ids if halves[q] == h) for h in ("A", "B")}
    # the two choices the default configuration made on Oxford (layer, pooling), its scale set and
    # query crop being the usual ones; then every setting at once (a wider, noisier choice)
    held_out = [held_out_choice(rows, n, {"scales": "1, 1/sqrt2, sqrt2", "query crop": "enlarged to 512"}),
                held_out_choice(rows, n)]
    extra = {"seconds": timer.seconds, "database": len(ds.db_ids), "queries": len(ds.query_ids),
             "queries_per_half": n, "held_out": held_out, "quick": args.quick,
             "whitening_images": args.whiten_images}
    if args.e7:
        best = max((r for r in rows if r["whitening"] == "none" and r["query crop"] == "enlarged to 512"),
                   key=lambda r: r["mAP"])
        pool = next(p for p, name in POOL_NAMES.items() if name == best["pooling"])
        scales = dict(SCALE_SETS)[best["scales"]]
        t, channels = tables[best["layer"]], int(tables[best["layer"]]["channels"])
        ranking = Index(select(t["db"], pool, scales, channels), ids=ds.db_ids).search(
            select(t["q_upscaled"], pool, scales, channels), k=len(ds.db_ids), query_ids=ds.query_ids)
        with timer("E7 patch re-ranking"):
            e7 = patch_rerank_oxford(ds, ranking, cache, n_jobs=args.n_jobs, backend=args.backend)
        extra["e7"] = e7
        extra["e7_global"] = best
        from retrieval.report import markdown_table

        print(markdown_table(e7))
    table = write_results(rows, args.out, ["layer", "pooling", "scales", "query crop", "whitening", "half A",
                                           "half B", "mAP"],
                          title="E1 Oxford5k subset: EfficientNet-Lite0 at 512 px (mAP, %)", extra=extra)
    print(table)
    print("held-out choice:", json.dumps(held_out, indent=1))
    print("stage seconds:", {k: round(v, 1) for k, v in timer.seconds.items()})
    return table


if __name__ == "__main__":
    main()
