"""Classical retrieval, RootSIFT + BoW / VLAD / Fisher on any dataset: an alias of ``retrieval run classical``
(experiment retrieval/experiments/classical.toml, protocol :mod:`retrieval.experiments.classical`).

    python benchmarks/classical.py                        # Oxford5k subset of the data root
    python benchmarks/classical.py --quick                # small subset and vocabularies (smoke run)
    python benchmarks/classical.py --dataset folder --data ~/photos --quick --set bow_k=[100]
    retrieval run classical-coil100                       # the COIL-100 experiment
"""

import sys

from retrieval.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "classical", *sys.argv[1:]]))
