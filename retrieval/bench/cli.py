"""``retrieval bench ...``: end-to-end benchmarks from the command line.

    retrieval bench e1-e7 [--quick] [--data DIR | --gldv2 PATH] [--out DIR] [--cache DIR] ...

Same options as ``python benchmarks/e1_e7.py`` (see :mod:`retrieval.bench.e1_e7`).
"""
from __future__ import annotations

import argparse

__all__ = ["register"]


def register(subparsers) -> None:
    from . import e1_e7

    parser = subparsers.add_parser("bench", help="end-to-end benchmarks (the E1-E7 ladder)")
    sub = parser.add_subparsers(dest="bench_command", metavar="{e1-e7}", required=True)
    ladder = sub.add_parser("e1-e7", help="E1-E7 on GLDv2-format data (COIL-100 by default), then Oxford",
                            description=e1_e7.__doc__.split("\n\n")[0],
                            epilog=e1_e7.__doc__[e1_e7.__doc__.index("Re-rankers"):],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    e1_e7.add_arguments(ladder)
    ladder.set_defaults(func=_e1_e7)


def _e1_e7(args) -> int:
    from . import e1_e7

    opts = e1_e7.options_from_args(args)
    e1_e7.check_paths(opts)
    print(e1_e7.run(opts))
    return 0
