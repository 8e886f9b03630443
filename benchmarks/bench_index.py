"""The ranking stage: the exact backend against faiss' IndexFlatIP in one run (and, with --approx,
the approximate faiss backends) on seeded random unit vectors. The measurement lives in
:mod:`retrieval.bench.index_speed`; ``--help`` lists the options.

    .venv/bin/python benchmarks/bench_index.py --repeats 3 --clusters 1000    # the README's figures
    .venv/bin/python benchmarks/bench_index.py --quick                         # 20,000 x 1,280, 200 queries
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.bench.index_speed import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="bench_index.py"))
