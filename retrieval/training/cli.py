"""Command line for training E2-E4: ``python -m retrieval.training COMMAND`` (:func:`register` adds the
same commands to another parser as a ``train`` group).

    python -m retrieval.training configs
    python -m retrieval.training classifier --config coil-e2 --data ../shared/data/coil100 --labels 1-50 --out runs/e2
    python -m retrieval.training siamese --config coil-e3 --data ../shared/data/coil100 --labels 1-50 --out runs/e3
    python -m retrieval.training siamese --config coil-e4 --init runs/e2 --data ... --labels 1-50 --out runs/e4
    python -m retrieval.training classifier --config gldv2-e2-gpu --format gldv2 --data /data/gldv2 --out runs/g2

``--set KEY=VALUE`` overrides any configuration field (dotted for nested: ``loop.epochs=2``). Running
the same command again resumes an interrupted run (``--fresh`` starts over). The result is printed
as JSON: the trained model's path, its configuration and the training time.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from retrieval.config import parse_overrides

__all__ = ["register", "main", "parse_label_ranges", "load_training_set"]


def parse_label_ranges(text: Optional[str]) -> Optional[set]:
    """``'1-50,60,70-72'`` -> {'1', ..., '50', '60', '70', '71', '72'} (labels as text); None -> None."""
    if not text:
        return None
    out = set()
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = part.split("-", 1)
            try:
                out.update(str(v) for v in range(int(lo), int(hi) + 1))
            except ValueError:
                raise ValueError(f"--labels: {part!r} is not a range of integers like 1-50") from None
        elif part:
            out.add(part)
    return out


def load_training_set(data: str, fmt: str = "folder", labels: Optional[str] = None):
    """``(paths, labels)`` to train on: a labelled folder (images/ + labels.csv, e.g. COIL-100), all
    of it or the ``labels`` listed, or the train split of a GLDv2-format folder."""
    from retrieval.datasets import read_gldv2, read_labelled_folder

    root = Path(data)
    keep = parse_label_ranges(labels)
    if fmt == "folder":
        ds = read_labelled_folder(root)
        paths, names = ds.db_paths, ds.db_labels
    elif fmt == "gldv2":
        ds = read_gldv2(root)
        if not ds.train_paths:
            raise ValueError(f"{root}: no train split (train.csv) in this GLDv2 folder")
        paths, names = ds.train_paths, ds.train_labels
    else:
        raise ValueError(f"unknown training data format {fmt!r}; choose folder or gldv2")
    if keep is not None:
        rows = [i for i, lab in enumerate(names) if str(lab) in keep]
        if not rows:
            raise ValueError(f"{root}: no image has a label in --labels {labels!r}")
        paths, names = [paths[i] for i in rows], [names[i] for i in rows]
    return list(paths), list(names)


def _run(args) -> int:
    from .config import TRAIN_CONFIGS
    from .finetune import train_classifier
    from .siamese import train_siamese

    if args.train_command == "configs":
        for name, cfg in TRAIN_CONFIGS.items():
            print(f"{name}: method={cfg.method} image_size={cfg.image_size} epochs={cfg.loop.epochs} "
                  f"device={cfg.loop.device}")
        return 0
    cfg = TRAIN_CONFIGS.get(args.config, parse_overrides(args.set))
    from retrieval.cli_checks import require_output
    from .loop import resolve_device

    resolve_device(cfg.loop.device)  # an unknown device is refused before the data is read
    require_output(args.out, "training run", folder=True)
    paths, labels = load_training_set(args.data, args.format, args.labels)
    progress = not getattr(args, "quiet", False)
    if args.train_command == "classifier":
        model = train_classifier(cfg, paths, labels, args.out, init_checkpoint=args.init,
                                 resume=not args.fresh, progress=progress)
    else:
        model = train_siamese(cfg, paths, labels, args.out, init_checkpoint=args.init,
                              resume=not args.fresh, progress=progress)
    meta = json.loads(Path(model).with_suffix(".json").read_text())
    print(json.dumps({"model": str(model), "config": cfg.name, "images": len(paths),
                      "classes": len(set(labels)), "train_seconds": meta["config"].get("train_seconds"),
                      "steps": meta["config"].get("steps"), "sha256": meta["sha256"]}, indent=2))
    return 0


def register(subparsers) -> None:
    """Add the ``train`` command group (classifier / siamese / configs) to an argparse sub-parsers object."""
    parser = subparsers.add_parser("train", help="train an embedding network (E2 classifier, E3/E4 Siamese)")
    _add_commands(parser)
    parser.set_defaults(func=_run)


def _add_commands(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="train_command", metavar="{classifier,siamese,configs}", required=True)
    sub.add_parser("configs", help="list the named training configurations")
    for name, help_text in (("classifier", "E2: fine-tune with a classification head"),
                            ("siamese", "E3/E4: Siamese metric learning (contrastive / triplet)")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", required=True, help="a name from TRAIN_CONFIGS (see 'configs')")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a configuration field")
        p.add_argument("--data", required=True, help="training data folder")
        p.add_argument("--format", choices=("folder", "gldv2"), default="folder",
                       help="folder: images/ + labels.csv (COIL); gldv2: the train split of a GLDv2 folder")
        p.add_argument("--labels", help="train only on these labels, e.g. 1-50")
        p.add_argument("--out", required=True, help="output folder (model.pt, last.pt, losses.png)")
        p.add_argument("--init", help="start from this trained model.pt (or its folder), e.g. E4 from E2")
        p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint in --out")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m retrieval.training", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__[__doc__.index("    python -m"):],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    _add_commands(parser)
    args = parser.parse_args(argv)
    from retrieval.cli_checks import CLIError, os_error_message

    try:
        return _run(args)
    except (ValueError, OSError, CLIError) as exc:
        if args.debug:
            raise
        message = os_error_message(exc) if isinstance(exc, OSError) else str(exc)
        print(f"retrieval.training: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # the last checkpoint stays: running the same command again resumes from it
        print("retrieval.training: interrupted", file=sys.stderr)
        return 130
