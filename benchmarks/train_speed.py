"""Training speed of the EfficientNet trainers, float32 against bfloat16 autocast and NCHW against
channels-last, for the ladder's E2-E4 configurations: an alias of ``retrieval bench train-speed`` (the
measurement: :mod:`retrieval.bench.train_speed`).

    python benchmarks/train_speed.py
    python benchmarks/train_speed.py --rungs e2 e3 --variants float32 bfloat16+nhwc --rounds 3
"""

import sys

from retrieval.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "train-speed", *sys.argv[1:]]))
