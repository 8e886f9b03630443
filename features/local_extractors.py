"""One entry point for every local feature extractor: SIFT / RootSIFT (:mod:`retrieval.features.sift`),
Hessian-affine RootSIFT (:mod:`retrieval.features.hesaff`) and the learned ones (:mod:`retrieval.features.learned`),
chosen by configuration name; and the descriptor kind a feature store's configuration stands for.

>>> local_extractor("rootsift-2k")          # SiftExtractor
>>> local_extractor("xfeat-4k", max_side=512)  # LearnedExtractor with an override
>>> local_extractor("xfeat-4k+precision=float32")  # the same, in the form recorded names take

Descriptors of different kinds live in different spaces (uint8 SIFT against RootSIFT gives 0 inliers
on the same image; XFeat's 64-d against DISK's 128-d does not even compare; Hessian-affine RootSIFT describes
other regions than DoG RootSIFT, so their words and matches mean other things), so every store records
its kind through its configuration and scorers refuse a mix (:func:`check_same_kind`).
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional, Tuple, Union

#: the ``type`` a recorded local extractor configuration holds, one per extractor family
LOCAL_TYPES = ("sift", "hesaff", "xfeat", "disk")

__all__ = ["LOCAL_TYPES", "local_extractor", "local_config_names", "split_config_name", "descriptor_kind",
           "check_same_kind", "MixedKindsError"]


def local_config_names() -> Tuple[str, ...]:
    """Every named local feature configuration (SIFT family first, then Hessian-affine, then learned)."""
    from retrieval.features.hesaff import HESAFF_CONFIGS
    from retrieval.features.learned import LEARNED_CONFIGS
    from retrieval.features.sift import SIFT_CONFIGS

    return tuple(SIFT_CONFIGS.names()) + tuple(HESAFF_CONFIGS.names()) + tuple(LEARNED_CONFIGS.names())


def split_config_name(name: str) -> Tuple[str, Dict[str, str]]:
    """``"xfeat-4k+precision=float32,max_side=640"`` -> ``("xfeat-4k", {"precision": "float32", "max_side":
    "640"})``: a configuration name with overrides, the form a store records them in
    (:meth:`retrieval.core.config.Registry.recorded`), so that settings that take a name (the ladder's
    ``spatial_sift``, a benchmark's list) take overrides too. A name without ``+`` has none."""
    from retrieval.core.config import parse_overrides

    base, plus, rest = str(name).partition("+")
    return base, (parse_overrides(rest.split(",")) if plus else {})


def local_extractor(config: Union[str, Mapping[str, Any], None] = "rootsift-2k", **overrides):
    """The extractor of ``config``: a name of :data:`retrieval.features.sift.SIFT_CONFIGS`,
    :data:`retrieval.features.hesaff.HESAFF_CONFIGS` or :data:`retrieval.features.learned.LEARNED_CONFIGS`
    (with ``+KEY=VALUE,...`` overrides: :func:`split_config_name`), or a recorded configuration dict (its
    ``type``, one of :data:`LOCAL_TYPES`, says which), with keyword overrides. Unknown names and keys are a
    :class:`~retrieval.core.config.ConfigError`."""
    from retrieval.core.config import ConfigError

    from retrieval.features.hesaff import HESAFF_CONFIGS, HesAffExtractor
    from retrieval.features.learned import LEARNED_CONFIGS, LearnedExtractor
    from retrieval.features.sift import SIFT_CONFIGS, SiftExtractor

    if isinstance(config, str) and "+" in config:
        config, named = split_config_name(config)
        overrides = {**named, **overrides}
    if isinstance(config, str):
        for configs, cls in ((LEARNED_CONFIGS, LearnedExtractor), (HESAFF_CONFIGS, HesAffExtractor),
                             (SIFT_CONFIGS, SiftExtractor)):
            if config in configs:
                return cls(config, **overrides)
        raise ConfigError(f"unknown local feature configuration {config!r}; known: "
                          f"{', '.join(local_config_names())}")
    by_type = dict(zip(LOCAL_TYPES, (SiftExtractor, HesAffExtractor, LearnedExtractor, LearnedExtractor)))
    kind = config.get("type") if isinstance(config, Mapping) else None
    return by_type.get(kind, SiftExtractor)(config, **overrides)


def descriptor_kind(config: Optional[Mapping[str, Any]]) -> str:
    """The kind of descriptors a store made with ``config`` holds: ``sift`` (uint8), ``rootsift``,
    ``hesaff-rootsift`` (RootSIFT of Hessian-affine regions), ``xfeat``, ``disk``, ``patch-tokens``
    (EfficientNet cells), or ``unknown`` (no configuration)."""
    if not config:
        return "unknown"
    if config.get("features") == "patch-tokens":
        return "patch-tokens"
    kind = config.get("type")
    if kind == "sift":
        return "rootsift" if config.get("root", True) else "sift"
    if kind == "hesaff":
        return "hesaff-rootsift"
    return str(kind) if kind else "unknown"


class MixedKindsError(ValueError):
    """Query and database features of different descriptor kinds (the message names both files)."""


def check_same_kind(query_source: Any, db_source: Any) -> Optional[str]:
    """The shared descriptor kind of two feature sources (stores, or anything with ``config`` and
    ``path``); :class:`MixedKindsError` naming both files and both kinds when they differ. Sources
    without a recorded configuration (in-memory dicts) are not checked (None)."""
    q_conf, db_conf = getattr(query_source, "config", None), getattr(db_source, "config", None)
    if q_conf is None or db_conf is None:
        return None
    q_kind, db_kind = descriptor_kind(q_conf), descriptor_kind(db_conf)
    if q_kind != db_kind:
        q_path = os.fspath(getattr(query_source, "path", None) or getattr(query_source, "root", "<query features>"))
        db_path = os.fspath(getattr(db_source, "path", None) or getattr(db_source, "root", "<database features>"))
        raise MixedKindsError(f"{q_path} holds {q_kind} descriptors but {db_path} holds {db_kind}: descriptors "
                              "of different kinds cannot be matched; extract both with one configuration")
    return q_kind
