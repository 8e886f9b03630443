"""Multi-view retrieval and distillation (teacher, MV-AlexNet, the distilled student delivered only where
held-out seen objects say distillation helps): an alias of ``retrieval run multiview`` (experiment
retrieval/experiments/multiview.toml, protocol :mod:`retrieval.experiments.multiview`; COIL-100 with COIL-20
as a cross-dataset unseen split by default).

    python benchmarks/multiview.py                                   # the default experiment
    python benchmarks/multiview.py --quick                           # same path, a few objects
    python benchmarks/multiview.py --dataset multiview --data /my/set --set cross_data=[]
    python benchmarks/multiview.py --set features=feats.npz          # pre-extracted features
"""

import sys

from retrieval.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "multiview", *sys.argv[1:]]))
