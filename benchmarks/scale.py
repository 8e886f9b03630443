"""Scale benchmark, IVF-PQ built from >= 1,000,000 vectors in shards (peak memory, recall@100 against exact
search), GLDv2's CSVs at full size, the Ray engine's figures and a cost model of E1-E7 on full GLDv2: an
alias of ``retrieval bench scale`` (the measurement: :mod:`retrieval.bench.scale`).

    python benchmarks/scale.py                 # full: 1M x 256 vectors, full-size GLDv2 CSVs
    python benchmarks/scale.py --quick         # CI: 60k x 64 vectors, GLDv2 at 1% (well under a minute)

Writes results.json + results.md to --out (default results/scale/); shards and generated CSVs are kept
in --work (default cache/scale/) and reused by the next run.
"""

import sys

from retrieval.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "scale", *sys.argv[1:]]))
