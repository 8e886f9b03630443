"""What the feature stores' fault protection costs (CRC-32 checksums and the space reservation of the HDF5
files, with and without each, in interleaved rounds): an alias of ``retrieval bench store-integrity``
(the measurement: :mod:`retrieval.bench.store_integrity`).

    python benchmarks/store_integrity.py            # 300 entries, 20000 rows, 3 rounds
"""

import sys

from retrieval.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "store-integrity", *sys.argv[1:]]))
