"""``retrieval bench learned-speed``, ``rerank-speed`` and ``asmk-eval``: the local features' CPU cost and
ASMK* on Oxford (:mod:`retrieval.bench.learned_speed`, :mod:`retrieval.bench.rerank_speed`,
:mod:`retrieval.bench.asmk_eval`). Registered by :mod:`retrieval.cli.bench_commands`."""
from __future__ import annotations

import argparse

from retrieval.cli.arguments import bench_options, described_parser
from retrieval.core.checks import require_output

__all__ = ["learned_speed_parser", "rerank_speed_parser", "asmk_eval_parser"]


def learned_speed_parser(sub) -> None:
    p = described_parser(sub, "learned-speed", "CPU cost of the local extractors (ms/image) and matchers (ms/query, "
                   "top 100)", "retrieval.bench.learned_speed")
    p.add_argument("--dataset", default="oxford", help="dataset kind (default oxford)")
    p.add_argument("--data", default=None, help="dataset folder (default: the Oxford subset of the data root)")
    p.add_argument("--out", default="results/learned_speed", help="results folder")
    p.add_argument("--cache", default=None, help="local feature stores of the shortlist (default OUT/cache)")
    p.add_argument("--images", type=int, default=20, help="images timed per extractor (default 20)")
    p.add_argument("--queries", type=int, default=3, help="queries timed per NN matcher (default 3)")
    p.add_argument("--glue-pairs", type=int, default=8, help="pairs timed per learned matcher (default 8)")
    p.add_argument("--features", default=None,
                   help="extractors to time, comma-separated (default: learned_speed.FEATURES)")
    p.add_argument("--matchers", default=None,
                   help="FEATURES:SPATIAL pairs timed for re-ranking, comma-separated ('' for none; default: "
                        "learned_speed.MATCHERS)")
    p.set_defaults(func=lambda args: _run_bench("learned_speed", args))


def rerank_speed_parser(sub) -> None:
    p = described_parser(sub, "rerank-speed", "spatial verification and the ratio test of a top 100, the float32 matcher "
                   "beside the bfloat16 one (ms/query, scores, mAP)", "retrieval.bench.rerank_speed")
    p.add_argument("--cache", default="cache/spatial/full/landmark/oxford5k_subset",
                   help="the landmark cache of 'retrieval run spatial' (E1 shortlist, RootSIFT stores)")
    p.add_argument("--data", default=None, help="Oxford folder (default: the subset of the data root)")
    p.add_argument("--queries", type=int, default=None, help="first N queries only (no mAP then)")
    p.add_argument("--out", default="results/rerank_speed", help="results folder")
    p.set_defaults(func=lambda args: _run_bench("rerank_speed", args))


def asmk_eval_parser(sub) -> None:
    p = described_parser(sub, "asmk-eval", "ASMK* as a first-stage search on Oxford (and revisited Oxford)", "retrieval.bench.asmk_eval")
    p.add_argument("--data", default=None, help="Oxford folder (default: the subset of the data root)")
    p.add_argument("--features", default="rootsift-upright-c02-4k", help="local feature configuration")
    p.add_argument("--words", type=int, default=8192, help="codebook size (default 8192)")
    p.add_argument("--sample", type=int, default=300_000, help="database descriptors sampled for k-means")
    p.add_argument("--niter", type=int, default=10, help="k-means iterations (default 10)")
    p.add_argument("--threads", type=int, default=1, help="faiss threads of the k-means (default 1)")
    p.add_argument("--query-assignment", type=_positive_ints, default=[1],
                   help="nearest words per query descriptor, or several (1,5) searched on one index "
                        "(the ASMK paper: 5; database descriptors take 1)")
    p.add_argument("--alpha", type=float, default=3.0, help="selectivity exponent of the kernel (default 3)")
    p.add_argument("--tau", type=float, default=0.0, help="similarity threshold of the kernel (default 0)")
    p.add_argument("--gnd", default=None,
                   help="revisited ground-truth pickle (default <data root>/revisitop/gnd_roxford5k.pkl when there)")
    p.add_argument("--cache", default=None, help="feature stores and codebook (default OUT/cache)")
    p.add_argument("--store", default=None,
                   help="one local feature store for the database images and the (cropped) queries, reused and "
                        "completed, e.g. a ladder cache's sift_<features>.h5 (default: two stores in the cache)")
    p.add_argument("--out", default="results/asmk", help="results folder")
    p.set_defaults(func=lambda args: _run_bench("asmk_eval", args))


def _positive_ints(text: str) -> list:
    """``1`` or ``1,5``: positive integers."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers such as 5 or 1,5, got {text!r}")
    return values


def _run_bench(module: str, args) -> int:
    require_output(args.out, "results", folder=True)
    if module == "learned_speed":
        from ..bench.learned_speed import run
    elif module == "rerank_speed":
        from ..bench.rerank_speed import run
    else:
        from ..bench.asmk_eval import run
    run(bench_options(args))
    return 0
