"""Speed of EfficientNet-Lite0 extraction on CPU, every inference path and end-to-end extraction against
the bare forward pass, on any dataset: an alias of ``retrieval bench deep-speed`` (the measurement:
:mod:`retrieval.bench.deep_speed`; default the Oxford subset of the data root).

    python benchmarks/deep_speed.py --quick
    python benchmarks/deep_speed.py --full
    python benchmarks/deep_speed.py --dataset folder --data ../shared/data/coil100 \\
        --config lite0-gem-224 --full --limit 1000
"""

import sys

from retrieval.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "deep-speed", *sys.argv[1:]]))
