"""An embedded vector database (LanceDB) against faiss exact / IVF / HNSW on the same seeded 1M x 256
clustered vectors: build time, recall@100, queries/s, memory, disk, filtered search: an alias of
``retrieval bench vector-db`` (the measurement: :mod:`retrieval.bench.vector_db`).

    python benchmarks/vector_db.py              # the README's figures (1,000,000 x 256)
    python benchmarks/vector_db.py --quick      # 20,000 x 64, 200 queries (seconds)
"""

import sys

from retrieval.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "vector-db", *sys.argv[1:]]))
