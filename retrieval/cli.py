"""The ``retrieval`` command line: every pipeline step is a command (and a Python function, see
:mod:`retrieval.steps`).

    retrieval encode LOCAL.h5 --out GLOBAL.h5 --encoder vlad-64 --model VLAD.npz
    retrieval index build FEATURES.h5 --out INDEX.npz --backend exact|faiss-flat|faiss-ivf|...
    retrieval search INDEX.npz QUERIES.h5 --out RANKING.json        (alias: retrieval index search)
    retrieval rerank RANKING.json --query-local Q.h5 --db-local DB.h5 --scorer spatial --v 0.5 --out R2.json
    retrieval evaluate RANKING.json --dataset KIND --data PATH [--protocol oxford,landmark]
    retrieval run EXPERIMENT [--dataset KIND --data PATH] [--set KEY=VALUE] [--out DIR]
    retrieval dataset info --dataset TYPE --data PATH
    retrieval dataset check PATH [--n-jobs N]
    retrieval dataset export-gldv2 --data COIL_DIR --out DIR [--link symlink|hardlink|copy]
    retrieval dataset profile --dataset TYPE --data PATH --out DIR [--set KEY=VALUE]

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
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from .cli_checks import CLIError, os_error_message, require_file, require_output, writing
from .extras import missing_extra_message

__all__ = ["main", "build_parser", "CLIError", "COMMAND_GROUPS", "add_dataset_arguments", "load_dataset",
           "dataset_config", "emit_json", "parse_options", "require_file", "finite", "progress_enabled",
           "DATASET_TYPES"]

# "module:function" of every command group, in --help order. Other groups (extract, bench) add a
# line here; each function receives the sub-parsers object.
COMMAND_GROUPS: List[str] = [
    "retrieval.steps.extract:register",
    "retrieval.steps.encode:register",
    "retrieval.steps.index:register",
    "retrieval.steps.search:register",
    "retrieval.steps.rerank:register",
    "retrieval.steps.evaluate:register",
    "retrieval.steps.run:register",
    "retrieval.cli:register_dataset",
    "retrieval.bench.cli:register",
    "retrieval.serve.cli:register",
]

# the readers' kinds (retrieval.datasets.open.DATASET_KINDS, repeated here so that --help needs no numpy)
DATASET_TYPES = ("folder", "gldv2", "oxford", "paris", "revisited", "multiview", "os-core")


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


def finite(metrics: Dict[str, Any]) -> Dict[str, Any]:
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


def _label_list(spec: str) -> List[str]:
    """``"1-50"`` / ``"1,3,5-7"`` / ``"cat,dog"`` -> labels as text (number ranges expanded)."""
    import re

    out: List[str] = []
    for part in (p.strip() for p in spec.split(",")):
        match = re.fullmatch(r"(\d+)-(\d+)", part)
        if match:
            out.extend(str(i) for i in range(int(match.group(1)), int(match.group(2)) + 1))
        elif part:
            out.append(part)
    if not out:
        raise CLIError(f"{spec!r} names no labels")
    return out


def add_dataset_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--dataset KIND --data PATH`` plus the reader options that commands share (the fields of
    :class:`retrieval.datasets.open.DatasetConfig`)."""
    parser.add_argument("--dataset", choices=DATASET_TYPES, required=required,
                        help="dataset reader: folder (images/ + labels.csv, or a class-per-folder tree "
                             "root/CLASS/*.jpg), gldv2 (Kaggle CSV layout), oxford/paris (images/ + gt/ "
                             "good/ok/junk lists), revisited (gt/ easy/hard/junk), multiview "
                             "(DS|DU/train|retrieval tree), os-core (query/target + label files)")
    parser.add_argument("--data", required=required, help="the dataset folder")
    parser.add_argument("--scale", default="auto",
                        help="oxford/paris/revisited: box scale, 'auto' (stored longest side / 1024) or a "
                             "number such as 0.5")
    parser.add_argument("--query-list", default="auto",
                        help="folder/multiview: which images are queries: 'auto' (queries.txt in the "
                             "dataset folder when present, else every N-th image of each class), "
                             "'every', or the path of a list of image ids (default auto)")
    parser.add_argument("--every", type=int, default=4,
                        help="folder/multiview: every N-th image of each class is a query (default 4)")
    parser.add_argument("--db", choices=("all", "rest"), default="all",
                        help="folder/multiview: keep the queries in the database (all, default; a "
                             "query's own image is then ignored) or take them out (rest)")
    parser.add_argument("--split", default="DS", help="multiview: DS or DU (default DS)")
    parser.add_argument("--part", default="retrieval", help="multiview: train or retrieval")
    parser.add_argument("--gldv2-protocol", choices=("kaggle", "thesis"), default="kaggle",
                        help="gldv2: the Kaggle index/test split (default) or the thesis' 1,000 queries "
                             "against 100,000 train images of landmarks outside train_clean.csv")
    parser.add_argument("--on-error", choices=("raise", "collect"), default="raise",
                        help="missing/unreadable images: stop (raise) or skip and report (collect)")


def dataset_config(args: argparse.Namespace):
    """The :class:`retrieval.datasets.open.DatasetConfig` of ``--dataset/--data`` and the reader options."""
    from .config import ConfigError
    from .datasets.open import DatasetConfig

    scale: Any = args.scale
    if scale != "auto":
        try:
            scale = float(scale)
        except ValueError:
            raise CLIError(f"--scale must be 'auto' or a number, not {args.scale!r}") from None
        if not (math.isfinite(scale) and scale > 0):
            raise CLIError(f"--scale must be a positive number, not {args.scale!r}")
    if args.every < 1:
        raise CLIError(f"--every must be at least 1, got {args.every}")
    try:
        return DatasetConfig(kind=args.dataset, path=str(args.data), scale=scale, queries=args.query_list,
                             every=args.every, db=args.db, split=args.split, part=args.part,
                             protocol=args.gldv2_protocol, on_error=args.on_error)
    except ConfigError as exc:
        raise CLIError(str(exc)) from None


def load_dataset(args: argparse.Namespace):
    """The :class:`RetrievalDataset` named by ``--dataset/--data`` (see :func:`dataset_config`)."""
    from .datasets.open import open_dataset

    return open_dataset(dataset_config(args))


def progress_enabled(args) -> bool:
    return not getattr(args, "quiet", False)


# ----------------------------------------------------------------------------------- dataset

def register_dataset(subparsers) -> None:
    parser = subparsers.add_parser("dataset", help="dataset tools: info, check, export-gldv2, profile")
    sub = parser.add_subparsers(dest="dataset_command", metavar="{info,check,export-gldv2,profile}", required=True)

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

    export = sub.add_parser("export-gldv2", help="write a labelled folder as a GLDv2-format split (train "
                                                 "labels, index + queries of the test labels)")
    export.add_argument("--data", required=True, help="folder dataset: images/ + labels.csv (e.g. coil100) or a "
                                                      "class-per-folder tree")
    export.add_argument("--out", required=True, help="output folder (re-running into it resumes)")
    export.add_argument("--train-labels", "--train-objects", dest="train_labels", default=None,
                        help="labels for training: names and number ranges, e.g. 1-50 or cat,dog (default: "
                             "the first half of the labels in natural order; COIL-100: 1-50)")
    export.add_argument("--test-labels", "--test-objects", dest="test_labels", default=None,
                        help="labels for index/queries (default: the other half; COIL-100: 51-100)")
    export.add_argument("--query-step", type=int, default=8,
                        help="every N-th view of a test object is a query (default 8: 9 of 72)")
    export.add_argument("--seed", type=int, default=0, help="seed of the query phase and Public/Private halves")
    export.add_argument("--ignored-fraction", type=float, default=0.0,
                        help="fraction of queries marked Usage=Ignored (default 0)")
    export.add_argument("--link", choices=("symlink", "hardlink", "copy"), default="symlink")
    export.set_defaults(func=_dataset_export)

    profile = sub.add_parser("profile", help="what is in a dataset: classes and long tail, grayscale, sizes, "
                                             "EXIF, unreadable files, duplicates (retrieval.datasets.profile)")
    add_dataset_arguments(profile)
    profile.add_argument("--out", required=True, help="folder for profile.json and profile.png")
    profile.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="profile setting, e.g. near_features=FILE, near_threshold=0.9, check_pixels=false")
    profile.set_defaults(func=_dataset_profile)


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
    from .datasets.files import check_folder

    if args.n_jobs == 0 or args.n_jobs < -1:
        raise CLIError(f"--n-jobs must be a positive number or -1 (all cores), got {args.n_jobs}")
    require_output(args.out, "check report")
    path = Path(args.path)
    if not path.exists():
        raise CLIError(f"{path}: no such file or folder")
    report = check_folder(path, n_jobs=args.n_jobs, progress=progress_enabled(args))
    emit_json(report, args.out)
    return 1 if report["unreadable"] else 0


def _dataset_profile(args) -> int:
    from .config import ConfigError
    from .datasets.profile import ProfileConfig, gldv2_records, main as profile_main

    try:
        conf = ProfileConfig().override(args.overrides)
    except ConfigError as exc:
        raise CLIError(str(exc)) from None
    if not Path(args.data).is_dir():
        raise CLIError(f"{args.data}: no such dataset folder")
    # GLDv2 is streamed from its CSVs (bounded memory); other kinds go through their reader
    source = gldv2_records(args.data) if args.dataset == "gldv2" else load_dataset(args)
    path = profile_main(conf, source, args.out, progress=progress_enabled(args))
    emit_json({"profile": str(path), "plot": str(Path(args.out) / "profile.png")})
    return 0


def _dataset_export(args) -> int:
    from .datasets import export_gldv2, labelled_gldv2_split, natural_key
    from .datasets.folders import read_folder

    if args.query_step < 2:
        raise CLIError(f"--query-step must be at least 2 (some views must stay in the index), got {args.query_step}")
    if not 0.0 <= args.ignored_fraction < 1.0:
        raise CLIError(f"--ignored-fraction must be in [0, 1), got {args.ignored_fraction}")
    require_output(args.out, "GLDv2 export", folder=True)
    start = time.perf_counter()
    full = read_folder(args.data)
    labels = sorted(set(full.db_labels), key=natural_key)
    train = _label_list(args.train_labels) if args.train_labels else labels[:len(labels) // 2]
    test = _label_list(args.test_labels) if args.test_labels else [x for x in labels if x not in set(train)]
    split = labelled_gldv2_split(full, train, test, query_step=args.query_step, seed=args.seed,
                                 ignored_fraction=args.ignored_fraction)
    counts = export_gldv2(split, args.out, link=args.link, progress=progress_enabled(args))
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
    from . import __version__

    parser.add_argument("--version", action="version", version=f"retrieval (hybrid-retrieval) {__version__}")
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


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # a warning is one line too (what was left out, naming the file), without Python's source line
    print(f"retrieval: warning: {message}", file=sys.stderr)


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
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            code = args.func(args)
    except _user_error_types() as exc:
        if debug:
            raise
        print(f"retrieval: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        # a module of an optional extra (uvicorn, ray, faiss ...): one line naming the extra to install
        message = missing_extra_message(exc)
        if debug or message is None:
            raise
        print(f"retrieval: error: {message}", file=sys.stderr)
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
