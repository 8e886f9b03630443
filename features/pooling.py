"""Global descriptors from a convolutional feature map: average, max and GeM pooling, L2
normalisation, multi-scale aggregation.

For a feature map ``X`` of shape (B, C, h, w) and channel ``c``:

* average: ``f_c = mean_{i,j} X_cij``
* max:     ``f_c = max_{i,j} X_cij``
* GeM:     ``f_c = (mean_{i,j} max(X_cij, eps)^p)^(1/p)`` (Radenovic et al., "Fine-tuning CNN image
  retrieval with no human annotation", TPAMI 2018). ``p = 1`` is average pooling and ``p -> inf``
  tends to max pooling; ``p`` may be a learned parameter.

Every pooled vector is then L2-normalised: ``d = f / ||f||_2``. Multi-scale: the image is fed at
several scales ``s`` and ``d = L2(sum_s L2(f_s))``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["l2n", "avg_pool", "max_pool", "gem_pool", "GeM", "AvgPool", "MaxPool", "make_pooling",
           "POOLINGS", "resize_tensor", "multiscale_descriptor"]

POOLINGS = ("avg", "max", "gem")


def l2n(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rows of ``x`` (B, D) divided by their L2 norm (a zero row stays zero)."""
    return x / x.norm(p=2, dim=1, keepdim=True).clamp_min(eps)


def avg_pool(fmap: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, C) spatial mean."""
    return fmap.mean(dim=(2, 3))


def max_pool(fmap: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, C) spatial max."""
    return fmap.amax(dim=(2, 3))


def gem_pool(fmap: torch.Tensor, p: torch.Tensor | float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """(B, C, h, w) -> (B, C) generalised mean ``(mean(max(x, eps)^p))^(1/p)``; differentiable in ``p``.

    Negative activations (EfficientNet-B's swish goes down to -0.28) are clamped to ``eps`` since the
    power mean is defined for positive values only."""
    return fmap.clamp(min=eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


class GeM(nn.Module):
    """GeM pooling with exponent ``p`` fixed (a buffer) or learned (an ``nn.Parameter``)."""

    def __init__(self, p: float = 3.0, learn_p: bool = False, eps: float = 1e-6):
        super().__init__()
        if not p > 0:
            raise ValueError(f"GeM exponent p must be > 0, got {p}")
        self.eps = float(eps)
        self.learn_p = bool(learn_p)
        if learn_p:
            self.p = nn.Parameter(torch.tensor([float(p)]))
        else:
            self.register_buffer("p", torch.tensor([float(p)]))

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return gem_pool(fmap, self.p, self.eps)

    def extra_repr(self) -> str:
        return f"p={float(self.p.detach()[0]):.4g}, learn_p={self.learn_p}, eps={self.eps}"


class AvgPool(nn.Module):
    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return avg_pool(fmap)


class MaxPool(nn.Module):
    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return max_pool(fmap)


def make_pooling(name: str, gem_p: float = 3.0, learn_p: bool = False) -> nn.Module:
    """The pooling module called ``name`` ('avg', 'max' or 'gem')."""
    name = str(name).lower()
    if name in ("avg", "average", "mean"):
        return AvgPool()
    if name == "max":
        return MaxPool()
    if name == "gem":
        return GeM(gem_p, learn_p=learn_p)
    raise ValueError(f"unknown pooling {name!r}; choose one of {POOLINGS}")


def resize_tensor(x: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, 3, H, W) resized by ``scale`` (bilinear, antialiased when shrinking), at least 1 px a side."""
    if scale == 1.0:
        return x
    h, w = x.shape[-2:]
    size = (max(1, int(round(h * scale))), max(1, int(round(w * scale))))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=scale < 1.0)


def multiscale_descriptor(describe: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                          scales: Sequence[float] = (1.0,)) -> torch.Tensor:
    """``L2(sum_s describe(resize(x, s)))`` where ``describe`` returns L2-normalised (B, D) rows."""
    if len(scales) == 0:
        raise ValueError("need at least one scale")
    total = None
    for s in scales:
        d = describe(resize_tensor(x, float(s)))
        total = d if total is None else total + d
    return l2n(total) if len(scales) > 1 else total
