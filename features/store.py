"""Feature files on disk: HDF5, never pickle.

* :class:`LocalFeatureStore`: one group per image (keypoints, descriptors, image size), written entry by
  entry so an interrupted extraction resumes where it stopped. The extractor's configuration is stored
  in the file; reopening it with another configuration is refused (a stale store is never mixed in).
* :func:`save_global` / :func:`load_global`: ids + an (N, D) float32 matrix + configuration JSON, the
  "feature file" that ``retrieval index build`` and the benchmarks read. :class:`GlobalFeatureWriter`
  appends in chunks for resumable extraction.

What can go wrong, and what happens then:

* **Bit rot, edits.** Every entry of a local store and every row of a global file carries a CRC-32 of
  its id and contents (and the header one of the format and configuration), checked on every read: a
  flipped bit is a :class:`FeatureFileError` naming the file and the entry, never a silently wrong
  number. (CRC-32 runs at about 1.8 GB/s: a fraction of the time HDF5 takes to read the bytes.)
  Files written before checksums existed are read without them.
* **A full disk** (or a quota, or ``ulimit -f``). HDF5 updates its own structures in place, so a write
  that fails half-way leaves a file no program can open. The writers therefore allocate the space an
  entry or a chunk needs before writing it (:func:`retrieval.core.fileio.reserve_space`); when it is not
  there they raise :class:`FeatureDiskFullError` and the file keeps every entry written before.
* **Another process holds the file** (a second writer, or a reader while a writer works): HDF5's file
  lock refuses the open, reported as "in use by another process", never as damage.
* **A file of another kind** (an index, a checkpoint) passed where a feature file belongs is named
  for what it is; only a damaged HDF5 file comes with the advice to delete it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple, Union
from urllib.parse import quote, unquote

import h5py
import numpy as np

from retrieval.core.fileio import atomic_path

# FORMAT_VERSION is re-exported: readers of the format (retrieval.scale) import it from here
from retrieval.features.h5io import (FORMAT_VERSION, FeatureDiskFullError, FeatureFileError, check_h5_header, check_in_place,
                   close_trimmed, config_json, crc, file_identity, open_h5, remove_unless_in_use, reserve, row_crcs,
                   write_h5_header)
from retrieval.features.local import LocalFeatures

PathLike = Union[str, os.PathLike]
LOCAL_FORMAT = "hybrid-retrieval/local-features"
GLOBAL_FORMAT = "hybrid-retrieval/global-features"

__all__ = ["FeatureFileError", "FeatureDiskFullError", "LocalFeatureStore", "save_global", "load_global",
           "GlobalFeatureWriter", "config_json"]


def _key(image_id: str) -> str:
    # HDF5 treats '/' as a group separator; ids such as 'a/b/c/abc' must stay one entry
    return quote(str(image_id), safe="")


class LocalFeatureStore:
    """HDF5 store of :class:`LocalFeatures` keyed by image id.

    ``mode='r'`` reads; ``mode='a'`` creates or resumes. With ``config`` given, an existing file must
    have been made with the same configuration, else :class:`FeatureFileError` (pass
    ``overwrite=True`` to start afresh). Descriptors are stored as ``dtype`` (float16 by default:
    lossless enough for SIFT/RootSIFT/patch tokens, half the disk). Each entry's checksum is checked
    when it is read (``verify=False`` skips that); :meth:`verify` checks them all.
    """

    def __init__(self, path: PathLike, mode: str = "r", config: Optional[dict] = None,
                 overwrite: bool = False, dtype: Union[str, np.dtype] = "float16", verify: bool = True):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.verify_reads = bool(verify)
        if mode not in ("r", "a"):
            raise ValueError("mode must be 'r' or 'a'")
        if mode == "r" and not self.path.is_file():
            raise FeatureFileError(self.path, "no such local-feature file")
        if mode == "a" and overwrite:
            remove_unless_in_use(self.path)
        if mode == "a":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.path.is_file()
        self._f = open_h5(self.path, mode, "local-feature")
        self._identity = file_identity(self._f) if mode == "a" else None
        self._written = 0
        try:
            if existed:
                stored = check_h5_header(self._f, self.path, LOCAL_FORMAT)
                if config is not None and config_json(stored) != config_json(config):
                    raise FeatureFileError(
                        self.path, f"made with another configuration ({config_json(stored)}) than the "
                        f"one asked for ({config_json(config)}); use another path or overwrite=True")
                self.config = stored
            else:
                reserve(self._f, self.path, 0)
                write_h5_header(self._f, LOCAL_FORMAT, config)
                self.config = dict(config or {})
                self._f.create_group("images")
            self._images = self._f["images"]
            # the group's name heap doubles when it fills up: put() reserves for that
            self._name_bytes = sum(len(k) + 16 for k in self._images) if mode == "a" else 0
        except BaseException:
            self._f.close()
            if not existed:  # a file this call created without a header would be refused later
                self.path.unlink(missing_ok=True)
            raise

    @property
    def descriptor_kind(self) -> str:
        """What the descriptors are (``rootsift``, ``sift``, ``xfeat``, ``disk``, ...), from the recorded
        configuration (:func:`retrieval.features.local_extractors.descriptor_kind`)."""
        from retrieval.features.local_extractors import descriptor_kind

        return descriptor_kind(self.config)

    # -- context manager
    def __enter__(self) -> "LocalFeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        close_trimmed(self._f, self.path)

    def flush(self) -> None:
        """Write what was put to disk; a file deleted or moved while it was written is refused here
        (:class:`FeatureFileError` naming it), not reported as a success."""
        self._f.flush()
        check_in_place(self.path, self._identity, self._written)

    # -- access
    def __contains__(self, image_id: str) -> bool:
        key = _key(image_id)
        # an entry is complete only once its 'complete' flag is written (last), so a crash mid-entry
        # leaves an entry that resume recomputes
        try:
            return key in self._images and bool(self._images[key].attrs.get("complete", False))
        except (OSError, KeyError, RuntimeError) as exc:
            raise self._damaged(image_id, exc) from None

    def __len__(self) -> int:
        return sum(1 for _ in self.ids())

    def ids(self) -> Iterator[str]:
        try:
            for key, grp in self._images.items():
                if grp.attrs.get("complete", False):
                    yield unquote(key)
        except (OSError, KeyError, RuntimeError) as exc:
            raise FeatureFileError(self.path, f"the list of entries is damaged ({exc}); the store "
                                   "cannot be used: delete it to recompute") from None

    def missing(self, image_ids: Iterable[str]) -> List[str]:
        return [i for i in image_ids if i not in self]

    def _damaged(self, image_id: str, why) -> FeatureFileError:
        return FeatureFileError(self.path, f"entry {image_id!r} {why}: the file was altered or damaged "
                                "after it was written; remove the entry (LocalFeatureStore(path, 'a')"
                                ".remove(id)) and rerun the extraction to recompute it")

    def put(self, image_id: str, feats: LocalFeatures) -> None:
        """Write (or replace) one entry. Its space is allocated first: on a full disk
        :class:`FeatureDiskFullError` is raised before anything is written."""
        key = _key(image_id)
        keypoints = np.ascontiguousarray(feats.keypoints, dtype=np.float32)
        desc = feats.descriptors
        if desc.dtype != np.uint8:
            desc = desc.astype(self.dtype)
        desc = np.ascontiguousarray(desc)
        image_size = np.asarray(feats.image_size, dtype=np.int64)
        self._name_bytes += len(key) + 16
        reserve(self._f, self.path, keypoints.nbytes + desc.nbytes + 2 * self._name_bytes)
        try:
            if key in self._images:
                del self._images[key]
            grp = self._images.create_group(key)
            grp.create_dataset("keypoints", data=keypoints)
            grp.create_dataset("descriptors", data=desc)
            grp.attrs["image_size"] = image_size
            grp.attrs["crc32"] = crc(key.encode(), keypoints, desc, image_size)
            grp.attrs["complete"] = True
        except (OSError, RuntimeError) as exc:
            raise FeatureFileError(self.path, f"writing entry {image_id!r} failed ({exc})") from None
        self._written += 1

    def remove(self, image_id: str) -> None:
        """Delete one entry (e.g. one that fails its checksum), so that extraction recomputes it."""
        key = _key(image_id)
        if key in self._images:
            del self._images[key]

    def get(self, image_id: str, dtype=np.float32) -> LocalFeatures:
        key = _key(image_id)
        if image_id not in self:
            raise KeyError(f"{self.path}: no complete entry for image {image_id!r}")
        grp = self._images[key]
        try:
            kp = grp["keypoints"][()]
            desc = grp["descriptors"][()]
            image_size = np.asarray(grp.attrs["image_size"], dtype=np.int64)
            recorded = grp.attrs.get("crc32")
        except (OSError, KeyError, RuntimeError) as exc:
            raise self._damaged(image_id, f"cannot be read ({exc})") from None
        if self.verify_reads and recorded is not None and int(recorded) != crc(key.encode(), kp, desc, image_size):
            raise self._damaged(image_id, "fails its checksum")
        if kp.ndim != 2 or kp.shape[1] != 4 or desc.ndim != 2 or len(desc) != len(kp) or image_size.shape != (2,):
            raise self._damaged(image_id, f"has inconsistent shapes (keypoints {kp.shape}, descriptors "
                                f"{desc.shape}, image size {image_size.shape})")
        if dtype is not None and desc.dtype != np.uint8:
            desc = desc.astype(dtype)
        return LocalFeatures(kp, desc, tuple(int(v) for v in image_size))

    def verify(self) -> List[str]:
        """Ids of the complete entries that fail their checksum or cannot be read."""
        bad = []
        for image_id in list(self.ids()):
            try:
                self.get(image_id, dtype=None)
            except FeatureFileError:
                bad.append(image_id)
        return bad

    def get_many(self, image_ids: Sequence[str], dtype=np.float32) -> List[LocalFeatures]:
        return [self.get(i, dtype=dtype) for i in image_ids]


def save_global(path: PathLike, ids: Sequence, vectors: np.ndarray, config: Optional[dict] = None) -> Path:
    """Write ids + (N, D) float32 vectors + configuration (and a checksum per row). Written to a
    temporary name and renamed, so a crash never leaves a half-written file under the final name."""
    path = Path(path)
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(ids):
        raise ValueError(f"{path}: need (N, D) vectors for N ids; got {vectors.shape} for {len(ids)} ids")
    ids = [str(i) for i in ids]
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        write_h5_header(f, GLOBAL_FORMAT, config)
        f.create_dataset("ids", data=np.asarray(ids, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("vectors", data=vectors)
        f.create_dataset("crc32", data=row_crcs(ids, vectors))
        f.attrs["count"] = len(ids)
    return path


def load_global(path: PathLike, expect_config: Optional[dict] = None,
                verify: bool = True) -> Tuple[List[str], np.ndarray, dict]:
    """Read a global feature file: (ids, vectors, config). Refuses a file that is not one, is of another
    version, is incomplete, fails a row's checksum (``verify=False`` skips that check), or (with
    ``expect_config``) was made with another configuration."""
    path = Path(path)
    if not path.is_file():
        raise FeatureFileError(path, "no such global-feature file")
    with open_h5(path, "r", "global-feature") as f:
        config = check_h5_header(f, path, GLOBAL_FORMAT)
        try:
            count = int(f.attrs.get("count", -1))
            ids = [s.decode() if isinstance(s, bytes) else str(s) for s in f["ids"][()]]
            vectors = f["vectors"][()]
            crcs = f["crc32"][()] if "crc32" in f else None  # files from before checksums: none
        except (KeyError, OSError, RuntimeError) as exc:
            raise FeatureFileError(path, f"damaged ({exc}); re-extract it") from None
    if count != len(ids) or len(vectors) < count or (crcs is not None and len(crcs) < count):
        raise FeatureFileError(path, f"incomplete: header says {count} rows, file has {len(ids)} ids "
                               f"and {len(vectors)} vectors (an interrupted run?)")
    vectors = np.asarray(vectors[:count], dtype=np.float32)
    if verify and crcs is not None:
        bad = np.flatnonzero(row_crcs(ids, vectors) != crcs[:count])
        if len(bad):
            raise FeatureFileError(path, f"{len(bad)} row(s) fail their checksum, first row {bad[0]} (image "
                                   f"id {ids[bad[0]]!r}): the file was altered or damaged after it was "
                                   "written; re-extract it")
    if expect_config is not None and config_json(config) != config_json(expect_config):
        raise FeatureFileError(path, f"made with configuration {config_json(config)}, expected "
                               f"{config_json(expect_config)}")
    return ids, vectors, config


class GlobalFeatureWriter:
    """Append-only, resumable writer of a global feature file: rows are appended in chunks and the
    row count in the header is advanced only after the rows are on disk, so a crash loses at most the
    chunk in flight. ``done_ids`` tells a resumed run what to skip. Each chunk's space is allocated
    before it is written: on a full disk :class:`FeatureDiskFullError` is raised and the file keeps
    every row appended before."""

    def __init__(self, path: PathLike, dim: int, config: Optional[dict] = None, overwrite: bool = False):
        self.path = Path(path)
        self.dim = int(dim)
        if overwrite:
            remove_unless_in_use(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.path.is_file()
        self._f = open_h5(self.path, "a", "global-feature")
        self._identity = file_identity(self._f)
        try:
            if existed:
                stored = check_h5_header(self._f, self.path, GLOBAL_FORMAT)
                if config is not None and config_json(stored) != config_json(config):
                    raise FeatureFileError(self.path, f"made with configuration {config_json(stored)}, "
                                           f"not {config_json(config)}; use another path or overwrite=True")
                stored_dim = self._f["vectors"].shape[1]
                if stored_dim != self.dim:
                    raise FeatureFileError(self.path, f"holds {stored_dim}-d vectors, not {self.dim}-d; "
                                           "use another path or overwrite=True")
                if "crc32" not in self._f:
                    raise FeatureFileError(self.path, "written by an older version without checksums; it "
                                           "can be read but not extended: use another path or overwrite=True")
            else:
                reserve(self._f, self.path, 0)
                write_h5_header(self._f, GLOBAL_FORMAT, config)
                self._f.attrs["count"] = 0
                rows = max(1, 65536 // self.dim)
                self._f.create_dataset("ids", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype())
                self._f.create_dataset("vectors", shape=(0, self.dim), maxshape=(None, self.dim),
                                       dtype=np.float32, chunks=(rows, self.dim))
                self._f.create_dataset("crc32", shape=(0,), maxshape=(None,), dtype=np.uint32, chunks=(4096,))
            self._count = int(self._f.attrs["count"])
        except BaseException:
            self._f.close()
            if not existed:  # a file this call created without a header would be refused later
                self.path.unlink(missing_ok=True)
            raise

    @property
    def done_ids(self) -> List[str]:
        raw = self._f["ids"][: self._count]
        return [s.decode() if isinstance(s, bytes) else str(s) for s in raw]

    def append(self, ids: Sequence, vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(f"{self.path}: expected ({len(ids)}, {self.dim}) vectors, got {vectors.shape}")
        ids = [str(i) for i in ids]
        n0, n1 = self._count, self._count + len(ids)
        chunk_rows, _ = self._f["vectors"].chunks
        new_chunks = len(ids) // chunk_rows + 2
        reserve(self._f, self.path, vectors.nbytes + new_chunks * chunk_rows * self.dim * 4
                 + sum(2 * len(i) + 64 for i in ids))
        try:
            for name in ("ids", "vectors", "crc32"):
                self._f[name].resize(n1, axis=0)
            self._f["ids"][n0:n1] = np.asarray(ids, dtype=object)
            self._f["vectors"][n0:n1] = vectors
            self._f["crc32"][n0:n1] = row_crcs(ids, vectors)
            self._f.flush()
            self._f.attrs["count"] = n1
            self._f.flush()
        except (OSError, RuntimeError) as exc:
            raise FeatureFileError(self.path, f"appending rows {n0}..{n1 - 1} failed ({exc})") from None
        self._count = n1
        check_in_place(self.path, self._identity, n1)

    def close(self) -> None:
        close_trimmed(self._f, self.path)

    def __enter__(self) -> "GlobalFeatureWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
