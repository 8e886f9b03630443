"""SIFT and RootSIFT local features with OpenCV.

Extraction steps for one image:

1. read it as 8-bit RGB (:func:`retrieval.core.imageio.load_image`), resize so that its longest side is at
   most ``max_side`` (``upscale`` also enlarges smaller images to it), crop the optional box (given in
   pixels of the stored file, scaled by the same factor), convert to gray. Every configuration has a
   ``max_side`` (1600 unless set): SIFT's peak memory is about 240 bytes per pixel, so an uncapped
   9000 x 9000 image would need about 18 GiB per worker thread; at 1600 it is about 0.6 GiB;
2. detect difference-of-Gaussian keypoints (``cv2.SIFT_create``), keep the ``max_keypoints`` strongest by
   detector response; ``upright`` sets every orientation to 0 (and drops the duplicate keypoints OpenCV
   makes for secondary orientations), which suits photos taken upright (landmarks, turntables);
3. compute the 128-d descriptors. Plain SIFT descriptors are integers 0..255 and are kept as uint8
   (lossless). RootSIFT (Arandjelovic & Zisserman, CVPR 2012) maps each descriptor ``d`` to
   ``sqrt(d / ||d||_1)``: non-negative with unit L2 norm, so Euclidean distance between RootSIFT vectors
   is the Hellinger kernel distance between the SIFT histograms.

Keypoints are ``[x, y, size, angle]`` (``size`` is OpenCV's keypoint diameter in pixels, angle in
degrees) in the pixel frame of the image the features were computed on (resized, then cropped);
``image_size`` records that frame's (height, width). An image with no keypoint gives a valid empty
:class:`~retrieval.features.local.LocalFeatures`.

A :class:`SiftConfig` (:mod:`retrieval.core.config`; named ones in the registry :data:`SIFT_CONFIGS`,
dotted overrides such as ``max_side=1024``) fully describes extraction; its dict (plus the name) is
what feature stores record, so a store made with other settings, another ``max_side`` included, is
refused rather than mixed in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Literal, Mapping, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from retrieval.core.config import Config, ConfigError, Registry
from retrieval.core.imageio import _to_uint8, resize_longest_side

from retrieval.features.local import ConfiguredExtractor, LocalFeatures

Box = Tuple[float, float, float, float]

__all__ = ["SiftConfig", "SIFT_CONFIGS", "DEFAULT_SIFT", "SiftExtractor", "root_sift", "sift_config", "to_gray", "resize_and_crop"]

#: The longest side SIFT works on unless a configuration says otherwise (the usual 1600 of SfM
#: pipelines; Oxford and GLDv2 photos are smaller and are not resized by it).
DEFAULT_MAX_SIDE = 1600


@dataclass(frozen=True)
class SiftConfig(Config):
    """Everything that determines SIFT / RootSIFT extraction."""

    type: Literal["sift"] = "sift"
    root: bool = True                  # RootSIFT (Hellinger) instead of plain SIFT
    max_keypoints: Optional[int] = 2000  # keep the strongest by detector response; None = all
    max_side: int = DEFAULT_MAX_SIDE   # longest side at most this (memory cap); with upscale: exactly this
    upscale: bool = False              # also enlarge smaller images to max_side
    contrast_threshold: float = 0.04   # OpenCV default; lower finds more (weaker) keypoints
    edge_threshold: float = 10.0
    n_octave_layers: int = 3
    sigma: float = 1.6
    upright: bool = False              # orientation fixed to 0 (one descriptor per location)

    def check(self) -> None:
        if self.max_keypoints is not None and self.max_keypoints < 1:
            raise ConfigError("max_keypoints must be >= 1 or None")
        if self.max_side < 16:
            raise ConfigError(f"max_side must be >= 16 pixels, got {self.max_side}")
        if self.n_octave_layers < 1 or self.sigma <= 0 or self.contrast_threshold < 0 or self.edge_threshold <= 0:
            raise ConfigError("n_octave_layers >= 1, sigma > 0, contrast_threshold >= 0 and edge_threshold > 0")


#: Named configurations (like hloc's ``confs``): a name selects a complete, recorded configuration.
SIFT_CONFIGS: Registry[SiftConfig] = Registry("SIFT configuration", SiftConfig)
for _name, _conf in {
    "sift-1k": SiftConfig(root=False, max_keypoints=1000),
    "sift-2k": SiftConfig(root=False, max_keypoints=2000),
    "rootsift-1k": SiftConfig(max_keypoints=1000),
    "rootsift-2k": SiftConfig(max_keypoints=2000),
    "rootsift-4k": SiftConfig(max_keypoints=4000),
    # more, weaker keypoints: BoW and VLAD gain from more evidence per image
    "rootsift-c02-4k": SiftConfig(max_keypoints=4000, contrast_threshold=0.02),
    "rootsift-upright-c02-4k": SiftConfig(max_keypoints=4000, contrast_threshold=0.02, upright=True),
    # ASMK aggregates many weak descriptors (Oxford at 512 px: a median 1,400 keypoints at contrast 0.02, none
    # reaching 4k): twice the keypoint budget at half the threshold
    "rootsift-upright-c01-8k": SiftConfig(max_keypoints=8000, contrast_threshold=0.01, upright=True),
    # landmark photos are taken upright: rotation invariance only costs distinctiveness there
    "rootsift-upright-4k": SiftConfig(max_keypoints=4000, upright=True),
    # small object images (COIL-100 is 128 x 128): enlarge and lower the contrast threshold so that an
    # image yields a few hundred keypoints instead of a few dozen
    "rootsift-small": SiftConfig(max_keypoints=1000, max_side=256, upscale=True, contrast_threshold=0.01),
    "rootsift-small-upright": SiftConfig(max_keypoints=1000, max_side=256, upscale=True,
                                         contrast_threshold=0.01, upright=True),
}.items():
    SIFT_CONFIGS.register(_name, _conf)

#: Every key a recorded extraction configuration has (besides ``name``), with its default.
DEFAULT_SIFT: Dict[str, object] = SiftConfig().to_dict()


def sift_config(config: Union[str, Mapping[str, Any], SiftConfig, None] = None,
                overrides: Union[None, Mapping[str, Any], Sequence[str]] = None, **kwargs) -> Dict[str, object]:
    """The complete configuration, as recorded in feature stores (a dict with its ``name``), for a
    name from :data:`SIFT_CONFIGS`, a (partial) dict or a :class:`SiftConfig`, with ``overrides``
    (dotted ``KEY=VALUE`` strings or a mapping) and keyword overrides applied. Unknown keys and
    invalid values are :class:`~retrieval.core.config.ConfigError` (a ``ValueError``), so a typo never
    silently means a default."""
    return SIFT_CONFIGS.recorded(config, overrides, **kwargs)


def root_sift(descriptors: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """RootSIFT: ``sqrt(d / ||d||_1)`` row-wise, float32. Rows are non-negative with unit L2 norm (an
    all-zero row stays zero)."""
    d = np.asarray(descriptors, dtype=np.float32)
    l1 = np.abs(d).sum(axis=1, keepdims=True)
    return np.sqrt(np.abs(d) / np.maximum(l1, eps)).astype(np.float32)


def to_gray(image: np.ndarray) -> np.ndarray:
    """8-bit single-channel image from gray (H, W) / (H, W, 1), RGB (H, W, 3) or RGBA (H, W, 4) arrays of
    any integer or [0, 1] float dtype (RGBA is composited on black, as :func:`load_image` does)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ValueError(f"expected a (H, W), (H, W, 3) or (H, W, 4) image, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"empty image of shape {image.shape}")
    if image.ndim == 3 and image.shape[2] == 4:
        alpha = _to_uint8(image[:, :, 3]).astype(np.float32) / 255.0
        image = (_to_uint8(image[:, :, :3]).astype(np.float32) * alpha[:, :, None]).round().astype(np.uint8)
    image = _to_uint8(image)
    if image.ndim == 2:
        return np.ascontiguousarray(image)
    return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)


class SiftExtractor(ConfiguredExtractor):
    """SIFT / RootSIFT extractor for one named or explicit configuration.

    >>> ex = SiftExtractor("rootsift-2k")
    >>> feats = ex.extract_path("image.jpg")              # LocalFeatures, descriptors (N, 128) float32
    >>> feats = ex.extract_path("q.jpg", box=(10, 20, 300, 400))  # crop first (Oxford queries)

    Thread-safe: every call creates its own OpenCV detector (cheap), so one extractor can serve a
    thread pool.
    """

    CONFIGS = SIFT_CONFIGS
    DEFAULT = "rootsift-2k"

    @property
    def dim(self) -> int:
        return 128

    @property
    def store_dtype(self) -> str:
        """How a :class:`~retrieval.features.store.LocalFeatureStore` should keep the descriptors: uint8 for plain
        SIFT (integer 0..255, lossless), float16 for RootSIFT."""
        return "float16" if self._config["root"] else "uint8"

    def _detector(self):
        c = self._config
        # upright keeps the cap after merging duplicate locations, so it detects everything first
        prefilter = 0 if c["max_keypoints"] is None or c["upright"] else int(c["max_keypoints"])
        return cv2.SIFT_create(
            nfeatures=prefilter,
            nOctaveLayers=int(c["n_octave_layers"]), contrastThreshold=float(c["contrast_threshold"]),
            edgeThreshold=float(c["edge_threshold"]), sigma=float(c["sigma"]),
            descriptorType=cv2.CV_32F)

    def prepare(self, image: np.ndarray, box: Optional[Box] = None) -> np.ndarray:
        """Gray uint8 image as extraction sees it: resized by ``max_side``/``upscale``, then cropped to
        ``box`` (x1, y1, x2, y2 in pixels of ``image`` as given, scaled by the resize factor)."""
        gray = to_gray(image)
        return resize_and_crop(gray, int(self._config["max_side"]), bool(self._config["upscale"]), box)

    def extract(self, image: np.ndarray, box: Optional[Box] = None) -> LocalFeatures:
        """Local features of an image array (gray, RGB or RGBA; uint8, 16-bit or [0, 1] float)."""
        gray = self.prepare(image, box)
        c = self._config
        sift = self._detector()
        if c["upright"]:
            keypoints = sift.detect(gray, None)
            keypoints = self._strongest(_dedupe_locations(keypoints))
            for kp in keypoints:
                kp.angle = 0.0
            keypoints, desc = sift.compute(gray, keypoints) if keypoints else ((), None)
        else:
            keypoints, desc = sift.detectAndCompute(gray, None)
            # OpenCV's nfeatures keeps ties at the cut; the cap must be exact
            if c["max_keypoints"] is not None and len(keypoints) > c["max_keypoints"]:
                order = _strongest_order(keypoints, int(c["max_keypoints"]))
                keypoints = [keypoints[i] for i in order]
                desc = desc[order]
        image_size = (int(gray.shape[0]), int(gray.shape[1]))
        if desc is None or len(keypoints) == 0:
            return LocalFeatures.empty(self.dim, image_size, np.float32 if c["root"] else np.uint8)
        kps = np.array([(k.pt[0], k.pt[1], k.size, k.angle) for k in keypoints], dtype=np.float32)
        if c["root"]:
            desc = root_sift(desc)
        else:
            desc = np.clip(np.rint(desc), 0, 255).astype(np.uint8)
        return LocalFeatures(kps, desc, image_size)

    def _strongest(self, keypoints: Sequence) -> list:
        cap = self._config["max_keypoints"]
        if cap is None or len(keypoints) <= cap:
            return list(keypoints)
        return [keypoints[i] for i in _strongest_order(keypoints, int(cap))]


def resize_and_crop(image: np.ndarray, max_side: int, upscale: bool, box: Optional[Box]) -> np.ndarray:
    """``image`` (H, W[, C]) resized so that its longest side is at most ``max_side`` (exactly, with
    ``upscale``), then cropped to ``box`` (x1, y1, x2, y2 in pixels of ``image`` as given, scaled by the
    resize factor). Shared by every local extractor, so that a box means the same region for all."""
    h0, w0 = image.shape[:2]
    image = resize_longest_side(image, max_side, upscale=upscale)
    if box is not None:
        sy, sx = image.shape[0] / h0, image.shape[1] / w0
        x1, y1, x2, y2 = (float(v) for v in box)
        c0, c1 = max(0, int(np.floor(x1 * sx))), min(image.shape[1], int(np.ceil(x2 * sx)))
        r0, r1 = max(0, int(np.floor(y1 * sy))), min(image.shape[0], int(np.ceil(y2 * sy)))
        if c1 - c0 < 1 or r1 - r0 < 1:
            raise ValueError(f"box {tuple(box)} lies outside the {w0}x{h0} image or is empty")
        image = image[r0:r1, c0:c1]
    return np.ascontiguousarray(image)


def _strongest_order(keypoints: Sequence, cap: int) -> np.ndarray:
    """Indices of the ``cap`` keypoints of highest response (stable, so ties keep detector order)."""
    response = np.array([k.response for k in keypoints], dtype=np.float64)
    return np.sort(np.argsort(-response, kind="stable")[:cap])


def _dedupe_locations(keypoints: Sequence) -> list:
    """One keypoint per (x, y, size): OpenCV repeats a location once per dominant orientation, which
    would be identical descriptors once orientation is fixed. Keeps the strongest of each group."""
    if not keypoints:
        return []
    arr = np.array([(k.pt[0], k.pt[1], k.size, -k.response) for k in keypoints], dtype=np.float64)
    order = np.lexsort((arr[:, 3], arr[:, 2], arr[:, 1], arr[:, 0]))
    sorted_arr = arr[order, :3]
    first = np.ones(len(order), dtype=bool)
    first[1:] = np.any(sorted_arr[1:] != sorted_arr[:-1], axis=1)
    keep = np.sort(order[first])
    return [keypoints[i] for i in keep]
