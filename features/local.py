"""Local features of one image: keypoints and descriptors, the unit every local encoder and
re-ranker consumes (SIFT, RootSIFT and deep patch tokens alike)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Sequence, Tuple, Union

import numpy as np


@dataclass
class LocalFeatures:
    """``keypoints``: (N, 4) float32 columns x, y, scale (pixels), angle (degrees), in the pixel frame of
    the image the features were computed on; ``descriptors``: (N, D) float32 (or uint8);
    ``image_size``: (height, width) of that image. N may be 0 (a valid, empty entry)."""

    keypoints: np.ndarray
    descriptors: np.ndarray
    image_size: Tuple[int, int]

    def __post_init__(self) -> None:
        self.keypoints = np.asarray(self.keypoints, dtype=np.float32).reshape(-1, 4)
        if self.descriptors.ndim != 2:
            raise ValueError(f"descriptors must be 2-D (N, D), got shape {self.descriptors.shape}")
        if len(self.keypoints) != len(self.descriptors):
            raise ValueError(f"{len(self.keypoints)} keypoints but {len(self.descriptors)} descriptors")

    def __len__(self) -> int:
        return len(self.keypoints)

    @property
    def dim(self) -> int:
        return int(self.descriptors.shape[1])

    @property
    def xy(self) -> np.ndarray:
        return self.keypoints[:, :2]

    @classmethod
    def empty(cls, dim: int, image_size: Tuple[int, int], dtype=np.float32) -> "LocalFeatures":
        return cls(np.zeros((0, 4), np.float32), np.zeros((0, dim), dtype), tuple(image_size))


_DEFAULT_CONFIG = object()


class ConfiguredExtractor:
    """What every local extractor (SIFT, Hessian-affine, learned) shares: one configuration of its registry
    ``CONFIGS`` (:class:`retrieval.core.config.Registry`), recorded as feature stores keep it (a name, a dict
    or a configuration object, with dotted or keyword overrides; None: the class defaults, named ``custom``);
    its ``name``; and ``config``, the recorded dict. Subclasses set ``CONFIGS`` and ``DEFAULT``, the
    configuration name used when none is given."""

    CONFIGS: Any = None
    DEFAULT: str = ""

    def __init__(self, config: Any = _DEFAULT_CONFIG,
                 overrides: Union[None, Mapping[str, Any], Sequence[str]] = None, **kwargs: Any):
        self._config = self.CONFIGS.recorded(self.DEFAULT if config is _DEFAULT_CONFIG else config, overrides, **kwargs)
        self.name = str(self._config["name"])

    @property
    def config(self) -> Dict[str, object]:
        return dict(self._config)
