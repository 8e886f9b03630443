"""The ranking stage, the exact backend against faiss' IndexFlatIP in one run (and, with --approx, the
approximate faiss backends) on seeded random unit vectors: an alias of ``retrieval bench index-speed``
(the measurement: :mod:`retrieval.bench.index_speed`).

    python benchmarks/bench_index.py --repeats 3 --clusters 1000    # the README's figures
    python benchmarks/bench_index.py --quick                         # 20,000 x 1,280, 200 queries
"""

import sys

from retrieval.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "index-speed", *sys.argv[1:]]))
