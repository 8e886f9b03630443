"""The ``retrieval`` experiment protocol: one global descriptor (plus optional re-ranking) on any dataset.

It chains the steps the command line has, through their Python functions: extract (the Python
extraction API: EfficientNet global descriptors, or local features encoded by ``encode``) ->
``index build`` -> ``search`` -> optional ``rerank`` -> ``evaluate``, caching every file under the
cache folder (a rerun resumes; the dataset and extractor settings are part of the file names, so
other data or settings never mix in). A minimal experiment file::

    kind = "retrieval"
    [dataset]
    kind = "folder"
    path = "~/photos"          # a class-per-folder tree, or images/ + labels.csv

Re-ranking (``[rerank]``, :class:`ChainRerank`) fuses ``v * global + (1 - v) * N(local)``. ``v`` is a
fixed number, or ``"cross-fit"`` (the default): the one held-out chooser (:mod:`retrieval.crossfit`)
picks it for each fold of queries (whole query labels, :func:`~retrieval.crossfit.fold_groups`) among
v = 1 and the grid ``vs``, on the OTHER folds' per-query main metric, and each query is ranked at its
fold's choice. The local scores are computed once and re-fused for every candidate.

Results: one row per method (the global ranking, and the re-ranked one when ``[rerank]`` is given)
in ``results.json`` / ``results.md``, and ``main_metric.png``; with a cross-fitted v, results.json's
``v_cross_fit`` holds the chosen v per fold (``chosen``), the held-out metric per fold and over all
queries (``held_out``), and each candidate's mean (``curves``).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Literal, Optional, Tuple, Union

from ..config import Config, ConfigError
from ..datasets.open import DatasetConfig
from ..report import StageTimer
from .encode import EncodeConfig
from .evaluate import EvaluateConfig
from .index import IndexConfig
from .rerank import RerankConfig
from .search import SearchConfig

__all__ = ["CONFIG", "CROSS_FIT", "ChainRerank", "ExtractSpec", "RetrievalExperiment", "main"]

CROSS_FIT = "cross-fit"


@dataclass(frozen=True)
class ExtractSpec(Config):
    """``kind``: ``global`` (EfficientNet: ``config`` a name of ``EXTRACTOR_CONFIGS``) or ``local``
    (SIFT: ``config`` a name of ``SIFT_CONFIGS``, then encoded by the experiment's ``encode``);
    ``overrides``: fields of that configuration; ``n_jobs``: decoding / extraction workers;
    ``engine``: ``"local"`` (in this process) or ``"ray"`` (sharded Ray tasks through
    :func:`retrieval.steps.extract.main`, ``ray_address`` as there; the same features)."""

    kind: Literal["global", "local"] = "global"
    config: str = "lite0-gem-512"
    overrides: Dict[str, Any] = field(default_factory=dict)
    n_jobs: int = 2
    engine: Literal["local", "ray"] = "local"
    ray_address: Optional[str] = None


@dataclass(frozen=True)
class ChainRerank(RerankConfig):
    """The chain's ``[rerank]`` section: :class:`~retrieval.steps.rerank.RerankConfig` whose fusion
    weight ``v`` is a number in [0, 1] or ``"cross-fit"`` (default): chosen for each of ``folds`` folds
    of queries on the other folds among v = 1 (the global order, kept on a tie) and the grid ``vs``,
    so the figure reported was not chosen on the queries it is reported on."""

    v: Union[float, str] = CROSS_FIT
    vs: Tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(10))
    folds: int = 2

    def check_v(self) -> None:
        if isinstance(self.v, str) and self.v != CROSS_FIT:
            try:  # "0.3" from a --set override
                object.__setattr__(self, "v", float(self.v))
            except ValueError:
                raise ConfigError(f"v must be a number in [0, 1] or {CROSS_FIT!r}, got {self.v!r}") from None
        if self.v != CROSS_FIT:
            super().check_v()
            return
        if not self.vs or not all(0.0 <= v <= 1.0 for v in self.vs):
            raise ConfigError(f"vs must be fusion weights in [0, 1], got {self.vs}")
        if self.folds < 2:
            raise ConfigError(f"folds must be >= 2, got {self.folds}")


@dataclass(frozen=True)
class RetrievalExperiment(Config):
    """Settings of the ``retrieval`` protocol (module docstring). ``rerank_features``: the SIFT
    configuration of the local features the spatial / ratio / vlad re-rankers use (patch re-ranking
    uses EfficientNet patch tokens, ``lite0-patch-224``)."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    extract: ExtractSpec = field(default_factory=ExtractSpec)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    rerank: Optional[ChainRerank] = None
    rerank_features: str = "rootsift-1k"
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


CONFIG = RetrievalExperiment


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _extractor(kind: str, config: str, overrides: Dict[str, Any]):
    """The extractor of the Python extraction API for ``kind`` (global / patch: EfficientNet, local: SIFT)."""
    try:
        if kind in ("global", "patch"):
            from ..features.efficientnet import EfficientNetExtractor

            return EfficientNetExtractor(config, **overrides)
        from ..features.local_extractors import local_extractor

        return local_extractor(config, **overrides)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"extract: {exc}") from None


def _both(kind, config, overrides, ds, folder: Path, n_jobs: int, progress: bool):
    """(database file, query file) of one extractor, extracted into ``folder`` (resumable; the
    extractor is built once, only when something is missing)."""
    from ..features.deep_extract import extract_global, extract_patches
    from ..features.extract import extract_local_features

    extractor = None
    outputs = []
    for part, ids, paths, boxes in (("db", ds.db_ids, ds.db_paths, None),
                                    ("queries", ds.query_ids, ds.query_paths, ds.query_boxes)):
        out = folder / f"{part}.h5"
        outputs.append(out)
        # extraction resumes by itself; the marker (a digest of the ids) only spares building the
        # extractor when nothing is missing, and a folder that gained images is extracted again
        done, digest = folder / f"{part}.done", _key(list(ids))
        if out.is_file() and done.is_file() and done.read_text() == digest:
            continue
        extractor = extractor or _extractor(kind, config, overrides)
        desc = f"{kind} {part}"
        if kind == "local":
            extract_local_features(ids, paths, extractor, out, n_jobs=n_jobs, boxes=boxes, progress=progress,
                                   desc=desc)
        else:
            run = extract_global if kind == "global" else extract_patches
            run(extractor, ids, paths, out, boxes=boxes, n_jobs=n_jobs, progress=progress, desc=desc)
        done.write_text(digest)
    return outputs[0], outputs[1]


def _extract_on_ray(ext: ExtractSpec, ds, folder: Path, progress: bool, stages: Dict[str, Any]):
    """(database file, query file) extracted as sharded Ray work (resumable shard by shard)."""
    from .extract import ExtractConfig, main as extract_main

    outputs = []
    for part in ("db", "queries"):
        summary: Dict[str, Any] = {}
        conf = ExtractConfig(features=ext.kind, extractor=ext.config, options=dict(ext.overrides), images=part,
                             engine="ray", ray_address=ext.ray_address, n_jobs=ext.n_jobs)
        outputs.append(extract_main(conf, ds, folder / f"{part}-ray.h5", progress=progress, summary=summary))
        # this run's figures: a resumed run times only the shards it computed
        stages[f"extract {part}"] = {k: summary.get(k) for k in (
            "seconds", "images", "images_planned", "seconds_per_image", "bytes_per_image", "shards_computed",
            "shards_skipped", "worker_seconds_per_image", "cpu_seconds_per_image", "engine")}
    return outputs[0], outputs[1]


def _stage(seconds, images, output: Optional[Path] = None, **more) -> Dict[str, Any]:
    """A results.json ``stages`` entry: seconds, per image, and the bytes per image of its output."""
    out: Dict[str, Any] = {"seconds": None if seconds is None else round(float(seconds), 3), "images": images, **more}
    if seconds is not None and images:
        out["seconds_per_image"] = float(seconds) / images
    if output is not None and Path(output).is_file() and images:
        out["bytes_per_image"] = Path(output).stat().st_size / images
    return out


def main(conf: RetrievalExperiment, out_dir: Path, cache_dir: Optional[Path] = None, progress: bool = True) -> Path:
    """Run the chain (module docstring); returns ``out_dir`` holding results.json, results.md and a figure."""
    from ..datasets.open import open_dataset
    from ..report import write_results
    from . import encode, index, search

    out_dir = Path(out_dir)
    cache = Path(cache_dir) if cache_dir is not None else out_dir / "cache"
    ds = open_dataset(conf.dataset)
    if not ds.query_ids:
        raise ConfigError(f"{conf.dataset.root}: the dataset has no queries")
    data_key = _key(conf.dataset.to_dict())
    ext = conf.extract
    feature_dir = cache / f"{ds.name}-{data_key}" / f"{ext.kind}-{ext.config}-{_key(ext.to_dict())}"
    feature_dir.mkdir(parents=True, exist_ok=True)
    stages: Dict[str, Any] = {}
    timer = StageTimer()
    if ext.engine == "ray":
        db_file, q_file = _extract_on_ray(ext, ds, feature_dir, progress, stages)
    else:
        with timer("extract"):
            db_file, q_file = _both(ext.kind, ext.config, ext.overrides, ds, feature_dir, ext.n_jobs, progress)
        stages["extract"] = _stage(timer.this_run["extract"], len(ds.db_ids) + len(ds.query_ids), db_file,
                                   note="cached features cost no time")
    method = ext.config + "".join(f"+{k}={v}" for k, v in sorted(ext.overrides.items()))
    if ext.kind == "local":
        enc_dir = feature_dir / f"{conf.encode.encoder.kind}-{_key(conf.encode.to_dict())}"
        enc_dir.mkdir(exist_ok=True)
        model = enc_dir / "encoder.npz"
        db_file = encode.main(conf.encode, db_file, enc_dir / "db.h5", model=model, progress=progress)
        q_file = encode.main(conf.encode, q_file, enc_dir / "queries.h5", model=model, progress=progress)
        feature_dir = enc_dir
        method = f"{method}+{conf.encode.encoder.kind}{conf.encode.encoder.k}"
    run_dir = feature_dir / f"run-{_key(conf.index.to_dict(), conf.search.to_dict())}"
    run_dir.mkdir(exist_ok=True)
    with timer("index build"):
        index_file = index.main(conf.index, db_file, run_dir / "index.npz")
    stages["index build"] = _stage(timer.this_run["index build"], len(ds.db_ids), index_file)
    with timer("search"):
        ranking = search.main(conf.search, index_file, q_file, run_dir / "ranking.json", progress=progress)
    stages["search"] = _stage(timer.this_run["search"], len(ds.query_ids), ranking)
    protocols = conf.evaluate.protocols(conf.dataset.kind)
    with timer("evaluate"):
        rows = [_row(conf, method, ranking, ds)]
    stages["evaluate"] = _stage(timer.this_run["evaluate"], len(ds.query_ids))
    main_metric = _main_metric(rows[0], protocols[0])
    extra: Dict[str, Any] = {}
    if conf.rerank is not None:
        name, reranked, fit = _rerank(conf, ds, cache / f"{ds.name}-{data_key}", ranking, run_dir, progress,
                                      protocols[0], main_metric, stages, timer)
        rows.append(_row(conf, f"{method} + {name}", reranked, ds))
        if fit is not None:
            extra["v_cross_fit"] = fit
    summary = {"dataset": ds.name, "queries": len(ds.query_ids), "database": len(ds.db_ids),
               "main_metric": main_metric, **{row["method"]: row.get(main_metric) for row in rows}}
    if "v_cross_fit" in extra:
        summary["v_chosen"] = extra["v_cross_fit"]["chosen"]
    write_results(rows, out_dir, title=f"{ds.name}: {len(ds.query_ids)} queries, {len(ds.db_ids)} database images",
                  extra={"summary": summary, "stages": stages, **extra, "settings": conf.to_dict()})
    _figure(rows, main_metric, out_dir / "main_metric.png", ds.name)
    return out_dir


def _row(conf: RetrievalExperiment, method: str, ranking: Path, ds) -> Dict[str, Any]:
    from ..index import Ranking
    from . import evaluate

    metrics = evaluate.score(conf.evaluate, Ranking.load(ranking).to_predictions(), ds, conf.dataset.kind,
                             source=str(ranking))
    return {"method": method, **{k: v for k, v in metrics.items() if k != "bad_files"}}


def _rerank(conf: RetrievalExperiment, ds, data_dir: Path, ranking: Path, run_dir: Path, progress: bool,
            protocol: str, metric: str, stages: Dict[str, Any], timer):
    """``(name, ranking file, cross-fit report or None)`` of the ``[rerank]`` step: local features of
    the scorer (extracted into ``data_dir``, shared by every run on the same data), their scores on the
    shortlist (cached once for any ``v``), fused at the fixed ``v`` or at the cross-fitted one."""
    from . import rerank

    r, ext = conf.rerank, conf.extract
    local_kind = "patch" if r.scorer == "patch" else "local"
    local_config = "lite0-patch-224" if r.scorer == "patch" else conf.rerank_features
    if ext.kind == "local" and local_kind == "local" and local_config == ext.config and not ext.overrides:
        local_dir = data_dir / f"{ext.kind}-{ext.config}-{_key(ext.to_dict())}"   # the features searched
    else:
        local_dir = data_dir / f"{local_kind}-{local_config}"
    local_dir.mkdir(parents=True, exist_ok=True)
    # only the database images some query will score need local features (at GLDv2 size a fraction of
    # the index); the VLAD scorer learns its codebook from the whole database, so it keeps it all
    scored = ds if r.scorer == "vlad" else _shortlisted(ds, ranking, r.shortlist)
    with timer("rerank local features"):
        db_local, q_local = _both(local_kind, local_config, {}, scored, local_dir, ext.n_jobs, progress)
    stages["rerank local features"] = _stage(timer.this_run["rerank local features"],
                                             len(scored.db_ids) + len(ds.query_ids), db_local,
                                             note="database images in a shortlist, and the queries; "
                                                  "cached features cost no time")
    with timer("rerank scoring"):
        base, shortlist, local, model = _local_scores(conf, local_dir, db_local, q_local, ranking, run_dir, progress)
    stages["rerank scoring"] = _stage(timer.this_run["rerank scoring"], len(ds.query_ids),
                                      note=f"per query: top {r.shortlist}; cached scores cost no time")
    out = run_dir / f"rerank-{_key(r.to_dict())}.json"
    if r.v != CROSS_FIT:
        rerank.fused_ranking(base, shortlist, local, r.v, r.norm, r.T).save(out)
        return f"{r.scorer} (v={r.v:g})", out, None
    fused = lambda v: rerank.fused_ranking(base, shortlist, local, v, r.norm, r.T)  # noqa: E731
    fit, groups = _cross_fit_v(conf, ds, fused, protocol, metric)
    _per_query_rows(fused, fit["chosen"], groups, base.query_ids).save(out)
    return f"{r.scorer} (v cross-fit)", out, fit


def _local_scores(conf: RetrievalExperiment, local_dir: Path, db_local: Path, q_local: Path, ranking: Path,
                  run_dir: Path, progress: bool):
    """``(base ranking, shortlist, local scores, model)`` of the ``[rerank]`` scorer (VLAD: its codebook
    learned, or reused, on the database's local features first)."""
    from . import encode, rerank

    r = conf.rerank
    model = None
    if r.scorer == "vlad":
        model = local_dir / "vlad-64.npz"
        from ..features.encoders.config import ENCODER_CONFIGS

        # learn (or reuse) the VLAD codebook on the database's local features
        encode.main(EncodeConfig(encoder=ENCODER_CONFIGS.get("vlad-64")), db_local, local_dir / "db-vlad.h5",
                    model=model, progress=progress)
    scoring = {k: v for k, v in r.to_dict().items() if k not in ("v", "vs", "folds", "norm", "T")}
    base, shortlist, local = rerank.shortlist_scores(r, ranking, q_local, db_local,
                                                     run_dir / f"shortlist-{_key(scoring)}", model, progress)
    return base, shortlist, local, model


def _shortlisted(ds, ranking: Path, shortlist: int):
    """``ds`` with its database cut to the images in some query's top ``shortlist`` (dataset order)."""
    from dataclasses import replace

    from ..index import Ranking

    wanted = {str(i) for i in Ranking.load(ranking).ids[:, :shortlist].ravel().tolist()}
    keep = [j for j, i in enumerate(ds.db_ids) if str(i) in wanted]
    take = lambda xs: None if xs is None else [xs[j] for j in keep]  # noqa: E731
    return replace(ds, db_ids=take(ds.db_ids), db_paths=take(ds.db_paths), db_labels=take(ds.db_labels),
                   db_metadata={k: take(v) for k, v in ds.db_metadata.items()})


def _cross_fit_v(conf: RetrievalExperiment, ds, fused, protocol: str, metric: str):
    """Choose v for each fold of queries on the other folds (:func:`retrieval.crossfit.cross_fit`):
    the candidates are v = 1 (the global order, which wins ties) and the grid ``vs``, each scored per
    query with ``metric`` under ``protocol``. Folds are whole query labels when the queries have
    enough of them (:func:`retrieval.crossfit.fold_groups`: all views of an object or landmark in one
    fold, so no fold chooses on near-copies of its own queries), else queries dealt in order.
    Returns the report (results.json ``v_cross_fit``) and ``{query id: fold}``."""
    from ..crossfit import cross_fit, fold_groups
    from . import evaluate

    r = conf.rerank
    candidates = list(dict.fromkeys([1.0, *r.vs]))
    per_query = {v: evaluate.score_per_query(conf.evaluate, fused(v).to_predictions(), ds, protocol, metric)
                 for v in candidates}
    query_ids = [str(q) for q in ds.query_ids]
    labels = ds.query_labels if ds.query_labels and len(set(ds.query_labels)) >= r.folds else None
    groups = fold_groups(query_ids, None if labels is None else [str(x) for x in labels], r.folds)
    try:
        fit = cross_fit(per_query, groups, prefer=candidates)
    except ValueError as exc:
        raise ConfigError(f"rerank.v = {CROSS_FIT!r}: {exc}; give a fixed v instead") from None
    label = lambda v: f"{v:g}"  # noqa: E731
    return {"metric": metric, "protocol": protocol, "folds_by": "query labels" if labels else "query order",
            "candidates": candidates, "chosen": dict(fit["chosen"]), "held_out": dict(fit["score"]),
            "curves": {g: {label(v): m for v, m in c.items()} for g, c in fit["curves"].items()}}, groups


def _per_query_rows(fused, chosen: Dict[str, float], groups: Dict[str, str], query_ids):
    """One ranking whose row of each query is the fused ranking at its fold's chosen v."""
    import numpy as np

    from ..index import Ranking

    by_v = {v: fused(v) for v in set(chosen.values())}
    rows = [by_v[chosen[groups[str(q)]]] for q in query_ids]
    take = lambda field: np.stack([getattr(ranking, field)[i] for i, ranking in enumerate(rows)])  # noqa: E731
    return Ranking(ids=take("ids"), scores=take("scores"), indices=take("indices"), query_ids=query_ids)


def _main_metric(row: Dict[str, Any], protocol: str) -> str:
    preferred = {"oxford": "oxford_map", "landmark": "landmark_map", "revisited": "revisited_map_medium",
                 "general": "mean_ap", "all": "mean_ap"}
    name = preferred.get(protocol)
    if name in row:
        return name
    return next(k for k in row if k.startswith("map@"))


def _figure(rows, metric: str, path: Path, title: str) -> None:
    from ..report import save_figure, subplots

    fig, ax = subplots(figsize=(max(4.0, 1.6 * len(rows)), 3.2))
    values = [row.get(metric) or 0.0 for row in rows]
    bars = ax.bar(range(len(rows)), values, color="#4c72b0")
    ax.set_xticks(range(len(rows)), [row["method"] for row in rows], rotation=15, ha="right", fontsize=8)
    ax.set_ylim(0.0, 1.08)  # from zero: a small gap must look small
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=9)
    for bar, value in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, value + 0.01, f"{value:.3f}", ha="center", fontsize=8)
    save_figure(fig, path, dpi=110)
