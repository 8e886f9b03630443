"""E1-E7 in one command: EfficientNet-Lite0 global descriptors (ImageNet, fine-tuned, Siamese) and
SIFT / VLAD / patch re-ranking with cross-fitted fusion weights, on GLDv2-format data (COIL-100
exported by default) and the Oxford subset. The pipeline lives in :mod:`retrieval.bench.e1_e7`
(also ``retrieval bench e1-e7``); ``--help`` lists the options.

    .venv/bin/python benchmarks/e1_e7.py --data ../shared/data                 # full run (< 30 min, 2 cores)
    .venv/bin/python benchmarks/e1_e7.py --data ../shared/data --quick         # CI (make bench-quick)
    .venv/bin/python benchmarks/e1_e7.py --gldv2 /data/gldv2 --device cuda --train-config gldv2-gpu \\
        --global-config lite0-gem-512 --skip-oxford                            # the real GLDv2
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.bench.e1_e7 import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="e1_e7.py"))
