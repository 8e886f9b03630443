"""The ``manifest.json`` of a sharded-index folder: the one place that names it, reads it (format and
version checked) and writes it (atomically). Shared by :mod:`retrieval.scale.ivf_build`, which writes
the shards, and :mod:`retrieval.scale.ondisk`, which merges them."""
from __future__ import annotations

import json
from pathlib import Path

from ..fileio import atomic_write_text, read_json
from ..ranking import IndexFileError

__all__ = ["MANIFEST", "SHARDED_FORMAT", "SHARDED_VERSION", "read_manifest", "write_manifest"]

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
