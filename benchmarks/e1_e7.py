"""The E1-E8 ladder in one command (the default experiment, retrieval/experiments/e1-e7.toml, on
COIL-100 and the Oxford subset; any dataset with ``--dataset KIND --data PATH``). The protocol lives
in :mod:`retrieval.ladder` (also ``retrieval bench e1-e7`` and ``retrieval run``); ``--help`` lists
the options.

    .venv/bin/python benchmarks/e1_e7.py --data ../shared/data                 # full run
    .venv/bin/python benchmarks/e1_e7.py --data ../shared/data --quick         # CI (make bench-quick)
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.ladder.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="e1_e7.py"))
