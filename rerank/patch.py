"""Patch re-ranking (experiment E7): local evidence from deep patch tokens.

Tokens are L2-normalised feature-map cells (``retrieval.features.efficientnet.EfficientNetExtractor.
extract_patches``: 7 x 7 at a 224 input), so the similarity of query patch ``q`` and database patch
``p`` is the cosine ``s_qp = <t_q, t_p>``. For a query with patches Q and a shortlisted image with
patches P:

* ``"mean_max"`` (default): ``score = (1/|Q|) sum_{q in Q} max_{p in P} s_qp``, the mean over query
  patches of their best match (Chamfer similarity);
* ``"mutual_sum"``: ``score = (1/|Q|) sum_{(q, p) mutual NN} s_qp``: only pairs that are each
  other's nearest neighbour (q's best in P is p, and p's best in Q is q) count, each with its
  similarity; the rest contribute 0. Dividing by |Q| (not by the number of pairs) keeps one lucky
  pair from scoring as high as a full correspondence;
* ``"mutual_count"``: the number of mutual-NN pairs (an integer, like an inlier count; normalise it
  in fusion with ``"minmax"`` or ``"saturate"``).

``threshold`` (default none) ignores similarities below it (they add 0 and are no match). An empty
query or image scores 0. The whole shortlist is scored with one matrix product: the shortlisted
tokens are concatenated (N_total, D) and ``S = Q P_all^T`` is split back per image with
``np.maximum.reduceat``.

The scores plug into :mod:`retrieval.rerank.fusion` as a named local score of a :class:`retrieval.rerank.shortlist.
Shortlist` (``shortlist.score_with(PatchScorer(), query_store, db_store)``), fused with the global
score by ``v``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from retrieval.features.local import LocalFeatures

from retrieval.rerank.scorer import LocalScorer

__all__ = ["PATCH_METHODS", "PatchScorer"]

PATCH_METHODS = ("mean_max", "mutual_sum", "mutual_count")


class PatchScorer(LocalScorer):
    """``PatchScorer(method="mean_max", threshold=None)``; see the module docstring."""

    def __init__(self, method: str = "mean_max", threshold: Optional[float] = None):
        if method not in PATCH_METHODS:
            raise ValueError(f"unknown patch score {method!r}; choose one of {PATCH_METHODS}")
        self.method = method
        self.threshold = None if threshold is None else float(threshold)
        self.name = f"patch-{method}" + ("" if threshold is None else f"-t{self.threshold:g}")

    @property
    def config(self) -> dict:
        return {"scorer": "patch", "method": self.method, "threshold": self.threshold}

    def score(self, query: LocalFeatures, shortlist: Sequence[LocalFeatures]) -> np.ndarray:
        n = len(shortlist)
        scores = np.zeros(n, np.float64)
        if n == 0 or len(query) == 0:
            return scores
        sizes = np.fromiter((len(f) for f in shortlist), dtype=np.int64, count=n)
        nonempty = np.nonzero(sizes)[0]
        if len(nonempty) == 0:
            return scores
        dims = {f.dim for f in shortlist if len(f)}
        if dims != {query.dim}:
            raise ValueError(f"patch tokens of different dimensions: query {query.dim}-d, "
                             f"shortlist {sorted(dims)}-d")
        q = np.asarray(query.descriptors, dtype=np.float32)
        db = np.concatenate([np.asarray(shortlist[i].descriptors, dtype=np.float32) for i in nonempty])
        sim = q @ db.T                                        # (|Q|, N_total): one GEMM
        if self.threshold is not None:
            sim = np.where(sim >= self.threshold, sim, -np.inf)
        starts = np.concatenate([[0], np.cumsum(sizes[nonempty])[:-1]])
        best = np.maximum.reduceat(sim, starts, axis=1)        # (|Q|, n_nonempty) best per image
        if self.method == "mean_max":
            scores[nonempty] = np.where(np.isfinite(best), best, 0.0).mean(axis=0)
            return scores
        # mutual nearest neighbours: s_qp is the max of q's row within p's image and of p's column
        owner = np.repeat(np.arange(len(nonempty)), sizes[nonempty])   # image of every db column
        row_best = best[:, owner]                                        # (|Q|, N_total)
        col_best = sim.max(axis=0, keepdims=True)                        # (1, N_total)
        mutual = (sim == row_best) & (sim == col_best) & np.isfinite(sim)
        # (an exact float tie in a row or column would count both pairs; with real tokens it does not occur)
        if self.method == "mutual_count":
            per_pair = mutual.astype(np.float64)
        else:
            per_pair = np.where(mutual, sim, 0.0).astype(np.float64)
        summed = np.add.reduceat(per_pair, starts, axis=1).sum(axis=0)   # (n_nonempty,)
        if self.method == "mutual_sum":
            summed = summed / len(query)
        scores[nonempty] = summed
        return scores

