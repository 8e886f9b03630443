"""``retrieval bench ...``: the benchmarks that are not experiments (no dataset protocol; seeded synthetic
data or one dataset timed), each a function of :mod:`retrieval.bench` or :mod:`retrieval.serve.load`.
``benchmarks/*.py`` are one-line aliases of these commands and of ``retrieval run NAME``.

    retrieval bench index-speed [--quick] [--approx] [--clusters 1000] [--repeats 3]   # benchmarks/bench_index.py
    retrieval bench deep-speed [--quick|--full|--targets] [--dataset KIND --data PATH]  # benchmarks/deep_speed.py
    retrieval bench scale [--quick]                                                   # benchmarks/scale.py
    retrieval bench store-integrity [--entries N --rows N --rounds N]                 # benchmarks/store_integrity.py
    retrieval bench serve-load [--vectors N --dim D]                                  # benchmarks/serve_load.py
    retrieval bench rerank-speed [--cache DIR] [--queries N]                          # benchmarks/rerank_speed.py
    retrieval bench rankings [--part a|b] [--images 3280 --queries 10000 --database 100000]  # benchmarks/rankings.py
    retrieval bench train-speed [--rungs e2 e3 e4] [--variants float32 bfloat16+nhwc]  # benchmarks/train_speed.py

The experiments (the E1-E8 ladder, the classical and descriptor studies, multi-view) run with
``retrieval run NAME`` (``retrieval run --list``).
"""
from __future__ import annotations

from pathlib import Path

from retrieval.core.checks import CLIError, require_output
from retrieval.core.dataset_kinds import DATASET_KINDS
from retrieval.cli.arguments import bench_options, described_parser, parse_options
from retrieval.cli.output import emit_json
from retrieval.cli.bench_learned import asmk_eval_parser, learned_speed_parser, rerank_speed_parser
from retrieval.cli.bench_vector_db import vector_db_parser

__all__ = ["register"]

def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks: index-speed, deep-speed, scale, store-integrity, "
                                                 "serve-load, learned-speed, rerank-speed, asmk-eval, fusion-default, "
                                                 "rankings, train-speed, vector-db (experiments: retrieval run)")
    sub = parser.add_subparsers(dest="bench_command", metavar="{index-speed,deep-speed,scale,store-integrity,"
                                                               "serve-load,learned-speed,rerank-speed,asmk-eval,"
                                                               "fusion-default,rankings,train-speed,vector-db}",
                                required=True)
    _index_speed_parser(sub)
    _deep_speed_parser(sub)
    _scale_parser(sub)
    _store_integrity_parser(sub)
    _serve_load_parser(sub)
    learned_speed_parser(sub)
    rerank_speed_parser(sub)
    asmk_eval_parser(sub)
    _fusion_default_parser(sub)
    _rankings_parser(sub)
    _train_speed_parser(sub)
    vector_db_parser(sub)


# -------------------------------------------------------------------------------- index-speed

def _index_speed_parser(sub) -> None:
    p = described_parser(sub, "index-speed", "the exact backend against faiss Flat (and the approximate backends) on "
                   "seeded random unit vectors", "retrieval.bench.index_speed")
    p.add_argument("--n", type=int, default=100_000, help="database vectors (default 100000)")
    p.add_argument("--dim", type=int, default=1280, help="dimension (default 1280)")
    p.add_argument("--queries", type=int, default=1000, help="query vectors (default 1000)")
    p.add_argument("--k", type=int, default=100, help="results per query (default 100)")
    p.add_argument("--repeats", type=int, default=3, help="timed searches per backend (median)")
    p.add_argument("--memory-mb", type=float, default=None,
                   help="score-block budget of the exact backend (default: retrieval.indexing.index.DEFAULT_MEMORY_MB)")
    p.add_argument("--tol", type=float, default=1e-5, help="score tolerance for agreement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clusters", type=int, default=0,
                   help="draw vectors around this many random centres (default 0: isotropic)")
    p.add_argument("--spread", type=float, default=0.5, help="noise norm around a centre (--clusters)")
    p.add_argument("--approx", action="store_true", help="also time faiss IVF-Flat, IVF-PQ and HNSW")
    p.add_argument("--products", action="store_true",
                   help="also time the exact search's pieces: float32 product (numpy BLAS, torch), "
                        "bfloat16 product, top-k")
    p.add_argument("--quick", action="store_true", help="20000 x dim database, 200 queries, 2 repeats")
    p.add_argument("--out", default="results/bench_index", help="output folder")
    p.set_defaults(func=_index_speed)


def _index_speed(args) -> int:
    from retrieval.bench.index_speed import run
    from retrieval.indexing.index import DEFAULT_MEMORY_MB

    require_output(args.out, "results", folder=True)
    if args.memory_mb is None:
        args.memory_mb = DEFAULT_MEMORY_MB
    return run(bench_options(args))


# --------------------------------------------------------------------------------- deep-speed

def _deep_speed_parser(sub) -> None:
    p = described_parser(sub, "deep-speed", "EfficientNet-Lite0 extraction speed on CPU: every inference path, and end "
                   "to end against the bare forward pass", "retrieval.bench.deep_speed")
    p.add_argument("--dataset", choices=DATASET_KINDS, default="oxford", help="dataset kind (default oxford)")
    p.add_argument("--data", default=None, help="dataset folder (default: oxford5k_subset of the data root)")
    p.add_argument("--config", default="lite0-gem-512", help="EfficientNet extractor configuration")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the extractor configuration (size=320, weights=random ...)")
    p.add_argument("--backend", default="auto", help="the extractor's own inference path (default auto)")
    p.add_argument("--out", default="results/deep_speed", help="results folder")
    p.add_argument("--quick", action="store_true", help="small subsets (well under two minutes)")
    p.add_argument("--backends", nargs="+", default=None,
                   help="inference paths timed (default: all of retrieval.features.fast_inference.BACKENDS: "
                        "eager, folded, channels_last, torchscript, onnxruntime)")
    p.add_argument("--precisions", nargs="*", default=["int8", "bfloat16"],
                   help="reduced precisions timed beside float32, end to end and bare (default: int8 bfloat16; "
                        "the default path, precision auto, is timed too)")
    p.add_argument("--threads", type=int, default=None, help="torch / ONNX Runtime intra-op threads")
    p.add_argument("--n-jobs", type=int, default=2, help="decoding threads")
    p.add_argument("--batch-size", type=int, default=None, help="images per forward (default: extractor's)")
    p.add_argument("--compare-batch", type=int, default=8, help="a second batch size timed (default 8)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 3, quick 1)")
    p.add_argument("--limit", type=int, default=None, help="images in the --full pass (default: all)")
    p.add_argument("--bare-images", type=int, default=None, help="images timed in the rounds (default 48, quick 12)")
    p.add_argument("--full", action="store_true", help="also the old and the new default over every image, side by side")
    p.add_argument("--targets", action="store_true", help="Oxford at lite0-gem-512 and COIL-100 at lite0-gem-224 of "
                   "the data root in one run (retrieval.bench.deep_speed.TARGETS; not --dataset, --data, --config)")
    p.set_defaults(func=_deep_speed)


def _deep_speed(args) -> int:
    from retrieval.bench.deep_speed import run
    from retrieval.features.fast_inference import BACKENDS

    unknown = sorted(set(args.backends or ()) - set(BACKENDS))
    if unknown:
        raise CLIError(f"--backends: unknown inference path(s) {unknown}; known: {', '.join(BACKENDS)}")
    args.backends = list(args.backends or BACKENDS)
    bad = sorted(set(args.precisions) - {"int8", "bfloat16"})
    if bad:
        raise CLIError(f"--precisions: unknown precision(s) {bad}; known: int8, bfloat16")
    if args.data is None and args.dataset != "oxford" and not args.targets:
        raise CLIError(f"--dataset {args.dataset} needs its folder (--data PATH)")
    require_output(args.out, "results", folder=True)
    args.options = parse_options(args.set)
    run(bench_options(args))
    return 0


# -------------------------------------------------------------------------------------- scale

def _scale_parser(sub) -> None:
    p = described_parser(sub, "scale", "IVF-PQ from shards, GLDv2 CSVs at full size, the Ray engine's figures and the "
                   "E1-E7 cost model", "retrieval.bench.scale")
    p.add_argument("--quick", action="store_true", help="small sizes for CI")
    p.add_argument("--data-root", default=None, help="data folder (default: retrieval.core.paths.data_root())")
    p.add_argument("--out", default="results/scale", help="results folder")
    p.add_argument("--work", default=None,
                   help="folder for shards and generated CSVs (default cache/scale, --quick: cache/scale-quick: "
                        "the two modes make shards of different sizes, so each keeps its own)")
    p.add_argument("--workers", type=int, default=32, help="CPU workers N of the projection")
    p.add_argument("--gpus", type=int, default=4, help="GPUs G of the projection")
    p.add_argument("--gpu-img-per-s", type=float, default=400.0,
                   help="assumed network throughput of one GPU (images/s; not measured here)")
    p.add_argument("--skip", nargs="*", default=[], choices=["index", "gldv2", "engine", "cost"], help="parts to skip")
    p.set_defaults(func=_scale)


def _scale(args) -> int:
    from retrieval.bench.scale import default_work_dir, results_markdown, run
    from retrieval.core.paths import data_root

    require_output(args.out, "results", folder=True)
    work = Path(args.work) if args.work else default_work_dir(args.quick)
    results = run(Path(args.out), work, data_root(args.data_root), quick=args.quick,
                  workers=args.workers, gpus=args.gpus, gpu_img_per_s=args.gpu_img_per_s, skip=args.skip)
    print(results_markdown(results))
    return 0


# ---------------------------------------------------------------------------- store-integrity

def _store_integrity_parser(sub) -> None:
    p = described_parser(sub, "store-integrity", "what the feature stores' checksums and space reservation cost",
                   "retrieval.bench.store_integrity")
    p.add_argument("--entries", type=int, default=300, help="local feature entries (default 300)")
    p.add_argument("--rows", type=int, default=20000, help="global feature rows (default 20000)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--folder", type=Path, default=None, help="where to write (default: a temporary folder)")
    p.add_argument("--out", default="results/store_integrity", help="results folder")
    p.set_defaults(func=_store_integrity)


def _store_integrity(args) -> int:
    from retrieval.bench.store_integrity import run

    require_output(args.out, "results", folder=True)
    run(args.entries, args.rows, args.rounds, args.folder, args.out)
    return 0


# --------------------------------------------------------------------------------- serve-load

def _serve_load_parser(sub) -> None:
    p = described_parser(sub, "serve-load", "bounded load test of retrieval serve's /api/search on loopback (at most "
                   "500 requests, at most 8 at a time)", "retrieval.serve.load")
    p.add_argument("--vectors", type=int, default=100_000, help="index size (default 100,000)")
    p.add_argument("--dim", type=int, default=320,
                   help="vector dimension (default 320: Lite0's last block; 1280 for its head)")
    p.add_argument("--requests", type=int, default=500, help="at most 500")
    p.add_argument("--concurrency", type=int, default=8, help="at most 8")
    p.add_argument("--k", type=int, default=20, help="results per search (default 20)")
    p.add_argument("--time-limit", type=float, default=120.0, help="stop after this many seconds (default 120)")
    p.add_argument("--collection", action="store_true",
                   help="serve a collection folder and, during the load, add --add vectors to it from another "
                        "process: latency during the add and the time until the server shows them")
    p.add_argument("--add", type=int, default=1000, help="vectors added with --collection (default 1,000)")
    p.add_argument("--out", default=None, help="also write the JSON report here")
    p.set_defaults(func=_serve_load)


def _serve_load(args) -> int:
    from retrieval.serve.load import MAX_CONCURRENCY, MAX_REQUESTS, n_fmt, run_load

    if not 1 <= args.requests <= MAX_REQUESTS or not 1 <= args.concurrency <= MAX_CONCURRENCY:
        raise CLIError(f"the load test is bounded: 1 <= --requests <= {MAX_REQUESTS}, "
                       f"1 <= --concurrency <= {MAX_CONCURRENCY}")
    require_output(args.out, "load report")
    if args.collection:
        return _serve_load_during_add(args)
    report = run_load(args.vectors, args.dim, args.requests, args.concurrency, args.k, args.time_limit)
    emit_json(report, args.out)
    lat = report["latency_ms"]
    print(f"/api/search by id, {n_fmt(report)} synthetic vectors: p50 {lat['p50']} ms, p95 {lat['p95']} ms over "
          f"{report['requests']} requests, {report['concurrency']} concurrent (target p95 < 100 ms); load average "
          f"{report['load_average']} on {report['cpu_count']} CPUs")
    return 0


def _serve_load_during_add(args) -> int:
    from retrieval.serve.load import n_fmt
    from retrieval.serve.load_add import MAX_ADD, run_load_during_add

    if not 1 <= args.add <= MAX_ADD:
        raise CLIError(f"--add must be 1-{MAX_ADD}, got {args.add}")
    report = run_load_during_add(args.vectors, args.dim, args.add, args.requests, args.concurrency, args.k,
                                 args.time_limit)
    emit_json(report, args.out)
    during = report["latency_ms"]["during_add"]
    print(f"/api/search by id on a {n_fmt(report)} collection while {args.add:,} vectors are added: p50 "
          f"{during['p50']} ms, p95 {during['p95']} ms over {during['requests']} requests (target p95 < 150 ms); "
          f"the add took {report['add_seconds']} s, shown {report['visible_after_add_ms']} ms after it returned "
          f"(target < 1000 ms); load average {report['load_average']} on {report['cpu_count']} CPUs")
    return 0


def _fusion_default_parser(sub) -> None:
    p = described_parser(sub, "fusion-default", "the fusion applied without ground truth, picked from experiments' "
                   "per-candidate means", "retrieval.bench.fusion_default")
    p.add_argument("results", nargs="*", default=["results/e1_e7"],
                   help="results folders of the ladder or of retrieval run (default results/e1_e7)")
    p.add_argument("--out", default=None, help="also write fusion_default.json / .md here")
    p.set_defaults(func=_fusion_default)


def _fusion_default(args) -> int:
    from ..bench.fusion_default import main

    main(args.results, args.out)
    return 0


# -------------------------------------------------------------------------------- rankings

def _rankings_parser(sub) -> None:
    p = described_parser(sub, "rankings", "ranking files: size, write time and peak memory, JSON against the binary "
                   "file, and a 10,000 x 100,000 full ranking written and evaluated streaming",
                   "retrieval.bench.rankings")
    p.add_argument("--images", type=int, default=3280, help="(a) images, each also a query (default 3280)")
    p.add_argument("--dim", type=int, default=256, help="vector dimension (default 256)")
    p.add_argument("--queries", type=int, default=10_000, help="(b) queries (default 10000)")
    p.add_argument("--database", type=int, default=100_000, help="(b) database images = k (default 100000)")
    p.add_argument("--protocol", default="general", help="evaluation protocol (default general: every metric)")
    p.add_argument("--part", choices=("both", "a", "b"), default="both",
                   help="(a) the every-image-as-query JSON/binary comparison, (b) the large ranking, or both")
    p.add_argument("--folder", type=Path, default=None, help="where to write the rankings (default: a temporary "
                                                            "folder; (b) needs about queries x database x 8 bytes)")
    p.add_argument("--before", type=Path, default=None,
                   help="(a) also measures the search and evaluation of the source tree of an earlier version "
                        "(e.g. git archive COMMIT | tar -x -C DIR)")
    p.add_argument("--reuse-ranking", type=Path, default=None,
                   help="(b): evaluate this ranking file, written by an earlier (b) of the same sizes, instead of "
                        "searching again")
    p.add_argument("--out", default="results/rankings", help="results folder")
    p.set_defaults(func=_rankings)


def _rankings(args) -> int:
    from retrieval.bench.rankings import run

    for name in ("images", "dim", "queries", "database"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name} must be positive, got {getattr(args, name)}")
    require_output(args.out, "results", folder=True)
    if args.before is not None and not (args.before / "retrieval" / "steps" / "search.py").is_file():
        raise CLIError(f"{args.before}: not a source tree of this project (no retrieval/steps/search.py)")
    run(args.images, args.dim, args.queries, args.database, protocol=args.protocol, part=args.part,
        folder=args.folder, out=Path(args.out), before=args.before, reuse=args.reuse_ranking)
# -------------------------------------------------------------------------------- train-speed

def _train_speed_parser(sub) -> None:
    p = described_parser(sub, "train-speed", "EfficientNet training ms/step, float32 against bfloat16 autocast, NCHW "
                   "against channels-last, for the ladder's E2-E4 configurations", "retrieval.bench.train_speed")
    p.add_argument("--data", default=None, help="COIL-100 folder (images/ + labels.csv; default: the data root's)")
    p.add_argument("--synthetic", action="store_true", help="random 128 px images instead of COIL-100")
    p.add_argument("--classes", type=int, default=20, help="objects whose images train (default 20)")
    p.add_argument("--rungs", nargs="+", default=["e2", "e3", "e4"], choices=["e2", "e3", "e4"],
                   help="configurations timed (coil-e2, coil-e3, coil-e4)")
    p.add_argument("--variants", nargs="+", default=None,
                   help="PRECISION[+nhwc], the first the baseline (default: float32 float32+nhwc bfloat16 "
                        "bfloat16+nhwc)")
    p.add_argument("--steps", type=int, default=6, help="timed steps per run (default 6)")
    p.add_argument("--warmup", type=int, default=2, help="steps left out at the start of each run (default 2)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--device", default="cpu", help="training device (default cpu)")
    p.add_argument("--quick", action="store_true", help="small batches of 64 px images (the same code path)")
    p.add_argument("--out", default="results/train_speed", help="results folder")
    p.set_defaults(func=_train_speed)


def _train_speed(args) -> int:
    from ..bench.train_speed import VARIANTS, parse_variant, run

    args.variants = list(args.variants or VARIANTS)
    for variant in args.variants:
        try:
            parse_variant(variant)
        except ValueError as exc:
            raise CLIError(f"--variants: {exc}") from None
    if min(args.steps, args.rounds, args.classes) < 1 or args.warmup < 0:
        raise CLIError("--steps, --rounds and --classes must be >= 1, --warmup >= 0")
    require_output(args.out, "results", folder=True)
    run(bench_options(args))
    return 0
