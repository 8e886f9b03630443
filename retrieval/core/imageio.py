"""The one image-loading function every extractor and dataset uses.

Whatever the file holds (grayscale, RGBA, palette, CMYK, 16-bit, EXIF-rotated JPEG), the result is an
8-bit RGB array, so extractors never see a format they did not plan for. Failures raise
:class:`ImageLoadError`, which names the file and the problem.

Pixel cap. A small file can claim a huge image (a 107 kB PNG of 30000 x 30000 pixels needs 2.7 GB
decoded). :func:`load_image` and :func:`image_size` read the size from the header first and refuse
an image of more than ``max_pixels`` pixels (default :data:`MAX_PIXELS`, 100 million, which the
environment variable ``RETRIEVAL_MAX_PIXELS`` or assigning ``retrieval.core.imageio.MAX_PIXELS`` changes)
before decoding anything. Pillow's own decompression-bomb check (``PIL.Image.MAX_IMAGE_PIXELS``)
still applies on top: to decode images beyond about 179 million pixels raise that too.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from retrieval.core.fileio import FileFormatError

PathLike = Union[str, os.PathLike]

__all__ = ["ImageLoadError", "load_image", "resize_longest_side", "image_size", "MAX_PIXELS"]


def _env_pixels(default: int) -> int:
    text = os.environ.get("RETRIEVAL_MAX_PIXELS", "").strip()
    if not text:
        return default
    try:
        value = int(float(text))
    except ValueError:
        raise ValueError(f"RETRIEVAL_MAX_PIXELS={text!r} is not a number of pixels") from None
    if value < 1:
        raise ValueError(f"RETRIEVAL_MAX_PIXELS={text!r} must be positive")
    return value


#: the largest image (width x height) :func:`load_image` decodes unless told otherwise
MAX_PIXELS = _env_pixels(100_000_000)


class ImageLoadError(FileFormatError):
    """An image file could not be read; ``path`` names it and ``reason`` says why."""


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale any integer or float image array to uint8 by its dtype's range (16-bit: >> 8)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        if info.max <= 255 and info.min >= 0:
            return array.astype(np.uint8)
        # 16-bit PNG/TIFF (Pillow modes I;16 and I). Pillow reports 16-bit data as int32 'I';
        # values then fit in 0..65535, so divide by 257 to map 65535 -> 255 exactly.
        top = 65535.0 if array.max(initial=0) <= 65535 else float(array.max())
        return np.clip(np.rint(array.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)
    # float images (mode F): assume [0, 1] when they fit there, else min-max
    array = array.astype(np.float64)
    lo, hi = float(np.nanmin(array)), float(np.nanmax(array))
    if lo >= 0.0 and hi <= 1.0:
        scaled = array * 255.0
    else:
        scaled = (array - lo) * (255.0 / max(hi - lo, 1e-12))
    return np.clip(np.rint(np.nan_to_num(scaled)), 0, 255).astype(np.uint8)


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Composite on black: COIL/Oxford style backgrounds; avoids random colours under alpha=0.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"), dtype=np.uint8)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        gray = _to_uint8(np.asarray(img))
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "1":
        gray = np.asarray(img.convert("L"), dtype=np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    # L, P, CMYK, YCbCr, LAB, HSV ...: Pillow converts these to RGB correctly
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def resize_longest_side(image: np.ndarray, max_side: int, upscale: bool = False) -> np.ndarray:
    """Resize so that the longest side is ``max_side`` (area interpolation when shrinking)."""
    import cv2

    h, w = image.shape[:2]
    longest = max(h, w)
    if longest == max_side or (longest < max_side and not upscale):
        return image
    scale = max_side / float(longest)
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interp)


def _pixel_cap(max_pixels: Optional[int]) -> int:
    cap = MAX_PIXELS if max_pixels is None else max_pixels
    if isinstance(cap, bool) or not isinstance(cap, (int, np.integer)) or cap < 1:
        raise ValueError(f"max_pixels must be a positive whole number, got {cap!r}")
    return int(cap)


def _check_pixels(path: Path, size: Tuple[int, int], cap: int) -> None:
    w, h = size
    if w * h > cap:
        raise ImageLoadError(path, f"image of {w} x {h} = {w * h} pixels is larger than the pixel cap of "
                                   f"{cap} (a decompression bomb?); raise max_pixels / RETRIEVAL_MAX_PIXELS "
                                   "to decode it")


def _bomb(path: Path, exc: Exception) -> ImageLoadError:
    return ImageLoadError(path, f"image too large to decode, a decompression bomb? (Pillow: {exc}); "
                                "raise PIL.Image.MAX_IMAGE_PIXELS and max_pixels to decode it")


def load_image(path: PathLike, max_side: Optional[int] = None, upscale: bool = False,
               max_pixels: Optional[int] = None) -> np.ndarray:
    """Read an image file as an ``(H, W, 3)`` uint8 RGB array.

    EXIF orientation is applied; grayscale, RGBA (composited on black), palette, CMYK and 16-bit
    images become 8-bit RGB. ``max_side`` resizes so that the longest side is at most that many
    pixels (``upscale=True`` also enlarges smaller images).

    Raises :class:`ImageLoadError` naming the file for a missing, empty, truncated, corrupt or
    non-image file, and for an image of more than ``max_pixels`` pixels (default
    :data:`MAX_PIXELS`; checked from the header, before decoding).
    """
    path = Path(path)
    cap = _pixel_cap(max_pixels)
    if not path.is_file():
        raise ImageLoadError(path, "no such file")
    if path.stat().st_size == 0:
        raise ImageLoadError(path, "file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # the pixel cap below replaces Pillow's warning level; its hard limit still applies
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                _check_pixels(path, img.size, cap)
                img.load()  # forces a full decode: truncated files fail here
                if img.getexif().get(0x0112, 1) in (2, 3, 4, 5, 6, 7, 8):
                    # only a rotated or mirrored image: exif_transpose returns a full copy of every
                    # other one, a cost on every image where decoding feeds a network
                    img = ImageOps.exif_transpose(img)
                rgb = _pil_to_rgb(img)
    except UnidentifiedImageError:
        raise ImageLoadError(path, "not an image file Pillow can identify") from None
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:
        raise _bomb(path, exc) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(path, f"corrupt or truncated image ({exc})") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageLoadError(path, f"decoded to an unusable array of shape {rgb.shape}")
    if max_side is not None:
        rgb = resize_longest_side(rgb, int(max_side), upscale=upscale)
    return np.ascontiguousarray(rgb)


def image_size(path: PathLike, max_pixels: Optional[int] = None) -> Tuple[int, int]:
    """(height, width) after EXIF orientation, read from the header without decoding pixels. An
    image :func:`load_image` would refuse for its size (more than ``max_pixels``) is refused here too."""
    path = Path(path)
    cap = _pixel_cap(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                _check_pixels(path, (w, h), cap)
                orientation = img.getexif().get(0x0112, 1)
    except Image.DecompressionBombError as exc:
        raise _bomb(path, exc) from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageLoadError):
            raise
        raise ImageLoadError(path, f"cannot read image header ({exc})") from None
    if orientation in (5, 6, 7, 8):
        w, h = h, w
    return h, w
