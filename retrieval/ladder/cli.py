"""Command line of the ladder: ``benchmarks/e1_e7.py`` and ``retrieval bench e1-e7``.

    e1_e7.py --data ../shared/data                          # the default experiment (COIL-100 + Oxford)
    e1_e7.py --data ../shared/data --quick                  # its quick mode (CI)
    e1_e7.py --dataset oxford --data /data/paris6k --set landmark.dataset=paris   # landmark half only
    e1_e7.py --dataset folder --data my_objects/            # object half on a labelled folder
    e1_e7.py --dataset gldv2 --data /data/gldv2 --device cuda --set object.train_config=gldv2-gpu \\
        --set object.global_config=lite0-gem-512            # the real GLDv2 on a GPU

Without ``--dataset``, ``--data`` is the folder holding ``coil100/`` and ``oxford5k_subset/``;
with it, ``--data`` is that dataset and only the half that takes it runs (``folder``, ``gldv2``:
the object half, trained; ``oxford``, ``paris``, ``revisited``: the landmark half, no training).
``--set KEY=VALUE`` overrides any field of the experiment (dotted: ``object.sift=rootsift-1k``,
``fusion.saturations=[10,20]``, ``rerankers=["E5","SV"]``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .config import LANDMARK_KINDS, OBJECT_KINDS, LadderConfig, with_dataset

__all__ = ["DEFAULT_EXPERIMENT", "read_experiment", "add_arguments", "config_from_args", "run_args", "main"]

DEFAULT_EXPERIMENT = Path(__file__).resolve().parent.parent / "experiments" / "e1-e7.toml"
STAGES = ("data", "train", "global", "sift", "vlad", "patch", "shortlist", "landmark")


def read_experiment(path) -> LadderConfig:
    """The :class:`LadderConfig` of an experiment file (``kind = "ladder"``; an unknown key is an
    error naming it): :func:`retrieval.bench.entry.read_experiment`."""
    from retrieval.bench.entry import read_experiment as read

    return read(path, kind="ladder")[1]


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--experiment", default=str(DEFAULT_EXPERIMENT),
                    help="experiment file (default: the shipped retrieval/experiments/e1-e7.toml)")
    ap.add_argument("--dataset", choices=sorted(set(OBJECT_KINDS + LANDMARK_KINDS) - {"coil100"}), default=None,
                    help="run on this dataset (--data is then its folder): folder/gldv2 -> the object half, "
                         "oxford/paris/revisited -> the landmark half")
    ap.add_argument("--data", default=None, help="data folder (see --dataset); default retrieval.paths.data_root()")
    ap.add_argument("--out", default=None, help="results folder (default results/e1_e7, quick: results/e1_e7_quick)")
    ap.add_argument("--cache", default="cache/e1_e7", help="cache folder (quick and full runs use subfolders)")
    ap.add_argument("--quick", action="store_true", help="small subset, a few training steps (CI)")
    ap.add_argument("--device", default=None, help="training / EfficientNet device: auto, cpu, cuda, cuda:1 ...")
    ap.add_argument("--backend", default=None, help="EfficientNet inference path (auto = onnxruntime on a CPU)")
    ap.add_argument("--n-jobs", type=int, default=None, help="decoding / extraction threads (Ray: workers)")
    ap.add_argument("--engine", choices=("local", "ray"), default=None,
                    help="local (default) or ray: sharded extraction and local scoring on Ray")
    ap.add_argument("--ray-address", default=None,
                    help="Ray cluster address (default: auto when a cluster runs, then RAY_ADDRESS, then a "
                         "local instance)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a field of the experiment (dotted, repeatable)")
    ap.add_argument("--skip-oxford", action="store_true",
                    help="the object half only (same as --set landmark.enabled=false)")
    ap.add_argument("--recompute", action="store_true", help="ignore every cached result")
    ap.add_argument("--recompute-stage", action="append", choices=STAGES, default=[],
                    help="recompute one stage (repeatable)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_from_args(args) -> LadderConfig:
    conf = read_experiment(args.experiment)
    plain = {"quick": args.quick, "progress": not args.no_progress}
    for key in ("device", "backend", "n_jobs", "engine", "ray_address"):
        if getattr(args, key) is not None:
            plain[key] = getattr(args, key)
    if args.recompute or args.recompute_stage:
        plain["recompute"] = STAGES if args.recompute else tuple(args.recompute_stage)
    conf = with_dataset(conf, args.dataset, args.data)
    if args.skip_oxford:
        plain["landmark"] = dict(conf.landmark.to_dict(), enabled=False)
    conf = conf.override(plain)
    return conf.override(args.set)


def run_args(args) -> Path:
    from .run import main as run_main

    from retrieval.cli_checks import require_output

    conf = config_from_args(args)
    out = args.out or ("results/e1_e7_quick" if conf.quick else "results/e1_e7")
    # output folders that cannot be made are refused before any work (not after training)
    require_output(str(out), "results", folder=True)
    require_output(str(args.cache), "cache", folder=True)
    return run_main(conf, out, args.cache)


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                 epilog=__doc__[__doc__.index("    e1_e7.py"):],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    args = ap.parse_args(argv)
    try:
        run_args(args)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"{ap.prog}: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:  # a module of an optional extra: one line naming the extra
        from retrieval.extras import missing_extra_message

        if missing_extra_message(exc) is None:
            raise
        print(f"{ap.prog}: error: {missing_extra_message(exc)}", file=sys.stderr)
        return 2
    return 0
