"""The thin entry points of ``benchmarks/*.py``: read an experiment file (TOML, ``kind`` naming a
protocol of :mod:`retrieval.protocols`), apply ``--dataset KIND --data PATH``, ``--quick`` and
``--set KEY=VALUE`` overrides, run the protocol's ``main(conf, out_dir, cache_dir)``.

An experiment file holds ``kind`` (and optionally ``description``) plus the protocol's settings; an
unknown key is an error that names it (:mod:`retrieval.steps.experiment`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["EXPERIMENTS", "read_experiment", "run_experiment"]

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def read_experiment(path, kind: Optional[str] = None):
    """``(module, conf)``: the protocol module of the file's kind and its settings read strictly
    (:func:`retrieval.steps.experiment.load_experiment`, the one experiment-file reader)."""
    from retrieval.config import ConfigError
    from retrieval.steps.experiment import load_experiment

    experiment = load_experiment(path)
    if kind is not None and experiment.kind != kind:
        raise ConfigError(f"{path}: kind must be {kind!r}, got {experiment.kind!r}")
    return experiment.module, experiment.conf


def run_experiment(experiment: str, argv: Optional[Sequence[str]] = None, prog: Optional[str] = None,
                   description: str = "") -> int:
    """Command line of one shipped experiment (``experiments/<experiment>.toml``)."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--experiment", default=str(EXPERIMENTS / f"{experiment}.toml"), help="experiment file")
    ap.add_argument("--dataset", default=None, help="dataset kind (sets the experiment's 'dataset')")
    ap.add_argument("--data", default=None, help="dataset folder (sets the experiment's 'data')")
    ap.add_argument("--out", default=f"results/{experiment}", help="results folder")
    ap.add_argument("--cache", default=None, help="cache folder (default: the protocol's)")
    ap.add_argument("--quick", action="store_true", help="a small subset (smoke run)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field (dotted)")
    args = ap.parse_args(argv)
    try:
        module, conf = read_experiment(args.experiment)
        hook = getattr(module, "apply_dataset", None)
        if hook is not None and args.dataset is not None:
            conf = hook(conf, args.dataset, args.data)
        else:
            conf = conf.override({k: v for k, v in (("dataset", args.dataset), ("data", args.data)) if v is not None})
        if args.quick:
            conf = conf.override({"quick": True})
        conf = conf.override(args.set)
        module.main(conf, args.out, args.cache if args.cache is not None else getattr(module, "DEFAULT_CACHE", "cache"))
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"{ap.prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0
