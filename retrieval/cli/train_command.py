"""``retrieval train``: train an embedding network (E2 classifier head, E3 / E4 Siamese), with
:mod:`retrieval.training`.

    retrieval train configs
    retrieval train classifier --config coil-e2 --data ../shared/data/coil100 --labels 1-50 --out runs/e2
    retrieval train siamese --config coil-e3 --data ../shared/data/coil100 --labels 1-50 --out runs/e3
    retrieval train siamese --config coil-e4 --init runs/e2 --data ... --labels 1-50 --out runs/e4
    retrieval train classifier --config gldv2-e2-gpu --format gldv2 --data /data/gldv2 --out runs/g2

``--set KEY=VALUE`` overrides any configuration field (dotted for nested: ``loop.epochs=2``). Running
the same command again resumes an interrupted run (``--fresh`` starts over). The result is printed
as JSON: the trained model's path, its configuration and the training time.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from retrieval.core.checks import require_output
from retrieval.core.config import parse_overrides

__all__ = ["register"]


def register(subparsers) -> None:
    """Add the ``train`` command group (classifier / siamese / configs) to an argparse sub-parsers object."""
    parser = subparsers.add_parser("train", help="train an embedding network (E2 classifier, E3/E4 Siamese)",
                                   description=__doc__.split("\n\n")[0],
                                   epilog=__doc__[__doc__.index("    retrieval train"):],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
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



def _run(args) -> int:
    from retrieval.training.settings import TRAIN_CONFIGS
    from retrieval.training.finetune import train_classifier
    from retrieval.training.loop import resolve_device
    from retrieval.training.siamese import train_siamese
    from retrieval.training.training_set import load_training_set

    if args.train_command == "configs":
        for name, cfg in TRAIN_CONFIGS.items():
            print(f"{name}: method={cfg.method} image_size={cfg.image_size} epochs={cfg.loop.epochs} "
                  f"device={cfg.loop.device}")
        return 0
    cfg = TRAIN_CONFIGS.get(args.config, parse_overrides(args.set))
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
