"""What training buys on COIL-100: train on objects 1-50, evaluate on objects 51-100.

Evaluation: every 4th view of each object 51-100 (azimuth order) is a query against all the other
images of objects 51-100 (its own image excluded), mAP@100 (GLDv2 definition,
:func:`retrieval.metrics.map_at_k`) over an exact cosine :class:`retrieval.Index`. Descriptors:
EfficientNet-Lite0, GeM (p = 3), L2, at ``--eval-size`` pixels (COIL's native 128).

* E1: ImageNet Lite0, no training;
* E2: fine-tuned with a classification head (``TRAIN_CONFIGS['coil-e2']``);
* E3: Siamese contrastive from ImageNet (``'coil-e3'``);
* E4: Siamese contrastive from the E2 model (``'coil-e4'``).

Trained models and their state go to ``--cache/<config name>-<config digest>/`` (a rerun resumes or reuses them);
descriptors to ``--cache/descriptors/``. ``--quick``: objects 1-4 / 51-53, four steps each.

    .venv/bin/python benchmarks/train_coil_split.py [--methods e1,e2,e3,e4] [--set e3:loop.epochs=2]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.features.efficientnet import EfficientNetGlobal  # noqa: E402
from retrieval.features.store import FeatureFileError, load_global, save_global  # noqa: E402
from retrieval import Index  # noqa: E402
from retrieval.datasets import every_nth_query, exclude_self, read_labelled_folder  # noqa: E402
from retrieval.metrics import map_at_k  # noqa: E402
from retrieval.paths import data_root  # noqa: E402
from retrieval.report import StageTimer, peak_rss_mb, write_results  # noqa: E402
from retrieval.training import get_config, train_classifier, train_siamese  # noqa: E402
from retrieval.training.data import TrainImages  # noqa: E402
from retrieval.training.embedding import PixelNormalize, embed_uint8, load_trained_efficientnet  # noqa: E402

CONFIG_OF = {"e2": "coil-e2", "e3": "coil-e3", "e4": "coil-e4"}


def split(root: Path, train_objects, test_objects):
    full = read_labelled_folder(root)
    train = {str(o) for o in train_objects}
    test = {str(o) for o in test_objects}
    tr = [i for i, lab in enumerate(full.db_labels) if lab in train]
    te = [i for i, lab in enumerate(full.db_labels) if lab in test]
    from retrieval.datasets import RetrievalDataset

    sub = RetrievalDataset(name="coil100-51-100", root=full.root, db_ids=[full.db_ids[i] for i in te],
                           db_paths=[full.db_paths[i] for i in te], query_ids=[], query_paths=[],
                           ground_truth={}, db_labels=[full.db_labels[i] for i in te],
                           db_metadata={k: [v[i] for i in te] for k, v in full.db_metadata.items()})
    evalset = every_nth_query(sub, n=4, db="all")
    return ([full.db_paths[i] for i in tr], [full.db_labels[i] for i in tr]), evalset


def run_folder(cache: Path, cfg) -> Path:
    """Where a configuration trains: its name plus a digest of the whole configuration, so a changed
    configuration trains afresh instead of meeting the old run's checkpoint."""
    digest = hashlib.sha256(cfg.to_json().encode()).hexdigest()[:10]
    return cache / f"{cfg.name}-{digest}"


def quick_config(cfg):
    return cfg.with_overrides(**{"loop.epochs": 1, "loop.max_steps_per_epoch": 4, "P": 4,
                                 "batch_size": 16, "loop.warmup_steps": 0})


def parse_overrides(items):
    out = {}
    for item in items or []:
        method, _, assignment = item.partition(":")
        key, eq, value = assignment.partition("=")
        if not eq or method not in CONFIG_OF:
            raise SystemExit(f"--set takes METHOD:KEY=VALUE with METHOD in {sorted(CONFIG_OF)}, got {item!r}")
        out.setdefault(method, {})[key] = value
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(data_root()))
    ap.add_argument("--out", default="results/train_coil_split")
    ap.add_argument("--cache", default="cache/train_coil_split")
    ap.add_argument("--methods", default="e1,e2,e3,e4")
    ap.add_argument("--set", action="append", metavar="METHOD:KEY=VALUE",
                    help="override a training configuration field, e.g. e3:loop.epochs=2")
    ap.add_argument("--eval-size", type=int, default=128)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)

    root = Path(args.data) / "coil100"
    cache = Path(args.cache) / ("quick" if args.quick else "full")
    train_objects, test_objects = (range(1, 5), range(51, 54)) if args.quick else (range(1, 51), range(51, 101))
    (train_paths, train_labels), evalset = split(root, train_objects, test_objects)
    overrides = parse_overrides(args.set)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    timer = StageTimer()

    print(f"train: {len(train_paths)} images of {len(set(train_labels))} objects; "
          f"eval: {len(evalset.query_ids)} queries, {len(evalset.db_ids)} database images")
    with timer("decode eval images"):
        db_images = TrainImages(evalset.db_paths, load_size=None, cache=True, progress=False)
    pos_of = {i: n for n, i in enumerate(evalset.db_ids)}
    q_rows = np.array([pos_of[q] for q in evalset.query_ids])
    solution = evalset.solution()
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else (
        "cpu" if args.device == "auto" else args.device)

    def evaluate(name: str, model, key: dict) -> dict:
        path = cache / "descriptors" / f"{name}.h5"
        try:
            ids, vectors, _ = load_global(path, expect_config=key)
        except FeatureFileError:
            start = time.perf_counter()
            vectors = embed_uint8(model, db_images.get(np.arange(len(db_images))), args.eval_size,
                                  PixelNormalize.for_efficientnet("lite0"), batch_size=64, device=device,
                                  progress=True)
            timer.seconds[f"embed {name}"] = time.perf_counter() - start
            save_global(path, evalset.db_ids, vectors, key)
        index = Index(vectors, ids=evalset.db_ids)
        ranking = index.search(vectors[q_rows], k=101, query_ids=evalset.query_ids)
        predictions = {q: r[:100] for q, r in exclude_self(ranking.to_predictions()).items()}
        return {"map@100": 100.0 * map_at_k(predictions, solution, k=100)}

    rows = []
    trained = {}
    for method in methods:
        row = {"method": method.upper()}
        if method == "e1":
            model = EfficientNetGlobal("lite0", weights="imagenet", pooling="gem", gem_p=3.0)
            row.update(evaluate("e1", model, {"model": "lite0-imagenet-gem3", "size": args.eval_size}))
            row.update(config="imagenet", train_min=0.0)
        elif method in CONFIG_OF:
            cfg = get_config(CONFIG_OF[method], **{"loop.device": args.device, **overrides.get(method, {})})
            if args.quick:
                cfg = quick_config(cfg)
            out = run_folder(cache, cfg)
            start = time.perf_counter()
            if method == "e2":
                path = train_classifier(cfg, train_paths, train_labels, out)
            else:
                init = None
                if method == "e4":
                    e2_cfg = get_config(CONFIG_OF["e2"], **{"loop.device": args.device, **overrides.get("e2", {})})
                    init = trained.get("e2") or run_folder(cache, quick_config(e2_cfg) if args.quick else e2_cfg) / "model.pt"
                    if not Path(init).is_file():
                        raise SystemExit("E4 starts from the E2 model: run e2 first (--methods e2,e4)")
                path = train_siamese(cfg, train_paths, train_labels, out, init_checkpoint=init)
            trained[method] = path
            wall = time.perf_counter() - start
            meta = json.loads(path.with_suffix(".json").read_text())
            model = load_trained_efficientnet(path)
            row.update(evaluate(method, model, {"model_sha256": meta["sha256"], "size": args.eval_size}))
            row.update(config=cfg.name, train_min=meta["config"].get("train_seconds", wall) / 60.0,
                       steps=meta["config"].get("steps"))
        else:
            raise SystemExit(f"unknown method {method!r}; choose from e1, e2, e3, e4")
        print(row, flush=True)
        rows.append(row)
    table = write_results(rows, args.out, columns=["method", "config", "map@100", "train_min", "steps"],
                          title="COIL-100: train objects 1-50, evaluate 51-100 (every 4th view a query)",
                          extra={"timings_s": timer.seconds, "peak_rss_mb": peak_rss_mb(),
                                 "eval_size": args.eval_size, "quick": args.quick,
                                 "torch_threads": torch.get_num_threads()})
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
