"""Hessian-affine RootSIFT local features with kornia's hand-crafted modules (no learned weights).

What: the Mikolajczyk-Schmid Hessian-affine detector (Mikolajczyk & Schmid, IJCV 2004): scale-space maxima
of the determinant of the Hessian, refined to sub-pixel position and scale, each region's shape then adapted
to the second-moment matrix of its patch (Baumberg, CVPR 2000); SIFT descriptors of the normalised patches,
mapped to RootSIFT (Arandjelovic & Zisserman, CVPR 2012). Why: they are the features ASMK* was published
with (Tolias, Avrithis & Jegou, ICCV 2013 / IJCV 2016, after Perdoch, Chum & Matas, CVPR 2009), where
this project's difference-of-Gaussian RootSIFT (:mod:`retrieval.features.sift`) leaves ASMK* short of the
published figures.

Extraction of one image: read it as 8-bit RGB, resize so the longest side is at most ``max_side``
(``upscale`` enlarges smaller ones), crop the optional box (:func:`retrieval.features.sift.resize_and_crop`,
as every local extractor), convert to gray in [0, 1], then kornia's

* ``ScaleSpaceDetector``: a ``ScalePyramid`` of 3 levels per octave from sigma 1.6 (Lowe's), the first
  octave on the image doubled (``double_image``: small blobs, as SIFT), octaves down to 32 pixels;
  ``BlobHessian`` (scale-normalised determinant of the Hessian); strict 3x3x3 maxima refined by
  ``ConvQuadInterp3d``; the ``max_keypoints`` strongest responses are kept (no sensitivity threshold, only
  a floor that drops float rounding noise: ``_NOISE_FLOOR``);
* ``LAFAffineShapeEstimator`` (``affine``): one Baumberg step, the second-moment matrix of a 19-pixel
  patch of the region (Perdoch's ``hesaff`` window) turned into the region's ellipse;
* orientation: ``upright`` keeps the gravity vector (Perdoch et al.: the affine frame whose vertical
  direction stays vertical, the setting of the published ASMK* features, right for landmark photos taken
  upright); otherwise ``LAFOrienter`` (36-bin gradient histogram, the dominant angle);
* ``LAFDescriptor(SIFTDescriptor(patch_size, rootsift=True))``: the region sampled as a ``patch_size``
  patch (41, Perdoch's), a 4x4x8 SIFT histogram, clipped at 0.2, then RootSIFT (unit L2 norm).

The region's half-width is ``magnification`` (3 sqrt(3), Perdoch's ``mrSize``) times the detection
scale sigma. Keypoints are ``[x, y, size, angle]`` as OpenCV's SIFT records them: ``size`` twice the
detection scale (the region's half-width over ``magnification``, times 2), ``angle`` in degrees (0 when
upright); the affine shape itself is used for the descriptor only. ``descriptor_kind`` is
``hesaff-rootsift``, so a store of these is never scored against DoG RootSIFT.

An extractor pickles with only its configuration: kornia's modules are built on first use in each
process. torch runs single-threaded inside ``extract_local_features``'s worker threads and in each sharded
extraction worker (:func:`retrieval.features.extract._torch_threads`, ``uses_torch`` below).
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Dict, Literal, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from retrieval.core.config import Config, ConfigError, Registry

from retrieval.features.local import ConfiguredExtractor, LocalFeatures
from retrieval.features.sift import resize_and_crop, to_gray

Box = Tuple[float, float, float, float]

__all__ = ["HesAffConfig", "HESAFF_CONFIGS", "HesAffExtractor", "hesaff_config"]

#: Perdoch's hesaff region magnification (``mrSize``): the region's half-width over the detection scale
PERDOCH_MAGNIFICATION = 3.0 * math.sqrt(3.0)
#: the coarsest octave's shorter side (pixels): smaller octaves hold few regions that fit their 5-pixel border
_MIN_OCTAVE = 32
#: Perdoch's second-moment window (pixels) for the shape adaptation
_SHAPE_WINDOW = 19
#: responses at or below this are float32 rounding, not structure: flat gray images gave maxima of at most
#: 1e-13 (measured), while the scale-normalised response of a blob grows with its contrast squared (one gray
#: level: (1/255)^2, about 1.5e-5); kornia sets no threshold, so without it a flat 16 x 16 image of gray 100
#: gives 9 detections
_NOISE_FLOOR = 1e-9


@dataclass(frozen=True)
class HesAffConfig(Config):
    """Everything that determines a Hessian-affine RootSIFT extraction."""

    type: Literal["hesaff"] = "hesaff"
    max_keypoints: int = 4000
    max_side: int = 1024               # the published features were extracted on Oxford's 1024 px originals
    upscale: bool = False
    double_image: bool = True          # first octave on the image doubled (finds small blobs, as SIFT)
    magnification: float = PERDOCH_MAGNIFICATION
    patch_size: int = 41               # descriptor patch (pixels), Perdoch's
    affine: bool = True                # Baumberg shape adaptation (False: circular Hessian regions)
    upright: bool = True               # gravity vector assumption (False: dominant gradient orientation)

    def check(self) -> None:
        if self.max_keypoints < 1:
            raise ConfigError(f"max_keypoints must be >= 1, got {self.max_keypoints}")
        if self.max_side < _MIN_OCTAVE:
            raise ConfigError(f"max_side must be >= {_MIN_OCTAVE} pixels, got {self.max_side}")
        if not self.magnification > 0:
            raise ConfigError(f"magnification must be > 0, got {self.magnification}")
        if self.patch_size < 16:
            raise ConfigError(f"patch_size must be >= 16 pixels (a 4x4 grid of cells), got {self.patch_size}")


HESAFF_CONFIGS: Registry[HesAffConfig] = Registry("Hessian-affine configuration", HesAffConfig)
for _name, _conf in {
    # upright, as the published ASMK* features (and as this project's best DoG RootSIFT for landmarks)
    "hesaff-rootsift-upright-4k": HesAffConfig(max_keypoints=4000),
    "hesaff-rootsift-upright-2k": HesAffConfig(max_keypoints=2000),
    "hesaff-rootsift-4k": HesAffConfig(max_keypoints=4000, upright=False),
}.items():
    HESAFF_CONFIGS.register(_name, _conf)


def hesaff_config(config: Union[str, Mapping[str, Any], HesAffConfig, None] = "hesaff-rootsift-upright-4k",
                  overrides: Union[None, Mapping[str, Any], Sequence[str]] = None, **kwargs) -> Dict[str, object]:
    """The complete recorded configuration (a dict with its ``name``), as :func:`retrieval.features.sift.sift_config`."""
    return HESAFF_CONFIGS.recorded(config, overrides, **kwargs)


_BUILD_LOCK = threading.Lock()


@lru_cache(maxsize=None)
def _modules(max_keypoints: int, double_image: bool, magnification: float, patch_size: int, affine: bool,
             upright: bool):
    """(detector, descriptor) kornia modules of these settings, built once per process (threads share them:
    they hold no state that a forward pass under ``torch.inference_mode`` changes)."""
    import kornia.feature as KF
    import kornia.geometry as KG

    shape = KF.LAFAffineShapeEstimator(_SHAPE_WINDOW, preserve_orientation=upright) if affine else KF.PassLAF()
    detector = KF.ScaleSpaceDetector(
        max_keypoints, mr_size=magnification,
        scale_pyr_module=KG.ScalePyramid(3, 1.6, _MIN_OCTAVE, double_image=double_image),
        resp_module=KF.BlobHessian(), subpix_module=KG.ConvQuadInterp3d(10),
        ori_module=KF.PassLAF() if upright else KF.LAFOrienter(32), aff_module=shape)
    descriptor = KF.LAFDescriptor(KF.SIFTDescriptor(patch_size, rootsift=True), patch_size=patch_size)
    return detector.eval(), descriptor.eval()


def modules(config: Mapping[str, Any]):
    c = config
    with _BUILD_LOCK:
        return _modules(int(c["max_keypoints"]), bool(c["double_image"]), float(c["magnification"]),
                        int(c["patch_size"]), bool(c["affine"]), bool(c["upright"]))


class HesAffExtractor(ConfiguredExtractor):
    """Hessian-affine RootSIFT for one named or explicit configuration.

    >>> ex = HesAffExtractor("hesaff-rootsift-upright-4k")
    >>> feats = ex.extract_path("image.jpg")             # LocalFeatures, (N, 128) float32 RootSIFT
    """

    #: runs torch: extract_local_features keeps it to one thread per worker
    uses_torch = True

    CONFIGS = HESAFF_CONFIGS
    DEFAULT = "hesaff-rootsift-upright-4k"

    @property
    def dim(self) -> int:
        return 128

    @property
    def store_dtype(self) -> str:
        return "float16"

    def prepare(self, image: np.ndarray, box: Optional[Box] = None) -> np.ndarray:
        """Gray uint8 image as extraction sees it: resized by ``max_side``/``upscale``, then cropped to
        ``box`` (x1, y1, x2, y2 in pixels of ``image`` as given, scaled by the resize factor)."""
        c = self._config
        return resize_and_crop(to_gray(image), int(c["max_side"]), bool(c["upscale"]), box)

    def extract(self, image: np.ndarray, box: Optional[Box] = None) -> LocalFeatures:
        """Local features of an image array (gray, RGB or RGBA; uint8, 16-bit or [0, 1] float)."""
        import torch
        import kornia.feature as KF

        gray = self.prepare(image, box)
        image_size = (int(gray.shape[0]), int(gray.shape[1]))
        detector, descriptor = modules(self._config)
        x = torch.from_numpy(gray).float().div_(255.0)[None, None]
        with torch.inference_mode():
            lafs, responses = detector(x)
            # the unfilled slots of a poorly textured image, and maxima of rounding noise on flat areas
            lafs = lafs[:, KF.laf_is_filled(lafs)[0] & (responses[0] > _NOISE_FLOOR)]
            if lafs.shape[1] == 0:
                return LocalFeatures.empty(self.dim, image_size)
            desc = descriptor(x, lafs)[0]
            centre = KF.get_laf_center(lafs)[0]
            half_width = KF.get_laf_scale(lafs)[0, :, 0, 0]
            angle = KF.get_laf_orientation(lafs)[0, :, 0]
        kps = np.zeros((len(centre), 4), np.float32)
        kps[:, :2] = centre.numpy()
        kps[:, 2] = 2.0 * half_width.numpy() / float(self._config["magnification"])
        kps[:, 3] = 0.0 if self._config["upright"] else np.mod(angle.numpy(), 360.0)
        return LocalFeatures(kps, np.ascontiguousarray(desc.float().numpy()), image_size)
