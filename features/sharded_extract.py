"""Whole-dataset extraction into a sharded store, on this machine or on Ray.

* :func:`extract_local_sharded`: SIFT / RootSIFT (any picklable local extractor) - a CPU stage: one
  task per shard (:func:`retrieval.scale.engine.map_units`), each task one process with OpenCV single-threaded,
  so ``n_jobs`` workers use ``n_jobs`` cores without OpenCV's own threads fighting them.
* :func:`extract_global_sharded` / :func:`extract_patches_sharded`: EfficientNet global descriptors
  or patch tokens - network stages: an actor per worker builds the network once
  (:func:`retrieval.scale.engine.map_actors`; ``num_gpus`` when asked) and computes shard after shard with
  the batched, threaded pipeline of :mod:`retrieval.features.deep_extract`.

Every shard is a complete single-file store written by :func:`retrieval.features.extract.extract_local_features`,
:func:`retrieval.features.deep_extract.extract_global` or :func:`retrieval.features.deep_extract.extract_patches` into a
temporary file and renamed (:func:`retrieval.features.shards.write_shard`), so the features do not depend on the
engine, a rerun computes only missing shards, and finished shards survive any failure.
:func:`retrieval.features.shards.ShardedStore.merge` (called by the ``retrieval extract`` command) writes the
single file the index reads.

``kill_once`` (fault injection for tests and ``measure_engine``): the path of a marker file; the first
task to create it SIGKILLs its own process after writing its shard's temporary file and before the
rename - a worker dying mid-task. Ray reruns the task; the local engine cannot, and fails.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

from tqdm.auto import tqdm

from retrieval.scale.engine import check_engine, map_actors, map_units

from retrieval.features.extract import _opencv_threads, _torch_threads, extract_local_features
from retrieval.features.shards import ShardedStore, plan_shards, write_shard

PathLike = Union[str, os.PathLike]

__all__ = ["ShardedRun", "extract_local_sharded", "extract_global_sharded", "extract_patches_sharded",
           "DEFAULT_SHARD_SIZE"]

DEFAULT_SHARD_SIZE = 256


@dataclass
class ShardedRun:
    """What one run did: shards ``computed`` now and ``skipped`` (already complete), images computed,
    ``failed`` images ``(id, path, reason)`` (``on_error="skip"``), wall ``seconds``, the summed
    ``worker_seconds`` (wall, per shard), ``cpu_seconds`` (CPU time of the worker process: what an
    image costs whatever the machine's load) and ``bytes`` of the shards computed now."""

    root: Path
    computed: int = 0
    skipped: int = 0
    images: int = 0
    failed: List[Tuple[str, str, str]] = field(default_factory=list)
    seconds: float = 0.0
    worker_seconds: float = 0.0
    cpu_seconds: float = 0.0
    bytes: int = 0

    @property
    def seconds_per_image(self) -> float:
        """Wall seconds per image computed in this run."""
        return self.seconds / self.images if self.images else float("nan")

    @property
    def bytes_per_image(self) -> float:
        return self.bytes / self.images if self.images else float("nan")

    def as_dict(self) -> dict:
        """JSON-able figures (None where nothing was computed)."""
        def num(x):
            return None if x != x else x

        return {"root": str(self.root), "shards_computed": self.computed, "shards_skipped": self.skipped,
                "images": self.images, "failed": len(self.failed), "seconds": round(self.seconds, 3),
                "seconds_per_image": num(self.seconds_per_image), "worker_seconds": round(self.worker_seconds, 3),
                "bytes": self.bytes, "bytes_per_image": num(self.bytes_per_image),
                "worker_seconds_per_image": num(self.worker_seconds / self.images if self.images else float("nan")),
                "cpu_seconds_per_image": num(self.cpu_seconds / self.images if self.images else float("nan"))}


def _maybe_die(marker: Optional[str]) -> None:
    if not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def _facts(result, marker: Optional[str]) -> dict:
    _maybe_die(marker)  # mid-task: the shard's temporary file is written, not yet renamed
    return {"computed": result.computed, "failed": [list(f) for f in result.failed],
            "n_keypoints": int(result.n_keypoints)}


def _boxes(unit: dict):
    return None if unit.get("boxes") is None else [None if b is None else tuple(b) for b in unit["boxes"]]


def _local_task(unit: dict, ctx: dict) -> dict:
    def compute(tmp: Path) -> dict:
        result = extract_local_features(unit["ids"], unit["paths"], ctx["extractor"], tmp, n_jobs=1,
                                        boxes=_boxes(unit), on_error=ctx["on_error"], progress=False)
        return _facts(result, ctx.get("kill_once"))

    # one OpenCV (and, for an extractor that runs torch, one torch) thread per worker: the workers are the
    # parallelism (measured in retrieval.bench.engine_speed)
    with _opencv_threads(1), _torch_threads(1, ctx["extractor"]):
        return write_shard(ctx["root"], unit, compute)


class _Runner:
    """Plans shards, skips finished ones, runs the rest, keeps count (shared by the three stages)."""

    def __init__(self, root: PathLike, kind: str, config: dict, ids, paths, boxes, shard_size: int,
                 store_dtype: str, progress: bool, desc: str):
        self.store = ShardedStore(root, kind=kind, config=config, shard_size=shard_size, create=True,
                                  store_dtype=store_dtype)
        units = plan_shards(ids, paths, shard_size, boxes)
        self.todo = self.store.missing(units)
        self.run = ShardedRun(Path(root), skipped=len(units) - len(self.todo))
        self.bar = tqdm(total=sum(len(u["ids"]) for u in self.todo), desc=desc, unit="img",
                        disable=not progress, leave=False, smoothing=0.1)
        self.start = time.perf_counter()

    def on_result(self, _i: int, entry: dict) -> None:
        self.run.computed += 1
        self.run.images += int(entry["count"])
        self.run.worker_seconds += float(entry["seconds"])
        self.run.cpu_seconds += float(entry.get("cpu_seconds", 0.0))
        self.run.bytes += int(entry["bytes"])
        self.run.failed.extend(tuple(f) for f in entry.get("failed", []))
        self.bar.update(int(entry["count"]))
        self.bar.set_postfix(s_per_img=f"{self.run.worker_seconds / max(1, self.run.images):.3f}",
                             kb_per_img=f"{self.run.bytes / 1024 / max(1, self.run.images):.1f}")

    def finish(self) -> ShardedRun:
        self.bar.close()
        self.run.seconds = time.perf_counter() - self.start
        return self.run


def extract_local_sharded(extractor: Any, ids: Sequence, paths: Sequence[PathLike], root: PathLike,
                          engine: str = "local", n_jobs: int = 2, shard_size: int = DEFAULT_SHARD_SIZE,
                          boxes: Optional[Sequence] = None, on_error: str = "raise",
                          ray_address: Optional[str] = None, progress: bool = True,
                          kill_once: Optional[PathLike] = None, desc: str = "local features") -> ShardedRun:
    """Local features of every image into the sharded store ``root`` (resumable; see the module
    docstring). ``extractor`` must be picklable (:class:`retrieval.features.sift.SiftExtractor` is: it holds
    only its configuration). ``engine="local"`` runs shards in ``n_jobs`` joblib processes,
    ``"ray"`` as Ray tasks."""
    check_engine(engine)
    runner = _Runner(root, "local", extractor.config, ids, paths, boxes, shard_size,
                     getattr(extractor, "store_dtype", "float16"), progress, desc)
    ctx = {"root": str(root), "extractor": extractor, "on_error": on_error,
           "kill_once": str(kill_once) if kill_once else None}
    try:
        if runner.todo:
            map_units(_local_task, runner.todo, engine=engine, n_jobs=n_jobs, shared=ctx, ray_address=ray_address,
                      progress=False, on_result=runner.on_result)
    finally:
        run = runner.finish()
    runner.store.clean_temporaries()  # a success: what is left is from workers that died mid-shard
    return run


class _DeepShardWorker:
    """Builds the extractor once (in the Ray actor, or here) and writes one shard per call."""

    def __init__(self, ctx: dict, extractor: Any = None):
        self.ctx = ctx
        self.extractor = extractor if extractor is not None else ctx["make_extractor"]()

    def __call__(self, unit: dict) -> dict:
        from retrieval.features.deep_extract import extract_global, extract_patches

        ctx = self.ctx
        extract = extract_patches if ctx["kind"] == "patches" else extract_global

        def compute(tmp: Path) -> dict:
            result = extract(self.extractor, unit["ids"], unit["paths"], tmp, n_jobs=ctx["decode_threads"],
                             boxes=_boxes(unit), on_error=ctx["on_error"], progress=False,
                             batch_size=ctx["batch_size"])
            return _facts(result, ctx.get("kill_once"))

        return write_shard(ctx["root"], unit, compute)


def _deep_sharded(kind: str, make_extractor: Callable[[], Any], ids, paths, root, engine, n_jobs, num_gpus,
                  shard_size, boxes, on_error, ray_address, progress, decode_threads, batch_size, kill_once,
                  desc) -> ShardedRun:
    from retrieval.features.deep_extract import patch_config

    check_engine(engine)
    probe = make_extractor()  # its configuration names the store (and it is the local engine's worker)
    config = patch_config(probe) if kind == "patches" else probe.config
    runner = _Runner(root, "local" if kind == "patches" else "global", config, ids, paths, boxes, shard_size,
                     "float16", progress, desc)
    ctx = {"root": str(root), "kind": kind, "make_extractor": make_extractor, "on_error": on_error,
           "decode_threads": int(decode_threads), "batch_size": batch_size,
           "kill_once": str(kill_once) if kill_once else None}
    make_worker = partial(_DeepShardWorker, ctx, probe) if engine == "local" else partial(_DeepShardWorker, ctx)
    try:
        if runner.todo:
            map_actors(make_worker, runner.todo, engine=engine, n_jobs=n_jobs, num_gpus=num_gpus,
                       num_cpus=max(1, int(decode_threads)) if not num_gpus else 1,
                       ray_address=ray_address, progress=False, on_result=runner.on_result)
    finally:
        run = runner.finish()
    runner.store.clean_temporaries()  # a success: what is left is from workers that died mid-shard
    return run


def extract_global_sharded(make_extractor: Callable[[], Any], ids: Sequence, paths: Sequence[PathLike],
                           root: PathLike, engine: str = "local", n_jobs: int = 1, num_gpus: float = 0,
                           shard_size: int = DEFAULT_SHARD_SIZE, boxes: Optional[Sequence] = None,
                           on_error: str = "raise", ray_address: Optional[str] = None, progress: bool = True,
                           decode_threads: int = 1, batch_size: Optional[int] = None,
                           kill_once: Optional[PathLike] = None, desc: str = "global features") -> ShardedRun:
    """Global descriptors of every image into the sharded store ``root``. ``make_extractor`` is a
    picklable factory (e.g. ``functools.partial(EfficientNetExtractor, "lite0-gem-224", threads=1)``):
    each worker - a Ray Data actor with ``num_gpus`` GPUs when asked, or this process - builds the
    network once. ``decode_threads`` decode images ahead of the network in each worker."""
    return _deep_sharded("global", make_extractor, ids, paths, root, engine, n_jobs, num_gpus, shard_size, boxes,
                         on_error, ray_address, progress, decode_threads, batch_size, kill_once, desc)


def extract_patches_sharded(make_extractor: Callable[[], Any], ids: Sequence, paths: Sequence[PathLike],
                            root: PathLike, engine: str = "local", n_jobs: int = 1, num_gpus: float = 0,
                            shard_size: int = DEFAULT_SHARD_SIZE, boxes: Optional[Sequence] = None,
                            on_error: str = "raise", ray_address: Optional[str] = None, progress: bool = True,
                            decode_threads: int = 1, batch_size: Optional[int] = None,
                            kill_once: Optional[PathLike] = None, desc: str = "patch tokens") -> ShardedRun:
    """Patch tokens of every image into the sharded (local-feature) store ``root``; as
    :func:`extract_global_sharded`."""
    return _deep_sharded("patches", make_extractor, ids, paths, root, engine, n_jobs, num_gpus, shard_size, boxes,
                         on_error, ray_address, progress, decode_threads, batch_size, kill_once, desc)
