"""The E1 descriptor study on a landmark dataset (experiment retrieval/experiments/oxford-descriptors.toml,
protocol :mod:`retrieval.bench.descriptors`):

    .venv/bin/python benchmarks/deep_oxford.py                       # Oxford5k subset of the data root
    .venv/bin/python benchmarks/deep_oxford.py --dataset paris --data /data/paris6k
    .venv/bin/python benchmarks/deep_oxford.py --quick --set layers='["blocks"]'
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.bench.entry import run_experiment  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_experiment("oxford-descriptors", prog="deep_oxford.py", description=__doc__.splitlines()[0]))
