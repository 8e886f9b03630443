"""The ``manifest.json`` of a sharded-index folder: the one place that names it, reads it (format and
version checked) and writes it (atomically). Shared by :mod:`retrieval.scale.ivf_build`, which writes
the shards, and :mod:`retrieval.scale.ondisk`, which merges them.

Each shard's entry records its vector count and a digest of its id list, so a shard file replaced by a
copy of another (each valid on its own) or a count edited in the manifest is refused naming the shard
(:func:`check_shard`, :func:`check_unique_ids`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from retrieval.core.fileio import atomic_write_text, digest, read_json
from retrieval.indexing.ranking import IndexFileError

__all__ = ["MANIFEST", "SHARDED_FORMAT", "SHARDED_VERSION", "read_manifest", "write_manifest", "ids_digest",
           "check_shard", "check_unique_ids"]

SHARDED_FORMAT = "hybrid-retrieval/sharded-index"
SHARDED_VERSION = 1
MANIFEST = "manifest.json"


def read_manifest(folder: Path) -> dict:
    """The manifest of ``folder``; another format or version is an :class:`IndexFileError`."""
    path = Path(folder) / MANIFEST
    manifest = read_json(path, "sharded index manifest", error=IndexFileError)
    if manifest.get("format") != SHARDED_FORMAT or manifest.get("version") != SHARDED_VERSION:
        raise IndexFileError(path, f"not a version-{SHARDED_VERSION} sharded index manifest")
    return manifest


def write_manifest(folder: Path, manifest: dict) -> None:
    atomic_write_text(Path(folder) / MANIFEST, json.dumps(manifest, indent=1))


def ids_digest(ids) -> str:
    """SHA-256 of an id list (its values, dtype and order): what a shard's manifest entry records."""
    return digest({"ids": np.asarray(ids)})


def check_shard(path: Path, entry: dict, index) -> None:
    """The loaded shard ``index`` (from ``path``) holds what its manifest ``entry`` says: ``count``
    vectors and (manifests that record it) the ids whose digest is ``ids_sha256``."""
    if len(index) != int(entry["count"]):
        raise IndexFileError(path, f"holds {len(index)} vectors, the manifest says {entry['count']}: the "
                                   "manifest was edited or the shard replaced; rebuild the sharded index")
    recorded = entry.get("ids_sha256")
    if recorded is not None and ids_digest(index.ids) != recorded:
        raise IndexFileError(path, "holds other ids than the manifest records for this shard (a copy of "
                                   "another shard?); rebuild the sharded index")


def check_unique_ids(folder: Path, files: Sequence[str], ids: Sequence[np.ndarray]) -> None:
    """No id occurs in two shards (or twice in one) of ``folder``; else the first such id is named
    with the shard files holding it."""
    everything = np.concatenate(list(ids)) if len(ids) else np.zeros(0, np.int64)
    values, counts = np.unique(everything, return_counts=True)
    if (counts > 1).any():
        dup = values[counts > 1][0]
        holders = [name for name, part in zip(files, ids) if (part == dup).any()]
        raise IndexFileError(folder, f"id {dup.item()!r} occurs more than once (in {', '.join(holders)}): a "
                                     "shard was copied over another; rebuild the sharded index")
