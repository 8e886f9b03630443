"""Classification heads put on top of an embedding network for fine-tuning (E2); only the
embedding network is kept for retrieval, the head is thrown away after training.

* :class:`LinearHead`: ``z = W x + b`` (optionally times a fixed ``scale``; useful when ``x`` is
  L2-normalised, where ``|W x|`` would otherwise have to grow large before the softmax saturates).
* :class:`ArcFaceHead` (Deng et al., CVPR 2019): with ``cos t_j = <x / |x|, w_j / |w_j|>``, the logits
  are ``s cos t_j`` for ``j != y`` and ``s cos(t_y + m)`` for the true class. At ``m = 0`` it is the
  plain scaled cosine softmax ("normalised softmax"). When ``t_y + m > pi`` (``cos(t_y+m)`` would stop
  decreasing in ``t_y``) the target logit is ``s (cos t_y - m sin m)`` instead, which keeps it
  monotonic (the usual ArcFace fallback).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["LinearHead", "ArcFaceHead", "make_head", "HEADS"]


class LinearHead(nn.Module):
    """``logits = scale * (W x + b)``; ``labels`` are accepted and ignored (common head signature)."""

    def __init__(self, in_dim: int, n_classes: int, bias: bool = True, scale: float = 1.0):
        super().__init__()
        self.fc = nn.Linear(int(in_dim), int(n_classes), bias=bias)
        self.scale = float(scale)
        nn.init.normal_(self.fc.weight, std=0.01)
        if bias:
            nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.fc(x.float()) * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class ArcFaceHead(nn.Module):
    """Additive angular margin head: ``forward(x, labels)`` gives the training logits (margin on the
    true class), ``forward(x)`` the margin-free ``s cos t`` for prediction."""

    def __init__(self, in_dim: int, n_classes: int, s: float = 30.0, m: float = 0.3):
        super().__init__()
        if s <= 0:
            raise ValueError(f"ArcFace scale s must be > 0, got {s}")
        if not 0 <= m < math.pi / 2:
            raise ValueError(f"ArcFace margin m must be in [0, pi/2), got {m}")
        self.weight = nn.Parameter(torch.empty(int(n_classes), int(in_dim)))
        nn.init.xavier_uniform_(self.weight)
        self.s, self.m = float(s), float(m)

    def cosine(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x.float(), dim=1) @ F.normalize(self.weight, dim=1).t()

    def forward(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        cos = self.cosine(x)
        if labels is None or self.m == 0:
            return self.s * cos
        labels = labels.view(-1).to(cos.device)
        cos_y = cos.gather(1, labels[:, None]).clamp(-1.0, 1.0)
        sin_y = (1.0 - cos_y * cos_y).clamp_min(1e-12).sqrt()
        cos_margin = cos_y * math.cos(self.m) - sin_y * math.sin(self.m)  # cos(t + m)
        # t + m > pi  <=>  t > pi - m  <=>  cos t < cos(pi - m)
        fallback = cos_y - self.m * math.sin(self.m)
        target = torch.where(cos_y > math.cos(math.pi - self.m), cos_margin, fallback)
        return self.s * cos.scatter(1, labels[:, None], target)

    def extra_repr(self) -> str:
        return f"classes={self.weight.shape[0]}, dim={self.weight.shape[1]}, s={self.s}, m={self.m}"


HEADS = ("linear", "arcface", "cosine")


def make_head(name: str, in_dim: int, n_classes: int, **options) -> nn.Module:
    """``'linear'`` (options: bias, scale), ``'arcface'`` (s, m) or ``'cosine'`` (ArcFace with m=0; s)."""
    if name == "linear":
        return LinearHead(in_dim, n_classes, **options)
    if name == "arcface":
        return ArcFaceHead(in_dim, n_classes, **options)
    if name == "cosine":
        options = dict(options)
        options["m"] = 0.0
        return ArcFaceHead(in_dim, n_classes, **options)
    raise ValueError(f"unknown head {name!r}; choose one of {HEADS}")
