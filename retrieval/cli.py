"""The ``retrieval`` command line.

    retrieval index build FEATURES.h5 --out INDEX.npz --backend exact|faiss-flat|faiss-ivf|...
    retrieval index search INDEX.npz QUERIES.h5 --k 100 --out RANKING.json
    retrieval evaluate RANKING.json --dataset oxford|revisited|gldv2|folder|multiview|os-core --data PATH
    retrieval dataset info --dataset TYPE --data PATH
    retrieval dataset check PATH [--n-jobs N]
    retrieval dataset export-gldv2 --data COIL_DIR --out DIR [--link symlink|hardlink|copy]

Results are JSON on stdout (or in ``--out`` for ``evaluate`` / ``dataset`` commands that take it).
A user error (missing or malformed file, wrong dimension, bad option) prints one line
``retrieval: error: ...`` on stderr and exits with code 2; ``--debug`` shows the traceback instead.

Adding a command group: write a function ``register(subparsers)`` that calls
``subparsers.add_parser(NAME, help=...)``, adds its arguments and sets ``func=handler`` with
``parser.set_defaults(func=handler)``; ``handler(args)`` returns an exit code (None = 0) and
raises :class:`CLIError` (or ValueError / OSError subclasses) for user errors. Then add
``"package.module:register"`` to :data:`COMMAND_GROUPS`. :func:`add_dataset_arguments` and
:func:`load_dataset` give any command the same ``--dataset/--data`` options.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from .cli_checks import CLIError, os_error_message, require_file as _require_file, require_output, writing

__all__ = ["main", "build_parser", "CLIError", "COMMAND_GROUPS", "add_dataset_arguments", "load_dataset",
           "emit_json", "parse_options", "DATASET_TYPES"]

# "module:function" of every command group, in --help order. Other groups (extract, bench) add a
# line here; each function receives the sub-parsers object.
COMMAND_GROUPS: List[str] = [
    "retrieval.cli:register_index",
    "retrieval.cli:register_evaluate",
    "retrieval.cli:register_dataset",
    "retrieval.bench.cli:register",
    "retrieval.steps.extract:register",
    "retrieval.serve.cli:register",
]

DATASET_TYPES = ("oxford", "revisited", "gldv2", "folder", "multiview", "os-core")
DEFAULT_PROTOCOL = {"oxford": "oxford", "revisited": "revisited", "gldv2": "gldv2", "folder": "general",
                    "multiview": "general", "os-core": "general"}


GLOBAL_FLAGS = ("--debug", "--quiet")


# ------------------------------------------------------------------------------------ helpers

def emit_json(payload: Any, out: Optional[str] = None) -> None:
    """Print ``payload`` as JSON on stdout, and write it to ``out`` too when given (atomically)."""
    text = json.dumps(payload, indent=2, sort_keys=False, default=_json_default)
    if out:
        from .fileio import atomic_write_text  # here: the command line starts without numpy

        with writing(out, "output"):
            atomic_write_text(out, text + "\n")
    print(text)


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set):
        return sorted(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _finite(metrics: Dict[str, Any]) -> Dict[str, Any]:
    # JSON has no NaN: report an undefined metric as null
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}


def parse_options(pairs: Optional[Sequence[str]]) -> Dict[str, Any]:
    """``["nlist=256", "nprobe=8"]`` -> ``{"nlist": 256, "nprobe": 8}`` (ints, floats, true/false,
    none parsed; anything else stays text)."""
    out: Dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise CLIError(f"option {pair!r} is not KEY=VALUE")
        key, value = pair.split("=", 1)
        low = value.strip().lower()
        if low in ("true", "false"):
            out[key.strip()] = low == "true"
        elif low in ("none", "null"):
            out[key.strip()] = None
        else:
            try:
                out[key.strip()] = int(value)
            except ValueError:
                try:
                    out[key.strip()] = float(value)
                except ValueError:
                    out[key.strip()] = value
    return out


def _int_ranges(spec: str) -> List[int]:
    """``"1-50"`` / ``"1,3,5-7"`` -> list of ints."""
    out: List[int] = []
    try:
        for part in spec.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = part.split("-", 1)
                out.extend(range(int(lo), int(hi) + 1))
            elif part:
                out.append(int(part))
    except ValueError:
        raise CLIError(f"{spec!r} is not a list of numbers and ranges such as 1-50 or 1,3,5-7") from None
    if not out:
        raise CLIError(f"{spec!r} names no objects")
    return out


def add_dataset_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--dataset TYPE --data PATH`` plus the reader options that commands share."""
    parser.add_argument("--dataset", choices=DATASET_TYPES, required=required,
                        help="dataset reader: oxford/revisited (images/ + gt/), gldv2 (Kaggle CSV "
                             "layout), folder (images/ + labels.csv, e.g. COIL), multiview "
                             "(DS|DU/train|retrieval tree), os-core (query/target + label files)")
    parser.add_argument("--data", required=required, help="the dataset folder")
    parser.add_argument("--scale", default="auto",
                        help="oxford/revisited: box scale, 'auto' (stored longest side / 1024) or a "
                             "number such as 0.5")
    parser.add_argument("--every", type=int, default=4,
                        help="folder/multiview: every N-th image is a query against all others "
                             "(default 4)")
    parser.add_argument("--split", default="DS", help="multiview: DS or DU (default DS)")
    parser.add_argument("--part", default="retrieval", help="multiview: train or retrieval")
    parser.add_argument("--on-error", choices=("raise", "collect"), default="raise",
                        help="missing/unreadable images: stop (raise) or skip and report (collect)")


def load_dataset(args: argparse.Namespace):
    """The :class:`RetrievalDataset` named by ``--dataset/--data`` (folder and multiview get their
    queries from :func:`every_nth_query` with ``--every``)."""
    from .datasets import (every_nth_query, read_gldv2, read_labelled_folder, read_multiview_tree,
                           read_os_core, read_oxford, read_revisited)

    root = Path(args.data)
    if not root.is_dir():
        raise CLIError(f"{root}: no such dataset folder")
    kind = args.dataset
    if kind in ("folder", "multiview") and args.every < 1:
        raise CLIError(f"--every must be at least 1, got {args.every}")
    if kind in ("oxford", "revisited"):
        scale = args.scale
        if scale != "auto":
            try:
                scale = float(scale)
            except ValueError:
                raise CLIError(f"--scale must be 'auto' or a number, not {args.scale!r}") from None
            if not (math.isfinite(scale) and scale > 0):
                raise CLIError(f"--scale must be a positive number, not {args.scale!r}")
        reader = read_oxford if kind == "oxford" else read_revisited
        return reader(root, scale=scale, on_error=args.on_error)
    if kind == "gldv2":
        return read_gldv2(root, on_error=args.on_error)
    if kind == "folder":
        return every_nth_query(read_labelled_folder(root, on_error=args.on_error), n=args.every)
    if kind == "multiview":
        base = read_multiview_tree(root, split=args.split, part=args.part, on_error=args.on_error)
        return every_nth_query(base, n=args.every)
    if kind == "os-core":
        return read_os_core(root, on_error=args.on_error)
    raise CLIError(f"unknown dataset type {kind!r}")


def _progress_enabled(args) -> bool:
    return not getattr(args, "quiet", False)


# ------------------------------------------------------------------------------------ index

def register_index(subparsers) -> None:
    parser = subparsers.add_parser("index", help="build an index from a feature file, search it")
    sub = parser.add_subparsers(dest="index_command", metavar="{build,search}", required=True)

    build = sub.add_parser("build", help="build an index from a global feature file (HDF5)")
    build.add_argument("features", help="global feature file (features.store.save_global format)")
    build.add_argument("--out", required=True, help="index file to write (.npz)")
    build.add_argument("--backend", default="exact",
                       help="exact, faiss-flat, faiss-ivf, faiss-ivfpq or faiss-hnsw (default exact)")
    build.add_argument("--option", action="append", metavar="KEY=VALUE",
                       help="backend option, repeatable (nlist=, nprobe=, m=, nbits=, hnsw_m=, "
                            "ef_search=, memory_mb= ...)")
    build.set_defaults(func=_index_build)

    search = sub.add_parser("search", help="search an index with a query feature file")
    search.add_argument("index", help="index file written by 'retrieval index build'")
    search.add_argument("queries", help="global feature file of the queries")
    search.add_argument("--k", type=int, default=100, help="results per query (default 100)")
    search.add_argument("--out", required=True, help="ranking file to write (JSON)")
    search.add_argument("--batch", type=int, default=4096, help="queries per search call (progress step)")
    search.add_argument("--option", action="append", metavar="KEY=VALUE",
                        help="search option: memory_mb (exact), nprobe (IVF), ef_search (HNSW)")
    search.set_defaults(func=_index_search)


def _index_build(args) -> int:
    from retrieval.features.store import load_global

    from .index import BACKENDS, Index

    if args.backend not in BACKENDS:
        raise CLIError(f"unknown backend {args.backend!r}; choose from {', '.join(BACKENDS)}")
    features = _require_file(args.features, "feature file", "hdf5")
    require_output(args.out, "index")
    start = time.perf_counter()
    ids, vectors, config = load_global(features)
    if len(ids) == 0:
        raise CLIError(f"{features}: feature file holds no vectors")
    try:
        index = Index(vectors, ids=ids, backend=args.backend, config=config, **parse_options(args.option))
    except ValueError as exc:
        raise CLIError(f"{features}: {exc}") from None
    with writing(args.out, "index"):
        index.save(args.out)
    emit_json({"index": str(args.out), "features": str(features), "backend": args.backend,
               "count": len(index), "dim": index.dim, "options": index.options,
               "seconds": round(time.perf_counter() - start, 3)})
    return 0


def _index_search(args) -> int:
    import numpy as np
    from tqdm.auto import tqdm

    from retrieval.features.store import load_global

    from .index import Index, Ranking

    if args.k < 1:
        raise CLIError(f"--k must be positive, got {args.k}")
    if args.batch < 1:
        raise CLIError(f"--batch must be positive, got {args.batch}")
    index_path = _require_file(args.index, "index file", "npz")
    queries_path = _require_file(args.queries, "query feature file", "hdf5")
    require_output(args.out, "ranking")
    index = Index.load(index_path)
    query_ids, queries, _ = load_global(queries_path)
    if len(query_ids) == 0:
        raise CLIError(f"{queries_path}: feature file holds no query vectors")
    if queries.shape[1] != index.dim:
        raise CLIError(f"{queries_path}: query vectors have dimension {queries.shape[1]}, the index "
                       f"{index_path} has dimension {index.dim}")
    try:
        options = parse_options(args.option)
        index.search(queries[:1], k=1, **options)  # options checked before the long run
    except ValueError as exc:
        raise CLIError(f"{index_path}: {exc}") from None
    start = time.perf_counter()
    parts = []
    steps = range(0, len(query_ids), args.batch)
    for lo in tqdm(steps, desc="search", unit="batch", disable=not _progress_enabled(args) or len(steps) < 2,
                   leave=False):
        hi = min(lo + args.batch, len(query_ids))
        parts.append(index.search(queries[lo:hi], k=args.k, query_ids=query_ids[lo:hi], **options))
    ranking = parts[0] if len(parts) == 1 else Ranking(
        ids=np.concatenate([p.ids for p in parts]), scores=np.concatenate([p.scores for p in parts]),
        indices=np.concatenate([p.indices for p in parts]), query_ids=list(query_ids))
    with writing(args.out, "ranking"):
        ranking.save(args.out)
    emit_json({"ranking": str(args.out), "index": str(index_path), "queries": len(query_ids),
               "k": ranking.k, "seconds": round(time.perf_counter() - start, 3)})
    return 0


# ---------------------------------------------------------------------------------- evaluate

def register_evaluate(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="score a ranking file against a dataset's ground truth")
    parser.add_argument("ranking", help="ranking file written by 'retrieval index search'")
    add_dataset_arguments(parser)
    parser.add_argument("--protocol", default=None,
                        help="gldv2, oxford, revisited, general or all (default: the dataset's own: "
                             "oxford->oxford, gldv2->gldv2, folder/multiview/os-core->general)")
    parser.add_argument("--k", type=int, default=100, help="cut-off for map@k, ndcg@k, recall@k")
    parser.add_argument("--out", default=None, help="also write the metrics JSON here")
    parser.set_defaults(func=_evaluate)


def _evaluate(args) -> int:
    from .datasets.splits import drop_junk
    from .evaluate import PROTOCOLS, evaluate
    from .index import Ranking

    protocol = args.protocol or DEFAULT_PROTOCOL[args.dataset]
    if protocol not in PROTOCOLS:
        raise CLIError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    if args.k < 1:
        raise CLIError(f"--k must be positive, got {args.k}")
    ranking_path = _require_file(args.ranking, "ranking file", "json")
    require_output(args.out, "metrics")
    ranking = Ranking.load(ranking_path)
    if ranking.query_ids is None:
        raise CLIError(f"{ranking_path}: the ranking does not name its queries (no query_ids); search "
                       f"with a feature file, whose ids name them")
    dataset = load_dataset(args)
    predictions = ranking.to_predictions()
    missing = [q for q in dataset.solution() if q not in predictions]
    try:
        # junk (the query's own image, Oxford junk) leaves the ranking before any metric sees it
        metrics = evaluate(dataset, drop_junk(dataset, predictions), protocol=protocol, k=args.k)
    except ValueError as exc:
        raise CLIError(f"{ranking_path}: {exc}") from None
    result = {"ranking": str(ranking_path), "dataset": dataset.name, "data": str(args.data),
              "protocol": protocol, **_finite(metrics),
              "queries_without_prediction": len(missing), "bad_files": len(dataset.bad_files)}
    emit_json(result, args.out)
    return 0


# ----------------------------------------------------------------------------------- dataset

def register_dataset(subparsers) -> None:
    parser = subparsers.add_parser("dataset", help="dataset tools: info, check, export-gldv2")
    sub = parser.add_subparsers(dest="dataset_command", metavar="{info,check,export-gldv2}", required=True)

    info = sub.add_parser("info", help="summary of a dataset as a reader sees it")
    add_dataset_arguments(info)
    info.add_argument("--out", default=None, help="also write the JSON here")
    info.set_defaults(func=_dataset_info)

    check = sub.add_parser("check", help="decode every image under a folder, report unreadable ones "
                                         "(exit 1 when any)")
    check.add_argument("path", help="folder (searched recursively) or a single image")
    check.add_argument("--n-jobs", type=int, default=1, help="parallel decoders (-1: all cores)")
    check.add_argument("--out", default=None, help="also write the JSON report here")
    check.set_defaults(func=_dataset_check)

    export = sub.add_parser("export-gldv2", help="write the COIL GLDv2-format split (train objects, "
                                                 "index + queries of the test objects)")
    export.add_argument("--data", required=True, help="labelled folder (images/ + labels.csv), e.g. coil100")
    export.add_argument("--out", required=True, help="output folder (re-running into it resumes)")
    export.add_argument("--train-objects", default="1-50", help="labels for training (default 1-50)")
    export.add_argument("--test-objects", default="51-100", help="labels for index/queries (default 51-100)")
    export.add_argument("--query-step", type=int, default=8,
                        help="every N-th view of a test object is a query (default 8: 9 of 72)")
    export.add_argument("--seed", type=int, default=0, help="seed of the query phase and Public/Private halves")
    export.add_argument("--ignored-fraction", type=float, default=0.0,
                        help="fraction of queries marked Usage=Ignored (default 0)")
    export.add_argument("--link", choices=("symlink", "hardlink", "copy"), default="symlink")
    export.set_defaults(func=_dataset_export)


def _dataset_summary(ds) -> Dict[str, Any]:
    from collections import Counter

    usage = Counter(t.usage for t in ds.ground_truth.values() if t.usage is not None)
    positives = [len(t.positives) for t in ds.ground_truth.values() if t.usage != "Ignored"]
    out = {"name": ds.name, "root": str(ds.root), "database": len(ds.db_ids), "queries": len(ds.query_ids),
           "train": len(ds.train_ids) if ds.train_ids else 0,
           "scored_queries": len(ds.solution()),
           "positives_per_query": ({"min": min(positives), "mean": round(sum(positives) / len(positives), 2),
                                    "max": max(positives)} if positives else None),
           "bad_files": [{"path": p, "reason": r} for p, r in ds.bad_files]}
    if usage:
        out["usage"] = dict(usage)
    if ds.db_labels is not None:
        out["db_labels"] = len(set(ds.db_labels))
    if ds.train_labels:
        out["train_labels"] = len(set(ds.train_labels))
    meta = {k: v for k, v in ds.metadata.items() if not isinstance(v, (list, dict))}
    if meta:
        out["metadata"] = meta
    return out


def _dataset_info(args) -> int:
    require_output(args.out, "dataset summary")
    emit_json(_dataset_summary(load_dataset(args)), args.out)
    return 0


def _dataset_check(args) -> int:
    from .datasets import check_images, list_images

    if args.n_jobs == 0 or args.n_jobs < -1:
        raise CLIError(f"--n-jobs must be a positive number or -1 (all cores), got {args.n_jobs}")
    require_output(args.out, "check report")
    path = Path(args.path)
    if path.is_file():
        paths = [path]
    elif path.is_dir():
        paths = list_images(path)
    else:
        raise CLIError(f"{path}: no such file or folder")
    bad = check_images(paths, n_jobs=args.n_jobs, progress=_progress_enabled(args))
    emit_json({"path": str(path), "checked": len(paths), "unreadable": len(bad),
               "bad_files": [{"path": p, "reason": r} for p, r in bad]}, args.out)
    return 1 if bad else 0


def _dataset_export(args) -> int:
    from .datasets import coil100_gldv2_split, export_gldv2

    if args.query_step < 2:
        raise CLIError(f"--query-step must be at least 2 (some views must stay in the index), got {args.query_step}")
    if not 0.0 <= args.ignored_fraction < 1.0:
        raise CLIError(f"--ignored-fraction must be in [0, 1), got {args.ignored_fraction}")
    require_output(args.out, "GLDv2 export", folder=True)
    start = time.perf_counter()
    split = coil100_gldv2_split(args.data, train_objects=_int_ranges(args.train_objects),
                                test_objects=_int_ranges(args.test_objects), query_step=args.query_step,
                                seed=args.seed, ignored_fraction=args.ignored_fraction)
    counts = export_gldv2(split, args.out, link=args.link, progress=_progress_enabled(args))
    emit_json({"out": str(args.out), **counts, "usage": _dataset_summary(split).get("usage", {}),
               "seconds": round(time.perf_counter() - start, 3)})
    return 0


# -------------------------------------------------------------------------------------- main

def _resolve(spec: str) -> Callable:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retrieval", description="Instance-level image retrieval: indexes, search, evaluation, datasets.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for spec in COMMAND_GROUPS:
        _resolve(spec)(subparsers)
    return parser


def _user_error_types():
    """Exceptions that mean bad input rather than a bug: shown as one line, exit code 2."""
    # ValueError covers DatasetError, ImageLoadError, FeatureFileError, IndexFileError and Index's
    # dimension / option checks
    return (CLIError, ValueError)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``retrieval`` console script; returns the exit code."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # the global flags may stand anywhere on the line (before "--")
    end = argv.index("--") if "--" in argv else len(argv)
    flags = {a for a in argv[:end] if a in GLOBAL_FLAGS}
    argv = [a for i, a in enumerate(argv) if i >= end or a not in GLOBAL_FLAGS]
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    args.debug = args.debug or "--debug" in flags or os.environ.get("RETRIEVAL_DEBUG") == "1"
    args.quiet = args.quiet or "--quiet" in flags
    debug = args.debug
    try:
        code = args.func(args)
    except _user_error_types() as exc:
        if debug:
            raise
        print(f"retrieval: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # stdout closed early (e.g. piped into head): not an error of ours; silence the flush at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as exc:
        # disk full, file size limit, a file that cannot be written: one line naming the file
        if debug:
            raise
        print(f"retrieval: error: {os_error_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("retrieval: interrupted", file=sys.stderr)
        return 130
    return 0 if code is None else int(code)


if __name__ == "__main__":  # pragma: no cover
    # run through the importable module so its CLIError is the one the handlers raise
    from retrieval.cli import main as _main

    sys.exit(_main())
