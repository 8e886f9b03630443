"""``retrieval bench vector-db``: an embedded vector database (LanceDB) against faiss on the same seeded
vectors (:mod:`retrieval.bench.vector_db`; ``benchmarks/vector_db.py``). Registered by
:mod:`retrieval.cli.bench_commands`."""
from __future__ import annotations

from retrieval.cli.arguments import bench_options
from retrieval.core.checks import CLIError, require_output

__all__ = ["vector_db_parser"]


def vector_db_parser(sub) -> None:
    help_text = ("an embedded vector database (LanceDB) against faiss exact / IVF / HNSW on the same seeded "
                 "clustered vectors: build, recall, queries/s, memory, disk, filtered search")
    p = sub.add_parser("vector-db", help=help_text,
                       description=f"{help_text} (the measurement: retrieval.bench.vector_db)")
    p.add_argument("--n", type=int, default=1_000_000, help="database vectors (default 1,000,000)")
    p.add_argument("--dim", type=int, default=256, help="dimension (default 256)")
    p.add_argument("--queries", type=int, default=1000, help="query vectors (default 1000)")
    p.add_argument("--k", type=int, default=100, help="results per query (default 100)")
    p.add_argument("--single", type=int, default=1000, help="queries timed one at a time (default 1000)")
    p.add_argument("--clusters", type=int, default=1000, help="Gaussian mixture centres (default 1000)")
    p.add_argument("--spread", type=float, default=0.5, help="noise norm around a centre (default 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lance-partitions", type=int, default=None,
                   help="LanceDB IVF lists (default: LanceDB's own, about sqrt(N))")
    p.add_argument("--backends", nargs="+", default=None,
                   help="backends measured (default all: faiss-flat faiss-ivf faiss-hnsw lancedb)")
    p.add_argument("--quick", action="store_true", help="20,000 x 64 vectors, 200 queries (CI; seconds)")
    p.add_argument("--work", default=None, help="folder for the vectors (default cache/vector_db[-quick])")
    p.add_argument("--out", default="results/vector_db", help="results folder")
    p.set_defaults(func=_vector_db)


def _vector_db(args) -> int:
    from retrieval.bench.vector_db import BACKENDS, run

    unknown = sorted(set(args.backends or ()) - set(BACKENDS))
    if unknown:
        raise CLIError(f"--backends: unknown backend(s) {unknown}; known: {', '.join(BACKENDS)}")
    args.backends = list(args.backends or BACKENDS)
    if args.quick:
        args.n, args.dim, args.queries, args.single, args.clusters = 20_000, 64, 200, 50, 100
    if min(args.n, args.dim, args.queries, args.k, args.single, args.clusters) < 1 or args.k > args.n:
        raise CLIError("--n, --dim, --queries, --k, --single and --clusters must be positive, and --k <= --n")
    args.single = min(args.single, args.queries)
    args.work = args.work or ("cache/vector_db-quick" if args.quick else "cache/vector_db")
    require_output(args.out, "results", folder=True)
    run(bench_options(args))
    return 0
