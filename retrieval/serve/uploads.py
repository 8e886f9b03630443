"""Decoding an uploaded query image safely: capped in bytes and in pixels, fully decoded or refused.

Every refusal is an :class:`UploadError` carrying the HTTP status and a one-line message the page shows
as it is: 413 for too many bytes or pixels (a decompression bomb is a small file that claims a huge
canvas: the pixel count is checked from the header, before any pixel is decoded), 415 for bytes that
are not an image Pillow can identify, 422 for a truncated or corrupt image.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from retrieval.core.imageio import _pil_to_rgb

__all__ = ["UploadError", "UploadLimits", "decode_upload"]


class UploadError(ValueError):
    """An upload refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = int(status)
        self.message = message


class UploadLimits:
    """``max_bytes`` per uploaded file, ``max_pixels`` (width x height) per decoded image."""

    def __init__(self, max_bytes: int = 10 * 2 ** 20, max_pixels: int = 40_000_000):
        if max_bytes < 1 or max_pixels < 1:
            raise ValueError(f"upload limits must be positive, got {max_bytes} bytes, {max_pixels} pixels")
        self.max_bytes = int(max_bytes)
        self.max_pixels = int(max_pixels)

    def to_dict(self) -> dict:
        return {"max_bytes": self.max_bytes, "max_pixels": self.max_pixels}


def decode_upload(data: bytes, limits: UploadLimits, name: str = "upload") -> np.ndarray:
    """``data`` (the whole uploaded file) as an (H, W, 3) uint8 RGB array, or :class:`UploadError`."""
    if len(data) == 0:
        raise UploadError(422, f"{name}: the file is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise UploadError(413, f"{name}: {len(data)} bytes is more than the {limits.max_bytes} bytes "
                               "an upload may have")
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone relaxed Pillow globally: a truncated file must still fail
        raise UploadError(500, "Pillow is set to load truncated images; refusing to decode uploads")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns at MAX_IMAGE_PIXELS and raises at twice that: both refuse
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if width * height > limits.max_pixels:
                    raise UploadError(413, f"{name}: {width} x {height} = {width * height} pixels is more than "
                                           f"the {limits.max_pixels} pixels an upload may have")
                img.load()  # the full decode: a truncated file fails here
                rgb = _pil_to_rgb(ImageOps.exif_transpose(img))
    except UploadError:
        raise
    except UnidentifiedImageError:
        raise UploadError(415, f"{name}: not an image (Pillow cannot identify the format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UploadError(413, f"{name}: refused as a decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UploadError(422, f"{name}: corrupt or truncated image ({exc})") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise UploadError(422, f"{name}: decoded to an unusable array of shape {rgb.shape}")
    return np.ascontiguousarray(rgb)
