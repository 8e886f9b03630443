"""Speed of the local features (RootSIFT, XFeat, DISK) and matchers (mutual NN, LighterGlue, LightGlue,
each + RANSAC) of re-ranking on CPU. The logic lives in :mod:`retrieval.bench.learned_speed`;
``--help`` lists the options.

    .venv/bin/python benchmarks/learned_speed.py --data ../shared/data/oxford5k_subset --out results/learned_speed
"""

import sys

from retrieval.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "learned-speed", *sys.argv[1:]]))
