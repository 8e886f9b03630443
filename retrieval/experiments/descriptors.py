"""The landmark descriptor study (experiment kind ``oxford-descriptors``): EfficientNet-Lite0 global
descriptors from two feature maps (the 1280-d head, the 320-d last MBConv block), average / max /
GeM (p = 3, 4) pooling, single- vs multi-scale, native vs enlarged query crops, with and without
PCA-whitening learned on OTHER data, on any landmark dataset (``oxford`` / ``paris`` / ``revisited``
/ ``gldv2``).

Protocol: the dataset's own (Oxford AP over good + ok, junk ignored, full exact-cosine ranking; GLDv2
mAP@100). Each row reports two folds of whole landmarks (:func:`retrieval.core.crossfit.fold_groups`) and
all queries; the held-out choice (:func:`retrieval.core.crossfit.cross_fit`) picks the setting on one fold
and reports it on the other, (a) over layer and pooling at the usual scale set and enlarged crops,
(b) over every unwhitened setting. One network pass per scale gives every pooling
(:class:`MultiPoolExtractor`); the vectors equal the named extractor configurations'
(``lite0-gem-512``, ``lite0-blocks-gem-ms-512`` ..., checked on one image at the start).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from retrieval.core.config import Config, ConfigError
from retrieval.core.dataset_kinds import LANDMARK_KINDS
from retrieval.datasets.open import DatasetConfig

__all__ = ["CONFIG", "DescriptorStudyConfig", "MultiPoolExtractor", "select", "main"]

POOLS = ("avg", "max", "gem3", "gem4")
POOL_NAMES = {"avg": "avg", "max": "max", "gem3": "GeM p=3", "gem4": "GeM p=4"}
SCALES = (1.0, 2 ** -0.5, 2 ** 0.5)           # the extractor's multi-scale set (lite0-gem-ms-512)
EXTRA_SCALES = (0.5,)                           # extracted separately (own cache file)
ALL_SCALES = SCALES + EXTRA_SCALES
SCALE_SETS = (("1", (1.0,)), ("1, 1/sqrt2", (1.0, 2 ** -0.5)), ("1, 1/sqrt2, sqrt2", SCALES),
              ("1, 1/sqrt2, 1/2", (1.0, 2 ** -0.5, 0.5)))
LAYERS = ("head", "blocks")
WHITENINGS = (0.5, 0.25, 0.0)                   # eigen powers: full, partial, PCA only
WHITENED_POOLS = ("gem3", "gem4")
#: the named extractor configurations the multi-pool tables reproduce: (layer, name, pooling, scales)
CHECKED_CONFIGS = (("head", "lite0-gem-512", "gem3", (1.0,)), ("head", "lite0-gem-ms-512", "gem3", SCALES),
                   ("blocks", "lite0-blocks-gem-512", "gem4", (1.0,)),
                   ("blocks", "lite0-blocks-gem-ms-512", "gem4", SCALES))


@dataclass(frozen=True)
class DescriptorStudyConfig(Config):
    # the landmark set (oxford / paris / revisited / gldv2); a relative path is read under the data root
    dataset: DatasetConfig = field(default_factory=lambda: DatasetConfig(kind="oxford", path="oxford5k_subset"))
    whitening_data: str = ""         # a labelled folder of OTHER images ("" = <data root>/coil100)
    whitening_images: int = 500      # 0: no whitening rows
    layers: Tuple[str, ...] = LAYERS
    quick: bool = False
    backend: str = "auto"
    n_jobs: int = 2

    def check(self) -> None:
        if self.dataset.kind not in LANDMARK_KINDS:
            raise ConfigError(f"dataset.kind must be a landmark set, one of {LANDMARK_KINDS}, "
                              f"got {self.dataset.kind!r}")
        if not self.dataset.path:
            raise ConfigError("dataset.path: the landmark set's folder is missing")
        if any(layer not in LAYERS for layer in self.layers) or not self.layers:
            raise ConfigError(f"layers must be a non-empty subset of {LAYERS}, got {self.layers}")
        if self.whitening_images < 0:
            raise ConfigError("whitening_images must be >= 0")


CONFIG = DescriptorStudyConfig


def _pool(fmap, pool: str):
    from retrieval.features.pooling import avg_pool, gem_pool, max_pool

    if pool == "avg":
        return avg_pool(fmap)
    if pool == "max":
        return max_pool(fmap)
    return gem_pool(fmap, float(pool[3:]))


class MultiPoolExtractor:
    """Every pooling at every scale from one network pass per scale: ``describe_inputs`` returns
    (B, len(scales) * len(POOLS) * C), blocks ordered (scale, pooling), each block L2-normalised.
    Plugs into :func:`retrieval.features.deep_extract.extract_global` (same ``prepare`` / ``to_input`` as
    ``base``, whose configuration fixes the layer)."""

    def __init__(self, base, scales: Sequence[float] = SCALES):
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

    def describe_inputs(self, x) -> np.ndarray:
        import torch

        from retrieval.features.pooling import l2n, resize_tensor

        blocks = []
        with torch.inference_mode():
            for s in self.scales:
                fmap = self.base.backbone(resize_tensor(x, s)).float()
                blocks += [l2n(_pool(fmap, pool)) for pool in POOLS]
        return torch.cat(blocks, dim=1).numpy().astype(np.float32)


def select(table: np.ndarray, pool: str, scales: Sequence[float], channels: int,
           all_scales: Sequence[float] = ALL_SCALES) -> np.ndarray:
    """The ``pool`` descriptor over ``scales`` from a multi-pool table: ``L2(sum_s block(s, pool))``."""
    from retrieval.core.vectors import l2_normalize_rows

    total = 0
    for s in scales:
        b = (list(all_scales).index(s) * len(POOLS) + POOLS.index(pool)) * channels
        total = total + table[:, b:b + channels]
    return l2_normalize_rows(np.ascontiguousarray(total, dtype=np.float32), copy=True)


def _check_against_extractor(ds, multi: MultiPoolExtractor, layer: str) -> float:
    import torch

    from retrieval.features.efficientnet import EfficientNetExtractor
    from retrieval.core.imageio import load_image

    image = load_image(ds.db_paths[0])
    table = multi.describe_inputs(torch.from_numpy(multi.to_input(multi.prepare(image))[None]))
    worst = 0.0
    for config_layer, name, pool, scales in CHECKED_CONFIGS:
        if config_layer == layer:
            want = EfficientNetExtractor(name, backend=multi.base.backend).extract_arrays([image])
            worst = max(worst, float(np.abs(select(table, pool, scales, multi.channels, SCALES) - want).max()))
    return worst


def _tables(ds, whitening_set, cache: Path, conf: DescriptorStudyConfig, timer, layer: str) -> Dict[str, np.ndarray]:
    """Multi-pool tables of one layer: database, queries (native and enlarged crops), whitening set."""
    from retrieval.steps.image_features import extract_into
    from retrieval.features.efficientnet import EfficientNetExtractor
    from retrieval.features.store import load_global

    def ordered(path, ids):
        got, vecs, _ = load_global(path)
        pos = {i: k for k, i in enumerate(got)}
        return vecs[[pos[str(i)] for i in ids]]

    base = EfficientNetExtractor("lite0-gem-512", backend=conf.backend, layer=layer)
    native = EfficientNetExtractor("lite0-gem-512", backend=conf.backend, layer=layer, upscale=False)
    multi, multi_native = MultiPoolExtractor(base), MultiPoolExtractor(native)
    print(f"{layer}: multi-pool vs the named configurations: max |diff| = "
          f"{_check_against_extractor(ds, multi, layer):.2e}", flush=True)
    out = {}
    jobs = (("db", multi, ds.db_ids, ds.db_paths, None),
            ("q_native", multi_native, ds.query_ids, ds.query_paths, ds.query_boxes),
            ("q_upscaled", multi, ds.query_ids, ds.query_paths, ds.query_boxes))
    for key, ext, ids, paths, boxes in jobs:
        with timer("extract database" if key == "db" else "extract queries"):
            parts = []
            for suffix, scales in (("", SCALES), ("-s0.5", EXTRA_SCALES)):
                path = cache / f"{layer}-{key}{suffix}.h5"
                extract_into("global", MultiPoolExtractor(ext.base, scales), ids, paths, boxes, path,
                             n_jobs=conf.n_jobs, desc=f"{layer} {key} scales {scales}")
                parts.append(ordered(path, ids))
            out[key] = np.concatenate(parts, axis=1)
    if whitening_set is not None:
        ids, paths, name = whitening_set
        with timer("extract whitening set"):
            path = cache / f"{layer}-whitening-{name}-{len(ids)}.h5"
            extract_into("global", multi, ids, paths, None, path, n_jobs=conf.n_jobs, desc=f"{layer} whitening set")
            out["white"] = ordered(path, ids)          # scales SCALES only
    out["channels"] = np.asarray(multi.channels)
    return out


def _score(relevance, groups, db, q) -> Dict[str, float]:
    from retrieval.indexing.index import Index

    ds = relevance.dataset
    k = len(ds.db_ids) if relevance.protocol == "oxford" else 100
    preds = Index(db, ids=ds.db_ids).search(q, k=min(k, len(ds.db_ids)), query_ids=ds.query_ids).to_predictions()
    per_query = relevance.per_query(preds)
    out = {g: 100.0 * float(np.mean([ap for x, ap in per_query.items() if groups[x] == g]))
           for g in sorted(set(groups.values()))}
    out["mAP"] = 100.0 * float(np.mean(list(per_query.values())))
    out["_per_query"] = per_query
    return out


def _rows(relevance, groups, tables, layer: str) -> List[dict]:
    from retrieval.features.whitening import PCAWhitening

    channels = int(tables["channels"])
    rows = []
    for pool in POOLS:
        for label, scales in SCALE_SETS:
            base_row = {"layer": layer, "pooling": POOL_NAMES[pool], "scales": label}
            db = select(tables["db"], pool, scales, channels)
            for qkey, qlabel in (("q_native", "native"), ("q_upscaled", "enlarged to 512")):
                rows.append(dict(base_row, **{"query crop": qlabel, "whitening": "none"},
                                 **_score(relevance, groups, db, select(tables[qkey], pool, scales, channels))))
            if "white" in tables and pool in WHITENED_POOLS and scales in ((1.0,), SCALES):
                q = select(tables["q_upscaled"], pool, scales, channels)
                train = select(tables["white"], pool, scales, channels, all_scales=SCALES)
                for power in WHITENINGS:
                    white = PCAWhitening(eigen_power=power).fit(train, trained_on="other data")
                    kind = "PCA only" if power == 0 else f"power {power}"
                    rows.append(dict(base_row, **{"query crop": "enlarged to 512",
                                                  "whitening": f"other data: dim {white.dim}, {kind}"},
                                     **_score(relevance, groups, white.transform(db), white.transform(q))))
    return rows


def _held_out(rows: List[dict], groups, fixed: Optional[dict] = None) -> dict:
    from retrieval.core.crossfit import cross_fit

    cands = [r for r in rows if r["whitening"] == "none" and all(r[k] == v for k, v in (fixed or {}).items())]
    label = lambda r: f"{r['layer']} / {r['pooling']} / {r['scales']} / {r['query crop']}"  # noqa: E731
    fit = cross_fit({label(r): r["_per_query"] for r in cands}, groups)
    return {"fixed": dict(fixed or {}), "candidates": len(cands), "chosen": fit["chosen"],
            "cross-fitted mAP": 100.0 * fit["score"]["all"],
            **{f"{g} (chosen on the other fold)": 100.0 * v for g, v in fit["score"].items() if g != "all"}}


def main(conf: DescriptorStudyConfig, out_dir, cache_dir=None) -> Path:
    from retrieval.core.crossfit import fold_groups
    from retrieval.datasets import read_labelled_folder
    from retrieval.evaluation.evaluate import main_metric
    from retrieval.steps.choose import Relevance
    from retrieval.experiments.ladder.data import quick_subset, read_landmarks
    from retrieval.core.paths import data_path, data_root
    from retrieval.core.report import StageTimer, write_results

    conf = DescriptorStudyConfig.from_dict(conf) if isinstance(conf, dict) else conf
    root = data_path(conf.dataset.path)
    ds = read_landmarks(conf.dataset.kind, root)
    if conf.quick:
        ds = quick_subset(ds)
    name = root.resolve().name + ("-quick" if conf.quick else "")
    protocol = "gldv2" if conf.dataset.kind == "gldv2" else "oxford"
    relevance = Relevance(name, ds, protocol, main_metric(protocol), label="mAP")
    groups = fold_groups([str(q) for q in ds.query_ids], [str(x) for x in ds.query_labels], 2)
    whitening_set = None
    n_white = min(conf.whitening_images, 40) if conf.quick else conf.whitening_images
    if n_white:
        wroot = Path(conf.whitening_data) if conf.whitening_data else Path(data_root()) / "coil100"
        other = read_labelled_folder(wroot)
        step = max(1, len(other.db_ids) // n_white)
        whitening_set = (other.db_ids[::step][:n_white], other.db_paths[::step][:n_white], wroot.resolve().name)
    cache = Path(cache_dir or "cache") / "descriptors" / name
    cache.mkdir(parents=True, exist_ok=True)
    print(f"{name}: {len(ds.db_ids)} database images, {len(ds.query_ids)} queries; cache {cache}", flush=True)
    timer = StageTimer()
    rows = []
    for layer in conf.layers:
        tables = _tables(ds, whitening_set, cache, conf, timer, layer)
        with timer("rank + evaluate"):
            rows += _rows(relevance, groups, tables, layer)
    held_out = [_held_out(rows, groups, {"scales": "1, 1/sqrt2, sqrt2", "query crop": "enlarged to 512"}),
                _held_out(rows, groups)]
    for r in rows:
        r.pop("_per_query")
    folds = sorted(set(groups.values()))
    extra = {"config": conf.to_dict(), "seconds": timer.seconds, "database": len(ds.db_ids),
             "queries": len(ds.query_ids), "held_out": held_out}
    out = Path(out_dir)
    table = write_results(rows, out, ["layer", "pooling", "scales", "query crop", "whitening", *folds, "mAP"],
                          title=f"E1 descriptors on {name}: EfficientNet-Lite0 at 512 px ({protocol} mAP, %)",
                          extra=extra)
    print(table)
    for h in held_out:
        print("held-out choice:", h)
    return out
