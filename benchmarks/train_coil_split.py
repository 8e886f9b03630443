"""What training buys on object data, E1-E4 of the ladder's object half: an alias of ``retrieval run
train-split`` (experiment retrieval/experiments/train-split.toml).

    python benchmarks/train_coil_split.py                                   # COIL-100 of the data root
    python benchmarks/train_coil_split.py --dataset KIND --data PATH        # any object set the ladder takes
    python benchmarks/train_coil_split.py --quick --set KEY=VALUE
"""

import sys

from retrieval.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "train-split", *sys.argv[1:]]))
