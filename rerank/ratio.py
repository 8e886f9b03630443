"""The ratio-test score of experiment E5: how distinctive the query's matches into one image are.

For a query with n descriptors and a shortlisted image with at least two descriptors, every query
descriptor has exactly one tentative match (its nearest neighbour in that image), so there are n
tentative matches. The score is

    score = #{tentative matches with d1 < ratio * d2} / n

(d1, d2: Euclidean distances to the nearest and second-nearest descriptor of that image; with
``mutual=True`` a passing match must also be a mutual nearest neighbour). It lies in [0, 1]. An empty
query, or an image with fewer than two descriptors, scores 0. Matching is the batched matcher of
:mod:`retrieval.rerank.matching` (one GEMM per pair, same neighbours as ``cv2.BFMatcher``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from retrieval.features.local import LocalFeatures

from retrieval.rerank.scorer import LocalScorer
from retrieval.rerank.matching import ShortlistMatches, match_shortlist
from retrieval.rerank.matching_bf16 import match_shortlist_bf16, use_bf16_matching

__all__ = ["RatioTestScorer", "ratio_scores"]


def ratio_scores(matches: ShortlistMatches) -> np.ndarray:
    """(k,) passing / tentative matches per pair (0 where there is no tentative match)."""
    passed = matches.n_matches.astype(np.float64)
    tentative = matches.n_tentative.astype(np.float64)
    return np.divide(passed, tentative, out=np.zeros_like(passed), where=tentative > 0)


class RatioTestScorer(LocalScorer):
    """E5: fraction of the query's tentative matches that pass Lowe's ratio test (module docstring).
    ``precision``: the matcher's products (``auto``: the bfloat16 pre-selection with an exact check
    of :mod:`retrieval.rerank.matching_bf16` where the CPU has native bfloat16; ``float32``)."""

    name = "ratio"
    score_kind = "count"

    def __init__(self, ratio: float = 0.8, mutual: bool = False, n_workers: Optional[int] = None,
                 precision: str = "auto"):
        if not 0 < ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        use_bf16_matching(precision)  # refuses an unknown precision
        self.precision = precision
        self.ratio = float(ratio)
        self.mutual = bool(mutual)
        self.n_workers = n_workers

    @property
    def config(self) -> dict:
        return {"scorer": self.name, "ratio": self.ratio, "mutual": self.mutual, "precision": self.precision}

    def score(self, query: LocalFeatures, shortlist: Sequence[LocalFeatures]) -> np.ndarray:
        bf16 = use_bf16_matching(self.precision, self.ratio, query.descriptors.shape[1])
        match = match_shortlist_bf16 if bf16 else match_shortlist
        matches = match(query.descriptors, [f.descriptors for f in shortlist], ratio=self.ratio,
                        mutual=self.mutual, n_workers=self.n_workers)
        return ratio_scores(matches)
