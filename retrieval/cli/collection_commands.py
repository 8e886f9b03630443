"""Collections that grow: ``retrieval add``, ``retrieval remove`` and ``retrieval collection info|compact|retrain``.

A collection starts with ``retrieval index build FEATURES --out FOLDER --collection`` (see
:mod:`retrieval.cli.step_commands`); the steps are :mod:`retrieval.steps.add` and
:class:`retrieval.indexing.collection.Collection`.
"""
from __future__ import annotations

from pathlib import Path

from retrieval.core.checks import CLIError, require_file, writing
from retrieval.cli.arguments import progress_enabled
from retrieval.cli.output import emit_json

__all__ = ["register", "require_collection"]


def require_collection(path: str) -> Path:
    from retrieval.indexing.collection_files import is_collection

    p = Path(path)
    if not p.is_dir():
        raise CLIError(f"{p}: no such collection folder (start one with 'retrieval index build FEATURES --out "
                       f"{p} --collection')")
    if not is_collection(p):
        raise CLIError(f"{p}: not a collection (no collection.json); start one with 'retrieval index build "
                       "FEATURES --out FOLDER --collection'")
    return p


def register(subparsers) -> None:
    add = subparsers.add_parser("add", help="add images (or a feature file) to a collection, without a rebuild")
    add.add_argument("collection", help="collection folder (retrieval index build ... --collection), or a sharded "
                                        "index folder (retrieval.scale: --features adds a shard)")
    source = add.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", nargs="+", metavar="PATH",
                        help="image files or folders (described with the collection's recorded extractor)")
    source.add_argument("--features", help="global feature file made with the collection's configuration")
    add.add_argument("--root", help="folder the ids and the 'folder' metadata are relative to (default: each "
                                    "folder given to --images)")
    add.add_argument("--labels", help="CSV with a header row: an 'id' column (else the first) and metadata columns")
    add.add_argument("--replace", action="store_true", help="replace ids already in the collection (default: refuse)")
    add.set_defaults(func=_add)

    remove = subparsers.add_parser("remove", help="remove ids from a collection")
    remove.add_argument("collection", help="collection folder")
    remove.add_argument("--ids", nargs="+", required=True, help="ids to remove")
    remove.set_defaults(func=_remove)

    coll = subparsers.add_parser("collection", help="a collection's state, compaction and IVF retraining")
    sub = coll.add_subparsers(dest="collection_command", metavar="{info,compact,retrain,bench}", required=True)
    for name, text in (("info", "generation, rows, removed rows, segments, drift of an IVF quantiser"),
                       ("compact", "fold added segments and removed rows into one segment (faiss: rebuilt "
                                   "from the trained quantiser)"),
                       ("retrain", "IVF: train the coarse quantiser again on the rows held now, then compact")):
        p = sub.add_parser(name, help=text)
        p.add_argument("collection", help="collection folder")
        p.set_defaults(func=_collection, action=name)
    bench = sub.add_parser("bench", help="cost of an add against a rebuild, equality, IVF drift against recall "
                                         "(seeded synthetic vectors; benchmarks/collection.py)")
    bench.add_argument("--rows", type=int, default=100_000, help="rows before the add (default 100,000)")
    bench.add_argument("--added", type=int, default=1_000, help="rows added (default 1,000)")
    bench.add_argument("--dim", type=int, default=256, help="dimension (default 256)")
    bench.add_argument("--drift-rows", type=int, default=50_000, help="IVF drift study size (0: skip it)")
    bench.add_argument("--filter-rows", type=int, default=0,
                       help="filtered-search check on this many rows (e.g. 1000000; 0: skip it)")
    bench.add_argument("--out", help="JSON file for the results (default: stdout only)")
    bench.set_defaults(func=_bench)


def _bench(args) -> int:
    import json

    from retrieval.bench.collection_cost import format_table, run
    from retrieval.core.fileio import atomic_write_text

    if min(args.added, args.dim) < 1 or min(args.rows, args.drift_rows, args.filter_rows) < 0:
        raise CLIError("--added and --dim must be positive, --rows, --drift-rows and --filter-rows at least 0")
    result = run(n=args.rows, added=args.added, dim=args.dim, drift_rows=args.drift_rows,
                 filter_rows=args.filter_rows)
    print(format_table(result))
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=1))
    return 0


def _images(args) -> tuple:
    from retrieval.datasets.files import list_images

    paths, roots = [], []
    for item in args.images:
        p = Path(item)
        if p.is_dir():
            found = list_images(p)
            paths += found
            roots.append(p)
        elif p.is_file():
            paths.append(p)
        else:
            raise CLIError(f"{p}: no such image file or folder")
    root = Path(args.root) if args.root else (roots[0] if len(roots) == 1 and len(paths) == len(list_images(roots[0]))
                                              else None)
    if root is not None:
        outside = [p for p in paths if not p.resolve().is_relative_to(root.resolve())]
        if outside:
            raise CLIError(f"{outside[0]}: not under --root {root}")
    return paths, root


def _add_shard(args) -> int:
    """A sharded index (retrieval.scale) grows by one shard: from a feature file made as its vectors were."""
    from retrieval.features.store import config_json, load_global
    from retrieval.indexing.index import Index
    from retrieval.scale.add_shard import add_shard
    from retrieval.scale.manifest import read_manifest

    if not args.features or args.labels or args.replace:
        raise CLIError(f"{args.collection}: a sharded index grows from a feature file (--features), without "
                       "--labels or --replace")
    features = require_file(args.features, "feature file", "hdf5")
    ids, vectors, config = load_global(features)
    trained = Index.load(Path(args.collection) / read_manifest(Path(args.collection))["trained"])
    if trained.config and config_json(config) != config_json(trained.config):
        raise CLIError(f"{features}: made with {config_json(config)}, the index with {config_json(trained.config)}")
    with writing(args.collection, "sharded index"):
        emit_json(add_shard(args.collection, ids, vectors))
    return 0


def _add(args) -> int:
    from retrieval.scale.manifest import MANIFEST
    from retrieval.steps.add import add_features, add_images

    if (Path(args.collection) / MANIFEST).is_file():
        return _add_shard(args)
    folder = require_collection(args.collection)
    labels = require_file(args.labels, "labels CSV") if args.labels else None
    with writing(folder, "collection"):
        if args.features:
            info = add_features(folder, require_file(args.features, "feature file", "hdf5"), labels=labels,
                                replace=args.replace)
        else:
            paths, root = _images(args)
            info = add_images(folder, paths, root=root, labels=labels, replace=args.replace,
                              progress=progress_enabled(args))
    emit_json(info)
    return 0


def _remove(args) -> int:
    from retrieval.steps.add import remove_ids

    folder = require_collection(args.collection)
    with writing(folder, "collection"):
        emit_json(remove_ids(folder, args.ids))
    return 0


def _collection(args) -> int:
    from retrieval.indexing.collection import Collection

    coll = Collection.open(require_collection(args.collection))
    if args.action == "info":
        emit_json(coll.info())
        return 0
    with writing(coll.folder, "collection"):
        emit_json(coll.retrain() if args.action == "retrain" else coll.compact())
    return 0
