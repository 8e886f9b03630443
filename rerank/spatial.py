"""Spatial verification: the local score of a (query, database image) pair is the number of
tentative matches consistent with one geometric transformation.

Steps for one query and its shortlist (keypoints and descriptors loaded once by the caller):

1. match the query against every shortlisted image at once (:func:`retrieval.rerank.matching.match_shortlist`:
   one GEMM per pair, Lowe's ratio test, optionally mutual nearest neighbours);
2. per pair, fit a model mapping query keypoints to database keypoints with OpenCV's robust
   estimators: ``affine`` (``cv2.estimateAffine2D``, 6 dof), ``similarity``
   (``cv2.estimateAffinePartial2D``, 4 dof) or ``homography`` (``cv2.findHomography``, 8 dof), with
   ``method`` one of :data:`METHODS` (plain RANSAC, LMedS, or the USAC family: MAGSAC++, PROSAC ...);
   matches are handed over sorted by ratio (best first), which PROSAC needs and the others ignore.
   The pairs run in a thread pool (OpenCV releases the GIL);
3. score = number of inliers: matches whose reprojection error ``|M(x_q) - x_db|`` is at most
   ``threshold`` pixels of the database image under the returned model (counted here, identically for
   every method, so LMedS and MAGSAC++ scores mean the same thing as RANSAC's). Fewer matches than
   the model needs (3 affine, 2 similarity, 4 homography), or no model found, scores 0.

The model is returned as a 3x3 matrix (affine models with last row 0 0 1).
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Sequence

import cv2
import numpy as np

from retrieval.core.config import Config, ConfigError, Registry
from retrieval.features.local import LocalFeatures

from retrieval.rerank.scorer import LocalScorer
from retrieval.rerank.matching import PairMatches, ShortlistMatches, default_workers, match_shortlist
from retrieval.rerank.matching_bf16 import PRECISIONS, match_shortlist_bf16, use_bf16_matching

__all__ = ["SpatialConfig", "GlueSpatialConfig", "Verification", "SpatialVerifier", "fit_model", "count_inliers",
           "reprojection_errors", "MODELS", "METHODS", "SPATIAL_CONFIGS"]

#: geometric models -> minimal sample size
MODELS: Dict[str, int] = {"affine": 3, "similarity": 2, "homography": 4}

#: robust estimators by name -> OpenCV flag
METHODS: Dict[str, int] = {
    "ransac": cv2.RANSAC,
    "lmeds": cv2.LMEDS,
    "usac": cv2.USAC_DEFAULT,
    "usac-accurate": cv2.USAC_ACCURATE,
    "usac-fast": cv2.USAC_FAST,
    "prosac": cv2.USAC_PROSAC,
    "magsac": cv2.USAC_MAGSAC,
}
# cv2.estimateAffinePartial2D accepts only RANSAC and LMedS
_SIMILARITY_METHODS = ("ransac", "lmeds")


@dataclass(frozen=True)
class SpatialConfig(Config):
    """Everything that decides a spatial-verification score. The defaults are the configuration chosen
    on Oxford5k at 512 px (``benchmarks/spatial_rerank.py``): ratio 0.9 + mutual nearest neighbours,
    affine RANSAC, 16 px.

    ``ratio``: Lowe's ratio threshold (None: every nearest-neighbour match); ``mutual``: keep only
    mutual nearest neighbours; ``model`` in :data:`MODELS`; ``method`` in :data:`METHODS`;
    ``threshold``: inlier reprojection error in pixels of the database image; ``max_iters``,
    ``confidence``, ``refine_iters``: passed to OpenCV; ``n_workers``: threads (None: usable CPUs);
    ``precision``: the matcher's products (:data:`retrieval.rerank.matching_bf16.PRECISIONS`: ``auto``
    = a bfloat16 pre-selection with an exact check where the CPU has native bfloat16, the same matches
    as ``float32``, the one float32 GEMM per pair of the earlier versions).
    """

    ratio: Optional[float] = 0.9
    mutual: bool = True
    model: str = "affine"
    method: str = "ransac"
    threshold: float = 16.0
    max_iters: int = 2000
    confidence: float = 0.999
    refine_iters: int = 10
    n_workers: Optional[int] = None
    precision: str = "auto"

    def check(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; known: {list(PRECISIONS)}")
        if self.model not in MODELS:
            raise ConfigError(f"unknown model {self.model!r}; known: {sorted(MODELS)}")
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; known: {sorted(METHODS)}")
        if self.model == "similarity" and self.method not in _SIMILARITY_METHODS:
            raise ConfigError(f"the similarity model (cv2.estimateAffinePartial2D) supports only "
                             f"{_SIMILARITY_METHODS}, not {self.method!r}")
        if not self.threshold > 0:
            raise ConfigError(f"threshold must be > 0 pixels, got {self.threshold}")
        if self.ratio is not None and not 0 < self.ratio <= 1:
            raise ConfigError(f"ratio must be in (0, 1] or None, got {self.ratio}")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.max_iters < 1:
            raise ConfigError("max_iters must be >= 1")


@dataclass(frozen=True)
class GlueSpatialConfig(SpatialConfig):
    """Spatial verification whose tentative matches come from a learned matcher instead of nearest
    neighbours (:mod:`retrieval.rerank.glue`): LightGlue for DISK, LighterGlue for XFeat (``features``; the
    pretrained weights exist for these two only). A match is kept when its matchability score exceeds
    ``filter_threshold``; ``ratio`` and ``mutual`` do not apply (LightGlue's assignment is mutual)."""

    features: Literal["disk", "xfeat"] = "disk"
    filter_threshold: float = 0.1
    ratio: Optional[float] = None
    mutual: bool = False

    def check(self) -> None:
        super().check()
        if not 0.0 <= self.filter_threshold < 1.0:
            raise ConfigError(f"filter_threshold must be in [0, 1), got {self.filter_threshold}")


#: named configurations, compared on Oxford5k by benchmarks/spatial_rerank.py (thresholds in pixels of
#: 512 px images); "affine-ransac-mutual" is the default SpatialConfig()
SPATIAL_CONFIGS: Registry[SpatialConfig] = Registry("spatial configuration", SpatialConfig)
# the straightforward version: Lowe's ratio 0.8, affine RANSAC, 8 px
SPATIAL_CONFIGS.register("affine-ransac-r0.8", SpatialConfig(ratio=0.8, mutual=False, model="affine",
                                                             method="ransac", threshold=8.0))
# mutual nearest neighbours let a looser ratio through without one-to-many matches, and a wider
# inlier threshold tolerates the non-planar facades that an affine model only approximates
SPATIAL_CONFIGS.register("affine-ransac-mutual", SpatialConfig())
SPATIAL_CONFIGS.register("affine-magsac-mutual", SpatialConfig(method="magsac"))
SPATIAL_CONFIGS.register("similarity-ransac-mutual", SpatialConfig(model="similarity"))
SPATIAL_CONFIGS.register("homography-magsac-mutual", SpatialConfig(model="homography", method="magsac"))
# learned descriptors (XFeat, DISK): mutual nearest neighbours without a ratio test. On Oxford the
# ratio test at 0.9 removed most true XFeat matches of a positive pair (5 of 6 positives of a query
# with 0 inliers, 21-72 without it; negatives 11-22)
SPATIAL_CONFIGS.register("affine-ransac-mnn", SpatialConfig(ratio=None))
# learned matchers, then the same affine RANSAC (features: disk-* / xfeat-* local configurations)
SPATIAL_CONFIGS.register("lightglue-disk", GlueSpatialConfig(features="disk"))
SPATIAL_CONFIGS.register("lighterglue-xfeat", GlueSpatialConfig(features="xfeat"))


@dataclass
class Verification:
    """Result of one pair: ``inliers`` (the score), ``model`` (3x3, query -> database pixels, or None),
    ``inlier_mask`` over ``matches`` (the tentative matches that entered the fit)."""

    inliers: int
    model: Optional[np.ndarray]
    matches: PairMatches
    inlier_mask: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    @property
    def n_matches(self) -> int:
        return len(self.matches)


def reprojection_errors(model: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``|M(src) - dst|`` per point for a 3x3 (affine or projective) ``model``; points mapped to
    infinity get an infinite error."""
    src = np.asarray(src, np.float64)
    h = src @ model[:, :2].T + model[:, 2]
    w = h[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        proj = h[:, :2] / w[:, None]
    err = np.linalg.norm(proj - np.asarray(dst, np.float64), axis=1)
    return np.where(np.isfinite(err) & (np.abs(w) > 1e-12), err, np.inf)


def count_inliers(model: Optional[np.ndarray], src: np.ndarray, dst: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean mask of the points within ``threshold`` pixels after mapping by ``model``."""
    if model is None or len(src) == 0:
        return np.zeros(len(src), bool)
    return reprojection_errors(model, src, dst) <= threshold


def fit_model(src: np.ndarray, dst: np.ndarray, config: SpatialConfig) -> Optional[np.ndarray]:
    """Robust fit of ``config.model`` mapping ``src`` (n, 2) to ``dst`` (n, 2); a 3x3 matrix, or None
    when there are too few points or OpenCV finds no model."""
    if len(src) < MODELS[config.model]:
        return None
    src = np.ascontiguousarray(src, np.float32).reshape(-1, 1, 2)
    dst = np.ascontiguousarray(dst, np.float32).reshape(-1, 1, 2)
    flag = METHODS[config.method]
    try:
        if config.model == "homography":
            M, _ = cv2.findHomography(src, dst, flag, config.threshold, maxIters=config.max_iters,
                                      confidence=config.confidence)
        else:
            fn = cv2.estimateAffine2D if config.model == "affine" else cv2.estimateAffinePartial2D
            M, _ = fn(src, dst, method=flag, ransacReprojThreshold=config.threshold,
                      maxIters=config.max_iters, confidence=config.confidence,
                      refineIters=config.refine_iters)
    except cv2.error:
        # degenerate samples (all points collinear or coincident) make some estimators throw
        return None
    if M is None or not np.all(np.isfinite(M)):
        return None
    if M.shape == (2, 3):
        M = np.vstack([M, [0.0, 0.0, 1.0]])
    return M.astype(np.float64)


def _verify_pair(q_xy: np.ndarray, db_xy: np.ndarray, matches: PairMatches, config: SpatialConfig) -> Verification:
    if len(matches) < MODELS[config.model]:
        return Verification(0, None, matches, np.zeros(len(matches), bool))
    # best matches first: PROSAC samples them first, the other estimators are order-free
    order = np.argsort(matches.ratio, kind="stable")
    matches = PairMatches(matches.query_idx[order], matches.db_idx[order], matches.distance[order],
                          matches.ratio[order], matches.n_tentative)
    src = q_xy[matches.query_idx]
    dst = db_xy[matches.db_idx]
    model = fit_model(src, dst, config)
    mask = count_inliers(model, src, dst, config.threshold)
    return Verification(int(mask.sum()), model, matches, mask)


class SpatialVerifier(LocalScorer):
    """Spatial verification re-ranker (see the module docstring).

    >>> verifier = SpatialVerifier(SpatialConfig(model="affine", method="magsac", threshold=8))
    >>> inliers = verifier.score(query_feats, shortlist_feats)        # (k,) float64
    >>> results = verifier.verify(query_feats, shortlist_feats)       # models, masks, matches

    After each call ``last_timings`` holds the wall seconds of ``matching`` and ``ransac``.
    """

    name = "spatial"
    score_kind = "count"

    def __init__(self, config: Optional[SpatialConfig] = None, **overrides):
        if isinstance(config, str):
            config = SPATIAL_CONFIGS.get(config)
        config = config or SpatialConfig()
        self.config = config.override(overrides) if overrides else config
        self.last_timings: Dict[str, float] = {}

    def check_kind(self, kind: str, where=None) -> None:
        """Refuse descriptors of a ``kind`` this configuration cannot match (a learned matcher has
        weights for one kind only)."""
        c = self.config
        if isinstance(c, GlueSpatialConfig) and kind != c.features:
            from retrieval.features.local_extractors import MixedKindsError

            raise MixedKindsError(f"{where or 'the features'}: {kind} descriptors, but this spatial configuration "
                                  f"matches {c.features} descriptors with a learned matcher; extract "
                                  f"{c.features}-* features or pick a nearest-neighbour configuration")

    def match(self, query: LocalFeatures, shortlist: Sequence[LocalFeatures]) -> ShortlistMatches:
        c = self.config
        if isinstance(c, GlueSpatialConfig):
            from retrieval.rerank.glue import glue_shortlist

            return glue_shortlist(query, shortlist, c.features, c.filter_threshold, c.n_workers)
        bf16 = use_bf16_matching(c.precision, c.ratio, query.descriptors.shape[1])
        match = match_shortlist_bf16 if bf16 else match_shortlist
        return match(query.descriptors, [f.descriptors for f in shortlist], ratio=c.ratio, mutual=c.mutual,
                     n_workers=c.n_workers)

    def fit(self, query: LocalFeatures, shortlist: Sequence[LocalFeatures],
            matches: ShortlistMatches) -> List[Verification]:
        """Step 2-3 on already computed matches (one per shortlisted image)."""
        if len(matches) != len(shortlist):
            raise ValueError(f"{len(matches)} match sets for {len(shortlist)} shortlisted images")
        q_xy = query.xy
        c = self.config
        workers = default_workers() if c.n_workers is None else max(1, int(c.n_workers))

        def one(j):
            return _verify_pair(q_xy, shortlist[j].xy, matches[j], c)

        busy = [j for j in range(len(shortlist)) if len(matches[j]) >= MODELS[c.model]]
        results: List[Optional[Verification]] = [None] * len(shortlist)
        if workers > 1 and len(busy) > 1:
            with ThreadPoolExecutor(min(workers, len(busy))) as pool:
                for j, res in zip(busy, pool.map(one, busy)):
                    results[j] = res
        else:
            for j in busy:
                results[j] = one(j)
        for j in range(len(shortlist)):
            if results[j] is None:
                results[j] = Verification(0, None, matches[j], np.zeros(len(matches[j]), bool))
        return results  # type: ignore[return-value]

    def verify(self, query: LocalFeatures, shortlist: Sequence[LocalFeatures]) -> List[Verification]:
        """Match and fit every pair; one :class:`Verification` per shortlisted image."""
        t0 = time.perf_counter()
        matches = self.match(query, shortlist)
        t1 = time.perf_counter()
        results = self.fit(query, shortlist, matches)
        t2 = time.perf_counter()
        self.last_timings = {"matching": t1 - t0, "ransac": t2 - t1}
        return results

    def score(self, query: LocalFeatures, shortlist: Sequence[LocalFeatures]) -> np.ndarray:
        """(k,) inlier counts as float64."""
        return np.array([v.inliers for v in self.verify(query, shortlist)], dtype=np.float64)
