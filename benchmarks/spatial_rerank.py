"""Spatial verification of a landmark set's global shortlist (experiment retrieval/experiments/spatial.toml, the ladder's landmark half with the SV rung).

    .venv/bin/python benchmarks/spatial_rerank.py --data ../shared/data            # the default data root
    .venv/bin/python benchmarks/spatial_rerank.py --dataset KIND --data PATH       # any dataset the ladder takes
    .venv/bin/python benchmarks/spatial_rerank.py --quick --set KEY=VALUE
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.bench.entry import run_experiment  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_experiment("spatial", prog="spatial_rerank.py", description=__doc__.splitlines()[0]))
