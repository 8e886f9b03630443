"""Ranking files: size, write time and peak memory of the JSON file against the binary one, and a
10,000 x 100,000 full ranking written and evaluated streaming: an alias of ``retrieval bench rankings``
(the measurement: :mod:`retrieval.bench.rankings`).

    python benchmarks/rankings.py                  # (a) 3,280 images + (b) 10,000 x 100,000
    python benchmarks/rankings.py --part a        # (a) only
"""

import sys

from retrieval.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "rankings", *sys.argv[1:]]))
