"""Multi-view retrieval and distillation in one command: teacher, MV-AlexNet, and the distilled student
delivered only where held-out seen objects say distillation helps; COIL-100 with COIL-20 as a
cross-dataset unseen split by default, any multi-view set with ``--data PATH``. The protocol lives
in :mod:`retrieval.bench.multiview` (experiment kind ``multiview``); the default experiment is
``retrieval/experiments/multiview.toml``.

    .venv/bin/python benchmarks/multiview.py                                   # the default experiment
    .venv/bin/python benchmarks/multiview.py --quick                           # same path, a few objects
    .venv/bin/python benchmarks/multiview.py --data /my/set --set cross_data=[]
    .venv/bin/python benchmarks/multiview.py --set features=feats.npz          # pre-extracted features
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.bench.multiview import cli_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli_main(sys.argv[1:], prog="multiview.py"))
