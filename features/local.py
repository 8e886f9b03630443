"""Local features of one image: keypoints and descriptors, the unit every local encoder and
re-ranker consumes (SIFT, RootSIFT and deep patch tokens alike)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from retrieval.core.imageio import load_image


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

    def extract_path(self, path: Union[str, os.PathLike], box: Optional[Tuple[float, float, float, float]] = None
                     ) -> LocalFeatures:
        """Local features of an image file (``extract`` of the subclass, on the decoded image, cropped to
        ``box``); :class:`~retrieval.core.imageio.ImageLoadError` names a file that cannot be read, and a bad
        box or image is reported with the file's name."""
        image = load_image(path)
        try:
            return self.extract(image, box)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    def __call__(self, path: Union[str, os.PathLike], box: Optional[Tuple[float, float, float, float]] = None
                 ) -> LocalFeatures:
        return self.extract_path(path, box)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._config!r})"
