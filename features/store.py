"""Feature files on disk: HDF5, never pickle.

* :class:`LocalFeatureStore`: one group per image (keypoints, descriptors, image size), written entry by
  entry so an interrupted extraction resumes where it stopped. The extractor's configuration is stored
  in the file; reopening it with another configuration is refused (a stale store is never mixed in).
* :func:`save_global` / :func:`load_global`: ids + an (N, D) float32 matrix + configuration JSON, the
  "feature file" that ``retrieval index build`` and the benchmarks read. :class:`GlobalFeatureWriter`
  appends in chunks for resumable extraction.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union
from urllib.parse import quote, unquote

import h5py
import numpy as np

from retrieval.fileio import FileFormatError, atomic_path, check_header

from .local import LocalFeatures

PathLike = Union[str, os.PathLike]
LOCAL_FORMAT = "hybrid-retrieval/local-features"
GLOBAL_FORMAT = "hybrid-retrieval/global-features"
FORMAT_VERSION = 1

__all__ = ["FeatureFileError", "LocalFeatureStore", "save_global", "load_global",
           "GlobalFeatureWriter", "config_json"]


class FeatureFileError(FileFormatError):
    """A feature file is missing, corrupt, of another format/version, or was made with another
    configuration than the one asked for."""


def config_json(config: Optional[dict]) -> str:
    """Canonical JSON of a configuration (sorted keys), so equal configs compare equal as text."""
    return json.dumps(config or {}, sort_keys=True, default=str)


def _open_h5(path: Path, mode: str) -> h5py.File:
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        raise FeatureFileError(path, f"not a readable HDF5 file ({exc}); delete it to recompute") from None


def _check_header(f: h5py.File, path: Path, fmt: str) -> dict:
    check_header(path, f.attrs, fmt, FORMAT_VERSION, error=FeatureFileError)
    try:
        return json.loads(f.attrs.get("config", "{}"))
    except json.JSONDecodeError as exc:
        raise FeatureFileError(path, f"configuration header is not valid JSON ({exc})") from None


def _key(image_id: str) -> str:
    # HDF5 treats '/' as a group separator; ids such as 'a/b/c/abc' must stay one entry
    return quote(str(image_id), safe="")


class LocalFeatureStore:
    """HDF5 store of :class:`LocalFeatures` keyed by image id.

    ``mode='r'`` reads; ``mode='a'`` creates or resumes. With ``config`` given, an existing file must
    have been made with the same configuration, else :class:`FeatureFileError` (pass
    ``overwrite=True`` to start afresh). Descriptors are stored as ``dtype`` (float16 by default:
    lossless enough for SIFT/RootSIFT/patch tokens, half the disk).
    """

    def __init__(self, path: PathLike, mode: str = "r", config: Optional[dict] = None,
                 overwrite: bool = False, dtype: Union[str, np.dtype] = "float16"):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        if mode not in ("r", "a"):
            raise ValueError("mode must be 'r' or 'a'")
        if mode == "r" and not self.path.is_file():
            raise FeatureFileError(self.path, "no such local-feature file")
        if mode == "a" and overwrite and self.path.exists():
            self.path.unlink()
        if mode == "a":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.path.is_file()
        self._f = _open_h5(self.path, mode)
        if existed:
            stored = _check_header(self._f, self.path, LOCAL_FORMAT)
            if config is not None and config_json(stored) != config_json(config):
                self._f.close()
                raise FeatureFileError(
                    self.path, f"made with another configuration ({config_json(stored)}) than the "
                    f"one asked for ({config_json(config)}); use another path or overwrite=True")
            self.config = stored
        else:
            self._f.attrs["format"] = LOCAL_FORMAT
            self._f.attrs["version"] = FORMAT_VERSION
            self._f.attrs["config"] = config_json(config)
            self.config = dict(config or {})
            self._f.create_group("images")
        self._images = self._f["images"]

    # -- context manager
    def __enter__(self) -> "LocalFeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._f.id.valid:
            self._f.close()

    def flush(self) -> None:
        self._f.flush()

    # -- access
    def __contains__(self, image_id: str) -> bool:
        key = _key(image_id)
        # an entry is complete only once its 'complete' flag is written (last), so a crash mid-entry
        # leaves an entry that resume recomputes
        return key in self._images and bool(self._images[key].attrs.get("complete", False))

    def __len__(self) -> int:
        return sum(1 for _ in self.ids())

    def ids(self) -> Iterator[str]:
        for key, grp in self._images.items():
            if grp.attrs.get("complete", False):
                yield unquote(key)

    def missing(self, image_ids: Iterable[str]) -> List[str]:
        return [i for i in image_ids if i not in self]

    def put(self, image_id: str, feats: LocalFeatures) -> None:
        key = _key(image_id)
        if key in self._images:
            del self._images[key]
        grp = self._images.create_group(key)
        grp.create_dataset("keypoints", data=feats.keypoints.astype(np.float32))
        desc = feats.descriptors
        if desc.dtype != np.uint8:
            desc = desc.astype(self.dtype)
        grp.create_dataset("descriptors", data=desc)
        grp.attrs["image_size"] = np.asarray(feats.image_size, dtype=np.int64)
        grp.attrs["complete"] = True

    def get(self, image_id: str, dtype=np.float32) -> LocalFeatures:
        key = _key(image_id)
        if image_id not in self:
            raise KeyError(f"{self.path}: no complete entry for image {image_id!r}")
        grp = self._images[key]
        try:
            kp = grp["keypoints"][()]
            desc = grp["descriptors"][()]
        except (OSError, KeyError) as exc:
            raise FeatureFileError(self.path, f"entry {image_id!r} is damaged ({exc}); "
                                   "delete the file to recompute") from None
        if dtype is not None and desc.dtype != np.uint8:
            desc = desc.astype(dtype)
        return LocalFeatures(kp, desc, tuple(int(v) for v in grp.attrs["image_size"]))

    def get_many(self, image_ids: Sequence[str], dtype=np.float32) -> List[LocalFeatures]:
        return [self.get(i, dtype=dtype) for i in image_ids]


def save_global(path: PathLike, ids: Sequence, vectors: np.ndarray, config: Optional[dict] = None) -> Path:
    """Write ids + (N, D) float32 vectors + configuration. Written to a temporary name and renamed, so a
    crash never leaves a half-written file under the final name."""
    path = Path(path)
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(ids):
        raise ValueError(f"{path}: need (N, D) vectors for N ids; got {vectors.shape} for {len(ids)} ids")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = GLOBAL_FORMAT
        f.attrs["version"] = FORMAT_VERSION
        f.attrs["config"] = config_json(config)
        f.create_dataset("ids", data=np.asarray([str(i) for i in ids], dtype=object),
                         dtype=h5py.string_dtype())
        f.create_dataset("vectors", data=vectors)
        f.attrs["count"] = len(ids)
    return path


def load_global(path: PathLike, expect_config: Optional[dict] = None) -> Tuple[List[str], np.ndarray, dict]:
    """Read a global feature file: (ids, vectors, config). Refuses a file that is not one, is of another
    version, is incomplete, or (with ``expect_config``) was made with another configuration."""
    path = Path(path)
    if not path.is_file():
        raise FeatureFileError(path, "no such global-feature file")
    with _open_h5(path, "r") as f:
        config = _check_header(f, path, GLOBAL_FORMAT)
        try:
            ids = [s.decode() if isinstance(s, bytes) else str(s) for s in f["ids"][()]]
            vectors = f["vectors"][()]
        except (KeyError, OSError) as exc:
            raise FeatureFileError(path, f"damaged ({exc})") from None
        count = int(f.attrs.get("count", -1))
    if count != len(ids) or len(vectors) < count:
        raise FeatureFileError(path, f"incomplete: header says {count} rows, file has {len(ids)} ids "
                               f"and {len(vectors)} vectors (an interrupted run?)")
    vectors = np.asarray(vectors[:count], dtype=np.float32)
    if expect_config is not None and config_json(config) != config_json(expect_config):
        raise FeatureFileError(path, f"made with configuration {config_json(config)}, expected "
                               f"{config_json(expect_config)}")
    return ids, vectors, config


class GlobalFeatureWriter:
    """Append-only, resumable writer of a global feature file: rows are appended in chunks and the
    row count in the header is advanced only after the rows are on disk, so a crash loses at most the
    chunk in flight. ``done_ids`` tells a resumed run what to skip."""

    def __init__(self, path: PathLike, dim: int, config: Optional[dict] = None, overwrite: bool = False):
        self.path = Path(path)
        self.dim = int(dim)
        if overwrite and self.path.exists():
            self.path.unlink()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.path.is_file()
        self._f = _open_h5(self.path, "a")
        if existed:
            stored = _check_header(self._f, self.path, GLOBAL_FORMAT)
            if config is not None and config_json(stored) != config_json(config):
                self._f.close()
                raise FeatureFileError(self.path, f"made with configuration {config_json(stored)}, "
                                       f"not {config_json(config)}; use another path or overwrite=True")
            if self._f["vectors"].shape[1] != self.dim:
                self._f.close()
                raise FeatureFileError(self.path, f"holds {self._f['vectors'].shape[1]}-d vectors, "
                                       f"not {self.dim}-d")
        else:
            self._f.attrs["format"] = GLOBAL_FORMAT
            self._f.attrs["version"] = FORMAT_VERSION
            self._f.attrs["config"] = config_json(config)
            self._f.attrs["count"] = 0
            self._f.create_dataset("ids", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype())
            self._f.create_dataset("vectors", shape=(0, self.dim), maxshape=(None, self.dim),
                                   dtype=np.float32, chunks=(max(1, 65536 // self.dim), self.dim))
        self._count = int(self._f.attrs["count"])

    @property
    def done_ids(self) -> List[str]:
        raw = self._f["ids"][: self._count]
        return [s.decode() if isinstance(s, bytes) else str(s) for s in raw]

    def append(self, ids: Sequence, vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(f"{self.path}: expected ({len(ids)}, {self.dim}) vectors, got {vectors.shape}")
        n0, n1 = self._count, self._count + len(ids)
        for name in ("ids", "vectors"):
            self._f[name].resize(n1, axis=0)
        self._f["ids"][n0:n1] = np.asarray([str(i) for i in ids], dtype=object)
        self._f["vectors"][n0:n1] = vectors
        self._f.flush()
        self._f.attrs["count"] = n1
        self._f.flush()
        self._count = n1

    def close(self) -> None:
        if self._f.id.valid:
            self._f.close()

    def __enter__(self) -> "GlobalFeatureWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
