"""Features of a list of images into one feature file: the pipeline's one extractor factory and its one
way to extract into a cache, shared by ``retrieval run`` (:mod:`retrieval.experiments.chain`), the E1-E8
ladder and ``retrieval extract`` (:mod:`retrieval.steps.extract`).

* :func:`make_extractor`: ``kind`` ``local`` (the SIFT family) or ``global`` / ``patches``
  (EfficientNet) and a named configuration with overrides -> the extractor; runtime options
  (``backend``, ``device``, ``threads``) reach EfficientNet only.
* :func:`extract_into`: the images into one file, resumable (what is there is kept), a file made with
  another configuration recomputed, in this process (``engine="local"``) or as sharded Ray work
  (``engine="ray"``: each shard a whole file, a rerun computes only missing shards, then merged into the
  same file the local path writes: same format, same values).
"""
from __future__ import annotations

import shutil
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from retrieval.core.config import ConfigError

__all__ = ["KINDS", "make_extractor", "extractor_from_record", "extract_into", "remove"]

KINDS = ("local", "global", "patches")


def make_extractor(kind: str, config: Any, overrides: Optional[Mapping[str, Any]] = None, **runtime: Any):
    """The extractor of ``kind`` with the named (or given) configuration ``config`` and ``overrides`` of
    its keys; ``runtime`` (backend, device, threads) for EfficientNet. Unknown keys are a ConfigError."""
    overrides = dict(overrides or {})
    if kind not in KINDS:
        raise ConfigError(f"unknown feature kind {kind!r}; known: {KINDS}")
    try:
        if kind == "local":  # SIFT / RootSIFT or a learned extractor (XFeat, DISK), by name
            from retrieval.features.local_extractors import local_extractor

            return local_extractor(config, **overrides)
        from retrieval.features.efficientnet import EfficientNetExtractor, resolve_config

        return EfficientNetExtractor(resolve_config(config, **overrides), **runtime)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{kind} features {config if isinstance(config, str) else ''}: {exc}") from None


def extractor_from_record(config: Mapping[str, Any]):
    """The global extractor that made vectors with ``config`` (as recorded in a feature, index or collection
    file), rebuilt from the whole record and checked equal to it; a ConfigError when it cannot be (encoded
    vectors such as BoW or VLAD are not rebuilt from a configuration alone; changed weights)."""
    from retrieval.features.store import config_json

    kind = config.get("extractor")
    if kind != "efficientnet":
        raise ConfigError(f"the vectors were made by {kind!r}, which cannot be rebuilt from the recorded "
                          "configuration alone (EfficientNet vectors can)")
    from retrieval.features.efficientnet import EfficientNetExtractor

    # the whole record: one without a precision was made in float32 (resolve_config reads it so)
    extractor = EfficientNetExtractor(dict(config))
    if config_json(extractor.config) != config_json(config):
        raise ConfigError(f"the extractor rebuilt from the recorded configuration differs from it "
                          f"({config_json(extractor.config)} vs {config_json(config)}); were its weights changed?")
    return extractor


def remove(*paths) -> None:
    for p in paths:
        p = Path(p)
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _fresh(compute, path: Path, say=print):
    """Run ``compute`` (a resumable extraction into ``path``); a file made with another configuration
    (e.g. features of a model that has since been retrained) is deleted and computed again."""
    from retrieval.features.store import FeatureFileError

    try:
        return compute()
    except FeatureFileError as exc:
        if "made with" not in str(exc):
            raise
        say(f"{path}: stale ({str(exc)[:160]}...); recomputing")
        remove(path)
        return compute()


def extract_into(kind: str, extractor, ids: Sequence, paths: Sequence, boxes: Optional[Sequence], out: Path, *,
                 engine: str = "local", n_jobs: int = 2, ray_address: Optional[str] = None, progress: bool = True,
                 desc: str = "", runtime: Optional[Mapping[str, Any]] = None, say=print):
    """Extract ``kind`` features of the images (``boxes``: crop boxes or None) into the single file
    ``out`` with ``extractor`` (module docstring); returns the run's result (``computed``: images
    extracted now, ``seconds``). ``runtime``: the EfficientNet options each Ray worker builds its
    network with."""
    from retrieval.features.deep_extract import extract_global, extract_patches
    from retrieval.features.extract import extract_local_features

    out = Path(out)
    if engine == "ray":
        return _sharded_into(kind, extractor, ids, paths, boxes, out, n_jobs, ray_address, progress, desc,
                             dict(runtime or {}))
    if engine != "local":
        raise ConfigError(f"engine must be 'local' or 'ray', got {engine!r}")
    if kind == "local":
        run = lambda: extract_local_features(ids, paths, extractor, out, n_jobs=n_jobs, boxes=boxes,  # noqa: E731
                                             progress=progress, desc=desc)
    else:
        fn = extract_global if kind == "global" else extract_patches
        run = lambda: fn(extractor, ids, paths, out, n_jobs=n_jobs, boxes=boxes, progress=progress,  # noqa: E731
                         desc=desc)
    return _fresh(run, out, say)


def _sharded_into(kind, extractor, ids, paths, boxes, out: Path, n_jobs, ray_address, progress, desc, runtime):
    import time
    from types import SimpleNamespace

    from retrieval.features.sharded_extract import extract_global_sharded, extract_local_sharded, extract_patches_sharded
    from retrieval.features.shards import ShardedStore

    start = time.perf_counter()
    root = out.with_name(out.name + ".shards")
    common = dict(engine="ray", n_jobs=n_jobs, boxes=boxes, ray_address=ray_address, progress=progress, desc=desc)
    if kind == "local":
        run = extract_local_sharded(extractor, ids, paths, root, **common)
    else:
        # a picklable factory: each Ray worker builds the network once from the same configuration
        make = partial(make_extractor, kind, extractor.config, None, **runtime)
        run = (extract_global_sharded if kind == "global" else extract_patches_sharded)(make, ids, paths, root,
                                                                                        **common)
    computed = int(getattr(run, "computed", 0) or 0)
    if computed or not out.is_file():
        remove(out)
        ShardedStore(root).merge(out, [str(i) for i in ids])
    return SimpleNamespace(computed=computed, seconds=time.perf_counter() - start)
