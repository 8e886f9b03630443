"""Speed of the local features (RootSIFT, XFeat, DISK) and matchers (mutual NN, LighterGlue, LightGlue,
each + RANSAC) of re-ranking on CPU. The logic lives in :mod:`retrieval.bench.learned_speed`;
``--help`` lists the options.

    .venv/bin/python benchmarks/learned_speed.py --data ../shared/data/oxford5k_subset --out results/learned_speed
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.bench.entry import run_main  # noqa: E402
from retrieval.bench.learned_speed import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_main(main, prog="learned_speed.py"))
