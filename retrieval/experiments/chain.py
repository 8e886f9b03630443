"""The ``retrieval`` experiment protocol: one global descriptor, then optional re-ranking, on any dataset.

It chains the pipeline's steps through their Python functions: extract (EfficientNet global
descriptors, or local features encoded by ``encode``) -> ``index build`` -> ``search`` -> optional
re-ranking -> ``evaluate``, caching every file under the cache folder (a rerun resumes; the dataset
and extractor settings are part of the file names, so other data or settings never mix in). Queries
that are database images (a class-per-folder tree) are extracted once. A minimal experiment file::

    kind = "retrieval"
    [dataset]
    kind = "folder"
    path = "~/photos"          # a class-per-folder tree, or images/ + labels.csv

Re-ranking is the E1-E8 ladder's, on the user's data (:mod:`retrieval.experiments.chain_rerank`):

* ``[rerank]`` (:class:`~retrieval.steps.rerank.RerankConfig`): a local scorer (``spatial``, ``ratio``,
  ``vlad``, ``patch``) on the shortlist, its local features ``auto`` per family of data (the ladder's),
  fused by the one fusion configuration (``[rerank.fusion]``, :class:`~retrieval.rerank.fusion.FusionSettings`):
  by default method, T and v are chosen on held-out queries among "no re-ranking" and the ladder's
  candidates, under each relevance protocol of the dataset;
* ``[expand]`` (:class:`~retrieval.steps.expand.ExpandConfig`): alpha-QE, DBA and both (E8), n and
  alpha chosen on held-out queries.

Results: one row per method (the global ranking; each re-ranker once per relevance protocol it was
chosen under) in ``results.json`` / ``results.md``, and ``main_metric.png``; results.json's
``choices`` holds each choice per fold (``chosen``), the held-out metric (``held_out``) and the
setting chosen on all queries for new ones (``deployed``: what ``retrieval serve`` applies).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional

from retrieval.core.config import Config, ConfigError
from retrieval.datasets.open import DatasetConfig
from retrieval.core.report import StageTimer
from retrieval.steps.encode import EncodeConfig
from retrieval.steps.evaluate import EvaluateConfig
from retrieval.experiments.chain_rerank import Context, StageResult, expand_stage, key as _key, rerank_stage, stage_entry as _stage
from retrieval.steps.expand import ExpandConfig
from retrieval.steps.extract import ExtractConfig
from retrieval.steps.index import IndexConfig
from retrieval.steps.rerank import RerankConfig
from retrieval.steps.search import SearchConfig

__all__ = ["CONFIG", "RetrievalExperiment", "main", "queries_are_db_images"]


@dataclass(frozen=True)
class RetrievalExperiment(Config):
    """Settings of the ``retrieval`` protocol (module docstring): ``extract`` is the one extraction
    configuration (:class:`~retrieval.steps.extract.ExtractConfig`; ``kind`` global or local, the latter
    encoded by ``encode``; the chain extracts the database and the queries itself, so ``images`` stays
    as it is); ``rerank`` and ``expand`` are optional stages (absent: not run)."""

    def check(self) -> None:
        if self.extract.kind == "patches":
            raise ConfigError("extract.kind: the retrieval experiment searches global vectors: 'global' or "
                              "'local' (encoded by [encode]); patch tokens re-rank ([rerank] scorer = 'patch')")

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    rerank: Optional[RerankConfig] = None
    expand: Optional[ExpandConfig] = None
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


CONFIG = RetrievalExperiment


def queries_are_db_images(ds) -> bool:
    """Whether every query is a database image (same id and file, no crop box), as in a class-per-folder
    tree: their features are then the database's, extracted once."""
    if not ds.query_ids or (ds.query_boxes is not None and any(b is not None for b in ds.query_boxes)):
        return False
    path_of = {str(d): str(p) for d, p in zip(ds.db_ids, ds.db_paths)}
    return all(path_of.get(str(q)) == str(p) for q, p in zip(ds.query_ids, ds.query_paths))


def _both(kind, config, overrides, ds, folder: Path, ext: ExtractConfig, progress: bool, queries_in_db: bool = False):
    """(database file, query file) of one extractor, extracted into ``folder`` on ``ext``'s engine
    (:func:`retrieval.steps.image_features.extract_into`: resumable; the extractor is built once, only
    when something is missing). With ``queries_in_db`` the queries are
    extracted with the database (added to it where ``ds`` holds a part of the database): local
    features are then one file for both, global query vectors a copy of their database rows."""
    from retrieval.steps.image_features import extract_into, make_extractor

    db_ids, db_paths = list(ds.db_ids), list(ds.db_paths)
    parts = [("db", db_ids, db_paths, None)]
    if queries_in_db:
        have = {str(i) for i in db_ids}
        extra = [(q, p) for q, p in zip(ds.query_ids, ds.query_paths) if str(q) not in have]
        parts = [("db", db_ids + [q for q, _ in extra], db_paths + [p for _, p in extra], None)]
    else:
        parts.append(("queries", ds.query_ids, ds.query_paths, ds.query_boxes))
    runtime = {"device": ext.device, **({"threads": ext.threads} if ext.engine == "ray" else {})}
    extractor = None
    outputs = []
    for part, ids, paths, boxes in parts:
        out = folder / f"{part}.h5"
        outputs.append(out)
        # extraction resumes by itself; the marker (a digest of the ids) only spares building the
        # extractor when nothing is missing, and a folder that gained images is extracted again
        done, digest = folder / f"{part}.done", _key(list(ids))
        if out.is_file() and done.is_file() and done.read_text() == digest:
            continue
        extractor = extractor or make_extractor(kind, config, overrides, **({} if kind == "local" else runtime))
        extract_into(kind, extractor, ids, paths, boxes, out, engine=ext.engine, n_jobs=ext.n_jobs,
                     ray_address=ext.ray_address, progress=progress, desc=f"{kind} {part}", runtime=runtime)
        done.write_text(digest)
    if not queries_in_db:
        return outputs[0], outputs[1]
    if kind != "global":
        return outputs[0], outputs[0]
    return outputs[0], _query_rows(outputs[0], ds.query_ids, folder / "queries-from-db.h5")


def _query_rows(db_file: Path, query_ids, out: Path) -> Path:
    """A global feature file of the queries' rows of ``db_file`` (the queries are database images)."""
    from retrieval.features.store import load_global, save_global

    ids, vectors, config = load_global(db_file)
    row = {i: n for n, i in enumerate(ids)}
    save_global(out, [str(q) for q in query_ids], vectors[[row[str(q)] for q in query_ids]], config)
    return out


def main(conf: RetrievalExperiment, out_dir: Path, cache_dir: Optional[Path] = None, progress: bool = True) -> Path:
    """Run the chain (module docstring); returns ``out_dir`` holding results.json, results.md and a figure."""
    from retrieval.datasets.open import open_dataset
    from retrieval.evaluation.evaluate import main_metric
    from retrieval.core.report import write_results
    from retrieval.steps import encode, index, search
    from retrieval.steps.choose import query_groups, relevances

    out_dir = Path(out_dir)
    cache = Path(cache_dir) if cache_dir is not None else out_dir / "cache"
    ds = open_dataset(conf.dataset)
    if not ds.query_ids:
        raise ConfigError(f"{conf.dataset.path}: the dataset has no queries")
    data_key = _key(conf.dataset.to_dict())
    ext = conf.extract
    feature_dir = cache / f"{ds.name}-{data_key}" / f"{ext.kind}-{ext.config}-{_key(ext.to_dict())}"
    feature_dir.mkdir(parents=True, exist_ok=True)
    stages: Dict[str, Any] = {}
    timer = StageTimer()
    in_db = queries_are_db_images(ds)
    with timer("extract"):
        db_file, q_file = _both(ext.kind, ext.config, ext.overrides, ds, feature_dir, ext, progress, in_db)
    images = len(ds.db_ids) + (0 if in_db else len(ds.query_ids))
    stages["extract"] = _stage(timer.this_run["extract"], images, db_file, engine=ext.engine,
                               note="cached features cost no time")
    method = ext.config + "".join(f"+{k}={v}" for k, v in sorted(ext.overrides.items()))
    if ext.kind == "local":
        enc_dir = feature_dir / f"{conf.encode.encoder.kind}-{_key(conf.encode.to_dict())}"
        enc_dir.mkdir(exist_ok=True)
        model = enc_dir / "encoder.npz"
        db_file = encode.main(conf.encode, db_file, enc_dir / "db.h5", model=model, progress=progress)
        q_file = db_file if q_file == feature_dir / "db.h5" else \
            encode.main(conf.encode, q_file, enc_dir / "queries.h5", model=model, progress=progress)
        if in_db:
            q_file = _query_rows(db_file, ds.query_ids, enc_dir / "queries-from-db.h5")
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
    main_name = main_metric(protocols[0], conf.evaluate.k)
    from retrieval.indexing.index import Ranking

    with timer("evaluate"):
        rows = [_row(conf, StageResult(method, Ranking.load(ranking).to_predictions()), ds, str(ranking))]
    stages["evaluate"] = _stage(timer.this_run["evaluate"], len(ds.query_ids))
    choices: List[dict] = []
    if conf.rerank is not None or conf.expand is not None:
        fusion_folds = conf.rerank.fusion.folds if conf.rerank is not None else 2
        ctx = Context(conf, ds, conf.dataset.kind, cache / f"{ds.name}-{data_key}", run_dir, ranking,
                      relevances(ds, protocols, conf.evaluate.k) if ds.ground_truth else [],
                      query_groups(ds, fusion_folds) if ds.ground_truth else {}, progress, timer, stages)
        results: List[StageResult] = []
        if conf.rerank is not None:
            results += rerank_stage(ctx, method, lambda kind, config, part, folder: _both(
                kind, config, {}, part, folder, ext, progress, in_db))
        if conf.expand is not None:
            results += expand_stage(ctx, method, db_file, q_file)
        for result in results:
            rows.append(_row(conf, result, ds, str(ranking)))
            if result.report:
                choices.append({"method": result.method, **result.report})
    summary = {"dataset": ds.name, "queries": len(ds.query_ids), "database": len(ds.db_ids),
               "main_metric": main_name, "queries_extracted_with_database": in_db,
               **{row["method"]: row.get(main_name) for row in rows}}
    write_results(rows, out_dir, title=f"{ds.name}: {len(ds.query_ids)} queries, {len(ds.db_ids)} database images",
                  extra={"summary": summary, "stages": stages, "choices": choices, "settings": conf.to_dict()})
    _figure(rows, main_name, out_dir / "main_metric.png", ds.name)
    return out_dir


def _row(conf: RetrievalExperiment, result: StageResult, ds, source: str) -> Dict[str, Any]:
    """Metrics of ``result``'s predictions: under every protocol, or under the one it was chosen under."""
    from dataclasses import replace as with_

    from retrieval.steps import evaluate

    settings = conf.evaluate if result.protocol is None else with_(conf.evaluate, protocol=result.protocol)
    from retrieval.core.report import percent_metrics

    metrics = evaluate.score(settings, result.predictions, ds, conf.dataset.kind, source=source)
    # results tables report metrics in percent, as the E1-E8 ladder does
    return {"method": result.method, **percent_metrics({k: v for k, v in metrics.items() if k != "bad_files"})}


def _figure(rows, metric: str, path: Path, title: str) -> None:
    from retrieval.core.report import save_figure, subplots

    fig, ax = subplots(figsize=(max(4.0, 1.6 * len(rows)), 3.2))
    values = [row.get(metric) or 0.0 for row in rows]
    bars = ax.bar(range(len(rows)), values, color="#4c72b0")
    ax.set_xticks(range(len(rows)), [row["method"] for row in rows], rotation=15, ha="right", fontsize=8)
    ax.set_ylim(0.0, 108.0)  # from zero: a small gap must look small
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(title, fontsize=9)
    for bar, value in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, value + 1.0, f"{value:.2f}", ha="center", fontsize=8)
    save_figure(fig, path, dpi=110)
