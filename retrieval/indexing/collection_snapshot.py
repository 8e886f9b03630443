"""Reading one generation of a collection (:mod:`retrieval.indexing.collection`) into a searchable snapshot.

The exact backend's index is the segments' vectors concatenated, removed rows dropped: the same matrix,
in the same order, as an index rebuilt from those rows. A faiss index is the stored index (the rows it
was built on) with the later segments added to a copy of it, removed rows masked in every search until
the collection is compacted. Given the previous snapshot, only segments appended since are read; the
previous snapshot's arrays and faiss index are never changed (a server may still be searching them).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from retrieval.indexing.collection_files import check_entry, read_removed, read_segment
from retrieval.indexing.index import Index
from retrieval.indexing.metadata import Metadata

__all__ = ["load_snapshot"]


def _reusable(previous, manifest: dict) -> int:
    """How many leading segments of ``manifest`` the previous snapshot already holds (0: none reused)."""
    if previous is None:
        return 0
    files = previous._all.get("segment_files", [])
    now = [s["file"] for s in manifest["segments"]]
    if not files or now[:len(files)] != files or previous._all.get("index_file") != _index_file(manifest):
        return 0
    return len(files)


def _index_file(manifest: dict) -> Optional[str]:
    return manifest["index"]["file"] if manifest.get("index") else None


def load_snapshot(folder: Path, manifest: dict, verify: bool, previous, snapshot_cls):
    dim, backend = int(manifest["dim"]), manifest["backend"]
    segments = manifest["segments"]
    reused = _reusable(previous, manifest)
    if reused:
        ids_parts, vector_parts = [previous._all["ids"]], [previous._all["vectors"]]
        meta_parts = [previous._all["metadata"]]
    else:
        ids_parts, vector_parts, meta_parts = [], [], []
    for entry in segments[reused:]:
        ids, vectors, meta = read_segment(check_entry(folder, entry, verify), dim)
        ids_parts.append(ids)
        vector_parts.append(vectors)
        meta_parts.append(meta)
    int_ids = manifest["id_type"] == "int"
    all_ids = np.concatenate(ids_parts) if len(ids_parts) > 1 else ids_parts[0]
    all_ids = all_ids.astype(np.int64) if int_ids else all_ids
    all_vectors = np.concatenate(vector_parts) if len(vector_parts) > 1 else vector_parts[0]
    all_meta = Metadata.concat(meta_parts) if len(meta_parts) > 1 else meta_parts[0]
    removed = np.zeros(len(all_ids), dtype=bool)
    if manifest.get("removed"):
        removed[read_removed(check_entry(folder, manifest["removed"], verify), len(all_ids))] = True
    common = dict(normalize=manifest["normalize"], config=manifest["config"], source=folder, int_ids=int_ids,
                  zero_rows="keep")
    if backend == "exact":
        live = ~removed
        whole = bool(live.all())
        index = Index.from_parts("exact", manifest["requested_options"], all_ids if whole else all_ids[live], dim,
                                 vectors=all_vectors if whole else all_vectors[live], **common)
        metadata = all_meta if whole else all_meta.take(live)
    else:
        index = _faiss_snapshot(folder, manifest, verify, previous if reused else None, all_ids, all_vectors)
        index.removed = removed if removed.any() else None
        index._id_set = set(all_ids[~removed].tolist())
        metadata = all_meta
    local = [check_entry(folder, entry, verify) for entry in manifest["local"]]
    kept = {"ids": all_ids, "vectors": all_vectors, "metadata": all_meta, "removed": removed,
            "segment_files": [s["file"] for s in segments], "index_file": _index_file(manifest)}
    return snapshot_cls(int(manifest["generation"]), index, metadata, local, manifest, kept)


def _faiss_snapshot(folder: Path, manifest: dict, verify: bool, previous, all_ids, all_vectors) -> Index:
    from retrieval.indexing.faiss_backend import import_faiss

    if previous is not None:  # a copy: the previous snapshot may be in use
        old = previous.index
        index = Index.from_parts(old.backend, old.options, old.ids, old.dim, normalize=old.normalize,
                                 config=old.config, source=folder, int_ids=np.issubdtype(old.ids.dtype, np.integer),
                                 faiss_index=import_faiss().clone_index(old._faiss), zero_rows="keep")
    else:
        index = Index.load(check_entry(folder, manifest["index"], verify))
        index.zero_rows = "keep"
    covered = index.rows
    if covered > len(all_ids) or not np.array_equal(index.ids, all_ids[:covered]):
        from retrieval.indexing.collection_files import CollectionError

        raise CollectionError(folder / manifest["index"]["file"], "its ids are not the collection's first rows: "
                                                                  "stale index file; compact the collection")
    if covered < len(all_ids):  # stored rows are as the index keeps them (unit length where it normalises)
        index._faiss.add(all_vectors[covered:])
        index._ids = np.concatenate([index._ids, all_ids[covered:]])
    index.source = str(folder)
    return index
