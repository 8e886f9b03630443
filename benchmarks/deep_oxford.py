"""The E1 descriptor study on a landmark dataset: an alias of ``retrieval run oxford-descriptors``
(experiment retrieval/experiments/oxford-descriptors.toml, protocol :mod:`retrieval.experiments.descriptors`).

    python benchmarks/deep_oxford.py                       # Oxford5k subset of the data root
    python benchmarks/deep_oxford.py --dataset paris --data /data/paris6k
    python benchmarks/deep_oxford.py --quick --set layers='["blocks"]'
"""

import sys

from retrieval.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "oxford-descriptors", *sys.argv[1:]]))
