"""``retrieval dataset ...``: dataset tools.

    retrieval dataset info --dataset TYPE --data PATH
    retrieval dataset check PATH [--n-jobs N]
    retrieval dataset export-gldv2 --data COIL_DIR --out DIR [--link symlink|hardlink|copy]
    retrieval dataset profile --dataset TYPE --data PATH --out DIR [--set KEY=VALUE]
    retrieval dataset synth-gldv2 OUT --pool DIR [DIR ...] [--scale S] [--images lazy|all]
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict

from retrieval.core.checks import CLIError, require_output
from retrieval.cli.arguments import add_dataset_arguments, label_list, load_dataset, progress_enabled
from retrieval.cli.output import emit_json

__all__ = ["register"]


def register(subparsers) -> None:
    parser = subparsers.add_parser("dataset", help="dataset tools: info, check, export-gldv2, profile, synth-gldv2")
    sub = parser.add_subparsers(dest="dataset_command", metavar="{info,check,export-gldv2,profile,synth-gldv2}",
                                required=True)

    info = sub.add_parser("info", help="summary of a dataset as a reader sees it")
    add_dataset_arguments(info)
    info.add_argument("--out", default=None, help="also write the JSON here")
    info.set_defaults(func=_dataset_info)

    check = sub.add_parser("check", help="decode every image under a folder, report unreadable ones "
                                         "(exit 1 when any)")
    check.add_argument("path", help="folder (searched recursively) or a single image")
    check.add_argument("--n-jobs", type=int, default=1, help="parallel decoders (-1: all cores)")
    check.add_argument("--out", default=None, help="also write the JSON report here")
    check.set_defaults(func=_dataset_check)

    export = sub.add_parser("export-gldv2", help="write a labelled folder as a GLDv2-format split (train "
                                                 "labels, index + queries of the test labels)")
    export.add_argument("--data", required=True, help="folder dataset: images/ + labels.csv (e.g. coil100) or a "
                                                      "class-per-folder tree")
    export.add_argument("--out", required=True, help="output folder (re-running into it resumes)")
    export.add_argument("--train-labels", "--train-objects", dest="train_labels", default=None,
                        help="labels for training: names and number ranges, e.g. 1-50 or cat,dog (default: "
                             "the first half of the labels in natural order; COIL-100: 1-50)")
    export.add_argument("--test-labels", "--test-objects", dest="test_labels", default=None,
                        help="labels for index/queries (default: the other half; COIL-100: 51-100)")
    export.add_argument("--query-step", type=int, default=8,
                        help="every N-th view of a test object is a query (default 8: 9 of 72)")
    export.add_argument("--seed", type=int, default=0, help="seed of the query phase and Public/Private halves")
    export.add_argument("--ignored-fraction", type=float, default=0.0,
                        help="fraction of queries marked Usage=Ignored (default 0)")
    export.add_argument("--link", choices=("symlink", "hardlink", "copy"), default="symlink")
    export.set_defaults(func=_dataset_export)

    profile = sub.add_parser("profile", help="what is in a dataset: classes and long tail, grayscale, sizes, "
                                             "EXIF, unreadable files, duplicates (retrieval.datasets.profile)")
    add_dataset_arguments(profile)
    profile.add_argument("--out", required=True, help="folder for profile.json and profile.png")
    profile.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="profile setting, e.g. near_features=FILE, near_threshold=0.9, check_pixels=false")
    profile.set_defaults(func=_dataset_profile)

    synth = sub.add_parser("synth-gldv2", help="write a GLDv2-format folder at GLDv2's row counts (x --scale), "
                                               "its ids linked to real images of a pool")
    synth.add_argument("out", help="folder to write")
    synth.add_argument("--pool", nargs="+", required=True, help="folders of real images the ids link to")
    synth.add_argument("--scale", type=float, default=1.0, help="fraction of GLDv2's row counts (default 1)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--images", choices=("lazy", "all"), default="lazy",
                       help="link every image now (all) or none until link_images asks (lazy, default)")
    synth.add_argument("--link", choices=("symlink", "hardlink"), default="symlink")
    synth.set_defaults(func=_dataset_synth)


def _dataset_summary(ds) -> Dict[str, Any]:
    from collections import Counter

    usage = Counter(t.usage for t in ds.ground_truth.values() if t.usage is not None)
    positives = [len(t.positives) for t in ds.ground_truth.values() if t.usage != "Ignored"]
    out = {"name": ds.name, "root": str(ds.root), "database": len(ds.db_ids), "queries": len(ds.query_ids),
           "train": len(ds.train_ids) if ds.train_ids else 0,
           "scored_queries": len(ds.solution()),
           "positives_per_query": ({"min": min(positives), "mean": round(sum(positives) / len(positives), 2),
                                    "max": max(positives)} if positives else None),
           "bad_files": [{"path": p, "reason": r} for p, r in ds.bad_files]}
    if usage:
        out["usage"] = dict(usage)
    if ds.db_labels is not None:
        out["db_labels"] = len(set(ds.db_labels))
    if ds.train_labels:
        out["train_labels"] = len(set(ds.train_labels))
    meta = {k: v for k, v in ds.metadata.items() if not isinstance(v, (list, dict))}
    if meta:
        out["metadata"] = meta
    return out


def _dataset_info(args) -> int:
    require_output(args.out, "dataset summary")
    emit_json(_dataset_summary(load_dataset(args)), args.out)
    return 0


def _dataset_check(args) -> int:
    from retrieval.datasets.files import check_folder

    if args.n_jobs == 0 or args.n_jobs < -1:
        raise CLIError(f"--n-jobs must be a positive number or -1 (all cores), got {args.n_jobs}")
    require_output(args.out, "check report")
    path = Path(args.path)
    if not path.exists():
        raise CLIError(f"{path}: no such file or folder")
    report = check_folder(path, n_jobs=args.n_jobs, progress=progress_enabled(args))
    emit_json(report, args.out)
    return 1 if report["unreadable"] else 0


def _dataset_profile(args) -> int:
    from retrieval.core.config import ConfigError
    from retrieval.datasets.profile import ProfileConfig, gldv2_records, main as profile_main

    try:
        conf = ProfileConfig().override(args.overrides)
    except ConfigError as exc:
        raise CLIError(str(exc)) from None
    if not Path(args.data).is_dir():
        raise CLIError(f"{args.data}: no such dataset folder")
    # GLDv2 is streamed from its CSVs (bounded memory); other kinds go through their reader
    source = gldv2_records(args.data) if args.dataset == "gldv2" else load_dataset(args)
    path = profile_main(conf, source, args.out, progress=progress_enabled(args))
    emit_json({"profile": str(path), "plot": str(Path(args.out) / "profile.png")})
    return 0


def _dataset_export(args) -> int:
    from retrieval.datasets import export_gldv2, labelled_gldv2_split, natural_key
    from retrieval.datasets.folders import read_folder

    if args.query_step < 2:
        raise CLIError(f"--query-step must be at least 2 (some views must stay in the index), got {args.query_step}")
    if not 0.0 <= args.ignored_fraction < 1.0:
        raise CLIError(f"--ignored-fraction must be in [0, 1), got {args.ignored_fraction}")
    require_output(args.out, "GLDv2 export", folder=True)
    start = time.perf_counter()
    full = read_folder(args.data)
    labels = sorted(set(full.db_labels), key=natural_key)
    train = label_list(args.train_labels) if args.train_labels else labels[:len(labels) // 2]
    test = label_list(args.test_labels) if args.test_labels else [x for x in labels if x not in set(train)]
    split = labelled_gldv2_split(full, train, test, query_step=args.query_step, seed=args.seed,
                                 ignored_fraction=args.ignored_fraction)
    counts = export_gldv2(split, args.out, link=args.link, progress=progress_enabled(args))
    emit_json({"out": str(args.out), **counts, "usage": _dataset_summary(split).get("usage", {}),
               "seconds": round(time.perf_counter() - start, 3)})
    return 0




def _dataset_synth(args) -> int:
    from retrieval.datasets.gldv2_synth import generate_gldv2

    require_output(args.out, "GLDv2 folder", folder=True)
    for pool in args.pool:
        if not Path(pool).is_dir():
            raise CLIError(f"{pool}: no such image folder (--pool)")
    emit_json(generate_gldv2(args.out, args.pool, scale=args.scale, seed=args.seed, images=args.images,
                             link=args.link, progress=progress_enabled(args)))
    return 0
