"""Classical retrieval: RootSIFT + BoW / VLAD / Fisher on any dataset (experiment
retrieval/experiments/classical.toml, protocol :mod:`retrieval.bench.classical`):

    .venv/bin/python benchmarks/classical.py                        # Oxford5k subset of the data root
    .venv/bin/python benchmarks/classical.py --quick                # small subset and vocabularies (smoke run)
    .venv/bin/python benchmarks/classical.py --experiment retrieval/experiments/classical-coil100.toml
    .venv/bin/python benchmarks/classical.py --dataset folder --data ~/photos --quick --set bow_k=[100]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.bench.entry import run_experiment  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_experiment("classical", prog="classical.py", description=__doc__.splitlines()[0]))
