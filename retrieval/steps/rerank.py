"""``retrieval rerank``: re-rank the top of a ranking with local evidence and fuse the two scores.

For each query the first ``shortlist`` results of the ranking are scored with local features
(``scorer``: ``spatial`` = inliers of spatial verification, ``ratio`` = Lowe's ratio-test score,
``vlad`` = VLAD similarity with an encoder file, ``patch`` = EfficientNet patch-token similarity) and
re-sorted by ``v * global + (1 - v) * N(local)`` (:mod:`retrieval.rerank.fusion`; ``N`` = ``norm``);
the rest of the ranking follows unchanged, so the output ranks as many images as the input. ``v = 1``
keeps the global order, ``v = 0`` sorts by local evidence alone.

Local scores are cached next to the output (``<out>.shortlist.npz/.json``) and an interrupted run
resumes; changing only ``v`` or ``norm`` re-sorts the cached scores without matching again. Scores
beyond the shortlist are written as ``null`` (their order is the global one).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Literal, Optional

from ..config import Config, ConfigError

__all__ = ["RerankConfig", "main", "make_scorer", "shortlist_scores", "fused_ranking"]

Scorer = Literal["spatial", "ratio", "vlad", "patch"]
Norm = Literal["none", "minmax", "saturate", "exp", "zscore"]


@dataclass(frozen=True)
class RerankConfig(Config):
    """``scorer`` and its named ``config`` (spatial: a name of ``SPATIAL_CONFIGS``) plus ``options``
    (scorer keyword arguments: ratio=, mutual=, threshold=, method= ...); ``shortlist``: results
    re-ranked per query; ``v``: weight of the global score; ``norm`` / ``T``: normalisation of the
    local score."""

    scorer: Scorer = "spatial"
    config: str = ""
    options: Dict[str, Any] = field(default_factory=dict)
    shortlist: int = 100
    v: float = 0.5
    norm: Norm = "minmax"
    T: Optional[float] = None

    def check(self) -> None:
        self.check_v()
        if self.shortlist < 1:
            raise ConfigError(f"shortlist must be >= 1, got {self.shortlist}")
        if self.norm in ("saturate", "exp") and not (self.T and self.T > 0):
            raise ConfigError(f"norm {self.norm!r} needs a scale T > 0")
        if self.config and self.scorer != "spatial":
            raise ConfigError(f"only the spatial scorer has named configurations, not {self.scorer!r}")

    def check_v(self) -> None:
        """The fusion weight is a number in [0, 1] (the experiment chain also takes a rule choosing it)."""
        if not 0.0 <= self.v <= 1.0:
            raise ConfigError(f"v must be in [0, 1], got {self.v}")


def make_scorer(conf: RerankConfig, model: Optional[Path] = None):
    """The :class:`retrieval.rerank.base.LocalScorer` of ``conf`` (``model``: the encoder file that
    the ``vlad`` scorer needs)."""
    from .. import rerank

    try:
        if conf.scorer == "spatial":
            return rerank.SpatialVerifier(conf.config or None, **conf.options)
        if conf.scorer == "ratio":
            return rerank.RatioTestScorer(**conf.options)
        if conf.scorer == "patch":
            return rerank.PatchScorer(**conf.options)
        if model is None:
            raise ConfigError("the vlad scorer needs an encoder file (--model, e.g. from 'retrieval encode')")
        from ..features.encoders import load_encoder

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

    from ..features.store import LocalFeatureStore
    from ..index import Ranking
    from ..rerank import Shortlist

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


def fused_ranking(base, shortlist, local, v: float, norm: str = "minmax", T: Optional[float] = None):
    """The :class:`~retrieval.index.Ranking` of ``base`` with its shortlist re-sorted by
    ``v * global + (1 - v) * N(local)``; the rest follows in the global order."""
    import numpy as np

    from ..index import Ranking
    from ..rerank import fuse, fusion_order

    fused = fuse(shortlist.global_scores, local, v, norm, T)
    order = fusion_order(fused)
    k = shortlist.k
    ids = base.ids.copy()
    indices = base.indices.copy()
    scores = np.full(base.scores.shape, -np.inf, dtype=np.float32)
    ids[:, :k] = np.take_along_axis(base.ids[:, :k], order, axis=1)
    indices[:, :k] = np.take_along_axis(base.indices[:, :k], order, axis=1)
    scores[:, :k] = np.take_along_axis(fused, order, axis=1)
    return Ranking(ids=ids, scores=scores, indices=indices, query_ids=base.query_ids)


def main(conf: RerankConfig, ranking: Path, query_local: Path, db_local: Path, out: Path,
         model: Optional[Path] = None, progress: bool = True, info: Optional[dict] = None) -> Path:
    """Re-rank ``ranking`` (JSON) with the local stores of the queries and the database; writes the
    new ranking to ``out`` and returns it."""
    start = time.perf_counter()
    base, shortlist, local = shortlist_scores(conf, ranking, query_local, db_local, Path(str(out) + ".shortlist"),
                                              model, progress)
    fused_ranking(base, shortlist, local, conf.v, conf.norm, conf.T).save(out)
    if info is not None:
        info.update(queries=len(base), shortlist=shortlist.k, ranked=base.k, scorer=conf.scorer, v=conf.v,
                    seconds=round(time.perf_counter() - start, 3))
    return Path(out)
