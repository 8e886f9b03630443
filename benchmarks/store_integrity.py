"""What the feature stores' fault protection costs: CRC-32 checksums and the space reservation of the
HDF5 files, with and without each, in interleaved rounds (no dataset: random SIFT-sized entries). The
logic lives in :mod:`retrieval.bench.store_integrity`; ``--help`` lists the options.

    .venv/bin/python benchmarks/store_integrity.py            # 300 entries, 20000 rows, 3 rounds
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.bench.entry import run_main  # noqa: E402
from retrieval.bench.store_integrity import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_main(main, prog="store_integrity.py"))
