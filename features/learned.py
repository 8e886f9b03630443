"""Learned local features (XFeat, DISK) with kornia's networks and the installed pretrained weights.

The same contract as :class:`retrieval.features.sift.SiftExtractor`: a named, recorded configuration
(:data:`LEARNED_CONFIGS`, dotted overrides), ``extract`` / ``extract_path(path, box=None)`` returning
:class:`~retrieval.features.local.LocalFeatures`, ``config`` (what a feature store records), ``dim`` and
``store_dtype``. An extractor holds only its configuration when pickled (the network is built on
first use in each process), so the sharded extraction sends it to joblib or Ray workers as it does
SIFT.

Extraction of one image: read it as 8-bit RGB, resize so the longest side is at most ``max_side``
(``upscale`` enlarges smaller ones), crop the optional box (as SIFT does:
:func:`retrieval.features.sift.resize_and_crop`), then

* ``xfeat`` (Potje et al., CVPR 2024): kornia's ``XFeat.detectAndCompute``: the ``max_keypoints``
  strongest keypoints above ``detection_threshold`` of the 1/8-resolution keypoint head, 64-d
  L2-normalised descriptors (the network sees the image resized to multiples of 32; keypoints are
  mapped back to the input's pixels);
* ``disk`` (Tyszkiewicz et al., NeurIPS 2020; the "depth" checkpoint): kornia's ``DISK`` with
  non-maximum suppression in a ``nms_window`` window, the ``max_keypoints`` strongest, 128-d
  L2-normalised descriptors (the image is zero-padded to multiples of 16, no keypoint lies there).

``precision`` (XFeat only): 'float32', 'bfloat16' (the network channels-last under bfloat16 autocast,
everything after it in float32) or 'auto' (bfloat16 where this CPU has it natively and a probe finds the
keypoints and descriptors equivalent and the network faster: :mod:`retrieval.features.learned_precision`).
A store records the precision used: ``precision`` absent for float32 (as in every store made before
precision was a setting), else ``precision="bfloat16"``.

Keypoints are ``[x, y, size, 0]``: neither network estimates scale or orientation, ``size`` is the
support of one detection (XFeat's 8-pixel cell, DISK's NMS window), recorded for the geometry code
that reads keypoint sizes.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Dict, Literal, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from retrieval.core.config import Config, ConfigError, Registry

from retrieval.features.local import ConfiguredExtractor, LocalFeatures
from retrieval.features.sift import resize_and_crop

Box = Tuple[float, float, float, float]

__all__ = ["LearnedConfig", "LEARNED_CONFIGS", "LearnedExtractor", "learned_config"]

#: descriptor dimension and keypoint support (pixels) of each network
_DIMS = {"xfeat": 64, "disk": 128}
_SUPPORT = {"xfeat": 8.0}


@dataclass(frozen=True)
class LearnedConfig(Config):
    """Everything that determines a learned local feature extraction."""

    type: Literal["xfeat", "disk"] = "xfeat"
    max_keypoints: int = 4096
    max_side: int = 1024              # longest side at most this (both networks' memory grows with pixels)
    upscale: bool = False
    detection_threshold: float = 0.05  # xfeat: heatmap value to exceed; disk: detection score to exceed
    nms_window: int = 5               # disk: non-maximum suppression window (pixels)
    precision: str = "auto"           # xfeat: 'float32', 'bfloat16' or 'auto' (module docstring); disk: float32

    def check(self) -> None:
        if self.max_keypoints < 1:
            raise ConfigError(f"max_keypoints must be >= 1, got {self.max_keypoints}")
        if self.max_side < 32:
            raise ConfigError(f"max_side must be >= 32 pixels, got {self.max_side}")
        if self.nms_window < 1 or self.nms_window % 2 == 0:
            raise ConfigError(f"nms_window must be an odd number >= 1, got {self.nms_window}")
        if self.precision not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"precision must be 'auto', 'float32' or 'bfloat16', got {self.precision!r}")
        if self.type == "disk" and self.precision == "bfloat16":
            raise ConfigError("precision 'bfloat16' is offered for xfeat only (disk runs in float32)")


LEARNED_CONFIGS: Registry[LearnedConfig] = Registry("learned local feature configuration", LearnedConfig)
for _name, _conf in {
    # the fast re-ranking path: mutual NN matching costs grow with the product of keypoint counts
    "xfeat-512": LearnedConfig(type="xfeat", max_keypoints=512),
    "xfeat-1k": LearnedConfig(type="xfeat", max_keypoints=1024),
    "xfeat-2k": LearnedConfig(type="xfeat", max_keypoints=2048),
    "xfeat-4k": LearnedConfig(type="xfeat", max_keypoints=4096),
    # DISK's heatmap scores are logits: 0 keeps every local maximum that is more likely than not
    "disk-1k": LearnedConfig(type="disk", max_keypoints=1024, detection_threshold=0.0),
    "disk-2k": LearnedConfig(type="disk", max_keypoints=2048, detection_threshold=0.0),
    "disk-4k": LearnedConfig(type="disk", max_keypoints=4096, detection_threshold=0.0),
}.items():
    LEARNED_CONFIGS.register(_name, _conf)


def learned_config(config: Union[str, Mapping[str, Any], LearnedConfig, None] = "xfeat-4k",
                   overrides: Union[None, Mapping[str, Any], Sequence[str]] = None, **kwargs) -> Dict[str, object]:
    """The complete recorded configuration (a dict with its ``name``), as :func:`retrieval.features.sift.sift_config`."""
    return LEARNED_CONFIGS.recorded(config, overrides, **kwargs)


_BUILD_LOCK = threading.Lock()


def strict_maxima(heatmap, threshold: float, kernel_size: int = 5):
    """XFeat's keypoint candidates, as kornia's ``XFeat._nms`` finds them (the same positions in the same
    order): (B, N, 2) integer (x, y) of the heatmap's values above ``threshold`` that are greater than
    every other value of their ``kernel_size`` window, no window running off the map; rows padded with -1.

    Why not kornia's: the strict maximum is taken over the 24 neighbours as a row maximum of 5 shifts,
    then a column maximum (the centre row without its centre): 2-5 ms instead of kornia's 7-13 on a
    512 x 384 map on the shared 2-core CPU (one thread, loaded); ``max_pool2d`` with stride 1 took 35."""
    import torch
    import torch.nn.functional as F

    B, _, H, W = heatmap.shape
    r = kernel_size // 2
    if H <= 2 * r or W <= 2 * r:
        return torch.full((B, 0, 2), -1, dtype=torch.long)
    x = heatmap[:, 0]
    padded = F.pad(x, (r, r, 0, 0), value=float("-inf"))
    shifted = [padded[:, :, dx:dx + W] for dx in range(kernel_size)]
    rows = shifted[0]
    for s in shifted[1:]:
        rows = torch.maximum(rows, s)  # (B, H, W): maximum of each row's window
    centre = None  # the centre row without its centre
    for dx, s in enumerate(shifted):
        if dx != r:
            centre = s if centre is None else torch.maximum(centre, s)
    inner = x[:, r:H - r]
    others = centre[:, r:H - r]
    for dy in range(kernel_size):
        if dy != r:
            others = torch.maximum(others, rows[:, dy:dy + H - 2 * r])
    keep = torch.zeros_like(x, dtype=torch.bool)
    keep[:, r:H - r, r:W - r] = ((inner > others) & (inner > threshold))[:, :, r:W - r]
    found = [k.nonzero().flip(-1) for k in keep]
    out = torch.full((B, max((len(f) for f in found), default=0), 2), -1, dtype=torch.long)
    for b, f in enumerate(found):
        out[b, :len(f)] = f
    return out


def _skip_same_size_resize(xfeat) -> None:
    """Make ``xfeat`` skip its resize to multiples of 32 when the image already has such sides: a
    bilinear resize to the same size returns its input exactly (``align_corners=False`` samples every
    pixel at its centre) but took 5 ms of 35 for a 512 x 384 image on the shared 2-core CPU."""
    resize = xfeat._preprocess_tensor  # kornia's, bound to this instance

    def preprocess(x):
        h, w = x.shape[-2:]
        if xfeat._resized_size(h, w) == (h, w):
            return x.to(next(xfeat.net.parameters()).dtype), 1.0, 1.0
        return resize(x)

    xfeat._preprocess_tensor = preprocess


@lru_cache(maxsize=None)
def _network(kind: str, precision: str = "float32"):
    """The pretrained network ``kind`` in evaluation mode running in ``precision``, built once per process
    (threads share it: inference under ``torch.inference_mode`` does not modify it)."""
    if precision != "float32":
        from retrieval.features.learned_precision import with_precision

        return with_precision(_network(kind), precision)
    import kornia.feature as KF

    from retrieval.features.weights import load_state_dict

    if kind == "xfeat":
        net = KF.XFeat()
        net.net.load_state_dict(load_state_dict("xfeat"))
        net._nms = strict_maxima  # the same keypoints, faster (strict_maxima's docstring)
        _skip_same_size_resize(net)
    else:
        net = KF.DISK()
        net.load_state_dict(load_state_dict("disk")["extractor"])
    return net.eval()


def network(kind: str, precision: str = "float32"):
    with _BUILD_LOCK:
        return _network(kind, precision)


@lru_cache(maxsize=None)
def _auto_precision(kind: str, max_side: int, upscale: bool, max_keypoints: int, threshold: float) -> str:
    """What ``precision="auto"`` means for these settings in this process (probed or read once)."""
    if kind != "xfeat":
        return "float32"
    from retrieval.features.learned_precision import auto_xfeat_precision

    config = {"max_side": max_side, "upscale": upscale, "max_keypoints": max_keypoints,
              "detection_threshold": threshold}
    return auto_xfeat_precision(network("xfeat"), config,
                                LearnedExtractor(dict(config, type="xfeat", precision="float32")).prepare)[0]


class LearnedExtractor(ConfiguredExtractor):
    """XFeat or DISK local features for one named or explicit configuration.

    >>> ex = LearnedExtractor("xfeat-4k")
    >>> feats = ex.extract_path("image.jpg")               # LocalFeatures, (N, 64) float32 descriptors
    """

    CONFIGS = LEARNED_CONFIGS
    DEFAULT = "xfeat-4k"

    @property
    def precision(self) -> str:
        """The precision the network runs in: 'auto' is resolved (and recorded) on first use."""
        c = self._config
        if c.get("precision", "float32") == "auto":
            used = _auto_precision(str(c["type"]), int(c["max_side"]), bool(c["upscale"]), int(c["max_keypoints"]),
                                   float(c["detection_threshold"]))
            c.pop("precision")
            if used != "float32":
                c["precision"] = used
        return str(c.get("precision", "float32"))

    @property
    def config(self) -> Dict[str, object]:
        """The recorded configuration, with the precision used (absent for float32)."""
        if self._config.get("precision") == "float32":
            del self._config["precision"]
        self.precision  # noqa: B018 - resolves 'auto'
        return dict(self._config)

    @property
    def kind(self) -> str:
        return str(self._config["type"])

    @property
    def dim(self) -> int:
        return _DIMS[self.kind]

    @property
    def store_dtype(self) -> str:
        return "float16"

    def prepare(self, image: np.ndarray, box: Optional[Box] = None) -> np.ndarray:
        """RGB uint8 image as the network sees it (resized by ``max_side``/``upscale``, then cropped)."""
        from retrieval.core.imageio import _to_uint8

        image = np.asarray(image)
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)) or 0 in image.shape[:2]:
            raise ValueError(f"expected a non-empty (H, W), (H, W, 3) or (H, W, 4) image, got shape {image.shape}")
        if image.ndim == 3 and image.shape[2] == 4:  # composited on black, as load_image does
            alpha = _to_uint8(image[:, :, 3]).astype(np.float32)[:, :, None] / 255.0
            image = (_to_uint8(image[:, :, :3]).astype(np.float32) * alpha).round().astype(np.uint8)
        image = _to_uint8(image)
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        c = self._config
        return resize_and_crop(image, int(c["max_side"]), bool(c["upscale"]), box)

    def extract(self, image: np.ndarray, box: Optional[Box] = None) -> LocalFeatures:
        """Local features of an image array (gray, RGB or RGBA)."""
        import torch

        rgb = self.prepare(image, box)
        image_size = (int(rgb.shape[0]), int(rgb.shape[1]))
        if min(image_size) < 32:  # below one XFeat cell / DISK's U-Net depth: no features
            return LocalFeatures.empty(self.dim, image_size)
        c = self._config
        x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float().div_(255.0)
        net = network(self.kind, self.precision)
        with torch.inference_mode():
            if self.kind == "xfeat":
                out = net.detectAndCompute(x, top_k=int(c["max_keypoints"]),
                                           detection_threshold=float(c["detection_threshold"]))[0]
                xy, desc = out["keypoints"], out["descriptors"]
                support = _SUPPORT["xfeat"]
            else:
                out = net(x, n=int(c["max_keypoints"]), window_size=int(c["nms_window"]),
                          score_threshold=float(c["detection_threshold"]), pad_if_not_divisible=True)[0]
                xy, desc = out.keypoints, out.descriptors
                support = float(c["nms_window"])
        xy = xy.float().numpy()
        if len(xy) == 0:
            return LocalFeatures.empty(self.dim, image_size)
        kps = np.zeros((len(xy), 4), np.float32)
        kps[:, :2] = xy
        kps[:, 2] = support
        return LocalFeatures(kps, np.ascontiguousarray(desc.float().numpy()), image_size)
