"""ASMK* first-stage search on Oxford (official and landmark-level protocols) over any local features.
``--help`` lists the options.

    .venv/bin/python benchmarks/asmk_eval.py --data ../shared/data/oxford5k_subset --features rootsift-upright-c02-4k
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.bench.entry import run_main  # noqa: E402
from retrieval.bench.asmk_eval import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_main(main, prog="asmk_eval.py"))
