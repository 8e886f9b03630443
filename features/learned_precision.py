"""Reduced precision for XFeat's network on the CPU, and its ``precision="auto"`` probe.

XFeat's extraction time is its network's (about 3/4 of it on 512 px Oxford images, one thread; the
rest is image loading, the heatmap's non-maximum suppression and the bicubic reading of descriptors).
``bfloat16`` runs that network channels-last under ``torch.autocast("cpu", torch.bfloat16)`` (oneDNN's
native bfloat16 where the CPU has AVX512-BF16 / AMX) and hands its three maps back in float32, so the
keypoint selection, the descriptor interpolation and the L2 normalisation stay kornia's float32 code.

ONNX Runtime's int8 static quantization (:mod:`retrieval.features.precision`'s recipe, calibrated on
the ``pairs`` images) was faster still on this 2-core EPYC in a one-off comparison (network 28 against
37 ms for bfloat16 and 48-64 ms for float32, one thread, load 4-5) but moved the keypoints: 79 % of
float32's 4096 at the same pixel on 10 Oxford images (bfloat16: 97 %), 7 % fewer correct mutual
matches on the kornia homography pair. It is not offered.

``precision="auto"`` (the default for XFeat) keeps bfloat16 when the CPU has native bfloat16 and the
probe finds it equivalent and faster: on :data:`retrieval.features.precision.PROBE_IMAGES` images of
the calibration folder (default ``pairs`` of the data root; synthesized scenes without one) at the
configuration's size, at least :data:`MIN_SHARED_KEYPOINTS` of float32's keypoints found at the same
pixel, a median descriptor cosine at them of at least :data:`MIN_DESCRIPTOR_COSINE`, and
:data:`retrieval.features.precision.MIN_SPEEDUP` times float32's images/s (medians of interleaved
rounds). The decision is cached per machine, weights and settings
(:func:`retrieval.features.precision.auto_decision`), so every worker of a run and every later run take
the same path; the store records it (``precision`` absent for float32, as in every store made before).
"""
from __future__ import annotations

import copy
import time
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

__all__ = ["XFEAT_PRECISIONS", "MIN_SHARED_KEYPOINTS", "MIN_DESCRIPTOR_COSINE", "fold_batch_norms", "Bf16Maps",
           "with_precision", "detect", "agreement", "probe_xfeat", "auto_xfeat_precision"]

XFEAT_PRECISIONS = ("float32", "bfloat16")
#: share of float32's keypoints a reduced precision must find at the same pixel (bfloat16: 0.95-0.97 on
#: Oxford images at 512 px, 4096 keypoints; int8: 0.75-0.80)
MIN_SHARED_KEYPOINTS = 0.9
#: changes whenever the bfloat16 network changes, so that cached "auto" decisions are probed again
BF16_RECIPE = "channels-last-autocast-folded-bn-v1"
#: median cosine of the descriptors at the shared keypoints (bfloat16: 0.9998)
MIN_DESCRIPTOR_COSINE = 0.99


def fold_batch_norms(net: nn.Module) -> nn.Module:
    """``net`` (an ``XFeatModel`` in eval mode) with the batch norm of every conv -> BN -> ReLU layer
    folded into its convolution (torch's ``fuse_conv_bn_eval``), in place: equal
    to float rounding (1e-5 on the maps), and in bfloat16 the network 18 % faster (21.2 against 17.4 ms
    on a 384 x 512 image, one thread, load 4)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for module in net.modules():
        layers = getattr(module, "layer", None)
        if (isinstance(layers, nn.Sequential) and len(layers) == 3 and isinstance(layers[0], nn.Conv2d)
                and isinstance(layers[1], nn.BatchNorm2d)):
            layers[0], layers[1] = fuse_conv_bn_eval(layers[0], layers[1]), nn.Identity()
    return net


class Bf16Maps(nn.Module):
    """An ``XFeatModel`` with its batch norms folded (:func:`fold_batch_norms`) and channels-last weights
    run under bfloat16 autocast; its maps come back in
    float32 (its own parameters stay float32, so kornia's ``XFeat`` post-processing runs in float32 on
    them). The input stays in the default layout: the network first averages it to one channel, where
    both layouts are one, and a channels-last 3-channel input made that average 5x slower (the whole
    network 48 against 64 ms, load 9)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = fold_batch_norms(copy.deepcopy(net).eval()).to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            maps = self.net(x)
        return tuple(m.float().contiguous() for m in maps)


def with_precision(xfeat, precision: str):
    """kornia's ``XFeat`` ``xfeat`` itself (float32) or a copy whose network runs in ``precision``."""
    import kornia.feature as KF

    if precision == "float32":
        return xfeat
    if precision != "bfloat16":
        raise ValueError(f"XFeat precision must be one of {XFEAT_PRECISIONS}, got {precision!r}")
    out = KF.XFeat()
    out.net = Bf16Maps(xfeat.net)
    out._nms = xfeat._nms  # the extractor's keypoint selection and resize, whichever they are
    out._preprocess_tensor = xfeat._preprocess_tensor
    return out.eval()


def detect(xfeat, x: torch.Tensor, top_k: int, threshold: float) -> Tuple[np.ndarray, np.ndarray]:
    """(xy (N, 2), descriptors (N, 64)) of XFeat on one (1, 3, H, W) float image in [0, 1]."""
    with torch.inference_mode():
        out = xfeat.detectAndCompute(x, top_k=top_k, detection_threshold=threshold)[0]
    return out["keypoints"].float().numpy(), out["descriptors"].float().numpy()


def agreement(reference: Tuple[np.ndarray, np.ndarray], other: Tuple[np.ndarray, np.ndarray]) -> Tuple[float, float]:
    """(share of ``reference``'s keypoints that ``other`` has at the same position (to 0.01 px), median
    cosine of the two descriptors there); (0, 0) when none is shared."""
    (xy0, d0), (xy1, d1) = reference, other
    if len(xy0) == 0:
        return (1.0, 1.0) if len(xy1) == 0 else (0.0, 0.0)
    index = {tuple(p): i for i, p in enumerate(np.round(xy0, 2).tolist())}
    pairs = [(index[tuple(p)], j) for j, p in enumerate(np.round(xy1, 2).tolist()) if tuple(p) in index]
    if not pairs:
        return 0.0, 0.0
    a = np.asarray(pairs)
    cosines = np.sum(d0[a[:, 0]] * d1[a[:, 1]], axis=1)
    return len(pairs) / len(xy0), float(np.median(cosines))


def probe_xfeat(candidates: Dict[str, object], inputs: Sequence[torch.Tensor], top_k: int, threshold: float,
                rounds: int = 3) -> dict:
    """Time every candidate ``{"float32": xfeat, "bfloat16": ...}`` on ``inputs`` in interleaved rounds
    (medians of images/s), compare its keypoints and descriptors with float32's (:func:`agreement`, the
    worst image), and choose (module docstring). Returns ``{"precision", "img_per_s", "shared_keypoints",
    "median_cosine"}``."""
    from retrieval.features.precision import MIN_SPEEDUP

    reference = [detect(candidates["float32"], x, top_k, threshold) for x in inputs]
    shared, cosine = {}, {}
    for name, xfeat in candidates.items():  # also every candidate's warm-up
        agree = [agreement(ref, detect(xfeat, x, top_k, threshold)) for ref, x in zip(reference, inputs)]
        shared[name] = min(a for a, _ in agree)
        cosine[name] = min(c for _, c in agree)
    speeds: Dict[str, List[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, xfeat in candidates.items():
            start = time.perf_counter()
            for x in inputs:
                detect(xfeat, x, top_k, threshold)
            speeds[name].append(len(inputs) / (time.perf_counter() - start))
    ips = {name: float(np.median(v)) for name, v in speeds.items()}
    chosen = "float32"
    for name in candidates:
        if (name != "float32" and shared[name] >= MIN_SHARED_KEYPOINTS and cosine[name] >= MIN_DESCRIPTOR_COSINE
                and ips[name] >= MIN_SPEEDUP * ips["float32"] and ips[name] > ips[chosen]):
            chosen = name
    return {"precision": chosen, "img_per_s": ips, "shared_keypoints": shared, "median_cosine": cosine}


def _probe_images(config: dict, prepare: Callable[[np.ndarray], np.ndarray]) -> List[torch.Tensor]:
    """The probe's inputs: the first calibration images, else seeded synthetic scenes at ``max_side``."""
    from retrieval.core.imageio import load_image
    from retrieval.features.precision import DEFAULT_CALIBRATION, PROBE_IMAGES, calibration_files

    try:
        images = [load_image(p) for p in calibration_files(DEFAULT_CALIBRATION)[:PROBE_IMAGES]]
    except FileNotFoundError:
        import cv2

        side = int(config["max_side"])
        rng = np.random.default_rng(0)
        images = [cv2.resize((rng.random((side // 8, side // 8, 3)) * 255).astype(np.uint8), (side, side),
                             interpolation=cv2.INTER_CUBIC) for _ in range(PROBE_IMAGES)]
    return [torch.from_numpy(prepare(img).copy()).permute(2, 0, 1)[None].float().div_(255.0) for img in images]


def auto_xfeat_precision(xfeat, config: dict, prepare: Callable[[np.ndarray], np.ndarray]) -> Tuple[str, dict]:
    """(precision, decision record) of ``precision="auto"`` for the float32 ``xfeat`` and the extractor's
    ``config``: float32 without native bfloat16, else the cached or freshly probed decision."""
    from retrieval.features.precision import _state_digest, auto_decision, bf16_available

    if not bf16_available():
        return "float32", {"precision": "float32", "candidates": ["float32"], "note": "no native bfloat16"}
    top_k, threshold = int(config["max_keypoints"]), float(config["detection_threshold"])

    def run_probe() -> dict:
        candidates = {p: with_precision(xfeat, p) for p in XFEAT_PRECISIONS}
        return dict(probe_xfeat(candidates, _probe_images(config, prepare), top_k, threshold),
                    candidates=list(XFEAT_PRECISIONS))

    key = ("xfeat", BF16_RECIPE, _state_digest(xfeat.net), int(config["max_side"]), bool(config["upscale"]), top_k, threshold,
           XFEAT_PRECISIONS)
    return auto_decision(key, run_probe)
