"""Named configurations of the EfficientNet extractor (:data:`EXTRACTOR_CONFIGS`, a
:class:`~retrieval.core.config.Registry` of :class:`EfficientNetConfig`) and :func:`resolve_config`, which
turns a name, a configuration or a (recorded) dict plus overrides into the configuration dict stored
with every feature file."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from retrieval.core.config import Config, ConfigError, Registry

from retrieval.features.efficientnet_net import canonical_name
from retrieval.features.fast_inference import LAYERS
from retrieval.features.precision import DEFAULT_CALIBRATION, PRECISIONS

__all__ = ["EfficientNetConfig", "EXTRACTOR_CONFIGS", "INPUT_MODES", "POOLINGS", "resolve_config", "file_digest"]

PathLike = Union[str, os.PathLike]

INPUT_MODES = ("longest", "square")
POOLINGS = ("avg", "max", "gem")


@dataclass(frozen=True)
class EfficientNetConfig(Config):
    """What the EfficientNet extractor computes; every field is recorded in the feature files it writes.

    ``model``: the backbone ('lite0', 'b0', ...; 'EfficientNet-Lite0' is read as 'lite0'). ``weights``:
    'imagenet', 'random', a state dict file or a model trained by ``retrieval.training``. ``layer``: the
    feature map that is pooled (:data:`retrieval.features.fast_inference.LAYERS`: 'head', the 1280-d head
    convolution, or 'blocks', the last MBConv block). ``pooling``: 'avg', 'max' or 'gem' with exponent
    ``gem_p`` (recorded with GeM only). ``input``: 'longest' (aspect kept, longest side = ``size``)
    or 'square' (resized to ``size`` x ``size``). ``upscale`` (longest-side mode): enlarge images
    smaller than ``size`` (False keeps e.g. a cropped query at its native resolution). ``scales``:
    multi-scale factors applied to the prepared image. ``whitening``: path of a PCAWhitening file
    (learned on OTHER data) or None. ``precision``: 'float32', 'int8' (ONNX Runtime static quantization
    calibrated on the images of the folder ``calibration``, which must not be searched), 'bfloat16', or
    'auto' (the fastest of them that keeps descriptors within the probe's bound on this CPU:
    :mod:`retrieval.features.precision`); a feature file records the precision used, and
    ``calibration`` with int8 only."""

    model: str = "lite0"
    weights: str = "imagenet"
    layer: str = "head"
    pooling: str = "gem"
    gem_p: float = 3.0
    input: str = "longest"
    size: int = 512
    upscale: bool = True
    scales: Tuple[float, ...] = (1.0,)
    whitening: Optional[str] = None
    precision: str = "auto"
    calibration: str = DEFAULT_CALIBRATION

    def __post_init__(self) -> None:
        # the spellings the extractor always accepted ('EfficientNet-Lite0', 'GeM') are recorded in one
        # form, so that equal configurations give equal feature-file headers
        object.__setattr__(self, "model", canonical_name(self.model))
        object.__setattr__(self, "pooling", str(self.pooling).lower())
        super().__post_init__()

    def check(self) -> None:
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be 'avg', 'max' or 'gem', got {self.pooling!r}")
        if self.layer not in LAYERS:
            raise ConfigError(f"layer must be one of {LAYERS}, got {self.layer!r}")
        if self.input not in INPUT_MODES:
            raise ConfigError(f"input must be one of {INPUT_MODES}, got {self.input!r}")
        if self.size < 32:
            raise ConfigError(f"input size must be >= 32 pixels, got {self.size}")
        if not self.scales or min(self.scales) <= 0:
            raise ConfigError(f"scales must be positive, got {list(self.scales)}")
        if self.precision not in ("auto",) + PRECISIONS:
            raise ConfigError(f"precision must be 'auto' or one of {PRECISIONS}, got {self.precision!r}")

    def recorded(self, name: str) -> Dict[str, Any]:
        """The dict a feature file records (before the extractor adds what it learns from the
        weights): every field, ``gem_p`` only with GeM pooling, ``precision`` unless 'auto' and
        ``calibration`` unless the default, and ``name``. The extractor then records the precision it
        used: none for float32 (as every file made before precision existed), else 'int8' (with the
        calibration folder and its digest) or 'bfloat16'."""
        out = self.to_dict()
        if self.pooling != "gem":
            del out["gem_p"]
        if self.precision == "auto":
            del out["precision"]
        if self.calibration == DEFAULT_CALIBRATION and self.precision != "int8":
            del out["calibration"]
        out["name"] = name
        return out


_MS = (1.0, 2 ** -0.5, 2 ** 0.5)

EXTRACTOR_CONFIGS: Registry[EfficientNetConfig] = Registry("EfficientNet extractor configuration",
                                                           EfficientNetConfig)
for _name, _conf in {
    "lite0-gem-512": EfficientNetConfig(pooling="gem", input="longest", size=512),
    "lite0-gem-ms-512": EfficientNetConfig(pooling="gem", input="longest", size=512, scales=_MS),
    # scales 1 and 1/sqrt2 only: the best multi-scale set on Oxford (benchmarks/deep_oxford.py;
    # chosen on that test set, so its figure there is optimistic)
    "lite0-gem-ms2-512": EfficientNetConfig(pooling="gem", input="longest", size=512, scales=(1.0, 2 ** -0.5)),
    "lite0-avg-512": EfficientNetConfig(pooling="avg", input="longest", size=512),
    "lite0-avg-ms-512": EfficientNetConfig(pooling="avg", input="longest", size=512, scales=_MS),
    "lite0-max-512": EfficientNetConfig(pooling="max", input="longest", size=512),
    "lite0-max-ms-512": EfficientNetConfig(pooling="max", input="longest", size=512, scales=_MS),
    # The last MBConv block's 320-d map instead of the 1280-d head, GeM p = 4, scales 1, 1/sqrt2, sqrt2:
    # the ImageNet default for landmarks (Oxford E1). Layer and p were chosen on Oxford, the only
    # landmark set here, but with a held-out check (benchmarks/deep_oxford.py): each half of the
    # landmarks prefers the blocks layer and p >= 4 over the head and p = 3.
    "lite0-blocks-gem-512": EfficientNetConfig(layer="blocks", pooling="gem", gem_p=4.0, input="longest", size=512),
    "lite0-blocks-gem-ms-512": EfficientNetConfig(layer="blocks", pooling="gem", gem_p=4.0, input="longest",
                                                  size=512, scales=_MS),
    "lite0-gem-224": EfficientNetConfig(pooling="gem", input="square", size=224),
    "lite0-avg-224": EfficientNetConfig(pooling="avg", input="square", size=224),
    "lite0-max-224": EfficientNetConfig(pooling="max", input="square", size=224),
    # the object ladder's E1-E4 on COIL-100: its native 128 x 128 images, square
    "lite0-coil-128": EfficientNetConfig(pooling="gem", input="square", size=128),
    # patch tokens (E7): 7 x 7 feature-map cells of a 224 x 224 input
    "lite0-patch-224": EfficientNetConfig(pooling="gem", input="square", size=224),
}.items():
    EXTRACTOR_CONFIGS.register(_name, _conf)

#: keys an extractor adds to the configuration it records (from the weights file it read, and its
#: own kind): a recorded configuration read back drops them, and the extractor computes them again
_DERIVED_KEYS = ("extractor", "weights_sha256", "calibration_sha256")


def file_digest(path: PathLike) -> str:
    from retrieval.core.fileio import file_hash

    return file_hash(path).hexdigest()[:16]


def resolve_config(config: Union[str, EfficientNetConfig, Mapping[str, Any], None] = "lite0-gem-512",
                   **overrides) -> Dict[str, Any]:
    """The configuration dict recorded with a feature file, for a name of :data:`EXTRACTOR_CONFIGS`
    (None: 'lite0-gem-512'), an :class:`EfficientNetConfig` or a dict (partial, or recorded by an
    extractor), with ``overrides`` applied. Unknown keys and invalid values are
    :class:`~retrieval.core.config.ConfigError`.

    The recorded ``name`` stays the named configuration's with overrides too (feature files tell them
    apart by the other keys), 'custom' otherwise, unless ``name`` is overridden. An override of None
    keeps the configuration's value, so callers can pass optional arguments through; paths may be
    ``os.PathLike``."""
    if config is None:
        config = "lite0-gem-512"
    if isinstance(config, str):
        name, conf = config, EXTRACTOR_CONFIGS.get(config)
    elif isinstance(config, EfficientNetConfig):
        name, conf = "custom", config
    else:
        data = _text_paths({k: v for k, v in config.items() if k not in _DERIVED_KEYS})
        if "extractor" in config and "precision" not in data:
            data["precision"] = "float32"  # recorded before precision was: every such file is float32
        name = str(data.pop("name", "custom"))
        if isinstance(data.get("whitening"), Mapping):  # a recorded summary: its file rebuilds it
            data["whitening"] = data["whitening"].get("path")
        conf = EfficientNetConfig.from_dict(data, where="EfficientNet configuration")
    changes = _text_paths({k: v for k, v in overrides.items() if v is not None})
    name = str(changes.pop("name", name))
    return conf.override(changes).recorded(name)


def _text_paths(data: Dict[str, Any]) -> Dict[str, Any]:
    return {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in data.items()}
