"""The thin entry points of ``benchmarks/*.py``.

* :func:`run_experiment`: read an experiment file (TOML, ``kind`` naming a protocol of
  :mod:`retrieval.protocols`), apply ``--dataset KIND --data PATH`` (exactly as ``retrieval run`` does:
  :func:`retrieval.steps.experiment.apply_dataset_options`), ``--quick`` and ``--set KEY=VALUE``
  overrides, run the protocol's ``main(conf, out_dir, cache_dir)``.
* :func:`run_main`: a benchmark that is a command line of its own (``main(argv, prog) -> Path``).

Both turn a user error into one line ``PROG: error: ...`` and exit status 2.

An experiment file holds ``kind`` (and optionally ``description``) plus the protocol's settings; an
unknown key is an error that names it (:mod:`retrieval.steps.experiment`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

__all__ = ["EXPERIMENTS", "read_experiment", "run_experiment", "run_main"]

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


def run_main(main: Callable[[Optional[Sequence[str]], Optional[str]], object], argv: Optional[Sequence[str]] = None,
             prog: Optional[str] = None) -> int:
    """Exit status of ``main(argv, prog)``: 0, or 2 after one line on stderr for a user error (a
    missing folder, a bad setting), as every ``retrieval`` command reports it."""
    try:
        main(argv, prog)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"{prog or Path(sys.argv[0]).name}: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:  # a module of an optional extra: one line naming the extra
        from retrieval.extras import missing_extra_message

        if missing_extra_message(exc) is None:
            raise
        print(f"{prog or Path(sys.argv[0]).name}: error: {missing_extra_message(exc)}", file=sys.stderr)
        return 2
    return 0


def run_experiment(experiment: str, argv: Optional[Sequence[str]] = None, prog: Optional[str] = None,
                   description: str = "") -> int:
    """Command line of one shipped experiment (``experiments/<experiment>.toml``)."""
    from retrieval.datasets.open import DATASET_KINDS

    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--experiment", default=str(EXPERIMENTS / f"{experiment}.toml"), help="experiment file")
    ap.add_argument("--dataset", choices=DATASET_KINDS, default=None, help="dataset kind")
    ap.add_argument("--data", default=None, help="dataset folder")
    ap.add_argument("--out", default=f"results/{experiment}", help="results folder")
    ap.add_argument("--cache", default=None, help="cache folder (default: the protocol's)")
    ap.add_argument("--quick", action="store_true", help="a small subset (smoke run)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field (dotted)")

    def main(argv, prog):
        from retrieval.steps.experiment import load_experiment

        args = ap.parse_args(argv)
        loaded = load_experiment(args.experiment, (["quick=true"] if args.quick else []) + args.set,
                                 dataset=args.dataset, data=args.data)
        module = loaded.module
        cache = args.cache if args.cache is not None else getattr(module, "DEFAULT_CACHE", "cache")
        return module.main(loaded.conf, args.out, cache)

    return run_main(main, argv, ap.prog)
