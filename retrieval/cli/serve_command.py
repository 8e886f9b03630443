"""``retrieval serve``: the search page and JSON API over a saved index (or an experiment's results),
served by :mod:`retrieval.serve`.

    retrieval serve --experiment RESULTS_DIR
    retrieval serve --index INDEX.npz --features FEATURES.h5 --images ROOT [--local SIFT.h5]
                    [--queries QUERIES.h5] [--dataset KIND --data PATH] [--host 127.0.0.1] [--port 8000]
    retrieval serve --index COLLECTION_FOLDER [--allow-add]     # follows the collection's adds live
"""
from __future__ import annotations

import ipaddress
import logging
import sys
import threading
from pathlib import Path

from retrieval.core.checks import CLIError
from retrieval.cli.arguments import add_dataset_arguments, load_dataset
from retrieval.cli.output import emit_json

__all__ = ["register", "open_from_args", "LOOPBACK"]

LOOPBACK = "127.0.0.1"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="web page and JSON API over a saved index (search by id or upload, local evidence, "
                      "fusion, ground truth, a results folder)")
    parser.add_argument("--experiment", metavar="RESULTS_DIR",
                        help="a results folder: its serve.json (or the E1-E7 run's options) names the index, "
                             "features and data; the page also shows its table, figures and failures")
    parser.add_argument("--index", help="index file (retrieval index build; opened read-only), or a collection "
                                        "folder (index build --collection): its adds are served as they land")
    parser.add_argument("--features", help="global feature file of the database (its configuration describes "
                                           "uploads; without --index an exact index is built from it in memory)")
    parser.add_argument("--images", help="folder of the indexed images (ids: relative path or file stem)")
    parser.add_argument("--queries", help="global feature file of queries that are not in the index")
    parser.add_argument("--local", help="local-feature store (RootSIFT: spatial verification inliers; other "
                                        "local features: ratio-test score)")
    add_dataset_arguments(parser, required=False)
    parser.add_argument("--host", default=LOOPBACK, help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--k", type=int, default=20, help="results per search on the page (default 20)")
    parser.add_argument("--v", type=float, default=None,
                        help="initial fusion weight v (default: the served fusion's: the experiment's choice on "
                             "all its queries, else the documented default)")
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload in MiB (default 10)")
    parser.add_argument("--max-pixels", type=int, default=40_000_000,
                        help="largest uploaded image in pixels, width x height (default 40,000,000)")
    parser.add_argument("--allow-add", action="store_true",
                        help="the page and POST /api/add take images to add to the served collection (off by "
                             "default; refused on a non-loopback --host unless --allow-add-remote)")
    parser.add_argument("--allow-add-remote", action="store_true",
                        help="allow --allow-add on a non-loopback --host: anyone who reaches the port may write "
                             "into the collection (the API has no authentication)")
    parser.add_argument("--check", action="store_true",
                        help="open everything, print what would be served as JSON, and exit")
    parser.set_defaults(func=_serve)


def open_from_args(args):
    """(catalog, results folder or None) from the parsed options."""
    from retrieval.serve.catalog import Catalog
    from retrieval.serve.results import ResultsFolder, experiment_sources

    sources = {"index": args.index, "features": args.features, "images": args.images, "queries": args.queries,
               "local": args.local}
    results = None
    if args.experiment:
        results = ResultsFolder(args.experiment)
        found = experiment_sources(args.experiment)
        for key in sources:  # options given on the command line win over the folder's
            sources[key] = sources[key] or found[key]
        if args.dataset is None and found["dataset"] is not None:
            args.dataset, args.data = found["dataset"][0], str(found["dataset"][1])
    if not sources["index"] and not sources["features"]:
        raise CLIError("serve needs --experiment RESULTS_DIR, or --index and/or --features")
    if (args.dataset is None) != (args.data is None):
        raise CLIError("--dataset and --data go together")
    dataset = load_dataset(args) if args.dataset else None
    from retrieval.indexing.collection_files import is_collection

    if sources["index"] and is_collection(sources["index"]):
        return _open_collection(args, sources, dataset), results
    if args.allow_add:
        raise CLIError("--allow-add needs --index COLLECTION_FOLDER (retrieval index build --collection)")
    if not sources["images"] and dataset is None:
        raise CLIError("serve needs --images ROOT or --dataset KIND --data PATH to show images")
    for key, value in sources.items():
        if value is not None and not Path(value).exists():
            raise CLIError(f"{value}: no such {key} {'folder' if key == 'images' else 'file'}")
    catalog = Catalog.open(dataset=dataset, **sources)
    from retrieval.serve.results import chosen_fusion
    from retrieval.serve.search import local_method

    chosen = chosen_fusion(results, local_method(catalog)) if results is not None else None
    if chosen is not None:
        catalog.use_fusion(*chosen)
    return catalog, results


def _open_collection(args, sources: dict, dataset):
    """A :class:`~retrieval.serve.live.LiveCatalog` of the collection folder ``--index``."""
    from retrieval.indexing.collection import CollectionError
    from retrieval.serve.live import LiveCatalog

    extra = [f"--{k}" for k in ("features", "queries", "local") if sources[k]]
    if extra:
        raise CLIError(f"{' '.join(extra)}: not used with a collection folder ({sources['index']} records its "
                       "extractor configuration and local-feature stores)")
    if sources["images"] and not Path(sources["images"]).is_dir():
        raise CLIError(f"{sources['images']}: no such image folder")
    try:
        return LiveCatalog(sources["index"], images=sources["images"], dataset=dataset)
    except (CollectionError, ValueError) as exc:
        raise CLIError(str(exc)) from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _serve(args) -> int:
    from retrieval.core.extras import require
    from retrieval.serve.uploads import UploadLimits

    if not args.check:  # before anything is opened: a missing extra is one line naming it
        for module in ("fastapi", "uvicorn"):
            require("serve", module, "retrieval serve")
    if not 0 < args.port < 65536:
        raise CLIError(f"--port must be 1-65535, got {args.port}")
    if args.v is not None and not 0.0 <= args.v <= 1.0:
        raise CLIError(f"--v must be in [0, 1], got {args.v}")
    if args.allow_add and not _is_loopback(args.host) and not args.allow_add_remote:
        raise CLIError(f"--allow-add on {args.host}: anyone who reaches it could write into the collection (no "
                       "authentication); serve on 127.0.0.1, or add --allow-add-remote to allow it")
    limits = UploadLimits(int(args.max_upload_mb * 2 ** 20), args.max_pixels)
    served, results = open_from_args(args)
    catalog = getattr(served, "current", served)
    if args.check:
        emit_json({**catalog.describe(), "results": str(results.path) if results else None,
                   "host": args.host, "port": args.port, "limits": limits.to_dict(),
                   "allow_add": bool(args.allow_add)})
        return 0
    import uvicorn  # checked above

    from retrieval.serve.app import create_app

    if not _is_loopback(args.host):
        print(f"retrieval: warning: serving on {args.host}, reachable from other machines; the API has no "
              "authentication", file=sys.stderr)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = create_app(served, results, limits, default_k=args.k, default_v=args.v, allow_add=args.allow_add)
    if hasattr(served, "start"):
        served.start()  # the watcher: a new generation of the collection is swapped in as it lands

    def warm_up():
        why = catalog.warm_up()
        if why:
            logging.getLogger("retrieval.serve").warning("upload search unavailable: %s", why)

    threading.Thread(target=warm_up, name="warm-up", daemon=True).start()
    followed = " (a collection: its adds are followed)" if served is not catalog else ""
    print(f"serving {len(catalog.index):,} images{followed} on http://{args.host}:{args.port}/ (Ctrl-C stops)",
          file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
