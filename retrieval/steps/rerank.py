"""``retrieval rerank``: re-rank the top of a ranking with local evidence and fuse the two scores.

For each query the first ``shortlist`` results of the ranking are scored with local features
(``scorer``: ``spatial`` = inliers of spatial verification, ``ratio`` = Lowe's ratio-test score,
``vlad`` = VLAD similarity with an encoder file, ``patch`` = EfficientNet patch-token similarity) and
re-sorted by the one fusion configuration (:class:`retrieval.rerank.fusion.FusionSettings`, the
``fusion`` field): counts (inliers, ratio-test matches) on an absolute scale, ``v * global + (1 - v) *
min(local, T) / T``; similarities as they are. Here no ground truth is at hand, so ``method = "auto"``
applies the documented :data:`~retrieval.rerank.fusion.DEFAULT_FUSION` of the scorer's kind;
``retrieval run`` (an experiment, with ground truth) chooses method, T and v on held-out queries
instead. The rest of the ranking follows unchanged, so the output ranks as many images as the input.

Local scores are cached next to the output (``<out>.shortlist.npz/.json``) and an interrupted run
resumes; changing only the fusion re-sorts the cached scores without matching again. Scores beyond the
shortlist are written as ``null`` (their order is the global one).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Literal, Optional

from retrieval.core.config import Config, ConfigError
from retrieval.rerank.fusion import FusionConfig, FusionSettings

__all__ = ["RerankConfig", "LOCAL_FEATURES", "main", "make_scorer", "score_kind", "local_features_for",
           "shortlist_scores", "fused_ranking"]

Scorer = Literal["spatial", "ratio", "vlad", "patch"]

#: the local features each scorer reads by default (``features = "auto"``), per family of data:
#: landmark photographs (:data:`retrieval.datasets.open.LANDMARK_KINDS`) get upright RootSIFT with
#: more keypoints (a lower contrast threshold) for verification, objects the small-image RootSIFT;
#: the patch scorer reads EfficientNet patch tokens. The E1-E8 ladder uses the same table.
LOCAL_FEATURES: Dict[str, Dict[str, str]] = {
    "landmark": {"ratio": "rootsift-1k", "vlad": "rootsift-1k", "spatial": "rootsift-upright-c02-4k",
                 "patch": "lite0-patch-224"},
    "object": {"ratio": "rootsift-small", "vlad": "rootsift-small", "spatial": "rootsift-small",
               "patch": "lite0-patch-224"},
}


@dataclass(frozen=True)
class RerankConfig(Config):
    """``scorer`` and its named ``config`` (spatial: a name of ``SPATIAL_CONFIGS``; "" = its default,
    affine RANSAC with mutual matches) plus ``options`` (scorer keyword arguments: ratio=, mutual=,
    threshold=, method= ...); ``shortlist``: results re-ranked per query; ``features``: the local
    features the scorer reads (``auto``: :data:`LOCAL_FEATURES` of the data's family; only used where
    the step extracts them, i.e. in experiments); ``fusion``: the one fusion configuration."""

    scorer: Scorer = "spatial"
    config: str = ""
    options: Dict[str, Any] = field(default_factory=dict)
    shortlist: int = 100
    features: str = "auto"
    fusion: FusionSettings = field(default_factory=FusionSettings)

    def check(self) -> None:
        if self.shortlist < 1:
            raise ConfigError(f"shortlist must be >= 1, got {self.shortlist}")
        if self.config and self.scorer != "spatial":
            raise ConfigError(f"only the spatial scorer has named configurations, not {self.scorer!r}")


def score_kind(conf: RerankConfig) -> str:
    """``count`` (spatial, ratio) or ``similarity`` (vlad, patch): how the scorer's values are fused."""
    return "count" if conf.scorer in ("spatial", "ratio") else "similarity"


def local_features_for(conf: RerankConfig, dataset_kind: Optional[str]) -> str:
    """The local feature configuration ``conf`` reads on data of ``dataset_kind``."""
    if conf.features != "auto":
        return conf.features
    from retrieval.core.dataset_kinds import LANDMARK_KINDS

    return LOCAL_FEATURES["landmark" if dataset_kind in LANDMARK_KINDS else "object"][conf.scorer]


def make_scorer(conf: RerankConfig, model: Optional[Path] = None):
    """The :class:`retrieval.rerank.scorer.LocalScorer` of ``conf`` (``model``: the encoder file that
    the ``vlad`` scorer needs)."""
    from retrieval import rerank

    try:
        if conf.scorer == "spatial":
            return rerank.SpatialVerifier(conf.config or None, **conf.options)
        if conf.scorer == "ratio":
            return rerank.RatioTestScorer(**conf.options)
        if conf.scorer == "patch":
            return rerank.PatchScorer(**conf.options)
        if model is None:
            raise ConfigError("the vlad scorer needs an encoder file (--model, e.g. from 'retrieval encode')")
        from retrieval.features.encoders import load_encoder

        return rerank.VladSimilarityScorer(load_encoder(model), **conf.options)
    except TypeError as exc:
        raise ConfigError(f"{conf.scorer} scorer: {exc}") from None


def _scorer_config(scorer) -> Any:
    config = getattr(scorer, "config", None)
    if hasattr(config, "to_dict"):
        return config.to_dict()
    return config


def shortlist_scores(conf: RerankConfig, ranking: Path, query_local: Path, db_local: Path, cache: Path,
                     model: Optional[Path] = None, progress: bool = True):
    """``(base ranking, shortlist, local scores)``: the local evidence of ``conf.scorer`` for the top
    ``conf.shortlist`` of ``ranking``, cached in ``cache`` (``.npz/.json``; resumed, and reused for any
    ``v`` / ``norm``: a cache made another way starts afresh)."""
    import numpy as np

    from retrieval.features.store import LocalFeatureStore
    from retrieval.indexing.index import Ranking
    from retrieval.rerank import Shortlist

    base = Ranking.load(ranking)
    if base.query_ids is None:
        raise ConfigError(f"{ranking}: the ranking does not name its queries (no query_ids)")
    if (base.indices < 0).any():
        raise ConfigError(f"{ranking}: some queries have fewer results than others (approximate search); "
                          f"re-rank an exact ranking")
    scorer = make_scorer(conf, model)
    with LocalFeatureStore(query_local, "r") as q_store, LocalFeatureStore(db_local, "r") as db_store:
        missing = [q for q in base.query_ids if str(q) not in q_store][:3]
        if missing:
            raise ConfigError(f"{query_local}: no local features for queries {missing}")
        cache_config = {"ranking": Path(ranking).name, "k": min(conf.shortlist, base.k),
                        "scorer": _scorer_config(scorer), "model": None if model is None else str(model),
                        "query_local": q_store.config, "db_local": db_store.config}
        shortlist = None
        if Shortlist.exists(cache):
            try:
                shortlist = Shortlist.load(cache, expect_config=cache_config)
                if shortlist.query_ids != [str(q) for q in base.query_ids] or \
                        not np.array_equal(shortlist.db_ids, base.ids[:, :shortlist.k].astype(str)):
                    shortlist = None  # another ranking under the same name: start afresh
            except ValueError:
                shortlist = None  # another configuration: start afresh
        if shortlist is None:
            shortlist = Shortlist.from_ranking(base, k=conf.shortlist, config=cache_config, keep_tail=False)
        absent = sorted({i for row in shortlist.db_ids.tolist() for i in row if i not in db_store})[:3]
        if absent:
            raise ConfigError(f"{db_local}: no local features for shortlisted images {absent}")
        local = shortlist.score_with(scorer, q_store, db_store, name="local", path=cache, progress=progress)
    return base, shortlist, local


def fused_ranking(base, shortlist, local, fusion: FusionConfig):
    """The :class:`~retrieval.indexing.index.Ranking` of ``base`` with its shortlist re-sorted under ``fusion``
    (:func:`retrieval.rerank.fusion.fused_order`); the rest follows in the global order. Shortlist
    scores: the fused score of a linear fusion; for the global order and the DELG rule, the global
    score in the new order."""
    import numpy as np

    from retrieval.indexing.index import Ranking
    from retrieval.rerank.fusion import fuse, fused_order

    order = fused_order(shortlist.global_scores, local, fusion)
    values = fuse(shortlist.global_scores, local, fusion.v, fusion.norm, fusion.T) if fusion.method == "linear" \
        else np.asarray(shortlist.global_scores, dtype=np.float64)
    k = shortlist.k
    ids = base.ids.copy()
    indices = base.indices.copy()
    scores = np.full(base.scores.shape, -np.inf, dtype=np.float32)
    ids[:, :k] = np.take_along_axis(base.ids[:, :k], order, axis=1)
    indices[:, :k] = np.take_along_axis(base.indices[:, :k], order, axis=1)
    scores[:, :k] = np.take_along_axis(values, order, axis=1)
    return Ranking(ids=ids, scores=scores, indices=indices, query_ids=base.query_ids)


def main(conf: RerankConfig, ranking: Path, query_local: Path, db_local: Path, out: Path,
         model: Optional[Path] = None, progress: bool = True, info: Optional[dict] = None) -> Path:
    """Re-rank ``ranking`` (JSON) with the local stores of the queries and the database, fused by
    ``conf.fusion`` resolved without ground truth; writes the new ranking to ``out`` and returns it."""
    start = time.perf_counter()
    fusion = conf.fusion
    if fusion.chooses(has_ground_truth=False):
        raise ConfigError("unreachable: a fusion is chosen only with ground truth")
    applied = fusion.resolve(score_kind(conf))
    base, shortlist, local = shortlist_scores(conf, ranking, query_local, db_local, Path(str(out) + ".shortlist"),
                                              model, progress)
    fused_ranking(base, shortlist, local, applied).save(out)
    if info is not None:
        info.update(queries=len(base), shortlist=shortlist.k, ranked=base.k, scorer=conf.scorer,
                    fusion=applied.label, seconds=round(time.perf_counter() - start, 3))
    return Path(out)
