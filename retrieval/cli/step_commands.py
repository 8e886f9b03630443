"""The pipeline steps as commands: ``retrieval extract | encode | index build | search | rerank | evaluate``.

Each handler checks its files and options, builds the step's configuration and calls the step's
``main(conf, ...) -> Path`` (:mod:`retrieval.steps`); the steps are imported when their command runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Optional

from retrieval.core.checks import CLIError, require_file, require_output, writing
from retrieval.cli.arguments import add_dataset_arguments, dataset_config, load_dataset, parse_options, progress_enabled
from retrieval.cli.output import emit_json

#: the ranking files the commands read: JSON or the binary ranking file
RANKING_KINDS = ("json", "ranking")

__all__ = ["register"]

def register(subparsers) -> None:
    _register_extract(subparsers)
    _register_encode(subparsers)
    _register_index(subparsers)
    search = subparsers.add_parser("search", help="rank an index for every query of a feature file")
    _search_arguments(search)
    search.set_defaults(func=_search)
    _register_rerank(subparsers)
    _register_evaluate(subparsers)


# ------------------------------------------------------------------------------------ extract

def _register_extract(subparsers) -> None:
    parser = subparsers.add_parser("extract", help="features of a whole dataset (sharded, resumable; local or Ray)")
    # the choices are ExtractConfig.features' (checked there, one line on a typo)
    parser.add_argument("features", help="local (SIFT family), global or patches (EfficientNet)")
    add_dataset_arguments(parser)
    from retrieval.cli.names import EXTRACT_IMAGES, config_help

    parser.add_argument("--config", required=True, help=config_help())
    parser.add_argument("--out", required=True, help="feature file to write (HDF5); shards go to OUT.shards/")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                        help=f"override a setting, repeatable: extract settings (images={'|'.join(EXTRACT_IMAGES)}: "
                             "the database (default), the queries cropped to their boxes, or both; n_jobs, shard_size, "
                             "device, threads, decode_threads, num_gpus, on_error, merge) or any key of the "
                             "extractor configuration (max_keypoints=1000, size=320 ...)")
    parser.add_argument("--engine", choices=("local", "ray"), default=None, help="where to run (default local)")
    parser.add_argument("--ray-address", default=None,
                        help="Ray cluster (default: a running `ray start` cluster, then $RAY_ADDRESS, "
                             "then a local Ray instance for this run)")
    parser.add_argument("--shard-size", type=int, default=None,
                        help="images per shard (default: ExtractConfig.shard_size)")
    parser.add_argument("--n-jobs", type=int, default=None, help="workers (default 2)")
    parser.set_defaults(func=_extract)


def _extract(args) -> int:
    from retrieval.core.config import parse_overrides
    from retrieval.features.extract import ExtractionError
    from retrieval.features.shards import ShardWriteError
    from retrieval.steps.extract import ExtractConfig, main

    own = {f.name for f in dataclasses.fields(ExtractConfig)} - {"overrides", "kind", "config"}
    overrides = parse_overrides(args.set)
    settings = {k: v for k, v in overrides.items() if k in own}
    options = parse_options([f"{k}={v}" for k, v in overrides.items() if k not in own])
    for key, value in (("shard_size", args.shard_size), ("n_jobs", args.n_jobs)):
        if value is not None:
            settings[key] = value
    conf = ExtractConfig.from_dict(dict(kind=args.features, config=args.config, overrides=options),
                                   where="extract").override(settings)
    dataset = load_dataset(args)
    summary: dict = {}
    try:
        main(conf, dataset, args.out, engine=args.engine, ray_address=args.ray_address,
             progress=progress_enabled(args), summary=summary)
    except (ShardWriteError, ExtractionError) as exc:  # a full disk, an unreadable image: one line
        raise CLIError(str(exc)) from None
    emit_json(json.loads(json.dumps(summary, default=str)))
    return 0


# ------------------------------------------------------------------------------------- encode

def _register_encode(subparsers) -> None:
    parser = subparsers.add_parser("encode", help="encode a local feature store into a global feature file "
                                                  "(BoW, VLAD, Fisher)")
    parser.add_argument("features", help="local feature store (retrieval extract local)")
    parser.add_argument("--out", required=True, help="global feature file to write (HDF5)")
    parser.add_argument("--encoder", default="vlad-64",
                        help="named encoder configuration of retrieval.features.encoders.named.ENCODER_CONFIGS "
                             "(bow-1k, vlad-64, fisher-64 ...; default vlad-64)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", dest="overrides",
                        help="override a field of the encoder configuration (k=128, power=0.5 ...), repeatable")
    parser.add_argument("--model", default=None,
                        help="encoder file: loaded when it exists, else the learned encoder is saved there")
    parser.add_argument("--train", default=None, help="local feature store to learn the encoder from "
                                                      "(default: the one encoded)")
    parser.add_argument("--train-images", type=int, default=2000, help="images sampled to learn it (default 2000)")
    parser.set_defaults(func=_encode)


def _encode(args) -> int:
    from retrieval.features.encoders.named import ENCODER_CONFIGS
    from retrieval.steps.encode import EncodeConfig, main

    features = require_file(args.features, "local feature store", "hdf5")
    train = require_file(args.train, "training store", "hdf5") if args.train else None
    require_output(args.out, "global feature file")
    require_output(args.model, "encoder file")
    conf = EncodeConfig(encoder=ENCODER_CONFIGS.get(args.encoder, args.overrides), train_images=args.train_images)
    info: dict = {}
    with writing(args.out, "global feature file"):
        out = main(conf, features, Path(args.out), model=Path(args.model) if args.model else None, train=train,
                   progress=progress_enabled(args), info=info)
    emit_json({"features": str(out), "model": args.model, **info})
    return 0


# -------------------------------------------------------------------------------------- index

def _register_index(subparsers) -> None:
    parser = subparsers.add_parser("index", help="build an index from a feature file (and search it)")
    sub = parser.add_subparsers(dest="index_command", metavar="{build,search}", required=True)
    build = sub.add_parser("build", help="build an index from a global feature file (HDF5)")
    build.add_argument("features", help="global feature file (retrieval extract global / retrieval encode)")
    build.add_argument("--out", required=True, help="index file to write (.npz), or with --collection a new folder")
    build.add_argument("--collection", action="store_true",
                       help="start a collection in the folder --out: images can then be added and removed "
                            "(retrieval add / remove), searches filtered by metadata, and serve follows changes")
    build.add_argument("--labels", help="collection: CSV of metadata (header row; an 'id' column, else the first)")
    build.add_argument("--images", help="collection: folder of the indexed images (metadata folder, file, path, "
                                        "EXIF date for the ids found there)")
    build.add_argument("--local", help="collection: local-feature store of the database, kept with it "
                                       "(spatial verification in serve; retrieval add extracts the same)")
    build.add_argument("--backend", default="exact",
                       help="exact, faiss-flat, faiss-ivf, faiss-ivfpq, faiss-hnsw (default exact), or lancedb (an "
                            "embedded vector database in the folder --out; the vectordb extra)")
    build.add_argument("--zero-rows", choices=("keep", "drop"), default="keep",
                       help="all-zero vectors (images without keypoints): keep them (they score 0 against "
                            "every query) or drop them from the index (default keep; counted either way)")
    build.add_argument("--option", action="append", metavar="KEY=VALUE",
                       help="backend option, repeatable (nlist=, nprobe=, m=, nbits=, hnsw_m=, "
                            "ef_search=, memory_mb= ...)")
    build.set_defaults(func=_index_build)
    alias = sub.add_parser("search", help="same as 'retrieval search'")
    _search_arguments(alias)
    alias.set_defaults(func=_search)


def _index_build(args) -> int:
    from retrieval.indexing.index import BACKENDS
    from retrieval.steps.index import IndexConfig, main

    if args.backend not in BACKENDS + ("lancedb",):
        raise CLIError(f"unknown backend {args.backend!r}; choose from {', '.join(BACKENDS + ('lancedb',))}")
    if args.backend == "lancedb" and args.collection:
        raise CLIError("a collection keeps its own segments: use an exact or faiss backend with --collection")
    features = require_file(args.features, "feature file", "hdf5")
    out = require_output(args.out, "index", folder=args.collection or args.backend == "lancedb")
    if not args.collection and (args.labels or args.images or args.local):
        raise CLIError("--labels, --images and --local describe a collection: add --collection")
    conf = IndexConfig(backend=args.backend, options=parse_options(args.option), zero_rows=args.zero_rows,
                       collection=args.collection)
    extra = {"labels": require_file(args.labels, "labels CSV") if args.labels else None,
             "images": Path(args.images) if args.images else None,
             "local": require_file(args.local, "local-feature store", "hdf5") if args.local else None}
    info: dict = {}
    with writing(out, "index"):
        out = main(conf, features, out, info=info, **extra)
    emit_json({"index": str(out), "features": str(features), "backend": conf.backend, **info})
    return 0


# ------------------------------------------------------------------------------------- search

def _search_arguments(parser: argparse.ArgumentParser) -> None:
    from retrieval.steps.search import FULL_RANKING_ENTRIES, LARGE_DEFAULT_K  # standard library only

    parser.add_argument("index", help="index file written by 'retrieval index build', or a collection folder")
    parser.add_argument("queries", help="global feature file of the queries")
    parser.add_argument("--k", default=None,
                        help="results per query, or 'full' (default: the whole database when the ranking "
                             f"stays under {FULL_RANKING_ENTRIES:,} entries, else {LARGE_DEFAULT_K})")
    parser.add_argument("--out", required=True,
                        help="ranking file to write: binary (int32 rows, float32 scores, one id table; e.g. "
                             "ranking.rank) unless the name ends in .json")
    parser.add_argument("--format", choices=("auto", "binary", "json"), default="auto",
                        help="ranking file format: auto (JSON for a .json name, else binary; the default), "
                             "binary or json (small rankings only: about 45 bytes a result)")
    parser.add_argument("--batch", type=int, default=4096,
                        help="queries per search call (progress step; fewer when k is large)")
    parser.add_argument("--allow-mixed", action="store_true",
                        help="search queries made with another network, weights, pooling, whitening or encoder "
                             "than the index (refused by default: the vectors are not comparable)")
    parser.add_argument("--option", action="append", metavar="KEY=VALUE",
                        help="search option: memory_mb (exact), nprobe (IVF), ef_search (HNSW)")
    parser.add_argument("--where", action="append", metavar="COLUMN OP VALUE", default=[],
                        help="collections: metadata condition a result must meet, repeatable (label=cat, "
                             "date>=2024-01-01, folder~trips/; OP one of = != < <= > >= ~), applied inside the search")


def _search(args) -> int:
    from retrieval.indexing.collection import open_index
    from retrieval.indexing.collection_files import is_collection
    from retrieval.steps.search import SearchConfig, main

    from retrieval.indexing.lancedb_index import is_lancedb_index

    index = Path(args.index) if is_collection(args.index) or is_lancedb_index(args.index) else \
        require_file(args.index, "index file", "npz")
    queries = require_file(args.queries, "query feature file", "hdf5")
    require_output(args.out, "ranking")
    k: Optional[int] = None
    if args.k is not None and args.k != "full":
        try:
            k = int(args.k)
        except ValueError:
            raise CLIError(f"--k must be a number or 'full', not {args.k!r}") from None
    if args.k == "full":
        k = len(open_index(index)[0])
    if k is not None and k < 1:
        raise CLIError(f"--k must be positive (or 'full'), got {k}")
    if args.batch < 1:
        raise CLIError(f"--batch must be positive, got {args.batch}")
    conf = SearchConfig(k=k, batch=args.batch, options=parse_options(args.option), allow_mixed=args.allow_mixed,
                        where=tuple(args.where), format=args.format)
    info: dict = {}
    with writing(args.out, "ranking"):
        out = main(conf, index, queries, Path(args.out), progress=progress_enabled(args), info=info)
    emit_json({"ranking": str(out), "index": str(index), **info})
    return 0


# ------------------------------------------------------------------------------------- rerank

def _register_rerank(subparsers) -> None:
    parser = subparsers.add_parser(
        "rerank", help="re-rank a ranking's shortlist with local evidence (v*global + (1-v)*local)",
        description="Without fusion options the fusion is the documented default of the scorer's kind "
                    "(retrieval.rerank.fusion.DEFAULT_FUSION, safe without ground truth: counts saturate at T, so "
                    "weak evidence never overturns a strong global match); 'retrieval run' chooses method, T and v "
                    "on held-out queries instead.")
    parser.add_argument("ranking", help="ranking file (retrieval search)")
    parser.add_argument("--query-local", required=True, help="local feature store of the queries")
    parser.add_argument("--db-local", required=True, help="local feature store of the database images")
    parser.add_argument("--scorer", default="spatial",
                        help="local evidence: spatial (inliers of spatial verification, default), ratio, vlad "
                             "or patch (RerankConfig.scorer)")
    parser.add_argument("--config", default="", help="spatial: named configuration (e.g. affine-ransac-mutual)")
    parser.add_argument("--option", action="append", metavar="KEY=VALUE",
                        help="scorer option, repeatable (ratio=0.8, mutual=true, threshold=8, method=magsac ...)")
    parser.add_argument("--model", default=None, help="vlad: encoder file (retrieval encode --model)")
    parser.add_argument("--shortlist", type=int, default=None, help="results re-ranked per query "
                                                                    "(default: RerankConfig's, 100)")
    parser.add_argument("--fusion", default="default",
                        help="default (the documented fusion of the scorer's kind; the default), none (the global "
                             "order), linear (v*global + (1-v)*N(local)) or delg (--threshold inliers first)")
    parser.add_argument("--v", type=float, default=None, help="linear: weight of the global score in [0, 1]")
    parser.add_argument("--norm", default=None,
                        help="linear: normalisation of the local score (none, saturate, exp, minmax, zscore; "
                             "default: saturate for counts, none for similarities; minmax only when named)")
    parser.add_argument("--T", type=float, default=None, help="linear: scale of the saturate / exp normalisations")
    parser.add_argument("--threshold", type=float, default=None, help="delg: inliers that put an image first")
    parser.add_argument("--gate", type=float, default=None,
                        help="linear: re-rank only queries whose best local score reaches this")
    parser.add_argument("--out", required=True, help="ranking file to write (binary unless the name ends in .json)")
    parser.set_defaults(func=_rerank)


def _rerank(args) -> int:
    from retrieval.steps.rerank import RerankConfig, main

    ranking = require_file(args.ranking, "ranking file", RANKING_KINDS)
    q_local = require_file(args.query_local, "query local feature store", "hdf5")
    db_local = require_file(args.db_local, "database local feature store", "hdf5")
    model = require_file(args.model, "encoder file", "npz") if args.model else None
    require_output(args.out, "ranking")
    # options not given keep the configuration's defaults (the same as the Python API's)
    fusion = {"method": args.fusion, **{k: getattr(args, k) for k in ("v", "norm", "T", "threshold", "gate")
                                        if getattr(args, k) is not None}}
    given = {"shortlist": args.shortlist} if args.shortlist is not None else {}
    conf = RerankConfig.from_dict(dict(scorer=args.scorer, config=args.config, options=parse_options(args.option),
                                      fusion=fusion, **given), where="rerank")
    info: dict = {}
    with writing(args.out, "ranking"):
        out = main(conf, ranking, q_local, db_local, Path(args.out), model=model, progress=progress_enabled(args),
                   info=info)
    emit_json({"ranking": str(out), **info})
    return 0


# ----------------------------------------------------------------------------------- evaluate

def _register_evaluate(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="score a ranking file against a dataset's ground truth")
    parser.add_argument("ranking", help="ranking file written by 'retrieval search' or 'retrieval rerank'")
    add_dataset_arguments(parser)
    parser.add_argument("--protocol", default=None,
                        help="gldv2, oxford, revisited, landmark, general, holidays, ukbench or all; several comma-separated "
                             "are reported side by side (default: the dataset's own: oxford/paris -> "
                             "oxford,landmark; gldv2 -> gldv2; folder/multiview/os-core -> general)")
    parser.add_argument("--k", type=int, default=100, help="cut-off for map@k, ndcg@k, recall@k")
    parser.add_argument("--allow-short", action="store_true",
                        help="score a ranking shorter than the protocol needs (a lower bound), with a warning")
    parser.add_argument("--out", default=None, help="also write the metrics JSON here")
    parser.set_defaults(func=_evaluate)


def _evaluate(args) -> int:
    import tempfile

    from retrieval.steps.evaluate import EvaluateConfig, main

    if args.k < 1:
        raise CLIError(f"--k must be positive, got {args.k}")
    ranking = require_file(args.ranking, "ranking file", RANKING_KINDS)
    require_output(args.out, "metrics")
    conf = EvaluateConfig(protocol=args.protocol or "", k=args.k, allow_short=args.allow_short)
    info: dict = {}
    if args.out:
        with writing(args.out, "metrics"):
            main(conf, ranking, dataset_config(args), Path(args.out), info=info)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(conf, ranking, dataset_config(args), Path(tmp) / "metrics.json", info=info)
    emit_json(info)
    return 0
