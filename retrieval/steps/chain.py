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

Results: one row per method (the global ranking, and the re-ranked one when ``[rerank]`` is given)
in ``results.json`` / ``results.md``, and ``main_metric.png``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Literal, Optional

from ..config import Config, ConfigError
from ..datasets.open import DatasetConfig
from .encode import EncodeConfig
from .evaluate import EvaluateConfig
from .index import IndexConfig
from .rerank import RerankConfig
from .search import SearchConfig

__all__ = ["CONFIG", "ExtractSpec", "RetrievalExperiment", "main"]


@dataclass(frozen=True)
class ExtractSpec(Config):
    """``kind``: ``global`` (EfficientNet: ``config`` a name of ``EXTRACTOR_CONFIGS``) or ``local``
    (SIFT: ``config`` a name of ``SIFT_CONFIGS``, then encoded by the experiment's ``encode``);
    ``overrides``: fields of that configuration; ``n_jobs``: decoding / extraction workers."""

    kind: Literal["global", "local"] = "global"
    config: str = "lite0-gem-512"
    overrides: Dict[str, Any] = field(default_factory=dict)
    n_jobs: int = 2


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
    rerank: Optional[RerankConfig] = None
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
        from ..features.sift import SiftExtractor

        return SiftExtractor(config, **overrides)
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


def main(conf: RetrievalExperiment, out_dir: Path, cache_dir: Optional[Path] = None, progress: bool = True) -> Path:
    """Run the chain (module docstring); returns ``out_dir`` holding results.json, results.md and a figure."""
    from ..datasets.open import open_dataset
    from ..index import Ranking
    from ..report import write_results
    from . import encode, evaluate, index, rerank, search

    out_dir = Path(out_dir)
    cache = Path(cache_dir) if cache_dir is not None else out_dir / "cache"
    ds = open_dataset(conf.dataset)
    if not ds.query_ids:
        raise ConfigError(f"{conf.dataset.root}: the dataset has no queries")
    data_key = _key(conf.dataset.to_dict())
    ext = conf.extract
    feature_dir = cache / f"{ds.name}-{data_key}" / f"{ext.kind}-{ext.config}-{_key(ext.to_dict())}"
    feature_dir.mkdir(parents=True, exist_ok=True)
    db_file, q_file = _both(ext.kind, ext.config, ext.overrides, ds, feature_dir, ext.n_jobs, progress)
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
    index_file = index.main(conf.index, db_file, run_dir / "index.npz")
    ranking = search.main(conf.search, index_file, q_file, run_dir / "ranking.json", progress=progress)
    rankings = {method: ranking}
    if conf.rerank is not None:
        r = conf.rerank
        local_kind = "patch" if r.scorer == "patch" else "local"
        local_config = "lite0-patch-224" if r.scorer == "patch" else conf.rerank_features
        if ext.kind == "local" and local_kind == "local" and local_config == ext.config and not ext.overrides:
            local_dir = cache / f"{ds.name}-{data_key}" / f"{ext.kind}-{ext.config}-{_key(ext.to_dict())}"
        else:
            local_dir = cache / f"{ds.name}-{data_key}" / f"{local_kind}-{local_config}"
        local_dir.mkdir(parents=True, exist_ok=True)
        db_local, q_local = _both(local_kind, local_config, {}, ds, local_dir, ext.n_jobs, progress)
        model = None
        if r.scorer == "vlad":
            model = local_dir / "vlad-64.npz"
            from ..features.encoders.config import ENCODER_CONFIGS

            # learn (or reuse) the VLAD codebook on the database's local features
            encode.main(EncodeConfig(encoder=ENCODER_CONFIGS.get("vlad-64")), db_local, local_dir / "db-vlad.h5",
                        model=model, progress=progress)
        reranked = rerank.main(r, ranking, q_local, db_local, run_dir / f"rerank-{_key(r.to_dict())}.json",
                               model=model, progress=progress)
        rankings[f"{method} + {r.scorer} (v={r.v:g})"] = reranked
    rows = []
    for name, path in rankings.items():
        metrics = evaluate.score(conf.evaluate, Ranking.load(path).to_predictions(), ds, conf.dataset.kind,
                                 source=str(path))
        rows.append({"method": name, **{k: v for k, v in metrics.items() if k != "bad_files"}})
    protocols = conf.evaluate.protocols(conf.dataset.kind)
    main_metric = _main_metric(rows[0], protocols[0])
    summary = {"dataset": ds.name, "queries": len(ds.query_ids), "database": len(ds.db_ids),
               "main_metric": main_metric, **{row["method"]: row.get(main_metric) for row in rows}}
    write_results(rows, out_dir, title=f"{ds.name}: {len(ds.query_ids)} queries, {len(ds.db_ids)} database images",
                  extra={"summary": summary, "settings": conf.to_dict()})
    _figure(rows, main_metric, out_dir / "main_metric.png", ds.name)
    return out_dir


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
