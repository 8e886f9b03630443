"""``retrieval bench ...``: end-to-end benchmarks from the command line.

    retrieval bench e1-e7 [--quick] [--data DIR] [--dataset KIND --data PATH] [--set KEY=VALUE] ...

Same options as ``python benchmarks/e1_e7.py`` (see :mod:`retrieval.ladder.cli`).
"""
from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers) -> None:
    from retrieval.ladder import cli

    parser = subparsers.add_parser("bench", help="end-to-end benchmarks (the E1-E8 ladder)")
    sub = parser.add_subparsers(dest="bench_command", metavar="{e1-e7}", required=True)
    ladder = sub.add_parser("e1-e7", help="the E1-E8 ladder (default: COIL-100, then the Oxford subset)",
                            description=cli.__doc__.split("\n\n")[0],
                            epilog=cli.__doc__[cli.__doc__.index("    e1_e7.py"):],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_arguments(ladder)
    ladder.set_defaults(func=_e1_e7)


def _e1_e7(args) -> int:
    from retrieval.ladder.cli import run_args

    run_args(args)
    return 0
