"""``POST /api/add``: a local user adds uploaded images to the served collection (``retrieval serve
--allow-add``; off by default).

Each file passes the checks of an upload search (:func:`~retrieval.serve.uploads.decode_upload`: bytes,
pixels, a fully decodable image), every one before anything is written. A file is saved under the
collection folder's ``uploads/`` as ``<sha256 of its bytes>.<format>`` (the format Pillow identified;
nothing of the request's file name is used) and gets the id ``uploads/<first 16 hex digits>``; an image
already in the collection is reported, not added again. The add itself is
:func:`retrieval.steps.add.add_images` (the collection's recorded extractors, metadata from the path and
EXIF), run in the request's worker thread, one add at a time (a second one meanwhile is answered 409;
the collection's writer lock refuses writers of other processes too). The served catalog is then
refreshed, so the answer says which generation shows the images.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import threading
import time
from typing import List, Sequence, Tuple

from retrieval.core.fileio import atomic_write_bytes
from retrieval.serve.live import LiveCatalog
from retrieval.serve.uploads import UploadError, UploadLimits, decode_upload

__all__ = ["Adder", "MAX_ADD_FILES", "UPLOADS"]

log = logging.getLogger("retrieval.serve")
MAX_ADD_FILES = 32
UPLOADS = "uploads"
_SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}


def _add_images(collection, images, root=None, ids=None, extractor=None) -> dict:
    """The pipeline step (imported on use; tests replace this function)."""
    from retrieval.steps.add import add_images

    return add_images(collection, images, root=root, ids=ids, extractor=extractor)


def _suffix(data: bytes) -> str:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:  # already decoded once by decode_upload: cannot fail here
        return _SUFFIXES.get(img.format or "", ".img")


class Adder:
    """Adds uploaded files to ``live``'s collection (module docstring)."""

    def __init__(self, live: LiveCatalog, limits: UploadLimits, extractor=None):
        self.live = live
        self.limits = limits
        self.extractor = extractor  # passed to add_images (None: built from the collection's configuration)
        self.folder = live.folder / UPLOADS
        self._busy = threading.Lock()

    def add(self, files: Sequence[Tuple[str, bytes]]) -> dict:
        """``files``: (name, bytes) pairs as uploaded; ``name`` is only echoed in messages."""
        if not files:
            raise UploadError(422, "no files: send one or more images in the multipart field 'files'")
        if len(files) > MAX_ADD_FILES:
            raise UploadError(413, f"{len(files)} files; one add takes at most {MAX_ADD_FILES}")
        checked = []
        for name, data in files:
            image = decode_upload(data, self.limits, name=name)
            digest = hashlib.sha256(data).hexdigest()
            checked.append((name, data, digest, image.shape))
        if not self._busy.acquire(blocking=False):
            raise UploadError(409, "another add is running; send these images when it has finished")
        try:
            return self._add(checked)
        finally:
            self._busy.release()

    def _add(self, checked: List[tuple]) -> dict:
        start = time.perf_counter()
        catalog = self.live.current
        new, present, seen = [], [], set()
        for name, data, digest, shape in checked:
            image_id = f"{UPLOADS}/{digest[:16]}"
            entry = {"id": image_id, "name": name, "width": int(shape[1]), "height": int(shape[0])}
            if image_id in catalog or image_id in seen:
                present.append(entry)
                continue
            seen.add(image_id)
            path = self.folder / f"{digest}{_suffix(data)}"
            if not path.is_file():
                self.folder.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(path, data)
            new.append((entry, path))
        report = None
        if new:
            try:
                report = _add_images(self.live.folder, [p for _, p in new], root=self.live.folder,
                                     ids=[e["id"] for e, _ in new], extractor=self.extractor)
            except (ValueError, OSError) as exc:  # refused by the collection (a writer, an id): one line
                raise UploadError(409, f"the add was refused: {str(exc).splitlines()[0]}") from None
            try:
                self.live.refresh()
            except Exception as exc:  # the add is done; the watcher keeps trying to load it
                log.warning("added to %s, not yet served: %s", self.live.folder, exc)
        served = self.live.current
        return {"added": [e for e, _ in new], "present": present, "generation": served.generation,
                "count": len(served.index), "step": json.loads(json.dumps(report, default=str)),
                "seconds": round(time.perf_counter() - start, 3)}
