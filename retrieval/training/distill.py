"""Distilling a frozen teacher into MV-AlexNet: the teacher's cached embeddings, transfer sets and
the training run (the losses and their formulas are in :mod:`retrieval.training.distill_losses`).

Inputs the loss is computed on: the labelled training view sets (the teacher's cached embeddings
of the plain views, or the teacher run on the student's augmented views: "consistent teaching");
optionally blended pairwise (``mixup_alpha``, function matching; no metric term then), and optionally
a :class:`TransferSet` of unlabelled images outside the evaluation's instances, whose random crops
both networks see in every step (relation / feature terms only).

Whether distillation helps is not assumed: the multi-view protocol (:mod:`retrieval.experiments.mv_models`)
chooses the distillation weight and the number of epochs on held-out seen instances, with "no
distillation" among the candidates (``snapshot_epochs`` below keeps the student of every candidate
epoch count from one run).

The teacher is anything that maps images to embeddings: a :class:`retrieval.features.global_extractor.GlobalExtractor`,
or a callable uint8 (N, H, W, 3) -> (N, D) (see :func:`retrieval.features.multiview.as_embedding_fn`). A user
with CLIP weights wraps CLIP's image tower (its projected *class* embedding, i.e. the global token,
not the patch tokens) in such a callable; nothing here needs CLIP.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from retrieval.training.augment import mixup
from retrieval.training.distill_losses import (FEATURE_KINDS, RELATIONS, DistillationLoss, DistillConfig,  # noqa: F401
                             FeatureProjector, feature_matching_loss, rkd_angle_loss, rkd_distance_loss,
                             similarity_kl_loss)
from retrieval.training.loop import seeded_init

PathLike = Union[str, os.PathLike]

__all__ = ["similarity_kl_loss", "rkd_distance_loss", "rkd_angle_loss", "feature_matching_loss",
           "FeatureProjector", "DistillConfig", "DistillationLoss", "RELATIONS", "FEATURE_KINDS",
           "compute_teacher_embeddings", "center_embeddings", "pool_teacher_views", "pool_set_embeddings",
           "TransferSet", "distill_mv_alexnet"]


def compute_teacher_embeddings(teacher, images: Union[np.ndarray, torch.Tensor], ids: Sequence[str],
                               cache_path: Optional[PathLike] = None, config: Optional[dict] = None,
                               batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """The frozen teacher's (N, D) unit embeddings of ``images`` (uint8 (N, H, W, 3)), computed once
    and cached: with ``cache_path`` they are appended chunk by chunk to a global-feature file
    (:class:`retrieval.features.store.GlobalFeatureWriter`, HDF5 with ``config``), so an interrupted run resumes
    where it stopped and a file made with another ``config`` (another teacher) is refused.

    ``teacher``: a :class:`retrieval.features.global_extractor.GlobalExtractor` or callable uint8 (n, H, W, 3) -> (n, D)
    (checked by :func:`retrieval.features.multiview.as_embedding_fn`)."""
    from retrieval.features.multiview import as_embedding_fn
    from retrieval.features.store import FeatureFileError, GlobalFeatureWriter, load_global

    ids = [str(i) for i in ids]
    if len(ids) != len(images):
        raise ValueError(f"{len(images)} images but {len(ids)} ids")
    if len(ids) == 0:
        raise ValueError("no images to embed")
    if len(set(ids)) != len(ids):
        raise ValueError("image ids must be unique")
    embed = as_embedding_fn(teacher)
    config = dict(config or {})

    def batch(lo: int, hi: int) -> np.ndarray:
        chunk = images[lo:hi]
        chunk = chunk.numpy() if torch.is_tensor(chunk) else np.asarray(chunk)
        return embed(chunk)

    if cache_path is None:
        steps = range(0, len(ids), batch_size)
        return np.concatenate([batch(lo, lo + batch_size) for lo in
                               tqdm(steps, desc="teacher embeddings", disable=not progress, leave=False)])
    cache_path = Path(cache_path)
    if cache_path.is_file():
        try:
            stored_ids, vectors, _ = load_global(cache_path, expect_config=config)
            if stored_ids == ids:
                return vectors
        except FeatureFileError as exc:
            if "incomplete" not in str(exc):
                raise  # another configuration, another format, damaged: say so
    # an interrupted file is resumed by the writer (which also refuses another configuration);
    # its dimension is learnt from the first batch
    first = batch(0, min(batch_size, len(ids)))
    with GlobalFeatureWriter(cache_path, first.shape[1], config) as writer:
        done = writer.done_ids
        if done != ids[:len(done)]:
            raise FeatureFileError(cache_path, "holds teacher embeddings of other images than asked "
                                               "for; delete it or use another cache folder")
        steps = range(len(done), len(ids), batch_size)
        for lo in tqdm(steps, desc="teacher embeddings", disable=not progress, leave=False):
            hi = min(lo + batch_size, len(ids))
            writer.append(ids[lo:hi], first if lo == 0 else batch(lo, hi))
    stored_ids, vectors, _ = load_global(cache_path)
    if stored_ids != ids:
        raise FeatureFileError(cache_path, "ids on disk do not match the images after writing")
    return vectors


def center_embeddings(embeddings: np.ndarray) -> np.ndarray:
    """``L2(e_i - mean_j e_j)``: unit embeddings with their common direction removed.

    A CNN's pooled descriptors of non-negative (ReLU / ReLU6) activations share a large common
    component: the fine-tuned Lite0 teacher's COIL-100 embeddings have a mean of norm 0.92 and a
    mean pairwise cosine of 0.84 (0.00 after centring). Raw, every similarity row the relation
    loss matches is nearly flat and a cosine to the teacher is mostly explained by the mean, so
    distilling them degrades the student (``benchmarks/multiview.py --set center_teacher=false``: DU
    mAP@100 at one view fell from 87.3 before distillation to 83.8; with ``--feature-weight 0
    --metric-weight 0`` as well, to 75.1); centred, the rows carry the teacher's ranking."""
    e = np.asarray(embeddings, dtype=np.float32)
    if e.ndim != 2 or len(e) < 2:
        raise ValueError(f"centring needs (N >= 2, D) embeddings, got {e.shape}")
    centred = e - e.mean(axis=0, keepdims=True)
    return centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)


def pool_teacher_views(teacher: torch.Tensor, rows: np.ndarray, mode: str = "mean") -> torch.Tensor:
    """The teacher's set descriptors for a (B, V) batch of view indices from its cached per-view
    unit embeddings (N, D): ``L2(pool_v t_v)`` (embedding-level view pooling; V = 1 is the view's
    own embedding)."""

    index = torch.as_tensor(np.asarray(rows, dtype=np.int64))
    return pool_set_embeddings(teacher[index.reshape(-1)].unflatten(0, tuple(index.shape)), mode)


def pool_set_embeddings(per_view: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """(B, V, D) unit view embeddings -> (B, D) set descriptors ``L2(pool_v)`` (V = 1: as they are)."""
    from retrieval.features.multiview import pool_views
    from retrieval.features.pooling import l2n

    pooled = pool_views(per_view, mode, dim=1)
    return pooled if per_view.shape[1] == 1 else l2n(pooled)


@dataclass
class TransferSet:
    """Unlabelled images the student is also distilled on (a "transfer set"): in every step
    ``batch_size`` of them are drawn, augmented by ``augment`` (random resized crops give many
    different inputs per image), shown to the student as single views and to ``teacher`` (a frozen
    callable: float views (n, 3, S, S) in [0, 1] -> (n, D) embeddings) as the same crops. Their loss
    is :class:`DistillationLoss` without the metric term (no labels), times ``weight``.

    ``images``: uint8 (M, H, W, 3), one size (any size: crops are resized to the training size).
    Nothing of the retrieval task's evaluation instances may be in it."""

    images: Union[np.ndarray, torch.Tensor]
    teacher: Callable[[torch.Tensor], torch.Tensor]
    batch_size: int = 64
    weight: float = 1.0
    augment: Optional[object] = None  # AugmentConfig; None: the distillation's own augmentation
    name: str = "transfer"

    def __post_init__(self) -> None:
        shape = tuple(self.images.shape)
        if len(shape) != 4 or shape[-1] != 3 or shape[0] < 2:
            raise ValueError(f"transfer images must be uint8 (M >= 2, H, W, 3), got {shape}")
        if self.images.dtype not in (np.uint8, torch.uint8):
            raise ValueError(f"transfer images must be uint8, got {self.images.dtype}")
        if self.batch_size < 2:
            raise ValueError(f"transfer batch_size must be >= 2 (relation losses), got {self.batch_size}")
        if self.weight < 0:
            raise ValueError(f"transfer weight must be >= 0, got {self.weight}")

    def describe(self) -> dict:
        arr = self.images.numpy() if torch.is_tensor(self.images) else np.asarray(self.images)
        digest = hashlib.sha256(np.ascontiguousarray(arr[:: max(1, len(arr) // 256), ::5, ::5]).tobytes())
        aug = self.augment.to_dict() if self.augment is not None else None
        return {"name": self.name, "n_images": int(len(arr)), "shape": list(arr.shape[1:]),
                "fingerprint": digest.hexdigest(), "batch_size": int(self.batch_size),
                "weight": float(self.weight), "augment": aug}


def distill_mv_alexnet(init_model: PathLike, images, labels: Sequence, set_codes: Sequence[int],
                       teacher_embeddings: np.ndarray, out_dir: PathLike, cfg=None,
                       distill: Optional[DistillConfig] = None, teacher_view_pooling: str = "mean",
                       teacher_info: Optional[dict] = None, resume: bool = True, progress: bool = True,
                       stop_after_steps: Optional[int] = None,
                       teacher_model: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                       transfer: Optional[TransferSet] = None, snapshot_epochs: Sequence[int] = ()):
    """Distil a frozen teacher into MV-AlexNet.

    The student starts from the trained MV-AlexNet in ``init_model`` (its architecture must be
    ``cfg.model``) and is trained on the same P x K view-set batches as MV-AlexNet training
    (:class:`retrieval.training.multiview.ViewSetSampler`), with :class:`DistillationLoss` between its
    set descriptors and the teacher's set descriptors for the same views. Those come from
    ``teacher_embeddings`` (N, D), the teacher's per-view embeddings of ``images`` computed once
    (:func:`compute_teacher_embeddings`), pooled per set (:func:`pool_teacher_views`), so the
    teacher never runs during distillation. Student views are augmented as in training (mild
    crops / colour); the teacher's cached embeddings are of the unaugmented views.

    ``teacher_model`` (optional; "consistent teaching"): a frozen callable mapping the student's
    augmented views, float (N, 3, S, S) in [0, 1], to (N, D) unit embeddings; the teacher then
    runs on exactly the views the student sees in every step (slower: one teacher forward per view),
    and ``teacher_embeddings`` only supply the centring mean (and the dimension).

    ``transfer`` (optional, :class:`TransferSet`): unlabelled images distilled in every step
    besides the labelled batch (relation and feature terms only), with the teacher run on their
    crops.

    ``snapshot_epochs``: also keep the student after each of these epochs
    (:func:`retrieval.training.multiview.snapshot_path`), for choosing the number of epochs.

    Returns (``out_dir/model.pt`` or None when stopped early, :class:`TrainResult`)."""
    from retrieval.training.multiview import (MultiViewTrainConfig, _sidecar_sha, embed_view_batch, load_mv_alexnet,
                            run_multiview_training)

    cfg = cfg or MultiViewTrainConfig(name="mv-alexnet-distilled")
    distill = distill or DistillConfig()
    init_path = Path(init_model)
    if init_path.is_dir():
        init_path = init_path / "model.pt"
    student, init_cfg = load_mv_alexnet(init_path)
    if init_cfg["model"] != cfg.model.to_dict():
        raise ValueError(f"{init_path}: the initial MV-AlexNet has architecture {init_cfg['model']}, "
                         f"the distillation configuration asks for {cfg.model.to_dict()}")
    if transfer is not None and not (distill.relation != "none" and distill.relation_weight > 0
                                     or distill.feature_weight > 0):
        raise ValueError("a transfer set is unlabelled: it needs a relation or feature-matching term "
                         "(relation != 'none' or feature_weight > 0)")
    if distill.mixup_alpha > 0 and teacher_model is None:
        raise ValueError("mixup_alpha > 0 needs teacher_model: cached teacher embeddings are of the "
                         "unmixed views")
    teacher = np.ascontiguousarray(teacher_embeddings, dtype=np.float32)
    if teacher.ndim != 2 or len(teacher) != len(images):
        raise ValueError(f"teacher embeddings must be (N, D) for the N = {len(images)} training images, "
                         f"got {teacher.shape}")
    if not np.isfinite(teacher).all():
        raise ValueError("teacher embeddings contain NaN or infinite values")
    norms = np.linalg.norm(teacher, axis=1)
    if np.abs(norms - 1).max() > 1e-3:
        raise ValueError("teacher embeddings must be L2-normalised rows (as compute_teacher_embeddings "
                         "returns them)")
    mean = torch.from_numpy(teacher.mean(axis=0)) if distill.center_teacher else None
    if distill.center_teacher:
        teacher = center_embeddings(teacher)
    teacher_t = torch.from_numpy(teacher)
    with seeded_init(cfg.loop.seed):  # the projection's initialisation
        criterion = DistillationLoss(distill, student.out_dim, teacher.shape[1])
    extra = {"distill": criterion} if any(True for _ in criterion.parameters()) else None

    @torch.no_grad()
    def teach(network, views: torch.Tensor) -> torch.Tensor:
        """A teacher network's unit embeddings of float views (n, 3, S, S), centred as the cached ones."""
        t = network(views).float()
        return F.normalize(t - mean.to(t.device), dim=1) if mean is not None else t

    def batch_loss(desc, rows, y, ctx, views=None):
        if teacher_model is None:
            t = pool_teacher_views(teacher_t, rows, teacher_view_pooling).to(ctx.device)
        else:
            per_view = teach(teacher_model, views.flatten(0, 1))
            t = pool_set_embeddings(per_view.unflatten(0, tuple(views.shape[:2])), teacher_view_pooling)
        total, _parts = criterion(desc, t, y)
        if transfer is not None and transfer.weight > 0:
            total = total + transfer.weight * transfer_loss(ctx)
        return total

    transfer_images = None
    if transfer is not None:
        transfer_images = (transfer.images if torch.is_tensor(transfer.images)
                           else torch.from_numpy(np.ascontiguousarray(transfer.images)))
        transfer_aug = transfer.augment if transfer.augment is not None else cfg.augment
        transfer_aug = replace(transfer_aug, out_size=cfg.image_size)

    def transfer_loss(ctx) -> torch.Tensor:
        pick = torch.randint(0, len(transfer_images), (transfer.batch_size,), generator=ctx.generator)
        desc, views = embed_view_batch(student, transfer_images[pick].unsqueeze(1), transfer_aug, ctx,
                                       return_views=True)
        total, _parts = criterion(desc.float(), teach(transfer.teacher, views.flatten(0, 1)), labelled=False)
        return total

    mix = None
    if distill.mixup_alpha > 0:
        def mix(views, generator, alpha=float(distill.mixup_alpha)):
            return mixup(views, alpha, generator)

    run_extra = {"distill": distill.to_dict(), "teacher_view_pooling": teacher_view_pooling,
                 "init": {"path": str(init_path), "sha256": _sidecar_sha(init_path)},
                 "teacher_on_augmented_views": teacher_model is not None,
                 "transfer": transfer.describe() if transfer is not None else None,
                 "teacher": {"dim": int(teacher.shape[1]),
                             "sha256": hashlib.sha256(teacher.tobytes()).hexdigest(),
                             **(teacher_info or {})}}
    return run_multiview_training(student, cfg, images, labels, set_codes, out_dir, batch_loss,
                                  extra_modules=extra, run_extra=run_extra, resume=resume,
                                  progress=progress, stop_after_steps=stop_after_steps,
                                  title=f"{cfg.name}: distillation loss ({distill.relation})",
                                  model_extra={"distill": run_extra}, pass_views=teacher_model is not None,
                                  mix=mix, snapshot_epochs=snapshot_epochs)
