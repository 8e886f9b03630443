"""Classical retrieval (experiment kind ``classical``): RootSIFT + BoW / VLAD / Fisher on any dataset
(:class:`retrieval.datasets.open.DatasetConfig`: a labelled folder or class-per-folder tree, Oxford /
Paris / revisited, GLDv2, a multi-view tree, os-core). Shipped experiments: ``classical.toml`` (the
Oxford5k subset) and ``classical-coil100.toml`` (COIL-100).

Protocol: the dataset kind's own (the first of :data:`retrieval.datasets.open.DEFAULT_PROTOCOL`, or
``protocol``): Oxford / Paris rank the whole database for queries cropped to their boxes and report
the official AP (good + ok, junk ignored); labelled folders and multi-view trees take their queries as
:class:`~retrieval.datasets.open.DatasetConfig` says (by default every 4th image of each label, searched
against all images with the query counted as its own junk) and report ``map@100`` as GLDv2 defines it
(their ranking is complete, so the protocol's other metrics are exact too); GLDv2 its map@100. The ``mAP`` column is that figure (:data:`~retrieval.experiments.classical_methods.MAIN_METRIC`),
the other metrics of the protocol are in each row's ``metrics``.

Steps (each cached under the cache folder, default ``cache/classical``, so a rerun resumes):

1. RootSIFT of every database image (and of every query that is not a database image, cropped to its
   box) into a resumable :class:`~retrieval.features.store.LocalFeatureStore`; queries that are database images
   reuse the database features;
2. codebooks / GMMs learned on the dataset's own database images (the Oxford baseline's convention:
   unsupervised, no labels; the ``codebook_trained_on`` column says so), BoW idf on the database;
3. PCA-whitening of VLAD learned on OTHER images (``whitening_data``; never on the searched set);
4. encode database and queries, :class:`retrieval.Index` (exact cosine) or, for BoW,
   :class:`retrieval.features.encoders.BowInvertedIndex`; evaluate with :func:`retrieval.evaluation.evaluate.evaluate`.

With ``speed``: SIFT extraction images/s with 1 and 2 workers (threads and loky processes), VLAD and
Fisher encoding descriptors/s against the bare matrix products of the same sizes (the bound)
(:mod:`retrieval.experiments.classical_speed`); with ``kmeans_timing`` also the 20k-word codebook on 1M
descriptors. Spatial verification of a landmark shortlist: ``benchmarks/spatial_rerank.py``.

Settings (:class:`ClassicalConfig`):

``dataset``          the searched dataset; a relative ``path`` that does not exist from the current
                     folder is read under the data root (:func:`retrieval.core.paths.data_root`).
``sift``             a name of ``retrieval.features.sift.SIFT_CONFIGS``, or ``"auto"``: upright RootSIFT with 4k
                     weak keypoints (``rootsift-upright-c02-4k``) for landmark kinds (oxford, paris,
                     revisited, gldv2); for object kinds ``rootsift-small`` when the first database
                     image is at most 256 px on its longest side (COIL's 128 px: enlarged, low contrast
                     threshold), else ``rootsift-c02-4k``.
``protocol``         an evaluation protocol of :mod:`retrieval.evaluation.evaluate`; "" = the dataset kind's own.
``whitening_data``   OTHER images the VLAD PCA-whitening is learned on (their database images); a
                     relative path resolves like ``dataset.path``; ``path = ""`` = no whitened rows.
                     It must not be the searched dataset.
``whitening_images`` how many of them (evenly spaced); omitted = all, 0 = no whitened rows; quick: at
                     most 100. ``whitening_sift``: as ``sift``, for the whitening images.
``quick``            a smoke run: :func:`retrieval.experiments.ladder.data.quick_subset` of the dataset, BoW k =
                     100, 1000 unless ``bow_k`` is set, fewer k-means samples and iterations,
                     whitening to at most 64 dimensions.
``bow_k`` / ``vlad_k`` / ``fisher_k``  vocabulary sizes (``bow_k`` omitted: 1000, 20000);
``bow_soft``         also soft-assigned BoW (3 nearest words) for vocabularies >= 10k (quick: >= 1k).
``whiten_dims`` / ``whiten_power`` / ``whiten_shrinkage``  PCA-whitening output sizes ([] = none),
                     eigenvalue power (0.5 = full whitening) and shrinkage.
``n_jobs``           feature extraction workers; ``seed``; ``faiss_threads``: faiss OpenMP threads for
                     k-means (1 is faster on a machine busy with other work; omitted = faiss' default).
``speed`` / ``kmeans_timing`` / ``progress``  the measurements above, progress bars.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Mapping, Optional, Tuple

from retrieval.core.config import Config, ConfigError
from retrieval.core.dataset_kinds import LANDMARK_KINDS
from retrieval.datasets.open import DatasetConfig

__all__ = ["CONFIG", "ClassicalConfig", "DEFAULT_CACHE", "sift_for", "sift_choice", "main"]

DEFAULT_CACHE = Path("cache/classical")

#: Landmark photos are upright, so orientation invariance only costs distinctiveness (upright: VLAD k=64
#: 47.2 -> 56.8 mAP on the Oxford subset in tuning); many weak keypoints give BoW and VLAD more evidence.
LANDMARK_SIFT = "rootsift-upright-c02-4k"
#: COIL's 128 px images enlarged to 256 px with a low contrast threshold give ~150 keypoints each; they
#: keep rotation invariance (upright lost 3 points of VLAD k=64 mAP on COIL-100).
SMALL_SIFT, SMALL_SIDE = "rootsift-small", 256
#: object photos larger than that: rotation invariance kept, more weak keypoints
OBJECT_SIFT = "rootsift-c02-4k"
QUICK_WHITENING_IMAGES = 100


def _oxford_subset() -> DatasetConfig:
    return DatasetConfig(kind="oxford", path="oxford5k_subset")


def _coil100() -> DatasetConfig:
    return DatasetConfig(kind="folder", path="coil100")


@dataclass(frozen=True)
class ClassicalConfig(Config):
    """Settings of the classical protocol (the module docstring describes each)."""

    dataset: DatasetConfig = field(default_factory=_oxford_subset)
    sift: str = "auto"
    protocol: str = ""
    whitening_data: DatasetConfig = field(default_factory=_coil100)
    whitening_images: Optional[int] = None
    whitening_sift: str = "auto"
    quick: bool = False
    bow_k: Optional[Tuple[int, ...]] = None
    bow_soft: bool = False
    vlad_k: Tuple[int, ...] = (64, 256)
    fisher_k: Tuple[int, ...] = (64, 256)
    whiten_dims: Tuple[int, ...] = (1024,)
    whiten_power: float = 0.5
    whiten_shrinkage: float = 0.0
    n_jobs: int = 2
    seed: int = 0
    faiss_threads: Optional[int] = None
    speed: bool = True
    kmeans_timing: bool = False
    progress: bool = True

    def check(self) -> None:
        from retrieval.evaluation.evaluate import PROTOCOLS
        from retrieval.features.sift import SIFT_CONFIGS

        for key in ("sift", "whitening_sift"):
            name = getattr(self, key)
            if name != "auto" and name not in SIFT_CONFIGS:
                raise ConfigError(f"{key}: unknown SIFT configuration {name!r}; known: auto, "
                                  f"{', '.join(SIFT_CONFIGS.names())}")
        if self.protocol and self.protocol not in PROTOCOLS:
            raise ConfigError(f"protocol: {self.protocol!r} is not one of {list(PROTOCOLS)} (or '' = the dataset's)")
        for key in ("bow_k", "vlad_k", "fisher_k"):
            if any(k < 2 for k in getattr(self, key) or ()):
                raise ConfigError(f"{key}: vocabulary sizes must be >= 2, got {getattr(self, key)}")
        if any(d < 1 for d in self.whiten_dims):
            raise ConfigError(f"whiten_dims must be >= 1, got {self.whiten_dims}")
        if self.whitening_images is not None and self.whitening_images < 0:
            raise ConfigError("whitening_images must be >= 0 (0: no whitened rows; omit it for all)")
        if self.n_jobs < 1 or (self.faiss_threads is not None and self.faiss_threads < 1):
            raise ConfigError("n_jobs and faiss_threads must be >= 1")


CONFIG = ClassicalConfig


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _located(conf: DatasetConfig) -> DatasetConfig:
    """``conf`` with a relative path that does not exist from here read under the data root."""
    from retrieval.core.paths import data_path

    return conf.override(path=str(data_path(conf.path))) if conf.path else conf


def sift_for(name: str, kind: str, ds) -> str:
    """The SIFT configuration ``name``, or for ``"auto"`` the one that suits dataset ``ds`` of ``kind``
    (module docstring)."""
    return sift_choice(name, kind, ds)[0]


def sift_choice(name: str, kind: str, ds) -> Tuple[str, str]:
    """(the SIFT configuration of :func:`sift_for`, why it was picked): "auto" decides from the dataset
    kind and the size of the first database image, so the reason names both (and, for a folder, the
    setting for landmark photos, which a folder's kind cannot tell from objects)."""
    if name != "auto":
        return name, "set in the experiment"
    if kind in LANDMARK_KINDS:
        return LANDMARK_SIFT, f"sift = auto: {kind} is a landmark dataset kind"
    from retrieval.core.imageio import image_size

    side = max(image_size(ds.db_paths[0]))
    if side <= SMALL_SIDE:
        return SMALL_SIFT, (f"sift = auto: {kind} is read as objects and its first database image is {side} px "
                            f"(at most {SMALL_SIDE}: small objects, enlarged)")
    return OBJECT_SIFT, (f"sift = auto: {kind} is read as objects (first database image {side} px); for "
                         f"landmark photos set --set sift={LANDMARK_SIFT} (upright, as landmark kinds use)")


def _queries_are_db_images(ds) -> bool:
    if ds.query_boxes is not None and any(b is not None for b in ds.query_boxes):
        return False
    path_of = {d: str(p) for d, p in zip(ds.db_ids, ds.db_paths)}
    return all(path_of.get(q) == str(p) for q, p in zip(ds.query_ids, ds.query_paths))


def _features(cache: Path, root: Path, sift: str, parts, conf: ClassicalConfig) -> Tuple[list, dict]:
    """Local features of each ``(what, ids, paths, boxes)`` part (stores under ``cache/features``, one
    folder per dataset folder, shared by quick and full runs and by the whitening of other runs) and
    ``{"sift": configuration, "extract_s_per_image": ...}`` over every image this folder's store computed."""
    from retrieval.features.store import LocalFeatureStore
    from retrieval.core.fileio import atomic_write_text
    from retrieval.steps.image_features import extract_into, make_extractor

    extractor = make_extractor("local", sift)
    root = Path(root).resolve()
    folder = cache / "features" / f"{root.name}-{_digest(str(root))}"
    folder.mkdir(parents=True, exist_ok=True)
    timing_file = folder / f"{extractor.name}-timing.json"
    timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {"seconds": 0.0, "images": 0}
    loaded = []
    for what, ids, paths, boxes in parts:
        # database images are the same whatever the subset; query crops depend on their boxes
        suffix = "" if what == "db" else "-" + _digest(list(ids), boxes)
        path = folder / f"{extractor.name}-{what}{suffix}.h5"
        res = extract_into("local", extractor, ids, paths, boxes, path, n_jobs=conf.n_jobs, progress=conf.progress,
                           desc=f"{root.name} {what} {extractor.name}")
        if res.computed:
            timing["seconds"] += res.seconds
            timing["images"] += res.computed
        with LocalFeatureStore(path, "r") as store:
            # float16 in memory (half the RAM); encoders convert per batch
            loaded.append(store.get_many(ids, dtype=None))
    atomic_write_text(timing_file, json.dumps(timing))
    per_image = timing["seconds"] / timing["images"] if timing["images"] else float("nan")
    return loaded, {"sift": extractor.config, "extract_s_per_image": per_image}


def dataset_features(ds, sift: str, cache: Path, conf: ClassicalConfig):
    """(database features, query features, info) in dataset order: queries that are database images
    reuse their features, others (Oxford's, cropped to their boxes) are extracted into their own store."""
    import numpy as np

    own = _queries_are_db_images(ds)
    parts = [("db", ds.db_ids, ds.db_paths, None)]
    if not own:
        parts.append(("queries", ds.query_ids, ds.query_paths, ds.query_boxes))
    loaded, info = _features(cache, ds.root, sift, parts, conf)
    db = loaded[0]
    if own:
        row = {d: i for i, d in enumerate(ds.db_ids)}
        queries = [db[row[q]] for q in ds.query_ids]
    else:
        queries = loaded[1]
    info.update({"keypoints_per_db_image": float(np.mean([len(f) for f in db])),
                 "keypoints_per_query": float(np.mean([len(f) for f in queries])),
                 "n_empty_db": int(sum(len(f) == 0 for f in db)),
                 "queries": "database images (each its own junk)" if own else
                 "own images" + (", cropped to their boxes" if ds.query_boxes is not None else "")})
    return db, queries, info


def whitening_features(conf: ClassicalConfig, searched_root: Path, cache: Path):
    """``(name, features, info)`` of the whitening images (module docstring), or None for no whitening."""
    from retrieval.datasets.open import open_dataset

    n = conf.whitening_images
    if not conf.whitening_data.path or n == 0:
        return None
    wconf = _located(conf.whitening_data)
    if wconf.root.resolve() == Path(searched_root).resolve():
        raise ConfigError(f"whitening_data {wconf.root} is the searched dataset: whitening is learned on OTHER "
                          f"images (set whitening_data.path, or --set whitening_data.path= for no whitened rows)")
    other = open_dataset(wconf)
    total = len(other.db_ids)
    n = total if n is None else min(n, total)
    if conf.quick:
        n = min(n, QUICK_WHITENING_IMAGES)
    step = max(1, total // n)
    ids, paths = other.db_ids[::step][:n], other.db_paths[::step][:n]
    sift = sift_for(conf.whitening_sift, wconf.kind, other)
    loaded, info = _features(cache, other.root, sift, [("db", ids, paths, None)], conf)
    return wconf.root.resolve().name, loaded[0], info


def main(conf: ClassicalConfig, out_dir, cache_dir=None) -> Path:
    """Run the protocol (module docstring); returns ``out_dir`` holding results.json and results.md."""
    import numpy as np

    from retrieval.datasets.files import DatasetError
    from retrieval.datasets.open import DEFAULT_PROTOCOL, open_dataset
    from retrieval.indexing.index import Index
    from retrieval.experiments.ladder.data import quick_subset
    from retrieval.core.report import markdown_table, peak_rss_mb, write_results

    from retrieval.experiments import classical_speed as speed_of
    from retrieval.experiments.classical_methods import MAIN_METRIC, Searched, cached_codebook, cached_fisher, method_rows

    conf = ClassicalConfig.from_dict(conf) if isinstance(conf, Mapping) else conf
    t_start = time.perf_counter()
    cache = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE
    dconf = _located(conf.dataset)
    ds = open_dataset(dconf)
    if not ds.query_ids:
        raise DatasetError(f"{dconf.root}: the dataset has no queries")
    if conf.quick:
        ds = quick_subset(ds)
    name = dconf.root.resolve().name + ("-quick" if conf.quick else "")
    protocol = conf.protocol or DEFAULT_PROTOCOL.get(dconf.kind, "general").split(",")[0]
    sift, why = sift_choice(conf.sift, dconf.kind, ds)
    print(f"  SIFT: {sift} ({why})", flush=True)
    bow_k = conf.bow_k if conf.bow_k is not None else ((100, 1000) if conf.quick else (1000, 20000))
    whiten_dims = [min(d, 64) for d in conf.whiten_dims] if conf.quick else list(conf.whiten_dims)

    # first search loads the index backend (torch): done once here so no method's query time pays it
    Index(np.eye(4, dtype=np.float32)).search(np.eye(4, dtype=np.float32), k=1)
    stage = {}
    print(ds.summary(), flush=True)
    t0 = time.perf_counter()
    db, queries, info = dataset_features(ds, sift, cache, conf)
    stage["features"] = round(time.perf_counter() - t0, 1)
    print(f"  {name}: {info['keypoints_per_db_image']:.0f} keypoints / database image, "
          f"{info['keypoints_per_query']:.0f} / query, {info['extract_s_per_image'] * 1000:.1f} ms / image",
          flush=True)
    whitening = None
    if conf.vlad_k and whiten_dims:
        t0 = time.perf_counter()
        whitening = whitening_features(conf, dconf.root, cache)
        stage["features whitening set"] = round(time.perf_counter() - t0, 1)

    searched = Searched(ds, name, protocol, db, queries, info)
    # codebooks belong to the database they were learned on (its images and their features)
    codebooks = cache / "codebooks" / f"{name}-{_digest(str(dconf.root.resolve()), ds.db_ids, sift)}"
    t0 = time.perf_counter()
    rows = method_rows(searched, conf, codebooks, whitening[:2] if whitening else None, bow_k, whiten_dims)
    stage["methods"] = round(time.perf_counter() - t0, 1)

    speed: List[dict] = []
    if conf.speed:
        print("speed:", flush=True)
        speed += speed_of.extraction_speed(ds, sift, 16 if conf.quick else 80)
        trained_on = f"{name} database images ({len(db)}, unlabelled)"
        cb = cached_codebook(codebooks, db, max(conf.vlad_k, default=64), trained_on, conf.quick, conf.seed,
                             conf.faiss_threads)
        fisher = cached_fisher(codebooks, db, max(conf.fisher_k, default=64), trained_on, conf.quick, conf.seed)
        from retrieval.features.encoders import VladEncoder

        speed += speed_of.encoding_speed(db, VladEncoder(cb), fisher, 20_000 if conf.quick else 200_000)
    if conf.kmeans_timing:
        print("k-means timing:", flush=True)
        speed += speed_of.kmeans_timing(db, 2000 if conf.quick else 20000, 100_000 if conf.quick else 1_000_000, 10,
                                        conf.seed, conf.faiss_threads)

    metric = MAIN_METRIC[protocol]
    columns = ["method", "dataset", "mAP", "dim", "extract_s_per_image", "encode_db_s", "query_s",
               "codebook_trained_on"]
    extra = {"config": conf.to_dict(), "speed": speed, "stage_seconds": stage,
             "total_seconds": round(time.perf_counter() - t_start, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
             "quick": conf.quick, "database": len(ds.db_ids), "queries": len(ds.query_ids),
             "sift": {name: info["sift"], **({whitening[0]: whitening[2]["sift"]} if whitening else {})},
             "sift_choice": why,
             "protocol": {"protocol": protocol, "mAP column": metric, "ranking depth": searched.depth,
                          "queries": info["queries"]}}
    out = Path(out_dir)
    table = write_results(rows, out, columns, extra=extra,
                          title=f"Classical retrieval on {name}: RootSIFT + BoW / VLAD / Fisher ({metric}, %)")
    speed_md = ""
    if speed:
        speed_md = "\n\n### Speed\n\n" + markdown_table(speed)
        with open(out / "results.md", "a") as f:
            f.write(speed_md + "\n")
    print()
    print(table + speed_md)
    print(f"\ntotal {extra['total_seconds']:.0f} s; stages {stage}; peak RSS {extra['peak_rss_mb']:.0f} MiB")
    return out
