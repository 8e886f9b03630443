"""Sharded, resumable feature stores: one file per shard, written by whichever worker computed it.

A sharded store is a folder::

    g.h5.shards/
        store.json              format, version, kind (global | local), configuration, shard size
        shard-000000.h5         a complete single-file store (features.store format) of one shard
        shard-000000.json       its manifest entry: ids digest, count, file size, SHA-256, seconds
        ...

Each shard file is written by the task that computed it, under a temporary name, synced and renamed
(:func:`retrieval.core.fileio.atomic_path`); only then is its manifest entry written (atomically too). So
every shard either exists completely, with an entry that checksums it, or not at all: a worker that
dies, a full disk or Ctrl-C lose at most the shards in flight, and nothing is ever written into a
shared HDF5 file from several processes. A second run computes only the shards whose entry is
missing or does not match the images planned for it. ``store.json`` records the extractor's
configuration; opening the folder with another one is refused (:class:`FeatureFileError`), as for a
single-file store.

Shard files are the single-file formats of :mod:`retrieval.features.store` (read with ``load_global`` /
``LocalFeatureStore``), so :class:`ShardedStore` reads them as one logical store (:meth:`ids`,
:meth:`iter_global`, :meth:`load_global`, :meth:`get`) and :meth:`merge` writes the one file that
``retrieval index build`` takes, shard by shard (the vectors are never all in memory at once).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from retrieval.core.fileio import atomic_path, atomic_write_text, check_header, file_hash, read_json

from retrieval.features.store import (FeatureFileError, GlobalFeatureWriter, LocalFeatureStore, config_json, load_global)

try:  # the writers' own full-disk error (features.store checks for room before it writes)
    from retrieval.core.fileio import DiskFullError
except ImportError:  # a retrieval.core.fileio without it: the errno checks below recognise a full disk
    class DiskFullError(Exception):  # type: ignore[no-redef]
        pass

PathLike = Union[str, os.PathLike]
SHARDED_FORMAT = "hybrid-retrieval/sharded-features"
FORMAT_VERSION = 1
KINDS = ("global", "local")
DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)

__all__ = ["ShardedStore", "ShardWriteError", "plan_shards", "ids_digest", "shard_root", "SHARDED_FORMAT",
           "write_shard", "is_disk_full"]


class ShardWriteError(OSError):
    """A shard could not be written (disk full, no permission): one line naming the shard file."""

    def __init__(self, path: PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # travels back from worker processes intact
        return (ShardWriteError, (self.path, self.problem))


def shard_root(out: PathLike) -> Path:
    """The shard folder that goes with the single output file ``out`` (``g.h5`` -> ``g.h5.shards``)."""
    out = Path(out)
    return out.with_name(out.name + ".shards")


def ids_digest(ids: Sequence[str]) -> str:
    h = hashlib.sha256()
    for i in ids:
        h.update(str(i).encode())
        h.update(b"\0")
    return h.hexdigest()


def file_sha256(path: PathLike) -> str:
    return file_hash(path).hexdigest()


def plan_shards(ids: Sequence, paths: Sequence, shard_size: int,
                boxes: Optional[Sequence] = None) -> List[dict]:
    """Work units: consecutive runs of ``shard_size`` images, as JSON-able dicts (``shard``, ``ids``,
    ``paths``, ``boxes``). The same images and shard size always give the same shards."""
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1, got {shard_size}")
    ids = [str(i) for i in ids]
    if len(ids) != len(paths):
        raise ValueError(f"{len(ids)} image ids but {len(paths)} paths")
    if len(set(ids)) != len(ids):
        raise ValueError("image ids must be unique")
    units = []
    for k, lo in enumerate(range(0, len(ids), shard_size)):
        hi = lo + shard_size
        unit = {"shard": k, "ids": ids[lo:hi], "paths": [str(p) for p in paths[lo:hi]], "boxes": None}
        if boxes is not None:
            unit["boxes"] = [None if b is None else [float(v) for v in b] for b in boxes[lo:hi]]
        units.append(unit)
    return units


def is_disk_full(exc: BaseException) -> bool:
    """True for the errors a full disk (or a file-size limit) gives, also when h5py wraps them."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFullError) or (isinstance(exc, OSError) and exc.errno in DISK_FULL):
            return True
        text = str(exc)
        if any(os.strerror(code) in text for code in DISK_FULL) or "errno = 27" in text or "errno = 28" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class ShardedStore:
    """A folder of shards read as one store (see the module docstring).

    ``create=True`` makes the folder (or reopens it: then ``kind`` and ``config`` must match what it
    was made with, else :class:`FeatureFileError`); ``create=False`` opens an existing one (``config``
    None accepts any)."""

    def __init__(self, root: PathLike, kind: Optional[str] = None, config: Optional[dict] = None,
                 shard_size: Optional[int] = None, create: bool = False, store_dtype: str = "float16"):
        self.root = Path(root)
        header_path = self.root / "store.json"
        if header_path.is_file():
            header = read_json(header_path, what="sharded store header", error=FeatureFileError)
            check_header(header_path, header, SHARDED_FORMAT, FORMAT_VERSION, error=FeatureFileError)
            if kind is not None and header.get("kind") != kind:
                raise FeatureFileError(self.root, f"holds {header.get('kind')} features, not {kind} features")
            if config is not None and config_json(header.get("config")) != config_json(config):
                raise FeatureFileError(
                    self.root, f"made with another configuration ({config_json(header.get('config'))}) than "
                    f"the one asked for ({config_json(config)}); use another output or delete the folder")
            if create and shard_size is not None and int(header.get("shard_size", 0)) != int(shard_size):
                raise FeatureFileError(self.root, f"made with shard size {header.get('shard_size')}, not "
                                       f"{shard_size}; use the same --shard-size to resume")
        elif create:
            if kind not in KINDS:
                raise ValueError(f"kind must be one of {KINDS}")
            header = {"format": SHARDED_FORMAT, "version": FORMAT_VERSION, "kind": kind,
                      "config": json.loads(config_json(config)), "shard_size": shard_size,
                      "store_dtype": str(store_dtype)}
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_text(header_path, json.dumps(header, indent=1, sort_keys=True))
        else:
            raise FeatureFileError(self.root, "not a sharded feature store (no store.json)")
        self.kind: str = header["kind"]
        self.config: dict = header.get("config") or {}
        self.shard_size = header.get("shard_size")
        self.store_dtype: str = header.get("store_dtype", "float16")
        self._local_index: Optional[Dict[str, int]] = None
        self._open: Dict[int, LocalFeatureStore] = {}

    # -- layout ----------------------------------------------------------------------------------
    def shard_path(self, shard: int) -> Path:
        return self.root / f"shard-{int(shard):06d}.h5"

    def entry_path(self, shard: int) -> Path:
        return self.root / f"shard-{int(shard):06d}.json"

    def entries(self) -> Dict[int, dict]:
        """Manifest entries of the shards whose file is present with the recorded size (a damaged or
        half-written entry counts as missing: its shard is recomputed)."""
        out = {}
        for path in sorted(self.root.glob("shard-*.json")):
            try:
                entry = json.loads(path.read_text())
                shard = int(entry["shard"])
                if self.shard_path(shard).stat().st_size != int(entry["bytes"]):
                    continue
            except (OSError, ValueError, KeyError, TypeError):
                continue
            out[shard] = entry
        return out

    def missing(self, units: Sequence[dict]) -> List[dict]:
        """The units whose shard is not complete (no entry, or one made for other images)."""
        entries = self.entries()
        return [u for u in units if entries.get(int(u["shard"]), {}).get("ids_sha256") != ids_digest(u["ids"])]

    def verify(self, shard: int, entry: Optional[dict] = None) -> Path:
        """The shard's file, after checking it against its entry's SHA-256."""
        entry = entry or self.entries().get(int(shard))
        path = self.shard_path(shard)
        if entry is None:
            raise FeatureFileError(path, "shard is missing or incomplete; rerun the extraction to compute it")
        if file_sha256(path) != entry["sha256"]:
            raise FeatureFileError(path, "shard checksum does not match its manifest entry (damaged); "
                                   "delete it and its .json entry, then rerun to recompute it")
        return path

    def clean_temporaries(self) -> None:
        """Remove temporary files left by workers that died mid-shard."""
        for tmp in self.root.glob(".shard-*.tmp"):
            tmp.unlink(missing_ok=True)

    # -- reading -----------------------------------------------------------------------------------
    def shard_files(self, verify: bool = True) -> List[Path]:
        """The complete shards' files in shard order (checksummed), e.g. for
        ``retrieval.scale.sources.h5_shards`` to build an index shard by shard."""
        return [self.verify(k, e) if verify else self.shard_path(k) for k, e in sorted(self.entries().items())]

    def ids(self) -> List[str]:
        """Ids of the images the complete shards hold, in shard order (not those that failed)."""
        out: List[str] = []
        for _, entry in sorted(self.entries().items()):
            out.extend(_held(entry))
        return out

    def iter_global(self, verify: bool = True) -> Iterator[Tuple[List[str], np.ndarray]]:
        """(ids, (n, D) float32 vectors) of each global shard in shard order (checksummed)."""
        self._need("global")
        for shard, entry in sorted(self.entries().items()):
            path = self.verify(shard, entry) if verify else self.shard_path(shard)
            ids, vectors, _ = load_global(path, expect_config=self.config)
            yield ids, vectors

    def load_global(self) -> Tuple[List[str], np.ndarray, dict]:
        """All shards as one (ids, vectors, config), like :func:`retrieval.features.store.load_global`."""
        ids: List[str] = []
        parts = []
        for shard_ids, vectors in self.iter_global():
            ids.extend(shard_ids)
            parts.append(vectors)
        dim = parts[0].shape[1] if parts else 0
        return ids, (np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)), dict(self.config)

    def get(self, image_id: str, dtype=np.float32):
        """Local features of one image, from whichever shard holds it."""
        self._need("local")
        if self._local_index is None:
            self._local_index = {}
            for shard, entry in self.entries().items():
                for i in _held(entry):
                    self._local_index[i] = shard
        shard = self._local_index.get(str(image_id))
        if shard is None:
            raise KeyError(f"{self.root}: no complete entry for image {image_id!r}")
        if shard not in self._open:
            self._open[shard] = LocalFeatureStore(self.verify(shard), mode="r")
        return self._open[shard].get(str(image_id), dtype=dtype)

    def __getitem__(self, image_id: str):
        return self.get(image_id)

    def __contains__(self, image_id: str) -> bool:
        try:
            self.get(image_id)
        except KeyError:
            return False
        return True

    def close(self) -> None:
        for store in self._open.values():
            store.close()
        self._open.clear()

    def __enter__(self) -> "ShardedStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _need(self, kind: str) -> None:
        if self.kind != kind:
            raise FeatureFileError(self.root, f"holds {self.kind} features, not {kind} features")

    # -- merging -----------------------------------------------------------------------------------
    def merge(self, out: PathLike, ids: Optional[Sequence[str]] = None) -> Path:
        """Write every shard into the single file ``out`` (the format of :mod:`retrieval.features.store`),
        atomically, one shard in memory at a time. ``ids`` (the planned images) must all be present."""
        out = Path(out)
        if ids is not None:
            have = set(self.ids())
            absent = [i for i in ids if str(i) not in have]
            if absent:
                raise FeatureFileError(self.root, f"{len(absent)} images have no shard yet (e.g. "
                                       f"{absent[:3]}); rerun the extraction to compute them")
        try:
            with atomic_path(out) as tmp:
                if self.kind == "global":
                    writer = None
                    for shard_ids, vectors in self.iter_global():
                        if writer is None:
                            writer = GlobalFeatureWriter(tmp, vectors.shape[1], config=self.config)
                        writer.append(shard_ids, vectors)
                    if writer is None:
                        raise FeatureFileError(self.root, "no shard to merge")
                    writer.close()
                else:
                    with LocalFeatureStore(tmp, mode="a", config=self.config, dtype=self.store_dtype) as merged:
                        for shard, entry in sorted(self.entries().items()):
                            with LocalFeatureStore(self.verify(shard, entry), mode="r") as part:
                                for image_id in _held(entry):
                                    merged.put(image_id, part.get(image_id, dtype=None))
        except Exception as exc:
            if is_disk_full(exc):
                raise ShardWriteError(out, "disk full while merging the shards; every shard is kept in "
                                      f"{self.root}: free space and rerun to merge") from None
            raise
        return out


def _held(entry: dict) -> List[str]:
    failed = {f[0] for f in entry.get("failed", [])}
    return [i for i in entry["ids"] if i not in failed]


def write_shard(root: PathLike, unit: dict, compute: Callable[[Path], dict]) -> dict:
    """Worker side: ``compute(tmp_path)`` writes the shard of ``unit`` to a temporary file (and returns
    facts to record, e.g. ``failed`` images); the file is synced and renamed to its shard name, then
    its manifest entry is written. A full disk raises :class:`ShardWriteError` naming the shard;
    finished shards are untouched."""
    root = Path(root)
    shard = int(unit["shard"])
    final = root / f"shard-{shard:06d}.h5"
    start, cpu = time.perf_counter(), time.process_time()
    try:
        with atomic_path(final) as tmp:
            facts = compute(tmp) or {}
        entry = {"shard": shard, "file": final.name, "ids": list(unit["ids"]), "count": len(unit["ids"]),
                 "ids_sha256": ids_digest(unit["ids"]), "bytes": final.stat().st_size,
                 "sha256": file_sha256(final), "seconds": round(time.perf_counter() - start, 4),
                 "cpu_seconds": round(time.process_time() - cpu, 4),
                 "pid": os.getpid(), **facts}
        atomic_write_text(root / f"shard-{shard:06d}.json", json.dumps(entry))
    except Exception as exc:  # h5py reports a failed write on close as a RuntimeError
        if is_disk_full(exc):
            raise ShardWriteError(final, f"disk full (or file size limit reached) while writing shard {shard}; "
                                  "the finished shards are kept: free space and rerun to resume") from None
        raise
    return entry
