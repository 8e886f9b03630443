"""The ``retrieval`` command line: the one place that parses arguments. Every pipeline step is a command
here and a Python function in :mod:`retrieval.steps`; every experiment runs through ``retrieval run``.

    retrieval extract global|local|patches --dataset KIND --data PATH --config NAME --out F.h5
    retrieval encode LOCAL.h5 --out GLOBAL.h5 --encoder vlad-64 --model VLAD.npz
    retrieval index build FEATURES.h5 --out INDEX.npz --backend exact|faiss-flat|faiss-ivf|...
    retrieval search INDEX.npz QUERIES.h5 --out RANKING.json        (alias: retrieval index search)
    retrieval index build FEATURES.h5 --out FOLDER --collection [--labels CSV] [--images ROOT] [--local DB.h5]
    retrieval add FOLDER --images PATH... | --features F.h5 [--labels CSV] [--replace];  retrieval remove FOLDER --ids ...
    retrieval collection info|compact|retrain FOLDER
    retrieval rerank RANKING.json --query-local Q.h5 --db-local DB.h5 --scorer spatial --out R2.json
    retrieval evaluate RANKING.json --dataset KIND --data PATH [--protocol oxford,landmark]
    retrieval run EXPERIMENT [--dataset KIND --data PATH] [--data-root DIR] [--quick] [--set KEY=VALUE]
    retrieval dataset info|check|export-gldv2|profile|synth-gldv2 ...
    retrieval bench index-speed|deep-speed|scale|store-integrity|serve-load ...
    retrieval serve --experiment RESULTS_DIR | --index INDEX.npz --features F.h5 --images ROOT
    retrieval train configs|classifier|siamese ...

Results are JSON on stdout (or in ``--out`` for ``evaluate`` / ``dataset`` commands that take it).
A user error (missing or malformed file, wrong dimension, bad option) prints one line
``retrieval: error: ...`` on stderr and exits with code 2; ``--debug`` shows the traceback instead.

Modules: :mod:`.arguments` (options several commands share: ``--dataset/--data``, ``KEY=VALUE``),
:mod:`.output` (JSON on stdout), one module per command group (:mod:`.step_commands`,
:mod:`.run_command`, :mod:`.dataset_commands`, :mod:`.bench_commands`, :mod:`.serve_command`,
:mod:`.train_command`). Adding a command group: a module with ``register(subparsers)`` that calls
``subparsers.add_parser(NAME, help=...)``, adds its arguments and ``set_defaults(func=handler)``;
``handler(args)`` returns an exit code (None = 0) and raises :class:`CLIError` (or ValueError /
OSError) for user errors; then add its ``register`` to :data:`COMMAND_GROUPS`. A command module
imports no numpy or torch at module level (``retrieval --help`` stays fast): the work is imported
inside the handler.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Optional, Sequence

from retrieval.core.checks import CLIError, os_error_message
from retrieval.cli import (bench_commands, collection_commands, dataset_commands, run_command, serve_command,
                           step_commands, train_command)
from retrieval.cli.arguments import add_dataset_arguments, dataset_config, load_dataset, parse_options, progress_enabled
from retrieval.cli.output import emit_json

__all__ = ["main", "build_parser", "CLIError", "COMMAND_GROUPS", "add_dataset_arguments", "load_dataset",
           "dataset_config", "emit_json", "parse_options", "progress_enabled"]

#: the ``register(subparsers)`` of every command group, in --help order
COMMAND_GROUPS = (step_commands.register, collection_commands.register, run_command.register, dataset_commands.register,
                  bench_commands.register, serve_command.register, train_command.register)

GLOBAL_FLAGS = ("--debug", "--quiet")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retrieval", description="Instance-level image retrieval: indexes, search, evaluation, datasets.")
    from retrieval import __version__

    parser.add_argument("--version", action="version", version=f"retrieval (hybrid-retrieval) {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMAND_GROUPS:
        register(subparsers)
    return parser


def _user_error_types():
    """Exceptions that mean bad input rather than a bug: shown as one line, exit code 2."""
    # ValueError covers CLIError, ConfigError, DatasetError, ImageLoadError, FeatureFileError,
    # IndexFileError and Index's dimension / option checks
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
        from retrieval.core.extras import missing_extra_message

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
    except RuntimeError as exc:
        # a protocol that cannot go on (a training run without data, a Ray cluster that is gone)
        if debug:
            raise
        print(f"retrieval: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # whatever was computed is cached: running the same command again resumes from it
        print("retrieval: interrupted", file=sys.stderr)
        return 130
    return 0 if code is None else int(code)
