"""The models of the multi-view protocol (:mod:`retrieval.experiments.multiview`): images decoded once, the
teacher (EfficientNet-Lite0 fine-tuned with ``retrieval.training``, or a user's embeddings), MV-AlexNet,
and the distilled MV-AlexNets among which held-out seen instances choose.

Distillation is a candidate, not a given: the students distilled with every weight in
``distill_weights`` are kept after every epoch count in ``distill_epochs`` (one run per weight, a
snapshot per epoch count), and :func:`choose_student` picks among them AND the undistilled MV-AlexNet
("none", preferred on ties) by mAP@100 on the view sets of held-out *seen* objects (never unseen ones),
with :func:`retrieval.core.crossfit.choose`. When validation says distillation hurts, the delivered student
is the undistilled one.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch

from retrieval.evaluation import metrics
from retrieval.core.crossfit import choose
from retrieval.datasets.viewsets import ViewSet, make_benchmark
from retrieval.features.alexnet import ALEXNET_CONFIGS, normalise
from retrieval.features.efficientnet import EfficientNetGlobal, preprocess as lite_preprocess
from retrieval.core.fileio import atomic_write, atomic_write_text
from retrieval.training.augment import square_resize, uint8_to_float
from retrieval.training.data import decode_images
from retrieval.training.embedding import PixelNormalize
from retrieval.training.loop import LoopConfig
from retrieval.training.multiview import MultiViewTrainConfig, load_mv_alexnet, snapshot_path

__all__ = ["decoded_array", "to_input", "Teacher", "external_teacher_embeddings", "student_config",
           "student_view_features", "throughput", "load_transfer_images", "TRANSFER_SOURCES",
           "NO_DISTILLATION", "candidate_name", "choose_student", "set_descriptors"]

#: the candidate that keeps the undistilled MV-AlexNet (first in preference: ties go to it)
NO_DISTILLATION = "none"


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


def to_input(images_uint8: np.ndarray, size: int, model: str) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised network input at ``size`` px for 'lite0' or 'alexnet'."""
    if model == "lite0":
        x = lite_preprocess(images_uint8, "lite0")
        return square_resize(x, size) if x.shape[-1] != size else x
    x = square_resize(uint8_to_float(torch.from_numpy(np.ascontiguousarray(images_uint8))), size)
    return normalise(x)


#: transfer-set sources under the data folder: (folder holding the images, glob)
TRANSFER_SOURCES = {"oxford": ("oxford5k_subset/images", "*.jpg"), "coil20": ("coil20/images", "*.png")}
TRANSFER_SIZE = 192  # side of the stored transfer images (crops of them are resized to the input size)


def load_transfer_images(data: Path, sources: Sequence[str], cache: Path) -> np.ndarray:
    """uint8 (M, 192, 192, 3): every image of the named sources, shorter side resized to 192 and
    centre-cropped (grayscale made RGB by the image loader), decoded once and kept as .npy."""
    paths = []
    for name in sources:
        folder, pattern = TRANSFER_SOURCES[name]
        found = sorted((data / folder).glob(pattern))
        if not found:
            raise SystemExit(f"transfer source {name!r}: no {pattern} under {data / folder}")
        paths += found
    listing = json.dumps({"files": [str(p) for p in paths], "size": TRANSFER_SIZE})
    name = "transfer-" + hashlib.sha256(listing.encode()).hexdigest()[:10]
    return decoded_array(paths, cache / f"{name}.npy", TRANSFER_SIZE, what="transfer images")


def external_teacher_embeddings(path: Path, names: Sequence[str]):
    """The teacher hook for any extractor (e.g. CLIP's image tower, its global/class embedding): per-image
    embeddings from a global-feature file whose ids are the image file names; rows are L2-normalised."""
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


def student_config(conf, name: str, epochs: int, lr: float, views: Sequence[int] = (1, 2, 3)
                   ) -> MultiViewTrainConfig:
    """MV-AlexNet training (or distillation) settings from the protocol configuration ``conf``."""
    loop = LoopConfig(epochs=epochs, lr=lr, optimizer="adamw", weight_decay=1e-4, schedule="cosine",
                      warmup_steps=0 if conf.max_steps_per_epoch else 20, seed=conf.seed, device="cpu",
                      checkpoint_every=50, max_steps_per_epoch=conf.max_steps_per_epoch)
    return MultiViewTrainConfig(
        name=name, model=ALEXNET_CONFIGS.get(conf.student_width), image_size=conf.image_size,
        P=conf.batch_p, K=4, views=tuple(views), loss="triplet", margin=0.2, mining="batch_hard",
        bn="train", loop=loop)


@torch.inference_mode()
def student_view_features(model, images: np.ndarray, size: int, batch: int = 128) -> torch.Tensor:
    """Per-view features at MV-AlexNet's pooling level (conv5 maps) for every image."""
    out = [model.view_features(to_input(images[i:i + batch], size, "alexnet"))
           for i in range(0, len(images), batch)]
    return torch.cat(out)


def set_descriptors(model, images: np.ndarray, size: int) -> Callable[[List[np.ndarray]], np.ndarray]:
    """``describe(list of view-row arrays) -> (S, D)`` set descriptors of an MV-AlexNet: every image's
    conv5 map computed once, pooled per set on demand."""
    feats = student_view_features(model, images, size)

    def describe(views: List[np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return model.describe_sets(feats, views).numpy()

    return describe


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


def candidate_name(weight: float, epochs: int) -> str:
    return f"kl x{weight:g}, {epochs} ep"


def snapshot_of(run_dir: Path, epochs: int, max_epochs: int) -> Path:
    """The student after ``epochs`` epochs of the run in ``run_dir`` (the final model at the last)."""
    path = snapshot_path(run_dir, epochs)
    if not path.is_file() and epochs == max_epochs:
        path = run_dir / "model.pt"
    if not path.is_file():
        raise SystemExit(f"{path}: no snapshot of the distilled student after {epochs} epochs (the run "
                         f"was interrupted between its checkpoint and the snapshot: delete {run_dir})")
    return path


def choose_student(candidates: Dict[str, Path], undistilled: Path, images: np.ndarray, size: int,
                   val_sets: Sequence[ViewSet], test_views: Sequence[int], seed: int) -> Tuple[str, dict]:
    """Pick the delivered student on held-out seen instances.

    Every candidate (``NO_DISTILLATION`` -> ``undistilled``, and each distilled student) is scored by
    AP@100 of every validation query at every ``test_views``; :func:`retrieval.core.crossfit.choose`
    takes the best mean, ties going to no distillation. Returns (chosen name, ``{"means": {name:
    mAP@100}, "queries": n, "test_views": [...]}``)."""
    per_query: Dict[str, Dict[str, float]] = {}
    benches = [make_benchmark(val_sets, k, seed=seed, name=f"validation k={k}") for k in test_views]
    for name, path in {NO_DISTILLATION: undistilled, **candidates}.items():
        describe = set_descriptors(load_mv_alexnet(path)[0], images, size)
        db = describe(benches[0].db_views)  # the database does not depend on k
        scores: Dict[str, float] = {}
        for k, bench in zip(test_views, benches):
            ranked = bench.rank(describe(bench.query_views), db, k=100)
            for qid, ap in metrics.per_query_scores("ap@k", ranked, bench.solution, 100).items():
                scores[f"k{k}:{qid}"] = ap
        per_query[name] = scores
    chosen = choose(per_query, prefer=[NO_DISTILLATION])
    means = {name: float(np.mean(list(s.values()))) for name, s in per_query.items()}
    return chosen, {"means": means, "queries": len(next(iter(per_query.values()))),
                    "test_views": list(test_views)}


def transfer_augment(augment):
    """The transfer set's crops: wider than the training views' (many different inputs per image)."""
    return replace(augment, scale=(0.1, 1.0), ratio=(0.75, 4 / 3))
