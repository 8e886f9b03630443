"""The fusion applied without ground truth, measured on the experiments' results (the logic and its
rule: :mod:`retrieval.bench.fusion_default`).

    .venv/bin/python benchmarks/fusion_default.py results/e1_e7 [more results folders]
"""

import sys

from retrieval.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "fusion-default", *sys.argv[1:]]))
