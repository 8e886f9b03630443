"""``retrieval run EXPERIMENT``: run an experiment file through its protocol.

    retrieval run e1-e7                                  # a shipped experiment, by name
    retrieval run my.toml --dataset folder --data ~/photos --set rerank.v=0.3 --out results/mine

Writes ``results.json``, ``results.md`` and figures under ``--out`` (default ``results/<name>``),
caches what it computes under ``--cache`` (default ``cache/<name>``) and resumes from it. The
experiment file format is described in :mod:`retrieval.steps.experiment`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .experiment import Experiment, load_experiment, shipped_experiments

__all__ = ["main", "register"]


def main(experiment: Experiment, out_dir: Optional[Path] = None, cache_dir: Optional[Path] = None,
         progress: bool = True) -> Path:
    """Run a loaded :class:`Experiment`; returns the results folder (holding ``results.json``).
    ``progress`` reaches protocols whose ``main`` takes it."""
    import inspect

    from ..fileio import atomic_write_text

    out_dir = Path(out_dir) if out_dir is not None else Path("results") / experiment.name
    cache_dir = Path(cache_dir) if cache_dir is not None else Path("cache") / experiment.name
    out_dir.mkdir(parents=True, exist_ok=True)
    # what was run, next to what it gave (the file as checked, every override applied)
    atomic_write_text(out_dir / "experiment.json", json.dumps(
        {"experiment": str(experiment.path), "kind": experiment.kind, "description": experiment.description,
         "settings": experiment.conf.to_dict()}, indent=2) + "\n")
    extra = {"progress": progress} if "progress" in inspect.signature(experiment.module.main).parameters else {}
    return Path(experiment.module.main(experiment.conf, out_dir, cache_dir, **extra))


def register(subparsers) -> None:
    from ..cli import DATASET_TYPES

    parser = subparsers.add_parser("run", help="run an experiment file (TOML/YAML) or a shipped experiment")
    parser.add_argument("experiment", help="experiment file, or the name of a shipped one "
                                           "('retrieval run --list' lists them)", nargs="?")
    parser.add_argument("--list", action="store_true", help="list the shipped experiments and exit")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", dest="overrides",
                        help="override a setting (dotted keys: search.k=500, dataset.every=8), repeatable")
    parser.add_argument("--dataset", choices=DATASET_TYPES, default=None, help="replace the file's dataset kind")
    parser.add_argument("--data", default=None, help="replace the file's dataset folder")
    parser.add_argument("--out", default=None, help="results folder (default results/<experiment name>)")
    parser.add_argument("--cache", default=None, help="cache folder, resumed from (default cache/<experiment name>)")
    parser.set_defaults(func=_handle)


def _handle(args) -> int:
    from ..cli import CLIError, emit_json, progress_enabled, require_output

    if args.list:
        emit_json({"experiments": shipped_experiments()})
        return 0
    if not args.experiment:
        raise CLIError("name an experiment file (or a shipped experiment: "
                       f"{', '.join(shipped_experiments()) or 'none'})")
    require_output(args.out, "results", folder=True)
    require_output(args.cache, "cache", folder=True)
    experiment = load_experiment(args.experiment, args.overrides, dataset=args.dataset, data=args.data)
    out = main(experiment, Path(args.out) if args.out else None, Path(args.cache) if args.cache else None,
               progress=progress_enabled(args))
    results = out / "results.json"
    emit_json({"experiment": str(experiment.path), "kind": experiment.kind, "results": str(out),
               **({"summary": json.loads(results.read_text()).get("summary")} if results.is_file() else {})})
    return 0
