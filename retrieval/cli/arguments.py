"""Options several commands share: ``--dataset KIND --data PATH`` with the reader options (the fields of
:class:`retrieval.datasets.open.DatasetConfig`), ``KEY=VALUE`` lists, label lists; the benchmarks' parsers
and the options they hand to their measurement."""
from __future__ import annotations

import argparse
import math
import re
from typing import Any, Dict, List, Optional, Sequence

from retrieval.core.checks import CLIError
from retrieval.core.dataset_kinds import DATASET_KINDS

__all__ = ["bench_options", "described_parser", "add_dataset_arguments", "dataset_config", "load_dataset", "parse_options", "label_list",
           "progress_enabled"]


def parse_options(pairs: Optional[Sequence[str]]) -> Dict[str, Any]:
    """``["nlist=256", "nprobe=8"]`` -> ``{"nlist": 256, "nprobe": 8}`` (ints, floats, true/false,
    none parsed; anything else stays text)."""
    out: Dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise CLIError(f"option {pair!r} is not KEY=VALUE")
        key, value = pair.split("=", 1)
        low = value.strip().lower()
        if low in ("true", "false"):
            out[key.strip()] = low == "true"
        elif low in ("none", "null"):
            out[key.strip()] = None
        else:
            try:
                out[key.strip()] = int(value)
            except ValueError:
                try:
                    out[key.strip()] = float(value)
                except ValueError:
                    out[key.strip()] = value
    return out


def label_list(spec: str) -> List[str]:
    """``"1-50"`` / ``"1,3,5-7"`` / ``"cat,dog"`` -> labels as text (number ranges expanded)."""
    out: List[str] = []
    for part in (p.strip() for p in spec.split(",")):
        match = re.fullmatch(r"(\d+)-(\d+)", part)
        if match:
            out.extend(str(i) for i in range(int(match.group(1)), int(match.group(2)) + 1))
        elif part:
            out.append(part)
    if not out:
        raise CLIError(f"{spec!r} names no labels")
    return out


def add_dataset_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--dataset KIND --data PATH`` plus the reader options that commands share (the fields of
    :class:`retrieval.datasets.open.DatasetConfig`)."""
    parser.add_argument("--dataset", choices=DATASET_KINDS, required=required,
                        help="dataset reader: folder (images/ + labels.csv, or a class-per-folder tree "
                             "root/CLASS/*.jpg), gldv2 (Kaggle CSV layout), oxford/paris (images/ + gt/ "
                             "good/ok/junk lists, or the official oxbuild_images/ or paris/ + gt_files_*/), "
                             "revisited (jpg/ + gnd_roxford5k.pkl / gnd_rparis6k.pkl as distributed, or "
                             "gt/ easy/hard/junk), holidays (jpg/NNNNNN.jpg), ukbench "
                             "(full/ukbenchNNNNN.jpg), multiview "
                             "(DS|DU/train|retrieval tree), os-core (query/target + label files)")
    parser.add_argument("--data", required=required, help="the dataset folder")
    parser.add_argument("--scale", default="auto",
                        help="oxford/paris/revisited: box scale, 'auto' (stored longest side / 1024) or a "
                             "number such as 0.5")
    parser.add_argument("--query-list", default="auto",
                        help="folder/multiview: which images are queries: 'auto' (queries.txt in the "
                             "dataset folder when present, else every N-th image of each class), "
                             "'every', or the path of a list of image ids (default auto)")
    parser.add_argument("--every", type=int, default=4,
                        help="folder/multiview: every N-th image of each class is a query (default 4)")
    parser.add_argument("--db", choices=("all", "rest"), default="all",
                        help="folder/multiview: keep the queries in the database (all, default; a "
                             "query's own image is then ignored) or take them out (rest)")
    parser.add_argument("--split", default="DS", help="multiview: DS or DU (default DS)")
    parser.add_argument("--part", default="retrieval", help="multiview: train or retrieval")
    parser.add_argument("--gldv2-protocol", choices=("kaggle", "thesis"), default="kaggle",
                        help="gldv2: the Kaggle index/test split (default) or the thesis' 1,000 queries "
                             "against 100,000 train images of landmarks outside train_clean.csv")
    parser.add_argument("--on-error", choices=("raise", "collect"), default="raise",
                        help="missing/unreadable images: stop (raise) or skip and report (collect)")
    parser.add_argument("--distractors", default="",
                        help="any kind: a folder of unlabelled images added to the database")
    parser.add_argument("--gnd", default="",
                        help="revisited: the ground-truth pickle (default: the one gnd_*.pkl in the folder); oxford/paris: "
                             "score the subset with this revisited pickle, restricted to its images")
    parser.add_argument("--rotations", default="",
                        help="holidays: a list of 'NNNNNN.jpg DEGREES' to read those photos upright "
                             "(default: as stored)")


def dataset_config(args: argparse.Namespace):
    """The :class:`retrieval.datasets.open.DatasetConfig` of ``--dataset/--data`` and the reader options."""
    from retrieval.core.config import ConfigError
    from retrieval.datasets.open import DatasetConfig

    scale: Any = args.scale
    if scale != "auto":
        try:
            scale = float(scale)
        except ValueError:
            raise CLIError(f"--scale must be 'auto' or a number, not {args.scale!r}") from None
        if not (math.isfinite(scale) and scale > 0):
            raise CLIError(f"--scale must be a positive number, not {args.scale!r}")
    if args.every < 1:
        raise CLIError(f"--every must be at least 1, got {args.every}")
    try:
        return DatasetConfig(kind=args.dataset, path=str(args.data), scale=scale, queries=args.query_list,
                             every=args.every, db=args.db, split=args.split, part=args.part,
                             protocol=args.gldv2_protocol, on_error=args.on_error,
                             distractors=args.distractors, gnd=args.gnd, rotations=args.rotations)
    except ConfigError as exc:
        raise CLIError(str(exc)) from None


def load_dataset(args: argparse.Namespace):
    """The :class:`RetrievalDataset` named by ``--dataset/--data`` (see :func:`dataset_config`)."""
    from retrieval.datasets.open import open_dataset

    return open_dataset(dataset_config(args))


def progress_enabled(args) -> bool:
    return not getattr(args, "quiet", False)


def bench_options(args: argparse.Namespace) -> argparse.Namespace:
    """A benchmark's own options (not the command line's bookkeeping: handler, command names, flags)."""
    skip = {"func", "command", "bench_command", "debug", "quiet"}
    return argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in skip})


def described_parser(sub, name: str, help_text: str, module_doc_of: str) -> argparse.ArgumentParser:
    """A ``retrieval bench NAME`` parser whose description names the module holding the measurement."""
    return sub.add_parser(name, help=help_text, description=f"{help_text} (the measurement: {module_doc_of})")
