"""The files of a collection folder (:mod:`retrieval.indexing.collection`) and how they are written.

Every file but the manifest is written once, under a name never used before, and never changed:

``seg-NNNNNNNN.npz``
    A part of the database: ``ids``, ``vectors`` (float32, as the index stores them) and a header with
    the rows' metadata columns and a SHA-256 of it all. The first segment is the collection's start,
    each add writes one more, compaction folds them into one.
``index-NNNNNNNN.npz``
    faiss backends: the index of the rows of the segments it lists (an :class:`Index` file, with its
    trained coarse quantiser); segments added since are added to it in memory when the collection is
    opened (a faiss ``add``, no training). The exact backend has none: its segments are its vectors.
``removed-NNNNNNNN.npy``
    Row positions (over the segments in order) removed since the last compaction.
``local-NNNNNNNN.h5``
    Local features (:class:`~retrieval.features.store.LocalFeatureStore`) of a segment's images.
``collection.json``
    The manifest: which of those files make the current state (the generation), with their sizes and
    checksums, and what the collection was built with. A change writes its new files first, then
    replaces the manifest in one atomic rename (and syncs the folder): a writer killed at any point
    leaves the old manifest or the new one, never a mix, and a reader always sees one whole generation.

Files of the previous generation are kept (a reader may be opening them); older ones and the leftovers
of a killed writer are deleted by the next writer (:func:`collect_garbage`).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple, Union

import numpy as np

from retrieval.core.fileio import (FileFormatError, atomic_write, atomic_write_text, check_header, digest, file_hash,
                                   pop_header, read_json, read_npz, save_npz)
from retrieval.indexing.metadata import Metadata

__all__ = ["CollectionError", "MANIFEST", "COLLECTION_FORMAT", "is_collection", "read_manifest", "write_manifest",
           "file_entry", "check_entry", "write_segment", "read_segment", "write_removed", "read_removed",
           "collect_garbage", "referenced"]

PathLike = Union[str, os.PathLike]
MANIFEST = "collection.json"
COLLECTION_FORMAT = "hybrid-retrieval/collection"
SEGMENT_FORMAT = "hybrid-retrieval/collection-segment"
VERSION = 1
PREFIXES = ("seg-", "index-", "removed-", "local-")


class CollectionError(FileFormatError):
    """A collection folder or one of its files is missing, damaged, stale, or in use by a writer."""


def is_collection(path: PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


def _body_digest(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def read_manifest(folder: PathLike) -> dict:
    """The manifest of ``folder``, checked (format, version, checksum)."""
    path = Path(folder) / MANIFEST
    if not Path(folder).is_dir():
        raise CollectionError(Path(folder), "no such collection folder")
    manifest = read_json(path, "collection manifest", error=CollectionError)
    check_header(path, manifest, COLLECTION_FORMAT, VERSION, error=CollectionError, hint="rebuild the collection")
    if manifest.get("sha256") != _body_digest(manifest):
        raise CollectionError(path, "checksum mismatch: the manifest was altered or damaged")
    return manifest


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)  # the renames themselves reach the disk, not only the files' bytes
    finally:
        os.close(fd)


def write_manifest(folder: PathLike, manifest: dict) -> dict:
    """Replace the manifest atomically (the commit point of every change); returns what was written."""
    folder = Path(folder)
    manifest = {**manifest, "format": COLLECTION_FORMAT, "version": VERSION}
    manifest["sha256"] = _body_digest(manifest)
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1))
    _sync_folder(folder)
    return manifest


def file_entry(folder: Path, name: str, **extra) -> dict:
    """What the manifest records of a file just written: its name, size and SHA-256."""
    path = folder / name
    return {"file": name, "bytes": path.stat().st_size, "sha256": file_hash(path).hexdigest(), **extra}


def check_entry(folder: Path, entry: dict, verify: bool) -> Path:
    """The path of a manifest entry's file, checked: present, of the recorded size and (``verify``) checksum."""
    path = folder / entry["file"]
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CollectionError(path, "missing: the collection's manifest names it (deleted by hand, or a "
                                    "newer generation replaced it while this one was being read)") from None
    if size != entry["bytes"]:
        raise CollectionError(path, f"{size} bytes, the manifest recorded {entry['bytes']}: truncated or replaced")
    if verify and file_hash(path).hexdigest() != entry["sha256"]:
        raise CollectionError(path, "checksum mismatch: the file was altered or damaged")
    return path


def write_segment(path: Path, ids: np.ndarray, vectors: np.ndarray, metadata: Metadata) -> Path:
    arrays = {"ids": ids, "vectors": vectors}
    header = {"format": SEGMENT_FORMAT, "version": VERSION, "rows": len(ids), "metadata": metadata.to_json()}
    header["sha256"] = digest(arrays, header)
    return save_npz(path, arrays, header)


def read_segment(path: Path, dim: int) -> Tuple[np.ndarray, np.ndarray, Metadata]:
    """(ids, vectors, metadata) of a segment file, checked against its own checksum and ``dim``."""
    contents = read_npz(path, "collection segment", error=CollectionError)
    header = pop_header(path, contents, error=CollectionError)
    check_header(path, header, SEGMENT_FORMAT, VERSION, error=CollectionError)
    if header.pop("sha256", None) != digest(contents, header):
        raise CollectionError(path, "checksum mismatch: the segment was altered or damaged")
    ids, vectors = contents.get("ids"), contents.get("vectors")
    if ids is None or vectors is None or vectors.ndim != 2 or len(ids) != len(vectors) or vectors.shape[1] != dim:
        raise CollectionError(path, f"does not hold ids and {dim}-d vectors of one length")
    return ids, vectors, Metadata.from_json(header["metadata"])


def write_removed(path: Path, rows: np.ndarray) -> Path:
    return atomic_write(path, lambda fh: np.save(fh, np.asarray(rows, dtype=np.int64), allow_pickle=False))


def read_removed(path: Path, total: int) -> np.ndarray:
    try:
        rows = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise CollectionError(path, f"not a readable array of removed rows ({exc})") from None
    if rows.ndim != 1 or rows.dtype != np.int64 or (rows.size and (rows.min() < 0 or rows.max() >= total)):
        raise CollectionError(path, f"not a list of row positions below {total}")
    return rows


def referenced(manifest: Optional[dict]) -> List[str]:
    """Every file a manifest names."""
    if not manifest:
        return []
    names = [s["file"] for s in manifest.get("segments", [])] + [s["file"] for s in manifest.get("local", [])]
    names += [manifest[key]["file"] for key in ("index", "removed") if manifest.get(key)]
    return names


def collect_garbage(folder: Path, keep: Iterable[str]) -> List[str]:
    """Delete the collection's files not in ``keep`` (older generations, a killed writer's leftovers,
    temporary files); returns their names."""
    keep = set(keep)
    gone = []
    for path in folder.iterdir():
        name = path.name
        ours = name.startswith(PREFIXES) or (name.startswith(".") and name.endswith(".tmp"))
        if ours and name not in keep and path.is_file():
            path.unlink(missing_ok=True)
            gone.append(name)
    return gone


def next_name(manifest: Dict, prefix: str, suffix: str) -> Tuple[str, int]:
    """A file name never used in this collection (the counter lives in the manifest)."""
    number = int(manifest.get("next_file", 1))
    return f"{prefix}{number:08d}{suffix}", number + 1
