"""ASMK re-ranking: the aggregated selective match kernel similarity (:mod:`retrieval.features.encoders.asmk`)
of the query and each shortlisted image, a similarity in [0, 1] fused like VLAD's (``similarity``
fusion candidates). Aggregations are memoised per image (a database image recurs in many
shortlists), up to ``cache_size`` images."""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import numpy as np

from retrieval.features.encoders.asmk import AsmkEncoder
from retrieval.features.local import LocalFeatures

from retrieval.rerank.scorer import LocalScorer

__all__ = ["AsmkScorer"]


class AsmkScorer(LocalScorer):
    name = "asmk"

    def __init__(self, encoder: AsmkEncoder, cache_size: int = 4096):
        if encoder.codebook is None:
            raise ValueError("the ASMK scorer needs a fitted encoder")
        self.encoder = encoder
        self.config = {k: v for k, v in encoder.config.items() if k != "codebook"}
        self.cache_size = int(cache_size)
        self._memo: "OrderedDict[int, object]" = OrderedDict()

    def __getstate__(self):  # workers rebuild the memo
        state = dict(self.__dict__)
        state["_memo"] = OrderedDict()
        return state

    def _aggregated(self, feats: LocalFeatures):
        key = id(feats)
        hit = self._memo.get(key)
        if hit is not None and hit[0] is feats:
            self._memo.move_to_end(key)
            return hit[1]
        agg = self.encoder.aggregate(feats)
        self._memo[key] = (feats, agg)
        while len(self._memo) > self.cache_size:
            self._memo.popitem(last=False)
        return agg

    def score(self, query: LocalFeatures, shortlist: Sequence[LocalFeatures]) -> np.ndarray:
        q = self.encoder.aggregate(query, query=True)
        return np.array([self.encoder.similarity(q, self._aggregated(f)) for f in shortlist], dtype=np.float64)
