"""Spatial verification of a landmark set's global shortlist (the ladder's landmark half with the SV rung):
an alias of ``retrieval run spatial`` (experiment retrieval/experiments/spatial.toml).

    python benchmarks/spatial_rerank.py                                     # the Oxford subset of the data root
    python benchmarks/spatial_rerank.py --dataset KIND --data PATH          # any landmark set the ladder takes
    python benchmarks/spatial_rerank.py --quick --set KEY=VALUE

Its cache is the input of ``python benchmarks/rerank_speed.py`` (``retrieval bench rerank-speed``): the
matcher's float32 and bfloat16 paths side by side, ms/query, scores and mAP.
"""

import sys

from retrieval.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "spatial", *sys.argv[1:]]))
