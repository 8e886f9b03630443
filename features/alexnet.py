"""AlexNet-style convolutional trunk (Krizhevsky et al. 2012), a single-view global descriptor network
on it, and MV-AlexNet: the trunk + MVCNN view pooling + a head to a 256-d unit descriptor.

Trunk, for 96-128 px inputs (the layer pattern of AlexNet's "one tower" variant, widths from
:data:`ALEXNET_CONFIGS`; each conv is followed by optional BatchNorm and ReLU)::

    conv1 11x11 /4 pad 2 -> maxpool 3 /2 -> conv2 5x5 pad 2 -> maxpool 3 /2
    -> conv3 3x3 pad 1 -> conv4 3x3 pad 1 -> conv5 3x3 pad 1          (feature map, stride ~16)

At 128 px the maps are 31 -> 15 -> 7 px, so conv5 gives a 7x7 map (5x5 at 96 px). AlexNet's pool5
and fully connected layers are replaced by the retrieval head: spatial GeM pooling (p = 3), a linear
layer to ``out_dim`` (256) and L2 normalisation. MV-AlexNet pools the views' conv5 maps element-wise
(max, as MVCNN) before the head.

Weights: random initialisation (Kaiming normal for convs, as torch's default family). There are no
offline ImageNet AlexNet weights in this project (torchvision cannot be used), so MV-AlexNet is
trained from scratch on the training instances (``retrieval.training.multiview``).

Input normalisation: ``(pixel / 255 - mean) / std`` with the ImageNet mean / std (:func:`preprocess`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from retrieval.core.config import Config, ConfigError, Registry

from retrieval.features.multiview import MultiViewNet
from retrieval.features.pooling import l2n, make_pooling

__all__ = ["ALEXNET_CONFIGS", "AlexNetConfig", "AlexNetTrunk", "AlexNetGlobal", "MVAlexNet",
           "preprocess", "count_parameters"]

#: channel widths of conv1..conv5 of the torchvision-style single tower
ALEXNET_WIDTHS = (64, 192, 384, 256, 256)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess(images) -> torch.Tensor:
    """uint8 RGB (B, H, W, 3) or (H, W, 3) (numpy or tensor) -> float32 (B, 3, H, W),
    ``(pixel / 255 - mean) / std`` with the ImageNet statistics."""
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if not torch.is_tensor(x) or x.dtype != torch.uint8:
        raise TypeError(f"preprocess expects uint8 images, got {getattr(x, 'dtype', type(x))}")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"preprocess expects (B, H, W, 3) or (H, W, 3) RGB images, got {tuple(x.shape)}")
    return normalise(x.permute(0, 3, 1, 2).float().div_(255.0))


def normalise(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) float in [0, 1] -> ImageNet-normalised (the form augmentation outputs)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def count_parameters(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


@dataclass(frozen=True)
class AlexNetConfig(Config):
    """Everything that fixes the architecture (stored as a checkpoint's JSON configuration)."""

    widths: Tuple[int, int, int, int, int] = ALEXNET_WIDTHS
    batch_norm: bool = True
    out_dim: int = 256
    spatial_pooling: str = "gem"
    gem_p: float = 3.0
    view_pooling: str = "max"
    pooling_level: str = "feature_map"

    def check(self) -> None:
        if len(self.widths) != 5 or min(self.widths) < 1:
            raise ConfigError(f"widths must be 5 positive channel counts, got {self.widths}")
        if self.out_dim < 1:
            raise ConfigError(f"out_dim must be >= 1, got {self.out_dim}")


#: Named architectures: ``ALEXNET_CONFIGS.get("alexnet-half", {"out_dim": 32})``.
ALEXNET_CONFIGS: Registry[AlexNetConfig] = Registry("AlexNet configuration", AlexNetConfig)
ALEXNET_CONFIGS.register("alexnet", AlexNetConfig())
# half width: ~4x fewer multiply-adds
ALEXNET_CONFIGS.register("alexnet-half", AlexNetConfig(widths=(32, 96, 192, 128, 128)))


class AlexNetTrunk(nn.Module):
    """conv1..conv5 (module docstring): (N, 3, H, W) -> (N, widths[4], h, w), non-negative (ReLU)."""

    def __init__(self, widths: Sequence[int] = ALEXNET_WIDTHS, batch_norm: bool = True):
        super().__init__()
        c1, c2, c3, c4, c5 = (int(w) for w in widths)

        def block(cin, cout, k, stride, pad):
            layers = [nn.Conv2d(cin, cout, k, stride, pad, bias=not batch_norm)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU(inplace=True))
            return layers

        self.layers = nn.Sequential(
            *block(3, c1, 11, 4, 2), nn.MaxPool2d(3, 2),
            *block(c1, c2, 5, 1, 2), nn.MaxPool2d(3, 2),
            *block(c2, c3, 3, 1, 1), *block(c3, c4, 3, 1, 1), *block(c4, c5, 3, 1, 1))
        self.out_channels = c5
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < 35 or x.shape[-2] < 35:
            raise ValueError(f"AlexNet trunk needs inputs of at least 35x35 px, got {tuple(x.shape[-2:])}")
        return self.layers(x)


class AlexNetGlobal(nn.Module):
    """Single-view network: trunk -> spatial pooling -> linear -> L2; ``forward(x) -> (N, out_dim)``.
    Offers ``feature_map`` / ``pool_map`` so :class:`retrieval.features.multiview.MultiViewNet` can pool views'
    feature maps."""

    def __init__(self, config: Optional[AlexNetConfig] = None):
        super().__init__()
        self.config = config or AlexNetConfig()
        self.trunk = AlexNetTrunk(self.config.widths, self.config.batch_norm)
        self.pool = make_pooling(self.config.spatial_pooling, gem_p=self.config.gem_p)
        self.head = nn.Linear(self.trunk.out_channels, self.config.out_dim)
        self.out_dim = int(self.config.out_dim)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def pool_map(self, fmap: torch.Tensor) -> torch.Tensor:
        return l2n(self.head(self.pool(fmap)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool_map(self.feature_map(x))

    @staticmethod
    def preprocess(images) -> torch.Tensor:
        return preprocess(images)


class MVAlexNet(MultiViewNet):
    """MV-AlexNet: :class:`AlexNetGlobal` views pooled (config.view_pooling at config.pooling_level,
    default max over conv5 maps) -> 256-d unit descriptor. ``forward((B, V, 3, H, W)) -> (B, 256)``;
    V = 1 is exactly the single-view network."""

    def __init__(self, config: Optional[AlexNetConfig] = None):
        config = config or AlexNetConfig()
        super().__init__(AlexNetGlobal(config), view_pooling=config.view_pooling,
                         level=config.pooling_level)
        self.config = config

    @property
    def trunk(self) -> AlexNetTrunk:
        return self.base.trunk

    @staticmethod
    def preprocess(images) -> torch.Tensor:
        return preprocess(images)
