"""The re-ranking interface: every re-ranker turns a shortlist into one local score per
(query, shortlisted image) pair; :mod:`retrieval.rerank.fusion` then combines it with the global score."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np

from retrieval.features.local import LocalFeatures


class LocalScorer(ABC):
    """Scores a query against its shortlist with local evidence.

    Implemented by the SIFT ratio-test score (E5), spatial verification, the VLAD similarity (E6) and
    the EfficientNet patch similarity (E7).
    """

    #: short name used in result tables
    name: str = "local"
    #: what the score measures (:data:`retrieval.rerank.fusion.SCORE_KINDS`): ``count`` (matches, fused
    #: saturating at T) or ``similarity`` (on the global score's scale, fused as it is)
    score_kind: str = "similarity"

    @abstractmethod
    def score(self, query: LocalFeatures, shortlist: Sequence[LocalFeatures]) -> np.ndarray:
        """(len(shortlist),) float64 local scores, higher = more similar. An empty query or an
        empty shortlisted image scores 0, never an error."""
