"""One search as the page and the JSON API show it: the index's :class:`~retrieval.indexing.index.Ranking`, local
evidence on the shortlist, the fused order at a weight v, right / wrong / junk and the query's AP.

* Global: ``Catalog.index.search(vector, k)`` (concurrent requests batched into one call,
  :mod:`.batching`); the JSON lists exactly that Ranking's ids, scores and rows (``results`` in global
  order). ``where`` (metadata conditions ``COLUMN OP VALUE``, :mod:`retrieval.indexing.metadata`)
  restricts the search to the rows meeting them, inside the search; each result carries its row's
  metadata record when the catalog has metadata.
* Local evidence (when a local-feature store is served and the query has local features): spatial
  verification inliers (:class:`retrieval.rerank.SpatialVerifier`, its default configuration) for SIFT
  stores, else the ratio-test score (:class:`retrieval.rerank.RatioTestScorer`). An image without
  stored features scores 0 and says so (``local_missing``).
* Fusion: the one fusion configuration (:mod:`retrieval.rerank.fusion`): the catalog's fusion (an
  experiment's choice on all its queries, else the documented default: counts saturating at T), or a
  linear fusion at the weight ``v`` the page asks for with the same normalisation
  (``score = v * global + (1 - v) * local_norm``); ``local_norm`` is in the JSON so the page re-sorts
  for any v without asking again (ties keep the global order, as :func:`~retrieval.rerank.fusion_order`).
* AP: AP@k as GLDv2 / Kaggle score it (:func:`retrieval.evaluation.metrics.average_precision_at_k`: divided by
  min(positives, k)) over the k results with junk removed, for the global and the fused order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from retrieval.indexing.index import Ranking
from retrieval.evaluation.metrics import average_precision_at_k
from retrieval.rerank.fusion import DEFAULT_FUSION, FusionConfig, fuse, fused_order, normalise_scores

from retrieval.serve.catalog import Catalog, Query

__all__ = ["SearchResult", "search", "pair_matches", "fusion_at", "local_method", "MAX_K"]

MAX_K = 200


@dataclass
class SearchResult:
    """A search: the Ranking (one row), local scores (or None), fused scores and order at ``v``."""

    query: Query
    ranking: Ranking
    fusion: FusionConfig
    local_method: Optional[str] = None
    local: Optional[np.ndarray] = None
    local_missing: List[bool] = field(default_factory=list)
    fused: Optional[np.ndarray] = None
    order: Optional[np.ndarray] = None
    where: List[str] = field(default_factory=list)
    records: Optional[List[Optional[Dict[str, str]]]] = None  # each result's metadata (a collection's)

    @property
    def ids(self) -> List[str]:
        valid = self.ranking.indices[0] >= 0
        return [str(i) for i, ok in zip(self.ranking.ids[0].tolist(), valid.tolist()) if ok]

    def fused_ids(self) -> List[str]:
        ids = self.ids
        return ids if self.order is None else [ids[j] for j in self.order]

    def label(self, image_id: str) -> Optional[str]:
        t = self.query.truth
        if t is None:
            return None
        if image_id in t.junk:
            return "junk"
        return "positive" if image_id in t.positives else "negative"

    def ap(self, ids: List[str]) -> Optional[float]:
        """AP@k of ``ids`` (GLDv2 / Kaggle: divided by min(positives, k)) with junk removed first."""
        t = self.query.truth
        if t is None or not t.positives:
            return None
        value = average_precision_at_k([i for i in ids if i not in t.junk], t.positives, k=max(1, len(self.ids)))
        return None if math.isnan(value) else round(float(value), 6)

    def to_json(self, image_url) -> dict:
        """The JSON of /api/search; ``image_url(id)`` gives an image's URL (None when it has none)."""
        ids = self.ids
        g = self.ranking.scores[0][: len(ids)]
        f = self.fusion
        local_norm = normalise_scores(self.local, f.norm, f.T) if self.local is not None else None
        results = []
        for j, image_id in enumerate(ids):
            item = {"rank": j + 1, "id": image_id, "row": int(self.ranking.indices[0][j]), "score": float(g[j]),
                    "label": self.label(image_id), "image": image_url(image_id)}
            if self.records is not None:
                item["metadata"] = self.records[j]
            if self.local is not None:
                item.update(local=float(self.local[j]), local_norm=float(local_norm[j]),
                            local_missing=bool(self.local_missing[j]), fused=float(self.fused[j]))
            results.append(item)
        truth = self.query.truth
        return {
            "query": {"id": self.query.id, "kind": self.query.kind, "image": image_url(self.query.id),
                      "keypoints": None if self.query.local is None else len(self.query.local)},
            "k": len(ids), "v": f.v, "where": self.where,
            "fusion": {"label": f.label, **f.to_dict()},
            "local": None if self.local is None else {"method": self.local_method, "norm": f.norm, "T": f.T,
                                                      "formula": "v * score + (1 - v) * local_norm"},
            "results": results,
            "fused_order": self.fused_ids() if self.local is not None else None,
            "truth": None if truth is None else {"positives": len(truth.positives), "junk": len(truth.junk)},
            "ap": None if truth is None else {"global": self.ap(ids),
                                              "fused": self.ap(self.fused_ids()) if self.local is not None else None,
                                              "rule": "AP@k: junk removed, divided by min(positives, k)"},
        }


def local_method(catalog: Catalog) -> str:
    """``inliers`` (spatial verification) for SIFT stores, else ``ratio`` (the ratio-test score)."""
    return "inliers" if catalog.local_config is not None and catalog.local_config.get("type") == "sift" else "ratio"


def _scorer(catalog: Catalog):
    """(name, scorer) of the local evidence for this catalog's store."""
    from retrieval.rerank import RatioTestScorer, SpatialVerifier

    if local_method(catalog) == "inliers":
        return "inliers", SpatialVerifier()
    return "ratio", RatioTestScorer(ratio=0.8)


def fusion_at(fusion: FusionConfig, v: Optional[float]) -> FusionConfig:
    """``fusion``, or the linear fusion at weight ``v`` with its normalisation (a count default's when
    ``fusion`` is not linear): what the page's v slider shows."""
    if v is None:
        return fusion
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"v must be between 0 and 1, got {v}")
    base = fusion if fusion.method == "linear" else DEFAULT_FUSION["count"]
    return FusionConfig("linear", v=float(v), norm=base.norm, T=base.T, gate=base.gate)


def search(catalog: Catalog, query: Query, k: int = 20, v: Optional[float] = None,
           where: Sequence[str] = ()) -> SearchResult:
    """Search ``catalog`` with ``query``: top ``k`` (clamped to the index size) of the rows meeting
    ``where`` (:class:`~retrieval.serve.catalog.FilterError` when it cannot be applied), local evidence
    and the catalog's fusion (at weight ``v`` when given) when local features exist for the query."""
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must be between 1 and {MAX_K}, got {k}")
    fusion = fusion_at(catalog.fusion, v)
    where = [w for w in where if w.strip()]
    allowed = catalog.mask(where)
    ranking = catalog.batcher.search(query.vector, k=k, query_id=query.id, allowed=allowed, key=tuple(where))
    result = SearchResult(query, ranking, fusion, where=where)
    if catalog.metadata is not None:
        rows = ranking.indices[0][: len(result.ids)].tolist()
        # the recorded file path stays on the server (ids, never paths, are what a client sees)
        result.records = [{c: v for c, v in catalog.metadata.record(int(r)).items() if c != "path"} for r in rows]
    if catalog.has_local and query.local is not None:
        ids = result.ids
        feats = [catalog.local_features(i) for i in ids]
        result.local_missing = [f is None for f in feats]
        empty = query.local.__class__.empty(query.local.dim, (1, 1), query.local.descriptors.dtype)
        name, scorer = _scorer(catalog)
        result.local_method = name
        result.local = np.asarray(scorer.score(query.local, [f if f is not None else empty for f in feats]),
                                  dtype=np.float64)
        g = ranking.scores[0][: len(ids)]
        result.fused = fuse(g, result.local, fusion.v, fusion.norm, fusion.T)
        result.order = fused_order(g, result.local, fusion)[0]
    return result


def pair_matches(catalog: Catalog, query: Query, db_id: str) -> dict:
    """The matches between ``query`` and database image ``db_id`` as lines in normalised coordinates
    (x / width, y / height of each image's feature frame), inliers flagged (spatial verification) or
    every ratio-test match (ratio)."""
    from retrieval.rerank import match_pair

    feats = catalog.local_features(db_id)
    if query.local is None or feats is None:
        raise LookupError(f"no local features for {'the query' if query.local is None else db_id!r}")
    name, scorer = _scorer(catalog)
    if name == "inliers":
        ver = scorer.verify(query.local, [feats])[0]
        m, inlier = ver.matches, ver.inlier_mask.tolist()
        score = ver.inliers
    else:
        m = match_pair(query.local.descriptors, feats.descriptors, ratio=scorer.ratio, mutual=scorer.mutual)
        inlier = [True] * len(m)
        score = len(m)
    qh, qw = query.local.image_size
    dh, dw = feats.image_size
    qxy = query.local.xy[m.query_idx]
    dxy = feats.xy[m.db_idx]
    lines = [[round(float(a[0]) / qw, 5), round(float(a[1]) / qh, 5), round(float(b[0]) / dw, 5),
              round(float(b[1]) / dh, 5), bool(ok)] for a, b, ok in zip(qxy, dxy, inlier)]
    return {"query": query.id, "db": db_id, "method": name, "score": score, "matches": len(lines),
            "inliers": int(sum(inlier)), "query_keypoints": len(query.local), "db_keypoints": len(feats),
            "lines": lines, "columns": ["qx", "qy", "dx", "dy", "inlier"]}
