"""The EfficientNet global extractor (:class:`EfficientNetExtractor`): the
:class:`retrieval.features.global_extractor.GlobalExtractor` with named configurations (:data:`EXTRACTOR_CONFIGS` of
:class:`EfficientNetConfig`, in :mod:`retrieval.features.efficientnet_configs`), a fast inference backend
(:mod:`retrieval.features.fast_inference`), optional multi-scale and PCA-whitening, and patch tokens (E7).
Dataset-scale, resumable extraction: :mod:`retrieval.features.deep_extract`.

The network (backbones, weights, :class:`EfficientNetGlobal`) is :mod:`retrieval.features.efficientnet_net`,
trained checkpoints are read by :mod:`retrieval.features.trained`; their public names are importable from here
too, as before.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from retrieval.core.imageio import load_image, resize_longest_side
from retrieval.core.vectors import l2_normalize_rows

from retrieval.features.global_extractor import GlobalExtractor
from retrieval.features.efficientnet_configs import (EXTRACTOR_CONFIGS, INPUT_MODES, EfficientNetConfig, file_digest as _file_digest,
                                   resolve_config)
from retrieval.features.efficientnet_net import (IMAGENET_MEAN, IMAGENET_STD, MODEL_NAMES, EfficientNetGlobal, WeightsNotFoundError,
                               build_efficientnet, canonical_name, is_lite, lite_weights_path, load_efficientnet,
                               normalisation, preprocess, read_state_dict)
from retrieval.features.local import LocalFeatures
from retrieval.features.pooling import l2n, resize_tensor

__all__ = ["MODEL_NAMES", "canonical_name", "is_lite", "build_efficientnet", "load_efficientnet",
           "lite_weights_path", "read_state_dict", "preprocess", "normalisation", "EfficientNetGlobal",
           "WeightsNotFoundError", "EXTRACTOR_CONFIGS", "EfficientNetConfig", "INPUT_MODES", "resolve_config",
           "EfficientNetExtractor", "DEFAULT_BACKEND", "IMAGENET_MEAN", "IMAGENET_STD"]

PathLike = Union[str, os.PathLike]


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

    ``EfficientNetExtractor("lite0-gem-512")`` (a name of :data:`EXTRACTOR_CONFIGS`), an
    :class:`EfficientNetConfig` or a dict of its fields (a recorded :attr:`config` too), plus keyword
    overrides of those fields (:func:`~retrieval.features.efficientnet_configs.resolve_config`).

    Steps per image: crop (optional box) -> resize (longest side or square) -> normalise -> for each
    scale: resize, backbone feature map, pooling, L2 -> sum over scales, L2 -> optional PCA-whitening
    (learned on other data, :class:`retrieval.features.whitening.PCAWhitening`), L2.

    ``backend`` picks the inference path (:data:`retrieval.features.fast_inference.BACKENDS`; 'auto' =
    :data:`DEFAULT_BACKEND` where available). It does not change the descriptors beyond float rounding
    (checked to 1e-4 in the tests), so it is not part of :attr:`config`. The configuration's
    ``precision`` does (int8, bfloat16, float32, or 'auto': :mod:`retrieval.features.precision`): the
    one used is :attr:`precision` and what :attr:`config` records. ``weights`` may be 'imagenet',
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

    def __init__(self, config: Union[str, EfficientNetConfig, dict, None] = "lite0-gem-512", backend: str = "auto",
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
        self._blob_params = None
        from retrieval.features.trained import resolve_device

        self.device = resolve_device(str(device))
        from retrieval.features.precision import select_backbone

        self.precision, self.backbone, self.precision_probe = select_backbone(
            self.model, cfg, backend, self._resolve_backend(backend, self.device), self.device, threads,
            lambda image: self.to_input(self.prepare(image)))
        self.backend = self.backbone.backend
        # images of one size per forward (dataset extraction buckets them by exact size, no padding, so
        # the descriptors do not change): on the loaded 2-core CPU one landmark image at a time ran
        # faster than buckets of 8 (benchmarks/deep_speed.py: 512 px Oxford, float32 0.75x and int8
        # 0.85x of batch 1); 224 px squares use 4. A GPU wants large batches
        if batch_size is None:
            batch_size = 32 if self.device.type != "cpu" else (4 if cfg["input"] == "square" else 1)
        self.batch_size = int(batch_size)
    # -- construction helpers ---------------------------------------------------------------------
    @staticmethod
    def _build_model(cfg: dict) -> EfficientNetGlobal:
        weights = cfg["weights"]
        if weights not in ("imagenet", "random") and _is_training_checkpoint(weights):
            from retrieval.features.trained import load_trained_efficientnet

            model = load_trained_efficientnet(weights)
            if model.name != cfg["model"]:
                raise ValueError(f"{weights}: holds an efficientnet-{model.name}, the configuration asks "
                                 f"for efficientnet-{cfg['model']}")
            if cfg["layer"] != model.layer:  # the trained network read at another feature map
                from retrieval.features.fast_inference import layer_channels

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
        from retrieval.features.fast_inference import BACKENDS, onnxruntime_available

        if backend == "auto" and device.type != "cpu":
            return "channels_last"
        if backend == "auto":
            return DEFAULT_BACKEND if (DEFAULT_BACKEND != "onnxruntime" or onnxruntime_available()) \
                else "torchscript"
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose 'auto' or one of {BACKENDS}")
        return backend

    def set_whitening(self, whitening, cfg: Optional[dict] = None) -> None:
        """Use a fitted :class:`retrieval.features.whitening.PCAWhitening` (or the path of a saved one)."""
        from retrieval.features.whitening import PCAWhitening

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
            desc = l2_normalize_rows(desc, copy=True)
        if self.whitening is not None:
            desc = self.whitening.transform(desc)
            desc = l2_normalize_rows(desc)
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
                f"precision={self.precision!r}, device={str(self.device)!r}, dim={self.dim})")


#: inference path used by default (benchmarks/deep_speed.py compares them); falls back to
#: 'torchscript' where onnxruntime is not installed
DEFAULT_BACKEND = "onnxruntime"
