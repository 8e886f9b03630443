"""Growing a sharded index (:func:`retrieval.scale.ivf_build.build_sharded_index`): new vectors become a new shard.

:func:`add_shard` adds the vectors to a copy of the folder's trained, empty index (a faiss ``add``: the
coarse quantiser assigns them, nothing is trained) and writes it as the next ``shard-NNNNN.npz``, then the
manifest (atomically, the commit point; one writer at a time). Nothing that exists is rewritten, so an add
costs the added rows, not a rebuild. :class:`~retrieval.scale.ivf_build.ShardedIndex` searches every shard
the manifest lists; the merged on-disk index (:func:`retrieval.scale.ondisk.load_on_disk`) searches its
on-disk lists plus, in memory, the shards added since the merge (:class:`ShardsSinceMerge`), so both see the
new vectors at once; ``merge_on_disk`` folds them into the on-disk lists when convenient.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Hashable, List, Sequence, Union

import numpy as np

from retrieval.core.fileio import exclusive_lock, read_npz
from retrieval.indexing.index import Index, IndexFileError
from retrieval.scale.manifest import MANIFEST, ids_digest, read_manifest, write_manifest

__all__ = ["add_shard", "ShardsSinceMerge"]

PathLike = Union[str, os.PathLike]


def _shard_ids(folder: Path, manifest: dict) -> List[np.ndarray]:
    return [read_npz(folder / e["file"], "index shard", error=IndexFileError, keys=["ids"])["ids"]
            for e in manifest["shards"]]


def add_shard(folder: PathLike, ids: Sequence[Hashable], vectors) -> dict:
    """Add ``vectors`` with ``ids`` (none already in the index) as a new shard of the sharded-index ``folder``."""
    folder = Path(folder)
    with exclusive_lock(folder / ".writer.lock", folder, error=IndexFileError):
        manifest = read_manifest(folder)
        existing = _shard_ids(folder, manifest)
        shard = Index.load(folder / manifest["trained"])
        shard.add(vectors, ids)
        clash = np.intersect1d(shard.ids, np.concatenate(existing)) if existing else []
        if len(clash):
            raise ValueError(f"{folder}: {len(clash)} id(s) already in the index, e.g. {clash[:5].tolist()}")
        number = 1 + max([int(e["file"][6:11]) for e in manifest["shards"]] + [-1])
        name = f"shard-{number:05d}.npz"
        shard.save(folder / name)  # atomic; a file no manifest names until the next line commits it
        manifest["shards"].append({"file": name, "count": len(shard), "ids_sha256": ids_digest(shard.ids)})
        manifest["count"] = int(manifest["count"]) + len(shard)
        write_manifest(folder, manifest)
    return {"shard": name, "added": len(shard), "count": manifest["count"]}


class ShardsSinceMerge:
    """The shards of a folder that its on-disk merge does not hold, searched in memory beside it."""

    def __init__(self, folder: Path, manifest: dict, merged: Sequence[str], offset: int):
        entries = [e for e in manifest["shards"] if e["file"] not in set(merged)]
        self.indexes = [Index.load(folder / e["file"]) for e in entries]
        for entry, index in zip(entries, self.indexes):
            if ids_digest(index.ids) != entry.get("ids_sha256", ids_digest(index.ids)):
                raise IndexFileError(folder / entry["file"], f"holds other ids than {MANIFEST} records")
        self.offsets = np.cumsum([offset] + [len(i) for i in self.indexes])[:-1]

    def __len__(self) -> int:
        return sum(len(i) for i in self.indexes)

    @property
    def ids(self) -> List[np.ndarray]:
        return [i.ids for i in self.indexes]

    def merged(self, base, queries, k: int, all_ids: np.ndarray, **options):
        """``base`` (the on-disk index's :class:`Ranking` for ``queries``) merged with every shard's top ``k``;
        ``all_ids``: the on-disk ids then these shards' (global row order)."""
        from retrieval.indexing.exact import merge_topk
        from retrieval.indexing.ranking import Ranking

        scores, rows = [base.scores], [base.indices]
        for offset, index in zip(self.offsets, self.indexes):
            ranking = index.search(queries, k=min(k, len(index)), **options)
            scores.append(ranking.scores)
            rows.append(np.where(ranking.indices < 0, -1, ranking.indices + offset))
        best_scores, best_rows = merge_topk(scores, rows, min(k, len(all_ids)))
        ids = all_ids[np.maximum(best_rows, 0)]
        return Ranking(ids=ids, scores=best_scores, indices=best_rows, query_ids=base.query_ids)
