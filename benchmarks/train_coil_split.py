"""What training buys on object data: E1-E4 of the ladder's object half (experiment retrieval/experiments/train-split.toml).

    .venv/bin/python benchmarks/train_coil_split.py --data ../shared/data            # the default data root
    .venv/bin/python benchmarks/train_coil_split.py --dataset KIND --data PATH       # any dataset the ladder takes
    .venv/bin/python benchmarks/train_coil_split.py --quick --set KEY=VALUE
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.bench.entry import run_experiment  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_experiment("train-split", prog="train_coil_split.py", description=__doc__.splitlines()[0]))
