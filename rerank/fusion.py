"""Combining global and local evidence over a cached :class:`~retrieval.rerank.shortlist.Shortlist`.

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

One fusion API: a :class:`FusionConfig` names the method (``none``: the global ranking; ``linear``:
the fusion above; ``delg``: the DELG rule) and its parameters, :func:`fused_order` applies it, and
:func:`fusion_candidates` lists the candidates a benchmark cross-fits (:mod:`retrieval.core.crossfit`)
with ``none`` first, so that on a tie the global ranking wins and a re-ranker has to be better on
held-out queries to be used at all.

Absolute scales. Min-max over a shortlist stretches weak evidence (a shortlist whose best match has
12 inliers) to full weight, and a query whose shortlist shares no local features with it gets its
strong global matches overturned by noise. Counts (inliers, ratio-test matches) are therefore fused
saturating at a count ``T`` (``N(l) = min(l, T) / T``): 12 inliers weigh 12 / T whatever the rest of
the shortlist holds, and beyond T a match is a match. The optional ``gate`` keeps a query's global
order unless its best local score reaches it (re-rank only on real evidence, the DELG idea applied
per query). Similarities on the same scale as the global score (VLAD, patch tokens) are fused as they
are (``norm="none"``).

The one fusion configuration. Every re-ranking step (the Python API, ``retrieval rerank``, ``retrieval
run``, the E1-E8 ladder and ``retrieval serve``) owns one :class:`FusionSettings`, with one default:
``method = "auto"`` chooses method, T and v on held-out queries (:data:`CROSS_FIT`, among
:meth:`FusionSettings.candidates`, "no re-ranking" first) wherever ground truth exists, and applies the
documented :data:`DEFAULT_FUSION` of the scorer's kind where it does not (a ranking re-ranked without
ground truth, a page serving new queries). :meth:`FusionSettings.resolve` turns a fixed setting into the
:class:`FusionConfig` that is applied and recorded. Min-max is used only when asked for by name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np

from retrieval.core.config import Config, ConfigError

from retrieval.rerank.shortlist import Shortlist

__all__ = ["NORMALISATIONS", "FUSION_METHODS", "SCORE_KINDS", "CROSS_FIT", "FusionConfig", "FusionSettings",
           "NO_RERANKING", "DEFAULT_FUSION", "normalise_scores", "fuse", "fusion_order", "delg_order", "fused_order",
           "fusion_candidates", "rerank"]

NORMALISATIONS = ("none", "minmax", "saturate", "exp", "zscore")
FUSION_METHODS = ("none", "linear", "delg")
#: what a local score measures: a count of matches (inliers, ratio-test matches: fused saturating at T)
#: or a similarity on the global score's scale (VLAD, patch tokens: fused as it is)
SCORE_KINDS = ("count", "similarity")
CROSS_FIT = "cross-fit"


@dataclass(frozen=True)
class FusionConfig(Config):
    """How a shortlist's global and local scores are combined (module docstring).

    ``method``: ``none`` (global order), ``linear`` (``v * g + (1 - v) * N(l)``, N = ``norm`` with scale
    ``T``) or ``delg`` (images with ``local >= threshold`` first); ``gate``: linear fusion only for
    queries whose best local score is at least ``gate`` (None: every query)."""

    method: str = "none"
    v: float = 1.0
    norm: str = "none"
    T: Optional[float] = None
    threshold: Optional[float] = None
    gate: Optional[float] = None

    def check(self) -> None:
        if self.method not in FUSION_METHODS:
            raise ConfigError(f"unknown fusion method {self.method!r}; known: {FUSION_METHODS}")
        if self.norm not in NORMALISATIONS:
            raise ConfigError(f"unknown normalisation {self.norm!r}; known: {NORMALISATIONS}")
        if not 0.0 <= self.v <= 1.0:
            raise ConfigError(f"fusion weight v must be in [0, 1], got {self.v}")
        if self.method == "linear" and self.norm in ("saturate", "exp") and not (self.T or 0) > 0:
            raise ConfigError(f"normalisation {self.norm!r} needs a scale T > 0")
        if self.method == "delg" and self.threshold is None:
            raise ConfigError("the DELG rule needs a threshold")

    @property
    def label(self) -> str:
        """A short readable name, e.g. ``linear saturate T=20 v=0.6``."""
        if self.method == "none":
            return "none (global order)"
        if self.method == "delg":
            return f"delg >= {self.threshold:g}"
        norm = self.norm + (f" T={self.T:g}" if self.T else "")
        gate = f" gate {self.gate:g}" if self.gate is not None else ""
        return f"linear {norm} v={self.v:g}{gate}"

    @classmethod
    def from_label(cls, label: str) -> "FusionConfig":
        """The configuration a :attr:`label` names (results files record chosen fusions by label)."""
        import re

        if label == NO_RERANKING.label:
            return NO_RERANKING
        m = re.fullmatch(r"delg >= ([0-9.e+-]+)", label)
        if m:
            return cls("delg", threshold=float(m.group(1)))
        m = re.fullmatch(r"linear (\w+)(?: T=([0-9.e+-]+))? v=([0-9.e+-]+)(?: gate ([0-9.e+-]+))?", label)
        if not m:
            raise ConfigError(f"{label!r} is not a fusion label (e.g. 'linear saturate T=20 v=0.5')")
        norm, T, v, gate = m.groups()
        return cls("linear", v=float(v), norm=norm, T=None if T is None else float(T),
                   gate=None if gate is None else float(gate))


#: the global ranking: the first candidate of every choice, so ties keep it
NO_RERANKING = FusionConfig()

#: The fusion applied where no ground truth can choose one (``method = "default"``, and ``"auto"``
#: without ground truth), per kind of local score. Measured on the shipped sets (COIL-100 objects and
#: the Oxford subset under its official, landmark-level and revisited Medium / Hard relevance; every
#: re-ranker of the ladder) with ``retrieval bench fusion-default results/e1_e7``: the linear candidate
#: with the best worst-case gain over the base ranking (README "Fusion without ground truth" gives the
#: table). Counts: worst -0.04, mean +3.42 mAP points; similarities: worst +0.02, mean +1.20.
DEFAULT_FUSION: Dict[str, FusionConfig] = {
    "count": FusionConfig("linear", v=0.9, norm="saturate", T=40.0),
    "similarity": FusionConfig("linear", v=0.9, norm="none"),
}

FusionMethod = Literal["auto", "cross-fit", "default", "none", "linear", "delg"]


@dataclass(frozen=True)
class FusionSettings(Config):
    """The one fusion configuration of a re-ranking step (module docstring).

    ``method``: ``auto`` (the default: ``cross-fit`` where the step has ground truth, else ``default``),
    ``cross-fit`` (method, T and v chosen per fold of queries on the other folds among
    :meth:`candidates`; a candidate must beat "no re-ranking" by more than ``min_gain`` mean AP on the
    choosing queries), ``default`` (:data:`DEFAULT_FUSION` of the scorer's kind), or a fixed ``none`` /
    ``linear`` / ``delg`` with ``v``, ``norm``, ``T``, ``threshold``, ``gate`` (unset: the default's
    values for the scorer's kind). ``vs`` / ``saturations`` / ``delg_thresholds`` / ``gates``: the grid of
    candidates; ``folds``: query folds (whole query labels when there are enough)."""

    method: FusionMethod = "auto"
    v: Optional[float] = None
    norm: Optional[Literal["none", "minmax", "saturate", "exp", "zscore"]] = None
    T: Optional[float] = None
    threshold: Optional[float] = None
    gate: Optional[float] = None
    vs: Tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(10))
    saturations: Tuple[float, ...] = (5.0, 10.0, 20.0, 40.0)
    delg_thresholds: Tuple[float, ...] = (5.0, 8.0, 12.0, 20.0, 30.0)
    gates: Tuple[Optional[float], ...] = (None,)
    min_gain: float = 0.005
    folds: int = 2

    def check(self) -> None:
        if self.v is not None and not 0.0 <= self.v <= 1.0:
            raise ConfigError(f"fusion weight v must be in [0, 1], got {self.v}")
        if self.T is not None and not self.T > 0:
            raise ConfigError(f"fusion scale T must be > 0, got {self.T}")
        if not self.vs or not all(0.0 <= v <= 1.0 for v in self.vs):
            raise ConfigError(f"vs must be fusion weights in [0, 1], got {list(self.vs)}")
        if not all(t > 0 for t in self.saturations):
            raise ConfigError(f"saturations must be > 0, got {list(self.saturations)}")
        if not 0.0 <= self.min_gain < 1.0:
            raise ConfigError(f"min_gain must be in [0, 1), got {self.min_gain}")
        if self.folds < 2:
            raise ConfigError(f"folds must be >= 2, got {self.folds}")
        if self.method == "delg" and self.threshold is None:
            raise ConfigError("fusion method 'delg' needs a threshold")
        fixed = [k for k in ("v", "norm", "T", "threshold", "gate") if getattr(self, k) is not None]
        if fixed and self.method in ("auto", CROSS_FIT, "default", "none"):
            raise ConfigError(f"fusion {', '.join(fixed)} set, but method is {self.method!r}: set method = "
                              f"'linear' (or 'delg') to fix the fusion, or leave them unset")

    def chooses(self, has_ground_truth: bool) -> bool:
        """Whether the fusion is chosen on held-out queries (else :meth:`resolve` gives it)."""
        if self.method == CROSS_FIT and not has_ground_truth:
            raise ConfigError("fusion method 'cross-fit' needs ground truth (run an experiment on a dataset "
                              "with queries and their positives), or set method = 'default' / 'linear'")
        return self.method == CROSS_FIT or (self.method == "auto" and has_ground_truth)

    def resolve(self, kind: str) -> FusionConfig:
        """The fixed :class:`FusionConfig` of this setting for a local score of ``kind`` (``auto``
        without ground truth = ``default``)."""
        default = _default(kind)
        if self.method in ("auto", "default"):
            return default
        if self.method == CROSS_FIT:
            raise ConfigError("a cross-fitted fusion is chosen on held-out queries, not resolved up front")
        if self.method == "none":
            return NO_RERANKING
        if self.method == "delg":
            return FusionConfig("delg", threshold=self.threshold)
        norm = self.norm or default.norm
        T = self.T if self.T is not None else (default.T if norm in ("saturate", "exp") else None)
        if norm in ("saturate", "exp") and T is None:
            T = DEFAULT_FUSION["count"].T
        return FusionConfig("linear", v=self.v if self.v is not None else default.v, norm=norm, T=T, gate=self.gate)

    def candidates(self, kind: str) -> List[FusionConfig]:
        """The cross-fitted candidates for a local score of ``kind``, :data:`NO_RERANKING` first."""
        return fusion_candidates(kind, vs=self.vs, saturations=self.saturations,
                                 delg_thresholds=self.delg_thresholds, gates=self.gates)


def _default(kind: str) -> FusionConfig:
    if kind not in DEFAULT_FUSION:
        raise ValueError(f"unknown local score kind {kind!r}; expected one of {SCORE_KINDS}")
    return DEFAULT_FUSION[kind]


def normalise_scores(scores, method: str, T: Optional[float] = None) -> np.ndarray:
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


def fuse(global_scores, local_scores, v: float, norm: str = "none", T: Optional[float] = None,
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


def fused_order(global_scores, local_scores, conf: FusionConfig) -> np.ndarray:
    """(Q, k) column order of each query's shortlist under ``conf`` (the one entry point)."""
    g = np.atleast_2d(np.asarray(global_scores, dtype=np.float64))
    if conf.method == "none":
        return np.tile(np.arange(g.shape[1]), (g.shape[0], 1))
    l = np.atleast_2d(np.asarray(local_scores, dtype=np.float64))
    if conf.method == "delg":
        return delg_order(l, float(conf.threshold))
    order = fusion_order(fuse(g, l, conf.v, conf.norm, conf.T))
    if conf.gate is not None:
        weak = l.max(axis=1, initial=-np.inf) < conf.gate
        order[weak] = np.arange(g.shape[1])
    return order


def fusion_candidates(kind: str = "count", vs: Sequence[float] = tuple(round(0.1 * i, 1) for i in range(10)),
                      saturations: Sequence[float] = (5, 10, 20, 40),
                      delg_thresholds: Sequence[float] = (5, 8, 12, 20, 30),
                      gates: Sequence[Optional[float]] = (None,)) -> List[FusionConfig]:
    """The candidates cross-fitted for a local score of ``kind``: ``"count"`` (inliers, matches:
    linear fusion saturating at each T, and the DELG rule at each threshold) or ``"similarity"`` (a
    cosine on the global score's scale: linear fusion as is). :data:`NO_RERANKING` comes first."""
    if kind not in SCORE_KINDS:
        raise ValueError(f"unknown local score kind {kind!r}; expected 'count' or 'similarity'")
    out = [NO_RERANKING]
    vs = [float(v) for v in vs if float(v) < 1.0]
    if kind == "similarity":
        out += [FusionConfig("linear", v=v, norm="none", gate=g) for g in gates for v in vs]
        return out
    out += [FusionConfig("linear", v=v, norm="saturate", T=float(T), gate=g)
            for T in saturations for g in gates for v in vs]
    out += [FusionConfig("delg", threshold=float(th)) for th in delg_thresholds]
    return out


def rerank(shortlist: Shortlist, fusion: FusionConfig, local: str = "inliers") -> Dict[str, List[str]]:
    """Every query's predictions ``{query_id: [db ids best first]}`` under ``fusion``: the shortlist
    re-sorted, then the tail in global order."""
    order = fused_order(shortlist.global_scores, shortlist.local_scores(local), fusion)
    return shortlist.predictions(order)
