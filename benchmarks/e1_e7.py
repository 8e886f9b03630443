"""The E1-E8 ladder: an alias of ``retrieval run e1-e7`` (the shipped experiment retrieval/experiments/e1-e7.toml,
COIL-100 and the Oxford subset; the protocol is :mod:`retrieval.experiments.ladder`). Same options (``--help``).

    python benchmarks/e1_e7.py                                   # = retrieval run e1-e7 (make bench)
    python benchmarks/e1_e7.py --quick                           # = retrieval run e1-e7 --quick (make bench-quick)
    python benchmarks/e1_e7.py --data-root ../shared/data        # the folder holding coil100/ and oxford5k_subset/
    python benchmarks/e1_e7.py --dataset oxford --data /data/paris6k --set landmark.dataset=paris
"""

import sys

from retrieval.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "e1-e7", *sys.argv[1:]]))
