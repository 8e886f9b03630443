"""Distillation losses: a small student (MV-AlexNet) learns to rank like a large frozen teacher.

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

The teacher is anything that maps images to embeddings: a :class:`retrieval.features.global_extractor.GlobalExtractor`,
or a callable uint8 (N, H, W, 3) -> (N, D) (see :func:`retrieval.features.multiview.as_embedding_fn`). A user
with CLIP weights wraps CLIP's image tower (its projected *class* embedding, i.e. the global token,
not the patch tokens) in such a callable; nothing here needs CLIP.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from retrieval.core.config import Config, ConfigError

from retrieval.training.losses import make_metric_loss, pairwise_distances

__all__ = ["similarity_kl_loss", "rkd_distance_loss", "rkd_angle_loss", "feature_matching_loss",
           "FeatureProjector", "DistillConfig", "DistillationLoss", "RELATIONS", "FEATURE_KINDS"]

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


@dataclass(frozen=True)
class DistillConfig(Config):
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

    def check(self) -> None:
        if self.relation not in RELATIONS:
            raise ConfigError(f"unknown relation {self.relation!r}; choose one of {RELATIONS}")
        if self.feature_kind not in FEATURE_KINDS:
            raise ConfigError(f"unknown feature matching {self.feature_kind!r}; choose one of {FEATURE_KINDS}")
        for name in ("relation_weight", "rkd_distance_weight", "rkd_angle_weight", "feature_weight",
                     "metric_weight", "mixup_alpha"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.mixup_alpha > 0 and self.metric_weight > 0:
            raise ConfigError("mixup blends instances, so the labelled metric loss has no labels to use: "
                              "set metric_weight = 0 with mixup_alpha > 0")


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
