"""Scale benchmark: IVF-PQ built from >= 1,000,000 vectors in shards (peak memory, recall@100 against
exact search), GLDv2's CSVs at full size (read seconds, peak memory), the Ray engine's figures, and a
cost model of E1-E7 on full GLDv2 (logic: retrieval.bench.scale).

    python benchmarks/scale.py                 # full: 1M x 256 vectors, full-size GLDv2 CSVs
    python benchmarks/scale.py --quick         # CI: 60k x 64 vectors, GLDv2 at 1% (well under a minute)

Writes results.json + results.md to --out (default results/scale/); shards and generated CSVs are kept
in --work (default cache/scale/) and reused by the next run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.bench.scale import results_markdown, run  # noqa: E402
from retrieval.paths import data_root  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes for CI")
    parser.add_argument("--data", default=None, help="data folder (default: retrieval.paths.data_root())")
    parser.add_argument("--out", default="results/scale", help="results folder")
    parser.add_argument("--work", default="cache/scale", help="folder for shards and generated CSVs")
    parser.add_argument("--workers", type=int, default=32, help="CPU workers N of the projection")
    parser.add_argument("--gpus", type=int, default=4, help="GPUs G of the projection")
    parser.add_argument("--gpu-img-per-s", type=float, default=400.0,
                        help="assumed network throughput of one GPU (images/s; not measured here)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["index", "gldv2", "engine", "cost"], help="parts to skip")
    args = parser.parse_args(argv)
    results = run(Path(args.out), Path(args.work), data_root(args.data), quick=args.quick, workers=args.workers,
                  gpus=args.gpus, gpu_img_per_s=args.gpu_img_per_s, skip=args.skip)
    print(results_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
