"""A collection that grows: the cost of adding 1,000 rows to 100,000 against a rebuild, whether the result equals
the rebuild (exact: identical rankings; IVF: recall@100), and IVF drift against recall: an alias of ``retrieval
collection bench`` (the measurement: :mod:`retrieval.bench.collection_cost`).

    python benchmarks/collection.py --out results/collection.json
"""

import sys

from retrieval.cli import main

if __name__ == "__main__":
    sys.exit(main(["collection", "bench", *sys.argv[1:]]))
