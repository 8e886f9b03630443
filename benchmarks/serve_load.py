"""Bounded load test of ``retrieval serve``: p50 / p95 latency of ``/api/search`` (search by id) on a
100,000-vector index of synthetic vectors, served on 127.0.0.1 (at most 500 requests, at most 8 at a
time, stops by itself). The logic lives in :mod:`retrieval.serve.load`; ``--help`` lists the options.

    .venv/bin/python benchmarks/serve_load.py                      # 100,000 x 320, 500 requests, 8 concurrent
    .venv/bin/python benchmarks/serve_load.py --dim 1280           # Lite0's 1280-d head descriptors
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.serve.load import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
