"""The fusion applied without ground truth, measured on the experiments' results (the logic and its
rule: :mod:`retrieval.bench.fusion_default`).

    .venv/bin/python benchmarks/fusion_default.py results/e1_e7 [more results folders]
"""
from __future__ import annotations

import sys

from retrieval.bench.fusion_default import main

if __name__ == "__main__":
    main(sys.argv[1:] or ["results/e1_e7"])
