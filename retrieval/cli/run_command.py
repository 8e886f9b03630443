"""``retrieval run EXPERIMENT``: run an experiment file (or a shipped experiment, by name) through its protocol.

    retrieval run e1-e7                                   # the E1-E8 ladder: COIL-100 + the Oxford subset
    retrieval run e1-e7 --quick                           # its quick mode (CI: make bench-quick)
    retrieval run e1-e7 --data-root /data                 # the folder holding coil100/ and oxford5k_subset/
    retrieval run e1-e7 --dataset oxford --data /data/paris6k --set landmark.dataset=paris   # one half
    retrieval run e1-e7 --dataset gldv2 --data /data/gldv2 --set device=cuda --set object.train_config=gldv2-gpu
    retrieval run my.toml --dataset folder --data ~/photos --set rerank.v=0.3 --out results/mine

``--dataset KIND --data PATH``: the dataset the experiment runs on (for the ladder the kind picks the
half that runs: folder / gldv2 the object half, oxford / paris / revisited the landmark half).
``--data-root DIR``: where relative dataset paths are read (the ladder's ``data_root``, else
$RETRIEVAL_DATA for this run). ``--set KEY=VALUE`` overrides any setting (dotted keys:
``search.k=500``, ``object.sift=rootsift-1k``, ``device=cuda``, ``engine=ray``,
``landmark.enabled=false``). ``--quick``: the protocol's quick mode (``quick = true``, or its
``QUICK`` settings); ``--recompute [STAGE ...]``: the ladder recomputes those stages (all without a
name). Results go to ``--out`` (default ``results/<name>``) and everything computed is cached under
``--cache`` (default ``cache/<name>``) and resumed from; in quick mode ``<name>-quick``.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from retrieval.core.checks import CLIError, require_output
from retrieval.core.dataset_kinds import DATASET_KINDS
from retrieval.core.paths import DATA_ENV_VAR
from retrieval.cli.arguments import progress_enabled
from retrieval.cli.output import emit_json

__all__ = ["register"]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "run", help="run an experiment file (TOML/YAML) or a shipped experiment (e1-e7: the E1-E8 ladder)",
        description="Run an experiment file (or a shipped experiment, by name) through its protocol.",
        epilog=__doc__[__doc__.index("    retrieval run"):],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", help="experiment file, or the name of a shipped one "
                                           "('retrieval run --list' lists them)", nargs="?")
    parser.add_argument("--list", action="store_true", help="list the shipped experiments and exit")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", dest="overrides", default=[],
                        help="override a setting (dotted keys: search.k=500, dataset.every=8), repeatable")
    parser.add_argument("--dataset", choices=DATASET_KINDS, default=None, help="replace the file's dataset kind")
    parser.add_argument("--data", default=None, help="replace the file's dataset folder")
    parser.add_argument("--data-root", default=None,
                        help="folder under which relative dataset paths are read (default: $RETRIEVAL_DATA, "
                             "else ../shared/data; the ladder: the folder holding coil100/ and oxford5k_subset/)")
    parser.add_argument("--quick", action="store_true", help="the protocol's quick mode (small subsets; CI)")
    parser.add_argument("--recompute", nargs="*", metavar="STAGE", default=None,
                        help="ladder: ignore the cached results of these stages (every stage without a name)")
    parser.add_argument("--out", default=None, help="results folder (default results/<experiment name>)")
    parser.add_argument("--cache", default=None, help="cache folder, resumed from (default cache/<experiment name>)")
    parser.set_defaults(func=_run)


def _run_settings(args, module, conf) -> list:
    """The ``--set`` style overrides the run flags stand for, checked against the protocol's settings."""
    from retrieval.core.config import config_fields

    fields = config_fields(type(conf))
    pairs = []
    if args.quick:
        if "quick" in fields:
            pairs.append("quick=true")
        elif hasattr(module, "QUICK"):
            pairs += [f"{k}={json.dumps(v)}" for k, v in module.QUICK.items()]
        else:
            raise CLIError(f"experiment {args.experiment}: its protocol has no quick mode")
    if args.recompute is not None:
        if "recompute" not in fields:
            raise CLIError(f"experiment {args.experiment}: its protocol caches no stages (--recompute)")
        from retrieval.experiments.ladder.settings import STAGES  # the stages a run caches (a name not among them is refused there)

        pairs.append(f"recompute={json.dumps(list(args.recompute or STAGES))}")
    if args.quiet and "progress" in fields:
        pairs.append("progress=false")
    if args.data_root is not None and "data_root" in fields:
        pairs.append(f"data_root={args.data_root}")
    return pairs


def _run(args) -> int:
    from retrieval.experiments.files import shipped_experiments

    if args.list:
        emit_json({"experiments": shipped_experiments()})
        return 0
    if not args.experiment:
        raise CLIError("name an experiment file (or a shipped experiment: "
                       f"{', '.join(shipped_experiments()) or 'none'})")
    require_output(args.out, "results", folder=True)
    require_output(args.cache, "cache", folder=True)
    if args.data_root is None:
        return _run_experiment(args)
    if not Path(args.data_root).expanduser().is_dir():
        raise CLIError(f"{args.data_root}: no such data folder (--data-root)")
    # relative dataset paths of every protocol are read under it (retrieval.core.paths.data_root), for this run
    before = os.environ.get(DATA_ENV_VAR)
    os.environ[DATA_ENV_VAR] = str(args.data_root)
    try:
        return _run_experiment(args)
    finally:
        if before is None:
            os.environ.pop(DATA_ENV_VAR, None)
        else:
            os.environ[DATA_ENV_VAR] = before


def _run_experiment(args) -> int:
    from retrieval.experiments.files import load_experiment
    from retrieval.experiments.run import main

    experiment = load_experiment(args.experiment, args.overrides, dataset=args.dataset, data=args.data)
    flags = _run_settings(args, experiment.module, experiment.conf)
    if flags:
        # the flags first, the file's --set overrides after them (an explicit --set wins)
        experiment = load_experiment(args.experiment, flags + list(args.overrides), dataset=args.dataset,
                                     data=args.data)
    # a quick run keeps its own results and cache (its small models never stand in for the full ones)
    name = experiment.name + ("-quick" if getattr(experiment.conf, "quick", False) or args.quick else "")
    out = Path(args.out) if args.out else Path("results") / name
    cache = Path(args.cache) if args.cache else Path("cache") / name
    out = main(experiment, out, cache, progress=progress_enabled(args))
    results = out / "results.json"
    emit_json({"experiment": str(experiment.path), "kind": experiment.kind, "results": str(out),
               **({"summary": json.loads(results.read_text()).get("summary")} if results.is_file() else {})})
    return 0
