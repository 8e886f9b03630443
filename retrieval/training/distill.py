"""Relation distillation: a small student (MV-AlexNet) learns to rank like a large frozen teacher.

Notation, for one batch of B instances: student embeddings ``s_i`` (B, d), teacher embeddings
``t_i`` (B, D) (d and D may differ), ``hat x = x / ||x||``.

Relation losses (the student's pairwise structure follows the teacher's; no dimension needs to
match, and all of them are invariant to a rescaling of either side):

* **Similarity KL** (``relation="kl"``), the default: cosine similarity matrices
  ``S_ij = hat s_i . hat s_j`` and ``T_ij = hat t_i . hat t_j``; each row (without the diagonal) is
  turned into a distribution over the other items of the batch::

      p_ij = exp(T_ij / tau_t) / sum_{k != i} exp(T_ik / tau_t)
      q_ij = exp(S_ij / tau_s) / sum_{k != i} exp(S_ik / tau_s)
      L_KL = (1/B) sum_i sum_{j != i} p_ij (log p_ij - log q_ij)          (>= 0, = 0 iff q = p)

* **RKD distance** (Park et al., "Relational Knowledge Distillation", CVPR 2019)::

      psi(x)_ij = ||x_i - x_j|| / mu(x),   mu(x) = mean_{i != j} ||x_i - x_j||
      L_D = mean_{i != j} huber(psi(s)_ij - psi(t)_ij)

* **RKD angle**: ``e_ij = (x_i - x_j) / ||x_i - x_j||``, ``phi(x)_ijk = e_ij . e_kj`` (cosine of the
  angle at j)::

      L_A = mean_{i, j, k distinct} huber(phi(s)_ijk - phi(t)_ijk)

  ``huber(a) = a^2 / 2`` for ``|a| < 1`` else ``|a| - 1/2`` (smooth L1).

Direct feature matching (optional): a learned projection ``P`` (d -> D, linear) and::

    L_cos = mean_i (1 - cos(P s_i, t_i))         (``feature_kind="cosine"``)
    L_mse = mean_i ||hat(P s_i) - hat t_i||^2 / 2 (``feature_kind="mse"``; equals L_cos for unit rows)

Both are >= 0 and fall to 0 as the projected student reaches the teacher: they are minimised, so
they pull student and teacher together (the sign of a published version that pushed them apart is
exactly what the tests pin down).

Total: ``L = w_rel * L_relation + w_feat * L_feat + w_metric * L_metric`` with ``L_relation`` either
``L_KL`` or ``w_D L_D + w_A L_A`` (RKD; ``w_D = 1, w_A = 2`` as in the paper),
where ``L_metric`` is the labelled metric loss of :mod:`retrieval.training.losses` (triplet or
contrastive) on the student's embeddings. The teacher is frozen: its embeddings are detached (they
are typically precomputed once, :func:`compute_teacher_embeddings`), so gradients reach only the
student and the projection.

Inputs the loss is computed on: the labelled training view sets (the teacher's cached embeddings
of the plain views, or the teacher run on the student's augmented views: "consistent teaching");
optionally blended pairwise (``mixup_alpha``, function matching; no metric term then), and optionally
a :class:`TransferSet` of unlabelled images outside the evaluation's instances, whose random crops
both networks see in every step (relation / feature terms only). On COIL-100 the transfer set is
what moved the student towards the teacher on unseen objects (``benchmarks/multiview.py``, README).

The teacher is anything that maps images to embeddings: a :class:`features.base.GlobalExtractor`,
or a callable uint8 (N, H, W, 3) -> (N, D) (see :func:`features.multiview.as_embedding_fn`). A user
with CLIP weights wraps CLIP's image tower (its projected *class* embedding, i.e. the global token,
not the patch tokens) in such a callable; nothing here needs CLIP.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .augment import mixup
from .loop import seeded_init
from .losses import make_metric_loss, pairwise_distances

PathLike = Union[str, os.PathLike]

__all__ = ["similarity_kl_loss", "rkd_distance_loss", "rkd_angle_loss", "feature_matching_loss",
           "FeatureProjector", "DistillConfig", "DistillationLoss", "RELATIONS", "FEATURE_KINDS",
           "compute_teacher_embeddings", "center_embeddings", "pool_teacher_views", "pool_set_embeddings",
           "TransferSet", "distill_mv_alexnet"]

RELATIONS = ("kl", "rkd", "none")
FEATURE_KINDS = ("cosine", "mse")


def _check_pair(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.ndim != 2 or teacher.ndim != 2:
        raise ValueError(f"expected (B, d) student and (B, D) teacher embeddings, got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)} (a model returning "
                         f"tokens must select its global token first)")
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"student batch {student.shape[0]} != teacher batch {teacher.shape[0]}")
    if student.shape[0] < 2:
        raise ValueError("relation losses need at least 2 items in a batch")


def similarity_kl_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 0.1,
                       teacher_temperature: Optional[float] = None) -> torch.Tensor:
    """``L_KL`` of the module docstring: KL(p_i || q_i) between the teacher's and the student's
    row-softmaxed cosine-similarity rows (diagonal excluded), averaged over the batch."""
    _check_pair(student, teacher)
    tau_s = float(temperature)
    tau_t = float(teacher_temperature if teacher_temperature is not None else temperature)
    if tau_s <= 0 or tau_t <= 0:
        raise ValueError(f"temperatures must be > 0, got {tau_s}, {tau_t}")
    s = F.normalize(student.float(), dim=1)
    t = F.normalize(teacher.detach().float(), dim=1)
    eye = torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
    log_q = F.log_softmax((s @ s.t() / tau_s).masked_fill(eye, float("-inf")), dim=1)
    log_p = F.log_softmax((t @ t.t() / tau_t).masked_fill(eye, float("-inf")), dim=1)
    p = log_p.exp()
    # the diagonal has p = 0 and log p = log q = -inf: leave it out of the sum explicitly
    terms = (p * (log_p - log_q)).masked_fill(eye, 0.0)
    return terms.sum(dim=1).mean()


def _normalised_distances(x: torch.Tensor) -> torch.Tensor:
    d = pairwise_distances(x.float())
    off = ~torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return d / d[off].mean().clamp_min(1e-12)


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``L_D``: smooth-L1 between mean-normalised pairwise distances (module docstring)."""
    _check_pair(student, teacher)
    off = ~torch.eye(student.shape[0], dtype=torch.bool, device=student.device)
    with torch.no_grad():
        psi_t = _normalised_distances(teacher.detach())
    psi_s = _normalised_distances(student)
    return F.smooth_l1_loss(psi_s[off], psi_t[off])


def _angles(x: torch.Tensor) -> torch.Tensor:
    # e[j, i] = unit(x_i - x_j); phi[j, i, k] = e_ij . e_kj (angle at j between i and k)
    diff = x.float().unsqueeze(0) - x.float().unsqueeze(1)
    e = F.normalize(diff, p=2, dim=2)
    return torch.bmm(e, e.transpose(1, 2))


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``L_A``: smooth-L1 between the cosines of the angles of every triplet of distinct items."""
    _check_pair(student, teacher)
    b = student.shape[0]
    if b < 3:
        raise ValueError("the RKD angle loss needs at least 3 items in a batch")
    idx = torch.arange(b, device=student.device)
    distinct = ((idx[:, None, None] != idx[None, :, None]) & (idx[:, None, None] != idx[None, None, :])
                & (idx[None, :, None] != idx[None, None, :]))
    with torch.no_grad():
        phi_t = _angles(teacher.detach())
    phi_s = _angles(student)
    return F.smooth_l1_loss(phi_s[distinct], phi_t[distinct])


def feature_matching_loss(projected: torch.Tensor, teacher: torch.Tensor,
                          kind: str = "cosine") -> torch.Tensor:
    """``L_cos`` / ``L_mse`` of the module docstring between the projected student (B, D) and the
    teacher (B, D); minimising it moves the student towards the teacher."""
    if projected.shape != teacher.shape:
        raise ValueError(f"projected student {tuple(projected.shape)} and teacher "
                         f"{tuple(teacher.shape)} differ in shape; the projection must map to the "
                         f"teacher's dimension")
    t = F.normalize(teacher.detach().float(), dim=1)
    p = F.normalize(projected.float(), dim=1)
    if kind == "cosine":
        return (1.0 - (p * t).sum(dim=1)).mean()
    if kind == "mse":
        return 0.5 * (p - t).pow(2).sum(dim=1).mean()
    raise ValueError(f"unknown feature matching {kind!r}; choose one of {FEATURE_KINDS}")


class FeatureProjector(nn.Module):
    """Linear map from the student's space to the teacher's (d -> D), trained with the student and
    used only by the feature-matching term (the student's descriptor stays its own 256-d)."""

    def __init__(self, student_dim: int, teacher_dim: int):
        super().__init__()
        self.linear = nn.Linear(int(student_dim), int(teacher_dim), bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


@dataclass
class DistillConfig:
    """Weights and options of :class:`DistillationLoss` (module docstring for the formulas)."""

    relation: str = "kl"
    relation_weight: float = 1.0
    temperature: float = 0.1
    teacher_temperature: Optional[float] = None
    rkd_distance_weight: float = 1.0  # used when relation == "rkd" (RKD paper: 1 and 2)
    rkd_angle_weight: float = 2.0
    feature_weight: float = 0.0
    feature_kind: str = "cosine"
    metric_weight: float = 0.0
    metric_loss: str = "triplet"
    metric_margin: Optional[float] = None
    center_teacher: bool = True
    # > 0: every training set is blended with another one of the batch (mixup, lam ~ Beta(a, a))
    # before the student and the teacher see it; needs the teacher run on the views
    mixup_alpha: float = 0.0

    def __post_init__(self) -> None:
        if self.relation not in RELATIONS:
            raise ValueError(f"unknown relation {self.relation!r}; choose one of {RELATIONS}")
        if self.feature_kind not in FEATURE_KINDS:
            raise ValueError(f"unknown feature matching {self.feature_kind!r}; choose one of {FEATURE_KINDS}")
        for name in ("relation_weight", "rkd_distance_weight", "rkd_angle_weight", "feature_weight",
                     "metric_weight", "mixup_alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.mixup_alpha > 0 and self.metric_weight > 0:
            raise ValueError("mixup blends instances, so the labelled metric loss has no labels to use: "
                             "set metric_weight = 0 with mixup_alpha > 0")

    def to_dict(self) -> dict:
        return asdict(self)


class DistillationLoss(nn.Module):
    """``loss(student (B, d), teacher (B, D), labels=None) -> (total, {part: value})``.

    Holds the feature projection (when ``feature_weight > 0``) so its parameters go to the
    optimiser with the student's: ``optimizer = Adam([*student.parameters(), *loss.parameters()])``."""

    def __init__(self, config: DistillConfig, student_dim: int, teacher_dim: int):
        super().__init__()
        self.config = config
        self.projector = (FeatureProjector(student_dim, teacher_dim) if config.feature_weight > 0
                          else None)
        self.metric = (make_metric_loss(config.metric_loss, config.metric_margin)
                       if config.metric_weight > 0 else None)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor,
                labels: Optional[torch.Tensor] = None, labelled: bool = True):
        """``labelled=False``: the batch has no labels (e.g. transfer images), the metric term is
        left out."""
        c = self.config
        teacher = teacher.detach()
        parts: Dict[str, torch.Tensor] = {}
        if c.relation == "kl" and c.relation_weight > 0:
            parts["relation_kl"] = c.relation_weight * similarity_kl_loss(
                student, teacher, c.temperature, c.teacher_temperature)
        if c.relation == "rkd" and c.relation_weight > 0:
            if c.rkd_distance_weight > 0:
                parts["rkd_distance"] = c.relation_weight * c.rkd_distance_weight * rkd_distance_loss(
                    student, teacher)
            if c.rkd_angle_weight > 0:
                parts["rkd_angle"] = c.relation_weight * c.rkd_angle_weight * rkd_angle_loss(
                    student, teacher)
        if self.projector is not None:
            parts["feature"] = c.feature_weight * feature_matching_loss(
                self.projector(student), teacher, c.feature_kind)
        if self.metric is not None and labelled:
            if labels is None:
                raise ValueError("metric_weight > 0 needs the batch labels")
            parts["metric"] = c.metric_weight * self.metric(student, labels)
        if not parts:
            raise ValueError("every distillation term has weight 0")
        total = sum(parts.values())
        return total, {k: float(v.detach()) for k, v in parts.items()}


def compute_teacher_embeddings(teacher, images: Union[np.ndarray, torch.Tensor], ids: Sequence[str],
                               cache_path: Optional[PathLike] = None, config: Optional[dict] = None,
                               batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """The frozen teacher's (N, D) unit embeddings of ``images`` (uint8 (N, H, W, 3)), computed once
    and cached: with ``cache_path`` they are appended chunk by chunk to a global-feature file
    (:class:`features.store.GlobalFeatureWriter`, HDF5 with ``config``), so an interrupted run resumes
    where it stopped and a file made with another ``config`` (another teacher) is refused.

    ``teacher``: a :class:`features.base.GlobalExtractor` or callable uint8 (n, H, W, 3) -> (n, D)
    (checked by :func:`features.multiview.as_embedding_fn`)."""
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
    distilling them degrades the student (``benchmarks/multiview.py --no-center-teacher``: DU
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
                       transfer: Optional[TransferSet] = None):
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

    Returns (``out_dir/model.pt`` or None when stopped early, :class:`TrainResult`)."""
    from .multiview import (MultiViewTrainConfig, _sidecar_sha, embed_view_batch, load_mv_alexnet,
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
                                  mix=mix)
