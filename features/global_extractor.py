"""What every global extractor offers, so the ranking stage, multi-view wrappers and benchmarks can
take any of them (EfficientNet, MV-AlexNet, a user's CLIP, an encoder of local features)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np


class GlobalExtractor(ABC):
    """Maps images to L2-normalised float32 vectors of length :attr:`dim`."""

    #: short name used in feature-file configurations and result tables
    name: str = "global"

    @property
    @abstractmethod
    def dim(self) -> int:
        """Length of the descriptor."""

    @property
    @abstractmethod
    def config(self) -> dict:
        """JSON-serialisable configuration: enough to tell whether stored features are stale."""

    @abstractmethod
    def extract_arrays(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(N, dim) float32, L2-normalised rows, for uint8 RGB (H, W, 3) arrays."""
