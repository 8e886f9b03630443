"""Training augmentation and the deterministic evaluation transform, on batched tensors on the
training device (torch only: no torchvision).

All functions take and return float images ``(B, 3, H, W)`` with values in [0, 1]; a model's own
normalisation (e.g. EfficientNet-Lite's ``(x*255-127)/128``) is applied after. Randomness comes
from an explicit ``torch.Generator`` so that a run is reproducible and resumable (the generator's
state goes into the checkpoint). Random numbers are drawn on the CPU generator and moved to the
device, so the same seed gives the same augmentation on CPU and GPU.

Geometry (random resized crop, horizontal flip, rotation) is one affine warp per image, applied by
a single ``grid_sample`` call. In pixel coordinates relative to the input centre, an output point
``u`` in [-1, 1]^2 (normalised output coordinates) samples the input at::

    p = c + R(alpha) · diag(w/2, h/2) · F · u

where ``c`` is the crop centre, ``(w, h)`` the crop size in pixels, ``F = diag(-1, 1)`` when the image
is flipped (identity otherwise) and ``R`` the rotation by ``alpha``. The crop size follows the
usual random-resized-crop rule: area fraction ``s ~ U(scale)``, aspect ``r = exp(U(log ratio))``,
``w = sqrt(s r) W``, ``h = sqrt(s / r) H`` (clipped to the image), centre uniform where the crop fits.

Colour jitter, per image, in this order (factors ``f ~ U(1 - a, 1 + a)``, clamped to [0, 1] after
each step): brightness ``x f``; contrast ``(x - m) f + m`` with ``m`` the image's mean luma;
saturation ``(x - y) f + y`` with ``y`` the pixel's luma; hue: a rotation of the chroma plane (I, Q
of YIQ) by ``2 pi h``, ``h ~ U(-hue, hue)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from retrieval.core.config import Config, ConfigError

__all__ = ["AugmentConfig", "uint8_to_float", "sample_crop_params", "affine_warp", "hflip",
           "color_jitter", "augment_batch", "mixup", "eval_transform", "square_resize"]

# ITU-R BT.601 luma weights, also the Y row of YIQ
_LUMA = (0.299, 0.587, 0.114)
_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.595716, -0.274453, -0.321263), (0.211456, -0.522591, 0.311135))


@dataclass(frozen=True)
class AugmentConfig(Config):
    """What :func:`augment_batch` does. ``out_size``: side of the square output. ``scale`` / ``ratio``:
    random-resized-crop area fraction and aspect ranges (``scale=(1, 1)`` and ``ratio=(1, 1)``
    keep the whole image). ``rotation_deg``: maximum absolute rotation. Colour strengths 0 disable
    that jitter. ``padding_mode``: what rotated corners show ('zeros' = black, 'border', 'reflection')."""

    out_size: int = 128
    scale: Tuple[float, float] = (0.5, 1.0)
    ratio: Tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    hflip_prob: float = 0.5
    rotation_deg: float = 10.0
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    hue: float = 0.03
    padding_mode: Literal["zeros", "border", "reflection"] = "zeros"

    def check(self) -> None:
        if self.out_size < 1:
            raise ConfigError(f"out_size must be >= 1, got {self.out_size}")
        if len(self.scale) != 2 or not (0 < self.scale[0] <= self.scale[1] <= 1):
            raise ConfigError(f"scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        if len(self.ratio) != 2 or not (0 < self.ratio[0] <= self.ratio[1]):
            raise ConfigError(f"ratio must satisfy 0 < min <= max, got {self.ratio}")
        if not 0 <= self.hflip_prob <= 1:
            raise ConfigError(f"hflip_prob must be in [0, 1], got {self.hflip_prob}")
        for name in ("brightness", "contrast", "saturation"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.hue <= 0.5:
            raise ConfigError(f"hue must be in [0, 0.5], got {self.hue}")
        if self.padding_mode not in ("zeros", "border", "reflection"):
            raise ConfigError(f"padding_mode must be zeros, border or reflection, got {self.padding_mode!r}")


def uint8_to_float(images: torch.Tensor, device: Optional[torch.device] = None) -> torch.Tensor:
    """(B, H, W, 3) uint8 (as the image cache stores them) -> (B, 3, H, W) float32 in [0, 1] on
    ``device``; the uint8 tensor is moved first so host-to-device traffic stays 1 byte a value."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected a (B, H, W, 3) uint8 tensor, got {tuple(images.shape)} {images.dtype}")
    if device is not None:
        images = images.to(device, non_blocking=True)
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)


def sample_crop_params(n: int, height: int, width: int, cfg: AugmentConfig,
                       generator: torch.Generator) -> dict:
    """Per-image random geometry (float64 CPU tensors): crop centre ``cx, cy`` and size ``w, h`` in
    pixels, ``flip`` (bool) and rotation ``angle`` (radians)."""
    area = _uniform(n, cfg.scale[0], cfg.scale[1], generator)
    log_r = _uniform(n, math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), generator)
    r = torch.exp(log_r)
    w = (torch.sqrt(area * r) * width).clamp(max=width)
    h = (torch.sqrt(area / r) * height).clamp(max=height)
    # centre anywhere the crop stays inside the image (pixel units relative to the image centre)
    cx = (torch.rand(n, generator=generator, dtype=torch.float64) - 0.5) * (width - w)
    cy = (torch.rand(n, generator=generator, dtype=torch.float64) - 0.5) * (height - h)
    flip = torch.rand(n, generator=generator, dtype=torch.float64) < cfg.hflip_prob
    angle = _uniform(n, -1.0, 1.0, generator) * math.radians(cfg.rotation_deg)
    return {"cx": cx, "cy": cy, "w": w, "h": h, "flip": flip, "angle": angle}


def affine_warp(images: torch.Tensor, params: dict, out_size: int,
                padding_mode: str = "zeros") -> torch.Tensor:
    """Warp (B, 3, H, W) images to (B, 3, out_size, out_size) with the crop / flip / rotation in
    ``params`` (see the module docstring for the mapping), bilinear sampling."""
    b, _, height, width = images.shape
    cos, sin = torch.cos(params["angle"]), torch.sin(params["angle"])
    sx = params["w"] / 2 * torch.where(params["flip"], -1.0, 1.0).double()
    sy = params["h"] / 2
    # p = c + R diag(sx, sy) u, in pixels; theta maps to the input's normalised coords: divide by W/2, H/2
    theta = torch.zeros(b, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = cos * sx / (width / 2)
    theta[:, 0, 1] = -sin * sy / (width / 2)
    theta[:, 1, 0] = sin * sx / (height / 2)
    theta[:, 1, 1] = cos * sy / (height / 2)
    theta[:, 0, 2] = params["cx"] / (width / 2)
    theta[:, 1, 2] = params["cy"] / (height / 2)
    theta = theta.to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, [b, images.shape[1], out_size, out_size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def hflip(images: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mirror left-right the images selected by the boolean ``mask`` (all when None)."""
    if mask is None:
        return images.flip(-1)
    mask = mask.to(images.device).view(-1, 1, 1, 1)
    return torch.where(mask, images.flip(-1), images)


def _luma(images: torch.Tensor) -> torch.Tensor:
    w = images.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (images * w).sum(dim=1, keepdim=True)


def color_jitter(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation and hue jitter (module docstring), per image."""
    n = images.shape[0]
    dev, dt = images.device, images.dtype

    def factors(strength: float) -> torch.Tensor:
        f = _uniform(n, 1.0 - strength, 1.0 + strength, generator)
        return f.to(device=dev, dtype=dt).view(n, 1, 1, 1)

    # draw every factor whether used or not, so one setting does not shift the others' randomness
    fb, fc, fs = factors(cfg.brightness), factors(cfg.contrast), factors(cfg.saturation)
    hue = _uniform(n, -cfg.hue, cfg.hue, generator).to(device=dev, dtype=dt)
    x = images
    if cfg.brightness > 0:
        x = (x * fb).clamp_(0, 1)
    if cfg.contrast > 0:
        m = _luma(x).mean(dim=(2, 3), keepdim=True)
        x = ((x - m) * fc + m).clamp_(0, 1)
    if cfg.saturation > 0:
        y = _luma(x)
        x = ((x - y) * fs + y).clamp_(0, 1)
    if cfg.hue > 0:
        to_yiq = x.new_tensor(_RGB_TO_YIQ)
        from_yiq = torch.linalg.inv(to_yiq)
        yiq = torch.einsum("ij,bjhw->bihw", to_yiq, x)
        angle = 2 * math.pi * hue
        c, s = torch.cos(angle).view(n, 1, 1), torch.sin(angle).view(n, 1, 1)
        i, q = yiq[:, 1], yiq[:, 2]
        yiq = torch.stack([yiq[:, 0], c * i - s * q, s * i + c * q], dim=1)
        x = torch.einsum("ij,bjhw->bihw", from_yiq, yiq).clamp_(0, 1)
    return x


def augment_batch(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 3, out_size, out_size) in [0, 1]: random resized crop, flip,
    rotation (one warp), then colour jitter. Same generator state -> same output."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) images, got {tuple(images.shape)}")
    params = sample_crop_params(images.shape[0], images.shape[2], images.shape[3], cfg, generator)
    warped = affine_warp(images, params, cfg.out_size, cfg.padding_mode).clamp_(0, 1)
    return color_jitter(warped, cfg, generator)


def mixup(images: torch.Tensor, alpha: float, generator: torch.Generator) -> torch.Tensor:
    """Blend every item of a batch with another one: ``x_i' = lam_i x_i + (1 - lam_i) x_perm(i)``,
    ``lam_i ~ Beta(alpha, alpha)`` per item (alpha = 1: uniform), ``perm`` a random permutation of the
    batch. Works on any (B, ...) tensor, so (B, V, 3, S, S) view sets mix set with set, view v with
    view v. Labels no longer describe the outputs: it serves losses that need none (function
    matching against a teacher run on the mixed images)."""
    if alpha <= 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha}")
    b = images.shape[0]
    perm = torch.randperm(b, generator=generator)
    # numpy's Beta sampler, seeded from the run's generator: reproducible and resumable with it
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
    lam = np.random.default_rng(seed).beta(alpha, alpha, size=b).astype(np.float32)
    lam = torch.from_numpy(lam).to(images.device).view(b, *([1] * (images.ndim - 1)))
    return lam * images + (1 - lam) * images[perm.to(images.device)]


def square_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, h, w) -> (B, 3, size, size) bilinear, antialiased when shrinking."""
    if images.shape[-2:] == (size, size):
        return images
    shrink = size < max(images.shape[-2:])
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=shrink)


def eval_transform(images: torch.Tensor, size: int, mode: str = "centre") -> torch.Tensor:
    """Deterministic evaluation transform of (B, 3, H, W) images in [0, 1] to (B, 3, size, size):
    ``'centre'`` resizes the shorter side to ``size`` and takes the centre square; ``'longest'``
    resizes the longer side to ``size`` and pads the shorter one with black, centred (the whole
    image kept); ``'squash'`` resizes both sides to ``size`` (aspect not kept)."""
    b, c, h, w = images.shape
    if mode == "squash" or h == w:
        return square_resize(images, size)
    if mode == "centre":
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        resized = F.interpolate(images, size=(nh, nw), mode="bilinear", align_corners=False,
                                antialias=scale < 1)
        top, left = (nh - size) // 2, (nw - size) // 2
        return resized[:, :, top:top + size, left:left + size]
    if mode == "longest":
        scale = size / max(h, w)
        nh, nw = min(size, max(1, round(h * scale))), min(size, max(1, round(w * scale)))
        resized = F.interpolate(images, size=(nh, nw), mode="bilinear", align_corners=False,
                                antialias=scale < 1)
        out = images.new_zeros(b, c, size, size)
        top, left = (size - nh) // 2, (size - nw) // 2
        out[:, :, top:top + nh, left:left + nw] = resized
        return out
    raise ValueError(f"unknown eval transform mode {mode!r}; choose centre, longest or squash")
