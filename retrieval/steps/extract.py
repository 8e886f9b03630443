"""``retrieval extract {local,global,patches}``: features of a whole dataset, on this machine or on Ray.

    retrieval extract global --dataset folder --data ../shared/data/coil20 --config lite0-gem-224 --out g.h5
    retrieval extract local --dataset oxford --data OXFORD --config rootsift-2k --out sift.h5 --engine ray
    retrieval extract global ... --images queries --out q.h5        # the (cropped) queries

The images are computed in shards (``--shard-size``) into ``OUT.shards/`` (see
:mod:`retrieval.features.shards`): each worker writes whole shard files, a rerun computes only the
missing shards, a store made with another configuration is refused. At the end the shards are merged
into ``OUT``, the single feature file ``retrieval index build`` (global) and the re-rankers (local,
patches) read; ``--no-merge`` keeps only the shards. The summary (JSON on stdout) gives wall seconds,
seconds and bytes per image.

Python: ``main(conf, dataset, out, engine=..., ray_address=...) -> Path`` with ``conf`` an
:class:`ExtractConfig` (or the name of an extractor configuration) and ``dataset`` a
:class:`retrieval.datasets.open.DatasetConfig` (opened here) or an opened
:class:`retrieval.datasets.RetrievalDataset`.
"""
from __future__ import annotations

import dataclasses
import os
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple, Union

from retrieval.core.config import Config, ConfigError
from retrieval.features.sharded_extract import (DEFAULT_SHARD_SIZE, extract_global_sharded,
                                                extract_local_sharded, extract_patches_sharded)
from retrieval.features.shards import ShardedStore, shard_root
from retrieval.features.store import FeatureFileError
from retrieval.core.fileio import exclusive_lock

__all__ = ["ExtractConfig", "main", "extractor_for", "dataset_images"]

FEATURES = ("local", "global", "patches")


@dataclasses.dataclass(frozen=True)
class ExtractConfig(Config):
    """How to extract (the one extraction configuration: ``retrieval extract``, the ``[extract]`` section
    of an experiment file, the ladder): ``kind`` (local = SIFT family, global / patches = EfficientNet),
    the named extractor configuration ``config`` (:data:`retrieval.features.sift.SIFT_CONFIGS`,
    :data:`retrieval.features.learned.LEARNED_CONFIGS` or :data:`retrieval.features.efficientnet.EXTRACTOR_CONFIGS`) with ``overrides`` of its keys, which
    ``images`` (db, queries with their boxes, or all; an experiment extracts what it needs), the engine and
    its workers."""

    kind: Literal["local", "global", "patches"] = "global"
    config: str = "lite0-gem-512"
    overrides: Dict[str, Any] = dataclasses.field(default_factory=dict)
    images: Literal["db", "queries", "all"] = "db"
    engine: Literal["local", "ray"] = "local"
    ray_address: Optional[str] = None
    n_jobs: int = 2
    num_gpus: float = 0.0
    device: str = "cpu"
    threads: int = 1
    decode_threads: int = 1
    shard_size: int = DEFAULT_SHARD_SIZE
    on_error: Literal["raise", "skip"] = "raise"
    merge: bool = True

    def check(self) -> None:
        for key in ("n_jobs", "shard_size", "threads", "decode_threads"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")


def extractor_for(conf: ExtractConfig):
    """A picklable factory of the extractor ``conf`` names (:func:`retrieval.steps.image_features.make_extractor`,
    the one factory). Unknown option keys are refused here, before any work."""
    from retrieval.steps.image_features import make_extractor

    if conf.kind == "local":
        make_extractor("local", conf.config, conf.overrides)   # cheap: checks the keys now
        return partial(make_extractor, "local", conf.config, dict(conf.overrides))
    from retrieval.features.efficientnet import resolve_config

    try:
        resolve_config(conf.config, **conf.overrides)
    except ValueError as exc:
        raise ConfigError(f"global features: {exc}") from None
    # a worker given a GPU runs the network there (torch, channels-last) unless told otherwise
    device = "cuda" if conf.num_gpus and conf.device == "cpu" else conf.device
    return partial(make_extractor, conf.kind, conf.config, dict(conf.overrides), threads=conf.threads, device=device)


def dataset_images(dataset, which: str) -> Tuple[List[str], List[str], Optional[list]]:
    """(ids, paths, boxes or None) of the database, the queries (with their crop boxes) or both."""
    # absolute paths: the workers of a reused process pool may run in another folder
    db = ([str(i) for i in dataset.db_ids], [os.path.abspath(p) for p in dataset.db_paths], [None] * len(dataset.db_ids))
    boxes = dataset.query_boxes or [None] * len(dataset.query_ids)
    queries = ([str(i) for i in dataset.query_ids], [os.path.abspath(p) for p in dataset.query_paths], list(boxes))
    if which == "db":
        parts = [db]
    elif which == "queries":
        parts = [queries]
    else:
        parts = [db, queries]
    ids: List[str] = []
    paths: List[str] = []
    out_boxes: list = []
    seen: Dict[str, Tuple[str, Any]] = {}
    for part_ids, part_paths, part_boxes in parts:
        for i, p, b in zip(part_ids, part_paths, part_boxes):
            if i in seen:
                if seen[i] != (p, b):
                    raise ConfigError(f"image id {i!r} is both a database image and a cropped query; "
                                      "extract --images db and --images queries into separate files")
                continue
            seen[i] = (p, b)
            ids.append(i)
            paths.append(p)
            out_boxes.append(b)
    return ids, paths, (out_boxes if any(b is not None for b in out_boxes) else None)


def main(conf: Union[ExtractConfig, str], dataset, out: Union[str, os.PathLike], engine: Optional[str] = None,
         ray_address: Optional[str] = None, progress: bool = True, summary: Optional[dict] = None) -> Path:
    """Extract ``conf.kind`` features of ``dataset``'s images into ``out`` (shards in ``out.shards/``,
    merged into ``out`` unless ``conf.merge`` is off; then the shard folder is returned). ``engine``
    and ``ray_address`` override ``conf``'s. ``summary`` (a dict) receives the run's figures."""
    if isinstance(conf, str):
        conf = ExtractConfig(config=conf)
    from retrieval.datasets.open import DatasetConfig, open_dataset

    if isinstance(dataset, DatasetConfig):
        dataset = open_dataset(dataset)
    conf = conf.override({k: v for k, v in (("engine", engine), ("ray_address", ray_address)) if v is not None})
    out = Path(out).absolute()   # workers of a reused process pool may run in another folder
    root = shard_root(out)
    ids, paths, boxes = dataset_images(dataset, conf.images)
    if not ids:
        raise ConfigError(f"{dataset.name}: no {conf.images} images to extract")
    common = dict(engine=conf.engine, n_jobs=conf.n_jobs, shard_size=conf.shard_size, boxes=boxes,
                  on_error=conf.on_error, ray_address=conf.ray_address, progress=progress)
    make_extractor = extractor_for(conf)
    # one run per output at a time: a second one would delete the first's temporary shard files
    with exclusive_lock(root / ".lock", out, error=FeatureFileError):
        target, run = _extract(conf, make_extractor, ids, paths, out, root, common)
    if summary is not None:
        summary.update(run.as_dict(), out=str(target), images_planned=len(ids), features=conf.kind,
                       extractor=conf.config, engine=conf.engine,
                       bytes_out=target.stat().st_size if target.is_file() else None)
    return target


def _extract(conf: ExtractConfig, make_extractor, ids, paths, out: Path, root: Path, common: dict):
    if conf.kind == "local":
        run = extract_local_sharded(make_extractor(), ids, paths, root, **common)
    else:
        extract = extract_global_sharded if conf.kind == "global" else extract_patches_sharded
        run = extract(make_extractor, ids, paths, root, num_gpus=conf.num_gpus,
                      decode_threads=conf.decode_threads, **common)
    target = root
    if conf.merge:
        failed = {f[0] for f in run.failed}
        # a rerun that computed nothing keeps its up-to-date merged file
        if run.computed or not out.is_file():
            ShardedStore(root).merge(out, [i for i in ids if i not in failed])
        target = out
    return target, run
