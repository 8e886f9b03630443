"""VLAD similarity re-ranking (experiment E6): the local score of a pair is the inner product of the
two images' VLAD vectors,

    score(q, d) = <VLAD(q), VLAD(d)>

computed from the same local features the spatial verifier uses. With the L2-normalised VLADs of
:class:`retrieval.features.encoders.vlad.VladEncoder` this is the cosine similarity, in [-1, 1]; an image without
descriptors encodes to the zero vector and scores 0.

Any fitted encoder with ``encode(LocalFeatures) -> (dim,)`` works; one with ``encode_many`` (every
:class:`retrieval.features.encoders.encoder.LocalEncoder`) encodes the whole shortlist as one batch.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from retrieval.core.vectors import l2_normalize_rows

from retrieval.features.local import LocalFeatures

from retrieval.rerank.scorer import LocalScorer

__all__ = ["VladSimilarityScorer"]


class VladSimilarityScorer(LocalScorer):
    """E6: ``score = <encode(query), encode(db)>`` with a fitted VLAD (or any local) encoder."""

    name = "vlad"

    def __init__(self, encoder, normalize: bool = True):
        if not callable(getattr(encoder, "encode", None)):
            raise TypeError(f"{type(encoder).__name__} has no encode(LocalFeatures) method")
        if getattr(encoder, "is_fitted", True) is False:
            raise ValueError(f"{type(encoder).__name__} is not fitted: call fit() or load() first")
        self.encoder = encoder
        # re-normalise defensively: an encoder without final L2 would make the score scale-dependent
        self.normalize = bool(normalize)

    @property
    def config(self) -> dict:
        return {"scorer": self.name, "encoder": dict(getattr(self.encoder, "config", {}) or {})}

    def encode(self, features: Sequence[LocalFeatures]) -> np.ndarray:
        """(n, dim) float32 encodings; empty images give zero rows without calling the encoder."""
        features = list(features)
        nonempty = [i for i, f in enumerate(features) if len(f)]
        dim = None
        if nonempty:
            todo = [features[i] for i in nonempty]
            if hasattr(self.encoder, "encode_many"):
                enc = np.asarray(self.encoder.encode_many(todo), dtype=np.float32)
            else:
                enc = np.stack([np.asarray(self.encoder.encode(f), dtype=np.float32).reshape(-1) for f in todo])
            dim = enc.shape[1]
        else:
            dim = int(getattr(self.encoder, "dim", 1))
        out = np.zeros((len(features), dim), dtype=np.float32)
        if nonempty:
            out[nonempty] = enc
        if self.normalize:
            out = l2_normalize_rows(out, eps=0.0)
        return out

    def score(self, query: LocalFeatures, shortlist: Sequence[LocalFeatures]) -> np.ndarray:
        if len(shortlist) == 0:
            return np.zeros(0, np.float64)
        enc = self.encode([query, *shortlist])
        return (enc[1:] @ enc[0]).astype(np.float64)
