"""Metric-learning and classification losses over a batch of embeddings.

Notation: ``x_i`` (B, D) embeddings (L2-normalised by the models here, but not required), ``y_i``
labels, ``d_ij = ||x_i - x_j||_2``. For unit vectors ``d_ij^2 = 2 - 2 cos(x_i, x_j)``, so distance 0
is similarity 1 and the contrastive margin ``tau`` on distances is the similarity ``1 - tau^2 / 2``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["pairwise_distances", "contrastive_loss", "triplet_loss", "ContrastiveLoss", "TripletLoss",
           "classification_loss", "METRIC_LOSSES", "make_metric_loss"]


def pairwise_distances(x: torch.Tensor, squared: bool = False, eps: float = 1e-12) -> torch.Tensor:
    """(B, D) -> (B, B) Euclidean distances ``d_ij`` (``d_ij^2`` when ``squared``), computed as
    ``|x_i|^2 + |x_j|^2 - 2 x_i.x_j`` (one matrix product) and clamped at 0; the square root is
    taken of ``max(d^2, eps)`` so its gradient stays finite when two embeddings coincide."""
    x = x.float()
    sq = (x * x).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.t())).clamp_min(0.0)
    if squared:
        return d2
    return d2.clamp_min(eps).sqrt()


def _pair_masks(labels: torch.Tensor) -> tuple:
    labels = labels.view(-1)
    same = labels[:, None] == labels[None, :]
    upper = torch.triu(torch.ones_like(same), diagonal=1)
    return same & upper, (~same) & upper


def contrastive_loss(x: torch.Tensor, labels: torch.Tensor, margin: float = 0.7,
                     reduction: str = "balanced") -> torch.Tensor:
    """Contrastive loss over every pair ``i < j`` in the batch (Hadsell et al. 2006; Radenovic et
    al. 2018)::

        l_ij = 1/2 d_ij^2                      if y_i == y_j   (pull positives to distance 0)
        l_ij = 1/2 max(0, tau - d_ij)^2        otherwise       (push negatives beyond tau)

    ``reduction``: ``'mean'`` averages ``l_ij`` over all valid pairs (positive and negative);
    ``'balanced'`` is ``mean over positive pairs + mean over negative pairs``, so the many easy
    negatives of a P x K batch do not drown the positives; ``'sum'`` sums. A batch without positive
    (or negative) pairs contributes 0 for that part. Zero exactly when every positive pair
    coincides and every negative pair is at least ``tau`` apart."""
    if x.ndim != 2 or labels.numel() != x.shape[0]:
        raise ValueError(f"need (B, D) embeddings and B labels, got {tuple(x.shape)} and {labels.numel()}")
    pos, neg = _pair_masks(labels.to(x.device))
    d2 = pairwise_distances(x, squared=True)
    d = d2.clamp_min(1e-12).sqrt()
    pos_terms = 0.5 * d2[pos]
    neg_terms = 0.5 * F.relu(margin - d[neg]).pow(2)
    if reduction == "sum":
        return pos_terms.sum() + neg_terms.sum()
    if reduction == "mean":
        n = pos_terms.numel() + neg_terms.numel()
        return (pos_terms.sum() + neg_terms.sum()) / max(n, 1)
    if reduction == "balanced":
        zero = x.new_zeros(()).float()
        p = pos_terms.mean() if pos_terms.numel() else zero
        q = neg_terms.mean() if neg_terms.numel() else zero
        return p + q
    raise ValueError(f"unknown reduction {reduction!r}; choose balanced, mean or sum")


def triplet_loss(x: torch.Tensor, labels: torch.Tensor, margin: float = 0.2,
                 mining: str = "batch_hard") -> torch.Tensor:
    """Triplet margin loss ``max(0, d_ap - d_an + m)`` within the batch (Hermans et al. 2017).

    ``'batch_hard'``: for each anchor ``a`` with at least one positive and one negative, its
    farthest positive and nearest negative: ``l_a = max(0, max_p d_ap - min_n d_an + m)``, averaged
    over those anchors. ``'batch_all'``: every valid triplet ``(a, p, n)``, averaged over the
    triplets with a non-zero loss (0 when there are none)."""
    if x.ndim != 2 or labels.numel() != x.shape[0]:
        raise ValueError(f"need (B, D) embeddings and B labels, got {tuple(x.shape)} and {labels.numel()}")
    labels = labels.view(-1).to(x.device)
    d = pairwise_distances(x)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=x.device)
    pos, neg = same & ~eye, ~same
    if mining == "batch_hard":
        valid = pos.any(dim=1) & neg.any(dim=1)
        if not valid.any():
            return d.sum() * 0.0
        hardest_pos = d.masked_fill(~pos, float("-inf")).amax(dim=1)
        hardest_neg = d.masked_fill(~neg, float("inf")).amin(dim=1)
        return F.relu(hardest_pos - hardest_neg + margin)[valid].mean()
    if mining == "batch_all":
        # t[a, p, n] = d_ap - d_an + m over valid (a, p, n)
        t = d[:, :, None] - d[:, None, :] + margin
        valid = pos[:, :, None] & neg[:, None, :]
        losses = F.relu(t[valid])
        active = losses > 0
        if not active.any():
            return d.sum() * 0.0
        return losses[active].mean()
    raise ValueError(f"unknown mining {mining!r}; choose batch_hard or batch_all")


class ContrastiveLoss(nn.Module):
    """:func:`contrastive_loss` as a module: ``loss(embeddings, labels)``."""

    def __init__(self, margin: float = 0.7, reduction: str = "balanced"):
        super().__init__()
        self.margin, self.reduction = float(margin), reduction

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return contrastive_loss(x, labels, self.margin, self.reduction)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, reduction={self.reduction}"


class TripletLoss(nn.Module):
    """:func:`triplet_loss` as a module: ``loss(embeddings, labels)``."""

    def __init__(self, margin: float = 0.2, mining: str = "batch_hard"):
        super().__init__()
        self.margin, self.mining = float(margin), mining

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return triplet_loss(x, labels, self.margin, self.mining)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, mining={self.mining}"


METRIC_LOSSES = ("contrastive", "triplet")


def make_metric_loss(name: str, margin: Optional[float] = None, **options) -> nn.Module:
    """``'contrastive'`` (options: reduction) or ``'triplet'`` (options: mining) with ``margin``."""
    if name == "contrastive":
        return ContrastiveLoss(0.7 if margin is None else margin, **options)
    if name == "triplet":
        return TripletLoss(0.2 if margin is None else margin, **options)
    raise ValueError(f"unknown metric loss {name!r}; choose one of {METRIC_LOSSES}")


def classification_loss(logits: torch.Tensor, labels: torch.Tensor,
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """Softmax cross-entropy ``-log softmax(z)_y`` averaged over the batch (computed in float32)."""
    return F.cross_entropy(logits.float(), labels.view(-1).to(logits.device), label_smoothing=label_smoothing)
