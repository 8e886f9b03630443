"""HDF5 plumbing of the feature files (:mod:`retrieval.features.store`): the error types, CRC-32 checksums,
headers, and opening / growing / replacing a file so that a full disk, a lock held by another process
or a file of another kind each get their own clear error (see the notes in :mod:`retrieval.features.store`)."""
from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Optional, Sequence

import h5py
import numpy as np

from retrieval.core.fileio import (DiskFullError, FileFormatError, check_header, describe_file, is_lock_conflict,
                              reserve_space)

FORMAT_VERSION = 1


class FeatureFileError(FileFormatError):
    """A feature file is missing, corrupt, of another format/version, or was made with another
    configuration than the one asked for."""


class FeatureDiskFullError(FeatureFileError, DiskFullError):
    """A feature file could not grow (disk full, quota, ``ulimit -f``); every entry written before
    is intact and a rerun resumes from them."""


def config_json(config: Optional[dict]) -> str:
    """Canonical JSON of a configuration (sorted keys), so equal configs compare equal as text."""
    return json.dumps(config or {}, sort_keys=True, default=str)


#: HDF5 bookkeeping an entry or an appended chunk may allocate besides its arrays (object headers,
#: B-tree nodes, global heap collections, 2 KiB aggregator blocks): a few KiB, reserved generously
_OVERHEAD = 64 * 1024
#: reserved beyond what the next write needs when the disk has it, so most writes need no syscall
_AHEAD = 1024 * 1024


def crc(*parts) -> int:
    """CRC-32 over byte strings and (C-contiguous) arrays, in order."""
    value = 0
    for part in parts:
        if isinstance(part, np.ndarray):
            part = np.ascontiguousarray(part)
            value = zlib.crc32(f"{part.dtype.str}{part.shape}".encode(), value)
            part = part.reshape(-1).view(np.uint8)
        value = zlib.crc32(part, value)
    return value


def row_crcs(ids: Sequence[str], vectors: np.ndarray) -> np.ndarray:
    """One CRC-32 per row of a global file, over the id and the row's float32 bytes."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return np.fromiter((zlib.crc32(row, zlib.crc32(str(i).encode() + b"\0")) for i, row in zip(ids, vectors)),
                       dtype=np.uint32, count=len(ids))


def header_crc(f: h5py.File) -> int:
    return crc(f"{f.attrs.get('format')}|{f.attrs.get('version')}|{f.attrs.get('config')}".encode())


def open_h5(path: Path, mode: str, what: str) -> h5py.File:
    """``h5py.File(path, mode)`` with a :class:`FeatureFileError` that says why it failed: another
    process holds the file, the file is of another kind (named), or it is a damaged HDF5 file."""
    try:
        return h5py.File(path, mode)
    except OSError as exc:
        if is_lock_conflict(exc):
            raise FeatureFileError(path, "in use by another process (it holds the HDF5 file lock: an "
                                   "extraction still writing it, or a program reading it while this one "
                                   "writes); wait for that process to finish or use another path") from None
        kind = describe_file(path)
        if kind != "an HDF5 file":
            raise FeatureFileError(path, f"is {kind}, not a {what} file (HDF5); check the path") from None
        raise FeatureFileError(path, f"damaged HDF5 file that cannot be opened ({exc}); nothing in it can "
                               "be read or resumed: delete it to recompute") from None


def check_h5_header(f: h5py.File, path: Path, fmt: str) -> dict:
    check_header(path, f.attrs, fmt, FORMAT_VERSION, error=FeatureFileError)
    recorded = f.attrs.get("header_crc32")
    if recorded is not None and int(recorded) != header_crc(f):
        raise FeatureFileError(path, "header (format, version, configuration) fails its checksum: the "
                               "file was altered or damaged after it was written")
    try:
        return json.loads(f.attrs.get("config", "{}"))
    except json.JSONDecodeError as exc:
        raise FeatureFileError(path, f"configuration header is not valid JSON ({exc})") from None


def write_h5_header(f: h5py.File, fmt: str, config: Optional[dict]) -> None:
    f.attrs["format"] = fmt
    f.attrs["version"] = FORMAT_VERSION
    f.attrs["config"] = config_json(config)
    f.attrs["header_crc32"] = header_crc(f)


def remove_unless_in_use(path: Path) -> None:
    """Delete ``path`` to start afresh, unless another process holds it open (deleting a store that
    a running extraction writes would lose all its work while that run reports success)."""
    if not path.exists():
        return
    try:
        h5py.File(path, "r").close()
    except OSError as exc:
        if is_lock_conflict(exc):
            raise FeatureFileError(path, "in use by another process (it holds the HDF5 file lock); not "
                                   "overwritten: wait for that process to finish or use another path") from None
    path.unlink()


def reserve(f: h5py.File, path: Path, nbytes: int) -> None:
    """Allocate room for ``nbytes`` more than HDF5 has allocated so far (``get_filesize`` is its end
    of allocated space), so the writes that follow cannot fail half-way for lack of space."""
    reserve_space(f.id.get_vfd_handle(), int(f.id.get_filesize()) + int(nbytes) + _OVERHEAD, path,
                  ahead=_AHEAD, error=FeatureDiskFullError)


def file_identity(f: h5py.File) -> Optional[tuple]:
    """(device, inode) of the open file ``f``: which file it is, whatever its name now is."""
    try:
        info = os.fstat(f.id.get_vfd_handle())
    except (OSError, ValueError, RuntimeError, TypeError):
        return None
    return info.st_dev, info.st_ino


def check_in_place(path: Path, identity: Optional[tuple], written: int) -> None:
    """Refuse to go on writing into a file that is no longer at ``path`` (deleted, moved or replaced
    by another process while it was written): every entry would be lost with it while the run
    reported success."""
    if identity is None:
        return
    try:
        info = os.stat(path)
        here = (info.st_dev, info.st_ino)
    except OSError:
        here = None
    if here != identity:
        what = "deleted or moved" if here is None else "replaced by another file"
        raise FeatureFileError(path, f"was {what} while this run wrote it; the {written} entries written "
                               "this run went with it. Rerun to recompute them (and leave the file alone "
                               "until the run ends)")


def close_trimmed(f: h5py.File, path: Path) -> None:
    """Close a file opened for writing and give back the space :func:`reserve` allocated ahead and
    HDF5 did not use (HDF5's end of allocated space, taken after a flush, is where the file ends)."""
    if not f.id.valid:
        return
    end = None
    identity = file_identity(f)
    if f.mode == "r+":
        try:
            f.flush()
            end = int(f.id.get_filesize())
        except (OSError, RuntimeError):
            end = None
    f.close()
    # by name, so only when the name still is this file (never truncate one that replaced it)
    if end is not None and path.is_file() and identity in (None, (path.stat().st_dev, path.stat().st_ino)) \
            and path.stat().st_size > end:
        os.truncate(path, end)
