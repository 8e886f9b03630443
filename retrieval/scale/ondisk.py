"""IVF indexes whose inverted lists stay on disk: per-shard indexes merged into one ``.ivfdata`` file.

:func:`merge_on_disk` takes a folder written by :func:`retrieval.scale.ivf_build.build_sharded_index`
(one trained quantiser, one index file per shard) and merges every shard's inverted lists into
faiss' ``OnDiskInvertedLists`` (``faiss.contrib.ondisk.merge_ondisk``; each shard's ids shifted
first so that they are global row positions). Shards are handed to faiss as memory-mapped files, one converted
at a time, so the merge never holds the vectors or codes of all shards in memory, and a search
memory-maps the lists and reads only the probed ones: an IVF-Flat index larger than RAM is
searched as one index, with one coarse quantiser pass per query instead of one per shard.

Written into the same folder, each file atomically, the manifest last:

* ``on-disk.faiss`` (the index without its lists) and ``on-disk.ivfdata`` (the lists);
* ``on-disk-ids.npy`` (database ids in global row order, no pickle);
* ``manifest.json`` gains ``on_disk``: those names, their sizes and SHA-256 checksums, the count,
  dimension, backend, options, ``normalize`` and the feature configuration of the trained index.

:func:`load_on_disk` checks the manifest (format, version, dimension, count), the sizes and, with
``verify=True`` (default), the checksums, so a stale, truncated or altered file is an
:class:`~retrieval.indexing.ranking.IndexFileError` naming it; it returns an :class:`OnDiskIndex`, an
:class:`~retrieval.indexing.index.Index` that searches like any other (per-call ``nprobe``) and refuses to
be saved as one ``.npz`` file (its lists live in the folder). The folder may be moved: faiss is
told to look for the lists beside the index file.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path
from typing import Optional, Union

import numpy as np

from retrieval.indexing.faiss_backend import import_faiss
from retrieval.core.fileio import atomic_write, file_hash
from retrieval.indexing.index import Index, IndexFileError, Ranking
from retrieval.indexing.index_file import load_ids
from retrieval.scale.manifest import check_shard, check_unique_ids, read_manifest, write_manifest

__all__ = ["merge_on_disk", "load_on_disk", "OnDiskIndex", "ON_DISK_FILES"]

PathLike = Union[str, os.PathLike]
#: names of the merged index's files in the sharded-index folder
ON_DISK_FILES = {"index": "on-disk.faiss", "lists": "on-disk.ivfdata", "ids": "on-disk-ids.npy"}


class OnDiskIndex(Index):
    """An IVF :class:`~retrieval.indexing.index.Index` whose inverted lists are memory-mapped from a
    ``.ivfdata`` file (:func:`load_on_disk`), plus the shards added since the merge, searched in memory
    (:mod:`retrieval.scale.add_shard`)."""

    folder: Optional[Path] = None
    since_merge = None

    def search(self, queries, k: int = 100, query_ids=None, **search_options) -> Ranking:  # noqa: D102
        base = super().search(queries, k=k, query_ids=query_ids, **search_options)
        if not self.since_merge or not len(self.since_merge):
            return base
        all_ids = np.concatenate([self.ids] + self.since_merge.ids)
        return self.since_merge.merged(base, queries, k, all_ids, **search_options)

    def save(self, path: PathLike) -> Path:  # noqa: D102 - refuses, with the reason
        raise ValueError(f"this index keeps its inverted lists on disk in {self.folder}; it cannot be "
                         "saved as one .npz file (copy or move the whole folder instead)")

    def add(self, vectors, ids=None) -> None:  # noqa: D102 - refuses, with the reason
        raise ValueError(f"the on-disk index in {self.folder} is read-only; add the vectors to the "
                         "sharded store and run merge_on_disk again")


@contextlib.contextmanager
def _faiss_notices_to_stderr():
    """faiss' on-disk lists print notices ("resizing ...", "updating ondisk filename ...") on the C
    stdout; sent to stderr so that a command's JSON on stdout stays parseable."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _shift_ids(faiss, index, offset: int) -> None:
    """Turn a shard's faiss ids (its rows ``0..n-1``) into global rows by adding ``offset``, list by
    list in place. Done here rather than by the merge's ``shift_ids``, which in faiss 1.15 shifted
    later shards' ids one row off against a single index built over the same vectors."""
    if offset == 0:
        return
    invlists = faiss.extract_index_ivf(index).invlists
    for lst in range(invlists.nlist):
        size = invlists.list_size(lst)
        if size:
            ids = faiss.rev_swig_ptr(invlists.get_ids(lst), size)
            ids += offset


def _describe(path: Path) -> dict:
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": file_hash(path).hexdigest()}


def _sources(folder: Path, manifest: dict) -> list:
    """Checksums of the files a merge reads (trained index, shards): a rebuilt shard makes it stale."""
    names = [manifest["trained"]] + [s["file"] for s in manifest["shards"]]
    return [{"file": name, "sha256": file_hash(folder / name).hexdigest()} for name in names]


def _current(folder: Path, entry: Optional[dict], manifest: dict) -> bool:
    """The merged files of ``entry`` exist, match their recorded sizes and were merged from the
    folder's present trained index and shards."""
    if not entry or entry.get("count") != manifest["count"] or entry.get("sources") != _sources(folder, manifest):
        return False
    return all((folder / f["file"]).is_file() and (folder / f["file"]).stat().st_size == f["bytes"]
               for f in entry["files"].values())


def merge_on_disk(folder: PathLike, progress: bool = True) -> Path:
    """Merge the shard indexes of the sharded-index ``folder`` into one index with on-disk inverted
    lists (module docstring); returns ``folder``. Already merged from the same shards: nothing is
    redone. Only ``faiss-ivf`` / ``faiss-ivfpq`` folders can be merged."""
    from faiss.contrib.ondisk import merge_ondisk
    from tqdm.auto import tqdm

    faiss = import_faiss()
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest["backend"] not in ("faiss-ivf", "faiss-ivfpq"):
        raise ValueError(f"{folder}: only IVF indexes keep inverted lists on disk, not {manifest['backend']!r}")
    if _current(folder, manifest.get("on_disk"), manifest):
        return folder
    trained = Index.load(folder / manifest["trained"])
    work = folder / f".on-disk-{os.getpid()}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        shard_files, ids, offset = [], [], 0
        for s, entry in enumerate(tqdm(manifest["shards"], desc="on-disk lists", unit="shard", disable=not progress)):
            shard = Index.load(folder / entry["file"])
            check_shard(folder / entry["file"], entry, shard)
            if shard.options != trained.options or shard.dim != trained.dim:
                raise IndexFileError(folder / entry["file"], "built with another trained index than "
                                     f"{manifest['trained']}; rebuild the sharded index")
            _shift_ids(faiss, shard._faiss, offset)
            offset += len(shard)
            # faiss' own format, memory-mapped by the merge: one shard in memory at a time
            shard_files.append(str(work / f"shard-{s:05d}.faiss"))
            faiss.write_index(shard._faiss, shard_files[-1])
            ids.append(shard.ids)
            del shard
        merged = trained._faiss
        with _faiss_notices_to_stderr():
            merge_ondisk(merged, shard_files, str(work / ON_DISK_FILES["lists"]), shift_ids=False)
        # name the lists where they will be, so a load finds them without a rename notice
        faiss.downcast_InvertedLists(faiss.extract_index_ivf(merged).invlists).filename = \
            str((folder / ON_DISK_FILES["lists"]).resolve())
        faiss.write_index(merged, str(work / ON_DISK_FILES["index"]))
        check_unique_ids(folder, [e["file"] for e in manifest["shards"]], ids)
        all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        if len(all_ids) != merged.ntotal:
            raise IndexFileError(folder, f"merged {merged.ntotal} vectors but the shards hold {len(all_ids)} ids")
        for name in (ON_DISK_FILES["lists"], ON_DISK_FILES["index"]):
            with open(work / name, "rb+") as fh:
                os.fsync(fh.fileno())
        del merged, trained
        # the lists, then the index that names them, then the ids (each renamed into place whole);
        # the manifest last, so a crash leaves at worst files that no manifest vouches for
        os.replace(work / ON_DISK_FILES["lists"], folder / ON_DISK_FILES["lists"])
        os.replace(work / ON_DISK_FILES["index"], folder / ON_DISK_FILES["index"])
        atomic_write(folder / ON_DISK_FILES["ids"], lambda fh: np.save(fh, all_ids, allow_pickle=False))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    manifest["on_disk"] = {"files": {key: _describe(folder / name) for key, name in ON_DISK_FILES.items()},
                           "sources": _sources(folder, manifest), "count": manifest["count"]}
    write_manifest(folder, manifest)
    return folder


def load_on_disk(folder: PathLike, verify: bool = True) -> OnDiskIndex:
    """The merged index of ``folder`` (:func:`merge_on_disk`), its lists memory-mapped. ``verify``:
    check every file's SHA-256 (reads the lists once; sizes are always checked)."""
    folder = Path(folder).resolve()  # faiss compares the lists' recorded path with this folder's
    manifest = read_manifest(folder)
    entry = manifest.get("on_disk")
    if not entry:
        raise IndexFileError(folder, "has no on-disk index; run merge_on_disk (or build with on_disk=True)")
    for record in entry["files"].values():
        path = folder / record["file"]
        if not path.is_file():
            raise IndexFileError(path, "missing; run merge_on_disk again")
        if path.stat().st_size != record["bytes"]:
            raise IndexFileError(path, f"holds {path.stat().st_size} bytes, the manifest says {record['bytes']}: "
                                       "truncated or stale; run merge_on_disk again")
        if verify and file_hash(path).hexdigest() != record["sha256"]:
            raise IndexFileError(path, "checksum mismatch: the file was altered or damaged; run merge_on_disk again")
    trained = Index.load(folder / manifest["trained"])
    faiss = import_faiss()
    index_path = folder / entry["files"]["index"]["file"]
    try:
        with _faiss_notices_to_stderr():
            faiss_index = faiss.read_index(str(index_path), faiss.IO_FLAG_ONDISK_SAME_DIR)
    except RuntimeError as exc:
        raise IndexFileError(index_path, f"faiss cannot read it ({str(exc).splitlines()[0]})") from None
    ids = load_ids(folder / entry["files"]["ids"]["file"])
    check_unique_ids(folder, [entry["files"]["ids"]["file"]], [ids])
    if faiss_index.d != manifest["dim"] or faiss_index.ntotal != entry["count"]:
        raise IndexFileError(index_path, f"holds {faiss_index.ntotal} vectors of dimension {faiss_index.d}, "
                                         f"the manifest says {entry['count']} of {manifest['dim']}")
    index = OnDiskIndex.from_parts(trained.backend, trained.options, ids, trained.dim, normalize=trained.normalize,
                                   config=trained.config, source=index_path, int_ids=ids.dtype.kind in "iu",
                                   faiss_index=faiss_index)
    index.folder = folder
    from retrieval.scale.add_shard import ShardsSinceMerge

    merged = [source["file"] for source in entry.get("sources", [])]
    index.since_merge = ShardsSinceMerge(folder, manifest, merged, offset=faiss_index.ntotal)
    if len(index.since_merge):
        check_unique_ids(folder, ["on-disk index"] + [f"shard {i}" for i in range(len(index.since_merge.ids))],
                         [ids] + index.since_merge.ids)
    return index
