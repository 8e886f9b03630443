"""Image bytes for the page: an id's file as it is (browsers show JPEG, PNG, GIF, WebP), or re-encoded
(other formats, thumbnails, dataset queries cropped to their box). Paths come only from the catalog's
table; recent answers are kept in a small LRU cache."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Dict, Optional, Tuple

import numpy as np

from retrieval.serve.catalog import Catalog

__all__ = ["ImageCache"]

_AS_IS = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".gif": "image/gif",
          ".webp": "image/webp"}


def _encode(rgb: np.ndarray, fmt: str = ".jpg") -> bytes:
    import cv2

    ok, buf = cv2.imencode(fmt, np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 88]
                           if fmt == ".jpg" else [])
    if not ok:
        raise ValueError(f"could not encode the image as {fmt}")
    return buf.tobytes()


class ImageCache:
    """``get(id, size) -> (bytes, media type)``; ValueError when the file can no longer be read."""

    def __init__(self, catalog: Catalog, capacity: int = 1024):
        self.catalog = catalog
        self.capacity = int(capacity)
        self._cache: "OrderedDict[Tuple[str, Optional[int], str], Tuple[bytes, str]]" = OrderedDict()
        self._lock = threading.Lock()
        ds = catalog.dataset
        self._boxes: Dict[str, tuple] = {}
        if ds is not None and ds.query_boxes is not None:
            self._boxes = {str(q): b for q, b in zip(ds.query_ids, ds.query_boxes) if b is not None}

    def get(self, image_id: str, size: Optional[int] = None, catalog: Optional[Catalog] = None) -> Tuple[bytes, str]:
        """``catalog``: the one the request is served from (a collection's generation; default: the
        catalog given at construction)."""
        catalog = catalog or self.catalog
        path = catalog.image_path(image_id)
        if path is None:
            raise KeyError(image_id)
        key = (image_id, size, str(path))  # an id replaced by an add may have another file
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        answer = self._load(image_id, size, path)
        with self._lock:
            self._cache[key] = answer
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return answer

    def _load(self, image_id: str, size: Optional[int], path) -> Tuple[bytes, str]:
        from retrieval.core.imageio import ImageLoadError, load_image, resize_longest_side

        box = self._boxes.get(image_id)
        media = _AS_IS.get(path.suffix.lower())
        if size is None and box is None and media is not None:
            try:
                return path.read_bytes(), media
            except OSError as exc:
                raise ValueError(f"image {image_id!r} can no longer be read ({exc.strerror})") from None
        try:
            rgb = load_image(path)
        except ImageLoadError as exc:
            raise ValueError(f"image {image_id!r} can no longer be read ({exc.reason})") from None
        if box is not None:
            from retrieval.datasets import crop_query

            rgb = crop_query(rgb, box)
        if size is not None:
            rgb = resize_longest_side(rgb, int(size))
        return (_encode(rgb, ".jpg"), "image/jpeg") if size is not None or media == "image/jpeg" \
            else (_encode(rgb, ".png"), "image/png")
