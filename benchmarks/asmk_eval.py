"""ASMK* first-stage search on Oxford (official and landmark-level protocols) over any local features.
``--help`` lists the options.

    .venv/bin/python benchmarks/asmk_eval.py --data ../shared/data/oxford5k_subset --features rootsift-upright-c02-4k
"""

import sys

from retrieval.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "asmk-eval", *sys.argv[1:]]))
