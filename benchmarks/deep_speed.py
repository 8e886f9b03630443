"""Speed of EfficientNet-Lite0 extraction on CPU: every inference path, and end-to-end extraction against
the bare forward pass, on any dataset (``--dataset KIND --data PATH``; default the Oxford subset of the
data root). The logic lives in :mod:`retrieval.bench.deep_speed`; ``--help`` lists the options.

    .venv/bin/python benchmarks/deep_speed.py --quick
    .venv/bin/python benchmarks/deep_speed.py --full
    .venv/bin/python benchmarks/deep_speed.py --dataset folder --data ../shared/data/coil100 \\
        --config lite0-gem-224 --full --limit 1000
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.bench.deep_speed import main  # noqa: E402
from retrieval.bench.entry import run_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_main(main, prog="deep_speed.py"))
