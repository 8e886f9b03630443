"""Combining global and local evidence over a cached :class:`~rerank.shortlist.Shortlist`.

Linear fusion, per query over its shortlist of k images::

    score_j = v * g_j + (1 - v) * N(l_j)

g: the global score (cosine similarity, or min-max normalised with ``global_norm="minmax"``),
l: a local score (inliers, ratio-test score, VLAD similarity ...), N one of :data:`NORMALISATIONS`:

* ``"none"``:     ``N(l) = l``
* ``"minmax"``:   ``(l - min l) / (max l - min l)`` over the query's shortlist (0 when all equal)
* ``"saturate"``: ``min(max(l, 0), T) / T`` (inlier counts: beyond T inliers a match is a match)
* ``"exp"``:      ``1 - exp(-max(l, 0) / T)`` (a smooth saturation)
* ``"zscore"``:   ``(l - mean l) / std l`` over the shortlist (0 when all equal)

The shortlist is re-sorted by descending score; ties keep the global order (stable sort over columns
that are in global order), so ``v = 1`` returns the global ranking and ``v = 0`` the local order.

DELG rule (Cao et al., ECCV 2020): images with at least ``threshold`` inliers go first, by descending
inlier count (ties: global order), the others follow in global order.

Either way the database images beyond the shortlist keep their global order after it. Nothing here
extracts or matches: a sweep over v only re-sorts the cached scores.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional

import numpy as np

from .shortlist import Shortlist

__all__ = ["NORMALISATIONS", "normalise_scores", "fuse", "fusion_order", "delg_order", "rerank",
           "delg_rerank", "sweep"]

NORMALISATIONS = ("none", "minmax", "saturate", "exp", "zscore")


def normalise_scores(scores, method: str = "minmax", T: Optional[float] = None) -> np.ndarray:
    """Normalise local scores per row (one row = one query's shortlist; a 1-D array is one row)."""
    s = np.asarray(scores, dtype=np.float64)
    one_row = s.ndim == 1
    s = np.atleast_2d(s)
    if method not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {method!r}; known: {NORMALISATIONS}")
    if method in ("saturate", "exp") and (T is None or not T > 0):
        raise ValueError(f"normalisation {method!r} needs a scale T > 0, got {T!r}")
    if s.shape[-1] == 0 or method == "none":
        out = s.copy()
    elif method == "minmax":
        lo = s.min(axis=1, keepdims=True)
        span = s.max(axis=1, keepdims=True) - lo
        out = np.divide(s - lo, span, out=np.zeros_like(s), where=span > 0)
    elif method == "saturate":
        out = np.minimum(np.maximum(s, 0.0), T) / T
    elif method == "exp":
        out = 1.0 - np.exp(-np.maximum(s, 0.0) / T)
    else:  # zscore
        mean = s.mean(axis=1, keepdims=True)
        std = s.std(axis=1, keepdims=True)
        out = np.divide(s - mean, std, out=np.zeros_like(s), where=std > 0)
    return out[0] if one_row else out


def fuse(global_scores, local_scores, v: float, norm: str = "minmax", T: Optional[float] = None,
         global_norm: str = "none") -> np.ndarray:
    """``v * G + (1 - v) * N(L)`` (module docstring), same shape as the inputs."""
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"fusion weight v must be in [0, 1], got {v}")
    g = np.asarray(global_scores, dtype=np.float64)
    l = np.asarray(local_scores, dtype=np.float64)
    if g.shape != l.shape:
        raise ValueError(f"global scores {g.shape} and local scores {l.shape} differ in shape")
    if np.isnan(l).any():
        raise ValueError("local scores contain NaN (not computed yet)")
    if global_norm not in ("none", "minmax"):
        raise ValueError(f"global_norm must be 'none' or 'minmax', got {global_norm!r}")
    g = normalise_scores(g, global_norm)
    return v * g + (1.0 - v) * normalise_scores(l, norm, T)


def fusion_order(fused) -> np.ndarray:
    """(Q, k) column order by descending fused score; ties keep the given (global) order."""
    f = np.atleast_2d(np.asarray(fused, dtype=np.float64))
    return np.argsort(-f, axis=1, kind="stable")


def delg_order(local_scores, threshold: float) -> np.ndarray:
    """(Q, k) column order of the DELG rule: ``local >= threshold`` first by descending local score
    (ties: global order), then the rest in global order."""
    l = np.atleast_2d(np.asarray(local_scores, dtype=np.float64))
    key = np.where(l >= threshold, l, -np.inf)
    return np.argsort(-key, axis=1, kind="stable")


def rerank(shortlist: Shortlist, v: float, local: str = "inliers", norm: str = "minmax",
           T: Optional[float] = None, global_norm: str = "none") -> Dict[str, List[str]]:
    """Fused re-ranking of every query: ``{query_id: [db ids best first]}`` (shortlist re-sorted,
    then the tail in global order)."""
    fused = fuse(shortlist.global_scores, shortlist.local_scores(local), v, norm, T, global_norm)
    return shortlist.predictions(fusion_order(fused))


def delg_rerank(shortlist: Shortlist, threshold: float, local: str = "inliers") -> Dict[str, List[str]]:
    """The DELG rule applied to every query (see :func:`delg_order`)."""
    return shortlist.predictions(delg_order(shortlist.local_scores(local), threshold))


def sweep(shortlist: Shortlist, vs: Iterable[float], local: str = "inliers", norm: str = "minmax",
          T: Optional[float] = None, global_norm: str = "none") -> Dict[float, Dict[str, List[str]]]:
    """``{v: predictions}`` for every v, from the cached scores only."""
    scores = shortlist.local_scores(local)
    out = {}
    for v in vs:
        fused = fuse(shortlist.global_scores, scores, float(v), norm, T, global_norm)
        out[float(v)] = shortlist.predictions(fusion_order(fused))
    return out
