"""Re-ranking speed, the float32 matcher beside the bfloat16 one with an exact check, in one run:
an alias of ``retrieval bench rerank-speed`` (reads the cache of ``retrieval run spatial``).

    python benchmarks/spatial_rerank.py                   # first: features, shortlist, mAP (cache/spatial)
    python benchmarks/rerank_speed.py                     # then: ms/query, scores and mAP of both paths
"""

import sys

from retrieval.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "rerank-speed", *sys.argv[1:]]))
