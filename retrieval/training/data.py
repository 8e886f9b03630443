"""Training images: paths + labels -> batches of uint8 arrays of one size, decoded in parallel
(joblib) and optionally cached in memory.

Every image is brought to a ``load_size`` x ``load_size`` square when it is decoded (``fit``):
``'centre'`` resizes the shorter side to ``load_size`` and keeps the centre square, ``'pad'`` resizes
the longer side and pads with black (nothing cut off), ``'squash'`` resizes both sides. With
``load_size=None`` images are kept as stored and must all have the same size (COIL-100: 128 x 128).
Random crops to the network's input size happen later, batched on the device
(:mod:`retrieval.training.augment`); ``load_size`` a little above the crop size keeps that cheap.

Cached (``cache=True``): all images are decoded once (progress bar) into one ``(N, S, S, 3)`` uint8
array; ~49 KiB an image at 128 px, 192 KiB at 256 px. Streaming (``cache=False``, for GLDv2-sized
sets): each batch is decoded when asked for; :class:`BatchPrefetcher` decodes the next batches in a
background thread while the current one trains.

Unreadable files: ``on_error='raise'`` stops with :class:`~retrieval.core.imageio.ImageLoadError`
naming the file; ``'skip'`` drops them from a cached set (listed in :attr:`TrainImages.bad_files`)
and, when streaming, serves a black image in their place and records them.
"""
from __future__ import annotations

import hashlib
import os
import queue
import threading
import warnings
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from joblib import Parallel, delayed
from tqdm.auto import tqdm

from retrieval.core.imageio import ImageLoadError, load_image

from retrieval.training.samplers import encode_labels

PathLike = Union[str, os.PathLike]

__all__ = ["fit_square", "decode_image", "decode_images", "TrainImages", "BatchPrefetcher"]

FITS = ("centre", "pad", "squash")


def fit_square(image: np.ndarray, size: int, fit: str = "centre") -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8 by ``fit`` (see the module docstring); area
    interpolation when shrinking, bilinear when enlarging."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    if fit == "squash":
        interp = cv2.INTER_AREA if size < max(h, w) else cv2.INTER_LINEAR
        return cv2.resize(image, (size, size), interpolation=interp)
    if fit == "centre":
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(image, (nw, nh), interpolation=interp)
        top, left = (nh - size) // 2, (nw - size) // 2
        return np.ascontiguousarray(resized[top:top + size, left:left + size])
    if fit == "pad":
        scale = size / max(h, w)
        nh, nw = min(size, max(1, round(h * scale))), min(size, max(1, round(w * scale)))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(image, (nw, nh), interpolation=interp)
        out = np.zeros((size, size, 3), np.uint8)
        top, left = (size - nh) // 2, (size - nw) // 2
        out[top:top + nh, left:left + nw] = resized
        return out
    raise ValueError(f"unknown fit {fit!r}; choose one of {FITS}")


def decode_image(path: PathLike, load_size: Optional[int], fit: str = "centre") -> np.ndarray:
    """One training image as (S, S, 3) uint8 (or as stored when ``load_size`` is None)."""
    image = load_image(path)
    return image if load_size is None else fit_square(image, int(load_size), fit)


def _decode_or_error(path, load_size, fit):
    try:
        return decode_image(path, load_size, fit), None
    except ImageLoadError as exc:
        return None, exc.reason


def decode_images(paths: Sequence[PathLike], load_size: Optional[int], fit: str = "centre",
                  n_jobs: int = 2, backend: str = "threading", progress: bool = False,
                  desc: str = "decode") -> Tuple[List[Optional[np.ndarray]], List[Tuple[str, str]]]:
    """Decode ``paths`` in parallel (joblib; Pillow and OpenCV release the GIL, so threads scale).
    Returns the arrays (None for an unreadable file) and ``[(path, reason)]`` of unreadable files."""
    jobs = (delayed(_decode_or_error)(p, load_size, fit) for p in paths)
    iterator = Parallel(n_jobs=n_jobs, backend=backend, return_as="generator",
                        batch_size=16 if len(paths) > 256 else 1)(jobs)
    if progress:
        iterator = tqdm(iterator, total=len(paths), desc=desc, unit="img", leave=False)
    images, bad = [], []
    for path, (image, reason) in zip(paths, iterator):
        images.append(image)
        if reason is not None:
            bad.append((str(path), reason))
    return images, bad


class TrainImages:
    """Image paths + labels for training; :meth:`get` returns a batch as a (B, S, S, 3) uint8 tensor.

    ``labels``: any hashable class names (None for unlabelled images); :attr:`label_codes` numbers
    them 0..C-1 and :attr:`classes` lists the names. :attr:`fingerprint` (SHA-256 of the paths and
    labels) goes into the training configuration so a resumed run refuses another data set."""

    def __init__(self, paths: Sequence[PathLike], labels: Optional[Sequence] = None,
                 load_size: Optional[int] = None, fit: str = "centre", cache: bool = True,
                 n_jobs: int = 2, backend: str = "threading", on_error: str = "raise",
                 progress: bool = True):
        if len(paths) == 0:
            raise ValueError("no training images given")
        if labels is not None and len(labels) != len(paths):
            raise ValueError(f"{len(paths)} training paths but {len(labels)} labels")
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if fit not in FITS:
            raise ValueError(f"unknown fit {fit!r}; choose one of {FITS}")
        self.paths = [Path(p) for p in paths]
        self.names = None if labels is None else list(labels)
        self.load_size, self.fit, self.cache = load_size, fit, bool(cache)
        self.n_jobs, self.backend, self.on_error = int(n_jobs), backend, on_error
        self.bad_files: List[Tuple[str, str]] = []
        self._lock = threading.Lock()
        self._cached: Optional[torch.Tensor] = None
        if self.cache:
            self._fill_cache(progress)
        self._shape: Optional[Tuple[int, int]] = (
            tuple(self._cached.shape[1:3]) if self._cached is not None
            else (None if load_size is None else (int(load_size), int(load_size))))
        if self.names is not None:
            self.label_codes, self.classes = encode_labels(self.names)
        else:
            self.label_codes, self.classes = np.zeros(len(self.paths), np.int64), []

    def _fill_cache(self, progress: bool) -> None:
        images, bad = decode_images(self.paths, self.load_size, self.fit, self.n_jobs, self.backend,
                                    progress=progress, desc="decode training images")
        if bad and self.on_error == "raise":
            path, reason = bad[0]
            raise ImageLoadError(path, f"{reason} ({len(bad)} unreadable training image(s) in all; "
                                       "on_error='skip' leaves them out)")
        if bad:
            warnings.warn(f"{len(bad)} unreadable training image(s) left out, first: {bad[0][0]}: {bad[0][1]}")
            self.bad_files.extend(bad)
            keep = [i for i, im in enumerate(images) if im is not None]
            if not keep:
                raise ValueError("none of the training images could be read")
            self.paths = [self.paths[i] for i in keep]
            if self.names is not None:
                self.names = [self.names[i] for i in keep]
            images = [images[i] for i in keep]
        shape = images[0].shape
        for path, im in zip(self.paths, images):
            if im.shape != shape:
                raise ValueError(f"{path}: decoded to {im.shape[1]}x{im.shape[0]} but the first "
                                 f"training image is {shape[1]}x{shape[0]}; set load_size to bring "
                                 "all images to one size")
        self._cached = torch.from_numpy(np.stack(images))

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for i, p in enumerate(self.paths):
            # absolute, so '../data/x.jpg' and '/home/u/data/x.jpg' (the same file) resume one run
            digest.update(os.path.abspath(p).encode())
            digest.update(b"\0")
            if self.names is not None:
                digest.update(str(self.names[i]).encode())
            digest.update(b"\n")
        return digest.hexdigest()

    def describe(self) -> dict:
        """What the training configuration records about the data (JSON)."""
        return {"n_images": len(self), "n_classes": len(self.classes), "load_size": self.load_size,
                "fit": self.fit, "fingerprint": self.fingerprint}

    def labels_tensor(self, indices: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.label_codes[np.asarray(indices)])

    def get(self, indices: np.ndarray) -> torch.Tensor:
        """(B, S, S, 3) uint8 tensor of the images at ``indices``."""
        indices = np.asarray(indices, dtype=np.int64)
        if self._cached is not None:
            return self._cached[torch.from_numpy(indices)]
        paths = [self.paths[i] for i in indices]
        images, bad = decode_images(paths, self.load_size, self.fit, self.n_jobs, self.backend)
        if bad:
            if self.on_error == "raise":
                raise ImageLoadError(bad[0][0], bad[0][1])
            with self._lock:
                self.bad_files.extend(b for b in bad if b not in self.bad_files)
        shape = self._shape or next((im.shape[:2] for im in images if im is not None), None)
        if shape is None:
            raise ValueError(f"no image of this batch could be read (first: {bad[0][0]}: {bad[0][1]})")
        out = np.zeros((len(images), shape[0], shape[1], 3), np.uint8)
        for j, (path, im) in enumerate(zip(paths, images)):
            if im is None:
                continue
            if im.shape[:2] != tuple(shape):
                raise ValueError(f"{path}: decoded to {im.shape[1]}x{im.shape[0]}, expected "
                                 f"{shape[1]}x{shape[0]}; set load_size to bring all images to one size")
            out[j] = im
        return torch.from_numpy(out)

    def batch(self, indices: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(images uint8 (B, S, S, 3), labels int64 (B,))`` for ``indices``."""
        return self.get(indices), self.labels_tensor(indices)


class BatchPrefetcher:
    """Iterate ``fetch(b)`` over ``batches`` with up to ``depth`` batches fetched ahead in a
    background thread (so decoding overlaps training). With ``depth=0`` fetches inline.
    Exceptions in the fetching thread are re-raised in the consumer."""

    _END = object()

    def __init__(self, batches: Sequence[np.ndarray], fetch: Callable[[np.ndarray], object], depth: int = 2):
        self.batches, self.fetch, self.depth = list(batches), fetch, int(depth)

    def __iter__(self) -> Iterator:
        if self.depth <= 0:
            for b in self.batches:
                yield self.fetch(b)
            return
        q: "queue.Queue" = queue.Queue(maxsize=self.depth)
        stop = threading.Event()

        def work():
            try:
                for b in self.batches:
                    if stop.is_set():
                        return
                    q.put(("ok", self.fetch(b)))
                q.put(("end", None))
            except BaseException as exc:  # handed to the consumer
                q.put(("error", exc))

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            while True:
                kind, item = q.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise item
                yield item
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    thread.join(timeout=0.05)
