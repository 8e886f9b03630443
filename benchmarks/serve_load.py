"""Bounded load test of ``retrieval serve`` (p50 / p95 latency of ``/api/search`` by id on a 100,000-vector
index of synthetic vectors, loopback, at most 500 requests, at most 8 at a time): an alias of ``retrieval
bench serve-load`` (the measurement: :mod:`retrieval.serve.load`).

    python benchmarks/serve_load.py                      # 100,000 x 320, 500 requests, 8 concurrent
    python benchmarks/serve_load.py --dim 1280           # Lite0's 1280-d head descriptors
"""

import sys

from retrieval.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "serve-load", *sys.argv[1:]]))
