"""SIFT and RootSIFT local features with OpenCV.

Extraction steps for one image:

1. read it as 8-bit RGB (:func:`retrieval.imageio.load_image`), resize so that its longest side is
   ``max_side`` (``upscale`` also enlarges smaller images), crop the optional box (given in pixels of the
   stored file, scaled by the same factor), convert to gray;
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
:class:`~features.local.LocalFeatures`.

A configuration dict (see :data:`SIFT_CONFIGS`) fully describes extraction; it is what feature stores
record, so a store made with other settings is refused rather than mixed in.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from retrieval.imageio import _to_uint8, load_image, resize_longest_side

from .local import LocalFeatures

PathLike = Union[str, os.PathLike]
Box = Tuple[float, float, float, float]

__all__ = ["SIFT_CONFIGS", "DEFAULT_SIFT", "SiftExtractor", "root_sift", "sift_config", "to_gray"]

#: Every key an extraction configuration has, with its default.
DEFAULT_SIFT: Dict[str, object] = {
    "type": "sift",
    "root": True,               # RootSIFT (Hellinger) instead of plain SIFT
    "max_keypoints": 2000,      # keep the strongest by detector response; None = all
    "max_side": None,           # resize so that the longest side is this many pixels; None = as stored
    "upscale": False,           # with max_side: also enlarge smaller images
    "contrast_threshold": 0.04,  # OpenCV default; lower finds more (weaker) keypoints
    "edge_threshold": 10.0,
    "n_octave_layers": 3,
    "sigma": 1.6,
    "upright": False,           # orientation fixed to 0 (one descriptor per location)
}

#: Named configurations (like hloc's ``confs``): a name selects a complete, recorded configuration.
SIFT_CONFIGS: Dict[str, Dict[str, object]] = {
    "sift-1k": {"root": False, "max_keypoints": 1000},
    "sift-2k": {"root": False, "max_keypoints": 2000},
    "rootsift-1k": {"root": True, "max_keypoints": 1000},
    "rootsift-2k": {"root": True, "max_keypoints": 2000},
    "rootsift-4k": {"root": True, "max_keypoints": 4000},
    # more, weaker keypoints: BoW and VLAD gain from more evidence per image
    "rootsift-c02-4k": {"root": True, "max_keypoints": 4000, "contrast_threshold": 0.02},
    "rootsift-upright-c02-4k": {"root": True, "max_keypoints": 4000, "contrast_threshold": 0.02,
                                "upright": True},
    # landmark photos are taken upright: rotation invariance only costs distinctiveness there
    "rootsift-upright-4k": {"root": True, "max_keypoints": 4000, "upright": True},
    # small object images (COIL-100 is 128 x 128): enlarge and lower the contrast threshold so that an
    # image yields a few hundred keypoints instead of a few dozen
    "rootsift-small": {"root": True, "max_keypoints": 1000, "max_side": 256, "upscale": True,
                       "contrast_threshold": 0.01},
    "rootsift-small-upright": {"root": True, "max_keypoints": 1000, "max_side": 256, "upscale": True,
                               "contrast_threshold": 0.01, "upright": True},
}


def sift_config(config: Union[str, dict, None] = None, **overrides) -> Dict[str, object]:
    """The complete configuration for a name from :data:`SIFT_CONFIGS` or a (partial) dict, with
    ``overrides`` applied; unknown keys are refused so a typo never silently means a default."""
    if config is None:
        base: dict = {}
        name = "custom"
    elif isinstance(config, str):
        if config not in SIFT_CONFIGS:
            raise ValueError(f"unknown SIFT configuration {config!r}; known: {sorted(SIFT_CONFIGS)}")
        base = dict(SIFT_CONFIGS[config])
        name = config
    else:
        base = dict(config)
        name = str(base.pop("name", "custom"))
    base.update(overrides)
    if overrides and isinstance(config, str):
        name = config + "+" + ",".join(f"{k}={v}" for k, v in sorted(overrides.items()))
    unknown = set(base) - set(DEFAULT_SIFT)
    if unknown:
        raise ValueError(f"unknown SIFT configuration keys {sorted(unknown)}; known: {sorted(DEFAULT_SIFT)}")
    full = dict(DEFAULT_SIFT)
    full.update(base)
    if full["type"] != "sift":
        raise ValueError(f"not a SIFT configuration (type={full['type']!r})")
    if full["max_keypoints"] is not None:
        full["max_keypoints"] = int(full["max_keypoints"])
        if full["max_keypoints"] < 1:
            raise ValueError("max_keypoints must be >= 1 or None")
    if full["max_side"] is not None:
        full["max_side"] = int(full["max_side"])
    for key in ("contrast_threshold", "edge_threshold", "sigma"):
        full[key] = float(full[key])
    full["n_octave_layers"] = int(full["n_octave_layers"])
    full["root"] = bool(full["root"])
    full["upright"] = bool(full["upright"])
    full["upscale"] = bool(full["upscale"])
    full["name"] = name
    return full


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


class SiftExtractor:
    """SIFT / RootSIFT extractor for one named or explicit configuration.

    >>> ex = SiftExtractor("rootsift-2k")
    >>> feats = ex.extract_path("image.jpg")              # LocalFeatures, descriptors (N, 128) float32
    >>> feats = ex.extract_path("q.jpg", box=(10, 20, 300, 400))  # crop first (Oxford queries)

    Thread-safe: every call creates its own OpenCV detector (cheap), so one extractor can serve a
    thread pool.
    """

    name = "sift"

    def __init__(self, config: Union[str, dict, None] = "rootsift-2k", **overrides):
        self._config = sift_config(config, **overrides)
        self.name = str(self._config["name"])

    @property
    def config(self) -> Dict[str, object]:
        return dict(self._config)

    @property
    def dim(self) -> int:
        return 128

    @property
    def store_dtype(self) -> str:
        """How a :class:`~features.store.LocalFeatureStore` should keep the descriptors: uint8 for plain
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
        h0, w0 = gray.shape
        if self._config["max_side"] is not None:
            gray = resize_longest_side(gray, int(self._config["max_side"]), upscale=bool(self._config["upscale"]))
        if box is not None:
            sy, sx = gray.shape[0] / h0, gray.shape[1] / w0
            x1, y1, x2, y2 = (float(v) for v in box)
            c0, c1 = max(0, int(np.floor(x1 * sx))), min(gray.shape[1], int(np.ceil(x2 * sx)))
            r0, r1 = max(0, int(np.floor(y1 * sy))), min(gray.shape[0], int(np.ceil(y2 * sy)))
            if c1 - c0 < 1 or r1 - r0 < 1:
                raise ValueError(f"box {tuple(box)} lies outside the {w0}x{h0} image or is empty")
            gray = gray[r0:r1, c0:c1]
        return np.ascontiguousarray(gray)

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

    def extract_path(self, path: PathLike, box: Optional[Box] = None) -> LocalFeatures:
        """Local features of an image file; :class:`~retrieval.imageio.ImageLoadError` names a file that
        cannot be read, and a bad box is reported with the file's name."""
        image = load_image(path)
        try:
            return self.extract(image, box)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    __call__ = extract_path

    def __repr__(self) -> str:
        return f"SiftExtractor({self._config!r})"


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
