"""Multi-view instance retrieval on COIL-100: teacher, MV-AlexNet and distilled MV-AlexNets.

One command does everything (``python benchmarks/multiview.py``; ``--quick`` runs the same path on 8 + 8
objects in about a minute):

1. Read COIL-100 (``--data``/coil100), decode every image once at 128 px (cached as .npy under ``--cache``).
2. Teacher: EfficientNet-Lite0 (ImageNet weights, GeM) fine-tuned on the seen instances DS (objects 1-50,
   all their views) with the metric-learning code of ``retrieval.training`` (``train_siamese``,
   configuration ``coil-e3``: contrastive loss, P x K batches, the last 6 blocks trained). Its view
   pooling is at the embedding level (mean of the views' unit descriptors, L2), so its per-view
   embeddings of every image are computed once and cached.
3. MV-AlexNet: AlexNet-style trunk (random init; no offline ImageNet AlexNet weights exist) + max view
   pooling of conv5 maps + GeM + linear -> 256-d, trained on DS view sets with the triplet loss.
4. Distilled MV-AlexNet: starts from the trained MV-AlexNet, trained on DS to match the teacher
   (similarity-KL relation distillation at temperature 0.5 + the triplet loss; feature matching through
   a learned projection is an option, ``--feature-weight``; ``retrieval.training.distill``), from the
   cached teacher embeddings, centred on their mean over the training images
   (:func:`retrieval.training.distill.center_embeddings`; ``--no-center-teacher`` distils them raw).
   Options: ``--teacher-on-augmented-views`` (the teacher run on the student's augmented views in every
   step), ``--mixup`` (function matching on blended view sets, with the former).
4b. Distilled MV-AlexNet with a transfer set (``mv-alexnet-distilled-transfer``; ``--transfer none``
   leaves it out): the same distillation, plus in every step random crops of unlabelled images that
   are not COIL-100 (default: the Oxford subset and COIL-20, ``--transfer``), seen by the student and
   by the teacher (run on the crops). The protocol's "all training on DS" holds for COIL-100 (no
   unseen object is ever used), not for images in general, so this student is reported apart.
5. Evaluation (``retrieval.datasets.viewsets``): DS and DU (objects 51-100), each object's 72 views cut
   into 6 sets of 12 consecutive azimuths; every set is a query in turn with ``test_views`` seeded views,
   against the database of all the other sets of the split, each pooled from all its views (up to 12).
   Relevant = same object. Metrics: top-1/top-10 accuracy, mAP@100 (GLDv2), nDCG@100, ANMRR.
   DS queries are views the models were trained on (seen-instance retrieval); DU is generalisation.
6. Parameters and images per second (CPU, batch inference, eager torch, one process: ratios hold).

Outputs in ``--out``: results.json, results.md (tables), map_vs_views.png. Every trained model and the
teacher embeddings are cached under ``--cache``, so a rerun resumes (an interrupted training continues
from its last checkpoint).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from retrieval.features.alexnet import AlexNetConfig, count_parameters, normalise  # noqa: E402
from retrieval.features.efficientnet import EfficientNetGlobal, preprocess as lite_preprocess  # noqa: E402
from retrieval.features.multiview import pool_view_embeddings  # noqa: E402
from retrieval import metrics  # noqa: E402
from retrieval.datasets.viewsets import (COIL100_SEEN, COIL100_UNSEEN, ViewCatalog,  # noqa: E402
                                         make_benchmark, read_view_catalog, split_view_sets)
from retrieval.paths import data_root  # noqa: E402
from retrieval.report import StageTimer, markdown_table, peak_rss_mb, write_results  # noqa: E402
from retrieval.training.augment import AugmentConfig, square_resize, uint8_to_float  # noqa: E402
from retrieval.fileio import atomic_write, atomic_write_text  # noqa: E402
from retrieval.training.config import get_config  # noqa: E402
from retrieval.training.data import decode_images  # noqa: E402
from retrieval.training.distill import (DistillConfig, TransferSet, compute_teacher_embeddings,  # noqa: E402
                                        distill_mv_alexnet)
from retrieval.training.embedding import (PixelNormalize, load_trained_efficientnet,  # noqa: E402
                                          read_trained_config)
from retrieval.training.loop import LoopConfig  # noqa: E402
from retrieval.training.multiview import MultiViewTrainConfig, load_mv_alexnet, train_mv_alexnet  # noqa: E402
from retrieval.training.siamese import train_siamese  # noqa: E402

MODELS = ("teacher", "mv-alexnet", "mv-alexnet-distilled")
#: the student distilled on the training view sets and a transfer set (``--transfer``)
TRANSFER_MODEL = "mv-alexnet-distilled-transfer"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="data folder holding coil100/ (default: retrieval.paths.data_root())")
    p.add_argument("--out", default="results/multiview", help="results folder")
    p.add_argument("--cache", default="cache/multiview", help="cache folder (images, models, embeddings)")
    p.add_argument("--quick", action="store_true", help="same path, 8 + 8 objects, a few steps")
    p.add_argument("--test-views", type=int, nargs="+", default=[1, 3, 6, 12])
    p.add_argument("--n-sets", type=int, default=6, help="view sets per object (72 / 6 = 12 views each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=128, help="network input side for all models")
    p.add_argument("--teacher-epochs", type=int, default=1)
    p.add_argument("--student-epochs", type=int, default=4)
    p.add_argument("--distill-epochs", type=int, default=8)
    p.add_argument("--distill-lr", type=float, default=5e-4, help="peak learning rate of the distillation")
    p.add_argument("--distill-views", type=int, nargs="+", default=[1, 2, 3],
                   help="view-set sizes of the distillation batches (MV-AlexNet training: 1 2 3)")
    p.add_argument("--student-width", default="alexnet", choices=["alexnet", "alexnet-half"])
    p.add_argument("--relation", default="kl", choices=["kl", "rkd", "none"])
    p.add_argument("--relation-weight", type=float, default=1.0, help="weight of the relation term")
    # tau = 0.5 spreads each similarity row over the other objects (the teacher's "dark knowledge");
    # at 0.1 a row is almost all on the query's own object, which the triplet term already teaches.
    # Feature matching through a projection lowered DU mAP here: off by default.
    p.add_argument("--temperature", type=float, default=0.5, help="similarity-KL temperature (both sides)")
    p.add_argument("--feature-weight", type=float, default=0.0, help="feature matching (0: off)")
    p.add_argument("--metric-weight", type=float, default=1.0, help="triplet loss during distillation")
    p.add_argument("--teacher-on-augmented-views", action="store_true",
                   help="consistent teaching: run the teacher on the student's augmented views in every "
                        "distillation step (slower) instead of its cached embeddings of the plain views")
    p.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA",
                   help="function matching: blend each training set with another one of the batch "
                        "(lam ~ Beta(ALPHA, ALPHA)) before student and teacher see it; needs "
                        "--teacher-on-augmented-views and --metric-weight 0 (0: off)")
    p.add_argument("--transfer", nargs="+", default=["oxford", "coil20"],
                   choices=sorted(TRANSFER_SOURCES) + ["none"],
                   help="a second distilled student, also distilled on these unlabelled images (a transfer "
                        "set; never COIL-100): random crops, the teacher run on the same crops "
                        "(retrieval.training.distill.TransferSet); 'none': no such student")
    p.add_argument("--transfer-batch", type=int, default=64, help="transfer images per step")
    p.add_argument("--transfer-weight", type=float, default=1.0, help="weight of the transfer loss")
    p.add_argument("--no-center-teacher", action="store_true",
                   help="distil the raw teacher embeddings (default: centred on the training images' mean, "
                        "retrieval.training.distill.center_embeddings)")
    p.add_argument("--teacher-embeddings", default=None,
                   help="use another teacher: a global-feature file (features.store.save_global) of per-image "
                        "embeddings with ids = COIL file names (e.g. obj1__0.png), made by any extractor such "
                        "as CLIP; the fine-tuned EfficientNet-Lite0 is then not trained")
    p.add_argument("--speed-images", type=int, default=256, help="images timed per model")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------- data

def decoded_array(paths: Sequence[Path], npy: Path, load_size=None, what: str = "images") -> np.ndarray:
    """``paths`` decoded (``load_size``: shorter side resized and centre-cropped; None: as stored) into one
    uint8 (N, H, W, 3) array, kept as ``npy`` with a sidecar .json listing the files (and size), so another
    selection is never mixed up with it and a rerun does not decode again."""
    key = {"files": [str(p) for p in paths]}
    if load_size is not None:
        key["size"] = int(load_size)
    meta = npy.with_suffix(".json")
    if npy.is_file() and meta.is_file():
        try:
            if json.loads(meta.read_text()) == key:
                arr = np.load(npy, allow_pickle=False)
                if arr.shape[0] == len(paths):
                    return arr
        except (ValueError, OSError):
            pass  # damaged cache: decode again
    images, bad = decode_images(paths, load_size, "centre", n_jobs=2, progress=True, desc=f"decode {what}")
    if bad:
        raise SystemExit(f"unreadable {what}, e.g. {bad[0][0]}: {bad[0][1]}")
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise SystemExit(f"{what} of several sizes {sorted(shapes)[:3]}: give a load size")
    arr = np.stack(images)
    atomic_write(npy, lambda fh: np.save(fh, arr, allow_pickle=False))
    atomic_write_text(meta, json.dumps(key))
    return arr


def load_image_cache(catalog: ViewCatalog, cache: Path) -> np.ndarray:
    """All catalog images (COIL-100: 128 x 128) as one uint8 array, decoded once (:func:`decoded_array`)."""
    return decoded_array(catalog.paths, cache / "images.npy", what="COIL-100 images")


def to_input(images_uint8: np.ndarray, size: int, model: str) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised network input at ``size`` px for 'lite0' or 'alexnet'."""
    if model == "lite0":
        x = lite_preprocess(images_uint8, "lite0")
        return square_resize(x, size) if x.shape[-1] != size else x
    x = square_resize(uint8_to_float(torch.from_numpy(np.ascontiguousarray(images_uint8))), size)
    return normalise(x)


#: transfer-set sources under the data folder: (folder holding the images, glob)
TRANSFER_SOURCES = {"oxford": ("oxford5k_subset/images", "*.jpg"), "coil20": ("coil20/images", "*.png")}
TRANSFER_SIZE = 192  # side of the stored transfer images (crops of them are resized to --image-size)


def load_transfer_images(data: Path, sources: Sequence[str], cache: Path) -> np.ndarray:
    """uint8 (M, 192, 192, 3): every image of the named sources, shorter side resized to 192 and
    centre-cropped (grayscale made RGB by the image loader), decoded once and kept as .npy."""
    paths = []
    for name in sources:
        folder, pattern = TRANSFER_SOURCES[name]
        found = sorted((data / folder).glob(pattern))
        if not found:
            raise SystemExit(f"transfer source {name!r}: no {pattern} under {data / folder} "
                             f"(--transfer none leaves the transfer-set student out)")
        paths += found
    listing = json.dumps({"files": [str(p) for p in paths], "size": TRANSFER_SIZE})
    name = "transfer-" + hashlib.sha256(listing.encode()).hexdigest()[:10]
    return decoded_array(paths, cache / f"{name}.npy", TRANSFER_SIZE, what="transfer images")


# --------------------------------------------------------------------------------------------- models

def external_teacher_embeddings(path: Path, names: Sequence[str]):
    """The teacher hook for any extractor (e.g. CLIP's image tower, its global/class embedding): per-image
    embeddings from a global-feature file whose ids are the COIL file names; rows are L2-normalised."""
    from retrieval.features.store import load_global

    ids, vectors, config = load_global(path)
    row = {i: n for n, i in enumerate(ids)}
    missing = [n for n in names if n not in row]
    if missing:
        raise SystemExit(f"{path}: no embedding for {len(missing)} images, e.g. {missing[0]}")
    emb = vectors[[row[n] for n in names]]
    if emb.ndim != 2 or not np.isfinite(emb).all():
        raise SystemExit(f"{path}: embeddings must be finite (N, D) rows")
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return emb.astype(np.float32), {"external": str(path), "config": config, "dim": int(emb.shape[1])}


def teacher_config(args, quick: bool):
    over = {"loop.epochs": args.teacher_epochs, "image_size": args.image_size, "loop.seed": args.seed,
            "loop.device": "cpu"}
    if quick:
        over.update({"P": 4, "K": 4, "loop.max_steps_per_epoch": 3})
    cfg = get_config("coil-e3", **over)
    cfg.name = "coil-mv-teacher"
    return cfg


def student_config(args, quick: bool, name: str, epochs: int, lr: float, bn: str,
                   views: Sequence[int] = (1, 2, 3)) -> MultiViewTrainConfig:
    loop = LoopConfig(epochs=epochs, lr=lr, optimizer="adamw", weight_decay=1e-4, schedule="cosine",
                      warmup_steps=0 if quick else 20, seed=args.seed, device="cpu", checkpoint_every=50,
                      max_steps_per_epoch=3 if quick else 0)
    return MultiViewTrainConfig(
        name=name, model=AlexNetConfig.named(args.student_width), image_size=args.image_size,
        P=4 if quick else 16, K=4, views=tuple(views), loss="triplet", margin=0.2, mining="batch_hard",
        bn=bn, loop=loop)


class Teacher:
    """The fine-tuned EfficientNet-Lite0 as an embedding callable (uint8 -> (N, D) unit rows)."""

    def __init__(self, model: EfficientNetGlobal, size: int):
        self.model, self.size = model.eval(), size
        self.normalize = PixelNormalize.for_efficientnet(model.name)

    @torch.inference_mode()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.model(to_input(images, self.size, "lite0")).numpy()

    @torch.no_grad()
    def on_views(self, views: torch.Tensor) -> torch.Tensor:
        """Float views (N, 3, S, S) in [0, 1] (the student's augmented inputs) -> (N, D) unit rows,
        normalised for the teacher's network: the teacher of consistent teaching."""
        x = self.normalize(views)
        return self.model(square_resize(x, self.size) if x.shape[-1] != self.size else x)


@torch.inference_mode()
def student_view_features(model, images: np.ndarray, size: int, batch: int = 128) -> torch.Tensor:
    """Per-view features at MV-AlexNet's pooling level (conv5 maps) for every image."""
    out = [model.view_features(to_input(images[i:i + batch], size, "alexnet"))
           for i in range(0, len(images), batch)]
    return torch.cat(out)


def throughput(fn: Callable[[np.ndarray], object], images: np.ndarray, batch: int = 64, repeats: int = 3) -> float:
    """Images per second of ``fn`` on batches of ``batch`` (best of ``repeats`` passes, after a warm-up),
    preprocessing included."""
    fn(images[:batch])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(images), batch):
            fn(images[i:i + batch])
        best = min(best, time.perf_counter() - start)
    return len(images) / best


# ----------------------------------------------------------------------------------------- evaluation

def evaluate(name: str, describe: Callable[[List[np.ndarray]], np.ndarray], sets_by_split: Dict[str, list],
             test_views: Sequence[int], seed: int) -> List[dict]:
    rows = []
    for split, sets in sets_by_split.items():
        db_desc = None
        for k in test_views:
            bench = make_benchmark(sets, k, seed=seed, name=f"{split} k={k}")
            if db_desc is None:
                db_desc = describe(bench.db_views)  # the database does not depend on k
            predictions = bench.rank(describe(bench.query_views), db_desc, k=100)
            sol = bench.solution
            rows.append({"model": name, "split": split, "test_views": k, "queries": len(sol),
                         "db_sets": len(bench.db_ids),
                         "top1": metrics.top_k_accuracy(predictions, sol, 1),
                         "top10": metrics.top_k_accuracy(predictions, sol, 10),
                         "mAP@100": metrics.map_at_k(predictions, sol, 100),
                         "nDCG@100": metrics.ndcg_at_k(predictions, sol, 100),
                         "ANMRR": metrics.anmrr(predictions, sol)})
    return rows


def plot_sweep(rows: List[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = sorted({r["split"] for r in rows})
    fig, axes = plt.subplots(1, len(splits), figsize=(5.5 * len(splits), 4), squeeze=False)
    for ax, split in zip(axes[0], splits):
        for model, marker in zip(list(MODELS) + [TRANSFER_MODEL], "os^D"):
            pts = sorted((r["test_views"], r["mAP@100"]) for r in rows if r["model"] == model and r["split"] == split)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=model)
        ax.set_xscale("log", base=2)
        ticks = sorted({r["test_views"] for r in rows})
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
        ax.set_xlabel("test views per query set")
        ax.set_ylabel("mAP@100")
        ax.set_title(f"COIL-100 {split}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------- main

def main(argv=None) -> dict:
    args = parse_args(argv)
    args.transfer = [t for t in args.transfer if t != "none"]
    try:  # option errors before any training
        dist = DistillConfig(relation=args.relation, relation_weight=args.relation_weight,
                             temperature=args.temperature,
                             feature_weight=args.feature_weight, feature_kind="cosine",
                             metric_weight=args.metric_weight, metric_loss="triplet", metric_margin=0.2,
                             center_teacher=not args.no_center_teacher, mixup_alpha=args.mixup)
    except ValueError as exc:
        raise SystemExit(f"distillation options: {exc}")
    if args.mixup > 0 and (not args.teacher_on_augmented_views or args.teacher_embeddings):
        raise SystemExit("--mixup needs --teacher-on-augmented-views with the built-in teacher (cached or "
                         "external teacher embeddings are of unmixed views)")
    if args.transfer and dist.relation == "none" and dist.feature_weight == 0:
        print("--relation none without feature matching: nothing to learn from a transfer set, no such student")
        args.transfer = []
    if args.transfer and args.teacher_embeddings:
        # the transfer set needs the teacher run on its crops; a file of embeddings cannot be
        print("--teacher-embeddings: no student distilled with a transfer set (it needs the teacher network)")
        args.transfer = []
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    root = data_root(args.data) / "coil100"
    out = Path(args.out) / ("quick" if args.quick else "")
    cache = Path(args.cache) / ("quick" if args.quick else "full")
    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    timer = StageTimer()

    catalog = read_view_catalog(root)
    seen = COIL100_SEEN[:8] if args.quick else COIL100_SEEN
    unseen = COIL100_UNSEEN[:8] if args.quick else COIL100_UNSEEN
    catalog = catalog.subset(catalog.rows_of(list(seen) + list(unseen)))
    with timer("decode"):
        images = load_image_cache(catalog, cache)
    sets_ds = split_view_sets(catalog, seen, n_sets=args.n_sets)
    sets_du = split_view_sets(catalog, unseen, n_sets=args.n_sets)
    train_rows = catalog.rows_of(seen)
    # training: every view of DS; set code = the evaluation's view set, so training sets of V views are
    # consecutive azimuths like the evaluation's
    set_code = np.full(len(catalog), -1, dtype=np.int64)
    for code, s in enumerate(sets_ds + sets_du):
        set_code[s.views] = code
    train_images = images[train_rows]
    train_labels = catalog.object_ids[train_rows]
    train_sets = set_code[train_rows]
    print(f"{len(catalog)} images; DS {len(seen)} objects / {len(sets_ds)} sets; "
          f"DU {len(unseen)} objects / {len(sets_du)} sets; training on {len(train_rows)} DS views")

    # -- teacher: fine-tune, then embed every image once (or take a user's embeddings)
    names = [p.name for p in catalog.paths]
    teacher_model = teacher = None
    if args.teacher_embeddings:
        teacher_emb, emb_config = external_teacher_embeddings(Path(args.teacher_embeddings), names)
    else:
        tcfg = teacher_config(args, args.quick)
        with timer("train teacher"):
            teacher_path = train_siamese(tcfg, [catalog.paths[i] for i in train_rows],
                                         [str(o) for o in train_labels], cache / "teacher")
        teacher_model = load_trained_efficientnet(teacher_path)
        teacher = Teacher(teacher_model, args.image_size)
        tconf = read_trained_config(teacher_path)
        emb_config = {"teacher": {k: tconf.get(k) for k in ("train_config", "data", "init")},
                      "image_size": args.image_size}
        with timer("teacher embeddings"):
            teacher_emb = compute_teacher_embeddings(
                teacher, images, names, cache_path=cache / "teacher_embeddings.h5", config=emb_config,
                batch_size=128)

    # -- MV-AlexNet from scratch, then distilled from the teacher
    scfg = student_config(args, args.quick, "mv-alexnet", args.student_epochs, 1e-3, "train")
    with timer("train mv-alexnet"):
        student_path, _ = train_mv_alexnet(train_images, train_labels, train_sets, cache / "mv_alexnet", scfg)
    dcfg = student_config(args, args.quick, "mv-alexnet-distilled", args.distill_epochs, args.distill_lr, "train",
                          views=args.distill_views)
    consistent = args.teacher_on_augmented_views and teacher is not None
    transfer = None
    if args.transfer:
        transfer = TransferSet(load_transfer_images(data_root(args.data), args.transfer, cache), teacher.on_views,
                               batch_size=args.transfer_batch, weight=args.transfer_weight,
                               augment=replace(dcfg.augment, scale=(0.1, 1.0), ratio=(0.75, 4 / 3)),
                               name="+".join(args.transfer))

    def distill(transfer_set) -> Path:
        # one folder per distillation setting: another setting trains anew instead of tripping over the
        # checkpoint of the last one (which a rerun with that setting then reuses)
        setting = {"distill": dist.to_dict(), "train": dcfg.to_dict(), "consistent": consistent,
                   "external": teacher is None}
        if transfer_set is not None:
            setting["transfer"] = transfer_set.describe()
        digest = hashlib.sha256(json.dumps(setting, sort_keys=True, default=str).encode()).hexdigest()[:10]
        path, _ = distill_mv_alexnet(
            student_path, train_images, train_labels, train_sets, teacher_emb[train_rows],
            cache / f"mv_alexnet_distilled-{digest}", dcfg, dist, teacher_view_pooling="mean",
            teacher_info=emb_config, teacher_model=teacher.on_views if consistent else None,
            transfer=transfer_set)
        return path

    with timer("distill"):
        distilled_paths = {"mv-alexnet-distilled": distill(None)}
    if transfer is not None:
        with timer("distill with transfer set"):
            distilled_paths[TRANSFER_MODEL] = distill(transfer)
    students = {"mv-alexnet": load_mv_alexnet(student_path)[0]}
    students.update({name: load_mv_alexnet(path)[0] for name, path in distilled_paths.items()})
    models = ["teacher", *students]

    # -- evaluation
    sets_by_split = {"DS": sets_ds, "DU": sets_du}
    rows: List[dict] = []
    with timer("evaluate"):
        rows += evaluate("teacher", lambda views: pool_view_embeddings(teacher_emb, views, "mean"),
                         sets_by_split, args.test_views, args.seed)
        for name, model in students.items():
            feats = student_view_features(model, images, args.image_size)
            with torch.inference_mode():
                rows += evaluate(name, lambda views, m=model, f=feats: m.describe_sets(f, views).numpy(),
                                 sets_by_split, args.test_views, args.seed)
            del feats

    # -- size and speed (same process, same batches: the ratios are what to read)
    speed_images = images[: args.speed_images]
    info = {}
    with timer("speed"):
        info["teacher"] = {"params": float("nan"), "img_per_s": float("nan")}
        if teacher_model is not None:
            # the ImageNet classifier (_fc) is not part of the descriptor network
            fc = getattr(teacher_model.net, "_fc", None)
            info["teacher"] = {"params": count_parameters(teacher_model) - (count_parameters(fc) if fc else 0),
                               "img_per_s": throughput(teacher, speed_images)}
        for name, model in students.items():
            def run(batch, m=model):
                with torch.inference_mode():
                    return m(to_input(batch, args.image_size, "alexnet").unsqueeze(1))
            info[name] = {"params": count_parameters(model), "img_per_s": throughput(run, speed_images)}
    for r in rows:
        r.update(info[r["model"]])

    # -- report
    def pick(model, split, k):
        return next(r for r in rows if r["model"] == model and r["split"] == split and r["test_views"] == k)

    summary = {}
    for name in distilled_paths:
        suffix = "" if name == "mv-alexnet-distilled" else "_transfer"
        for k in args.test_views:
            t, s, d = (pick(m, "DU", k)["mAP@100"] for m in ("teacher", "mv-alexnet", name))
            summary[f"DU_gap_closed{suffix}_k{k}"] = (d - s) / (t - s) if t != s else float("nan")
        summary[f"speedup_distilled{suffix}_vs_teacher"] = info[name]["img_per_s"] / info["teacher"]["img_per_s"]
    def more_views(m, sp):
        few, many = (pick(m, sp, k)["mAP@100"] for k in (min(args.test_views), max(args.test_views)))
        # a perfect score at the fewest views cannot be beaten: say so rather than report a failure
        return "beats" if many > few else ("both perfect" if few == many == 1.0 else "does not beat")

    for m in models:
        summary[f"{m}_most_views_vs_fewest"] = {sp: more_views(m, sp) for sp in ("DS", "DU")}
    summary["seconds"] = dict(timer.seconds)
    summary["peak_rss_mb"] = peak_rss_mb()
    columns = ["model", "split", "test_views", "top1", "top10", "mAP@100", "nDCG@100", "ANMRR", "params",
               "img_per_s"]
    headline = [r for r in rows if r["test_views"] in (1, 3)]
    table = write_results(rows, out, columns=columns, title="COIL-100 multi-view retrieval (all test_views)",
                          extra={"summary": summary, "args": vars(args),
                                 "protocol": {"n_sets": args.n_sets, "db_views": "all views of the set",
                                              "queries": "every set (leave-one-set-out)", "seed": args.seed}})
    sweep = []
    for m in models:
        for sp in ("DS", "DU"):
            row = {"model": m, "split": sp}
            row.update({f"k={k}": pick(m, sp, k)["mAP@100"] for k in args.test_views})
            sweep.append(row)
    plot = plot_sweep(rows, out / "map_vs_views.png")
    text = ["## COIL-100 multi-view retrieval: test_views 1 and 3", "",
            markdown_table(headline, columns), "",
            "## mAP@100 against test_views", "", markdown_table(sweep), "",
            "## Summary", "", "```", json.dumps(summary, indent=1), "```", "",
            "## All rows", "", table, ""]
    (out / "results.md").write_text("\n".join(text))
    print("\n".join(text[:6]))
    print(markdown_table(sweep))
    print(json.dumps(summary, indent=1))
    print(f"results: {out / 'results.json'}, {out / 'results.md'}, {plot}")
    return summary


if __name__ == "__main__":
    main()
