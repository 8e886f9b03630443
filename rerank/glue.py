"""Learned matching of one query against its shortlist: LightGlue (Lindenberger et al., ICCV 2023)
for DISK features, LighterGlue (its 6-layer, 96-d variant trained with XFeat) for XFeat features.

kornia's :class:`~kornia.feature.LightGlue` is built from its own architecture preset for the feature
kind (``LightGlue.features``) without downloading anything, and loaded with the weights shipped in
the installed packages (:mod:`retrieval.features.weights`). The files name their layers as the original
release did (``self_attn.i`` / ``cross_attn.i``; XFeat's file nests the matcher under ``matcher.``
next to the extractor), so they are renamed to kornia's module names; every parameter must be
found, else the load is refused.

The matches of each pair become a :class:`~retrieval.rerank.matching.PairMatches` with ``distance = ratio = 1 -
score`` (so the most confident matches come first, as PROSAC wants), and spatial verification fits
its model on them exactly as on nearest-neighbour matches (:class:`retrieval.rerank.spatial.SpatialVerifier`
with a :class:`~retrieval.rerank.spatial.GlueSpatialConfig`). Each pair is its own forward pass (LightGlue
prunes points adaptively, so a batch would not share work); pairs run in a small thread pool.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Optional, Sequence

import numpy as np

from retrieval.features.local import LocalFeatures

from retrieval.rerank.matching import PairMatches, ShortlistMatches, _torch_threads, default_workers

__all__ = ["glue_matcher", "glue_pair", "glue_shortlist"]

#: feature kind -> (weights name in features.weights, kornia's preset name)
_GLUES = {"disk": ("lightglue-disk", "disk"), "xfeat": ("lighterglue-xfeat", "xfeat")}
_LOCK = threading.Lock()


def _renamed(state: dict, n_layers: int) -> dict:
    out = {}
    for key, value in state.items():
        if key.startswith("extractor."):  # the XFeat file also holds the extractor: not the matcher's
            continue
        key = key[len("matcher."):] if key.startswith("matcher.") else key
        for i in range(n_layers):
            key = key.replace(f"self_attn.{i}.", f"transformers.{i}.self_attn.")
            key = key.replace(f"cross_attn.{i}.", f"transformers.{i}.cross_attn.")
        out[key] = value
    return out


@lru_cache(maxsize=None)
def _build(kind: str):
    import kornia.feature as KF

    from retrieval.features.weights import load_state_dict, weights_path

    weights, preset_name = _GLUES[kind]
    preset = {k: v for k, v in KF.LightGlue.features[preset_name].items() if k != "weights"}
    matcher = KF.LightGlue(None, **preset)  # features=None: builds the architecture, downloads nothing
    result = matcher.load_state_dict(_renamed(load_state_dict(weights), matcher.conf.n_layers), strict=False)
    params = dict(matcher.named_parameters())
    missing = [k for k in result.missing_keys if k in params]
    # (the released files also hold derived buffers kornia recomputes, e.g. log_assignment.i.r: ignored)
    if missing:
        raise ValueError(f"{weights_path(weights)}: not {weights} weights (parameters {missing[:3]} missing)")
    return matcher.eval()


def glue_matcher(kind: str):
    """The pretrained matcher for ``kind`` ('disk' or 'xfeat'), built once per process."""
    if kind not in _GLUES:
        raise ValueError(f"no LightGlue weights for {kind!r} features; known: {sorted(_GLUES)}")
    with _LOCK:
        return _build(kind)


def _side(feats: LocalFeatures):
    import torch

    h, w = feats.image_size
    return {"keypoints": torch.from_numpy(np.ascontiguousarray(feats.xy, np.float32))[None],
            "descriptors": torch.from_numpy(np.ascontiguousarray(feats.descriptors, np.float32))[None],
            "image_size": torch.tensor([[float(w), float(h)]])}  # LightGlue wants (width, height)


def glue_pair(query: LocalFeatures, db: LocalFeatures, kind: str, filter_threshold: float = 0.1) -> PairMatches:
    """The matches of one pair whose matchability score exceeds ``filter_threshold``."""
    import torch

    n = len(query)
    if n == 0 or len(db) == 0:
        return PairMatches.empty(n if len(db) else 0)
    if query.dim != db.dim:
        raise ValueError(f"{query.dim}-d query descriptors against {db.dim}-d database descriptors")
    matcher = glue_matcher(kind)
    with torch.inference_mode():
        out = matcher({"image0": _side(query), "image1": _side(db)})
    m0 = out["matches0"][0].numpy()
    s0 = out["matching_scores0"][0].float().numpy()
    sel = np.flatnonzero((m0 >= 0) & (s0 > filter_threshold))
    cost = (1.0 - s0[sel]).astype(np.float32)
    return PairMatches(sel.astype(np.int64), m0[sel].astype(np.int64), cost, cost.copy(), n_tentative=n)


def glue_shortlist(query: LocalFeatures, shortlist: Sequence[LocalFeatures], kind: str,
                   filter_threshold: float = 0.1, n_workers: Optional[int] = None) -> ShortlistMatches:
    """:func:`glue_pair` for every shortlisted image, in shortlist order: pairs in ``n_workers``
    threads (default: the usable CPUs), each with single-threaded torch, as nearest-neighbour
    matching does (on 2 loaded cores one pair on 2 torch threads took 5x as long as on one)."""
    glue_matcher(kind)  # built once, before the threads need it
    workers = min(default_workers() if n_workers is None else max(1, int(n_workers)), max(1, len(shortlist)))

    def one(db):
        return glue_pair(query, db, kind, filter_threshold)

    with _torch_threads(1):
        if workers == 1:
            return ShortlistMatches([one(db) for db in shortlist])
        with ThreadPoolExecutor(workers) as pool:
            return ShortlistMatches(list(pool.map(one, shortlist)))
