"""Query expansion and database-side augmentation of global vectors (the E8 re-rankers), as candidates
for the held-out chooser (:mod:`retrieval.steps.choose`).

Three modes, each over a grid of (n, alpha) (:class:`ExpandConfig`):

* ``alpha-QE``: every query replaced by the weighted mean of itself and its top ``n`` database vectors
  (weights = similarity ** alpha), then searched again (Radenovic et al., TPAMI 2019);
* ``DBA``: every database vector replaced likewise by itself and its top ``n`` neighbours;
* ``DBA+alpha-QE``: both, the queries expanded against the augmented database.

The first candidate of every mode is ``None``, the base ranking, so a tie keeps it. Nothing here
extracts: it works on the vectors the global step already has.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from retrieval.core.config import Config, ConfigError

__all__ = ["EXPANSION_MODES", "ExpandConfig", "expansion_candidates", "expansion_rankings"]

EXPANSION_MODES = ("alpha-QE", "DBA", "DBA+alpha-QE")


@dataclass(frozen=True)
class ExpandConfig(Config):
    """E8 settings: the ``modes`` tried (each its own re-ranker, chosen on held-out queries like the
    fusions), the grid of ``n`` (neighbours averaged) and ``alpha`` (weight exponent), and the margin
    ``min_gain`` by which a setting must beat the base ranking on the choosing queries."""

    modes: Tuple[str, ...] = EXPANSION_MODES
    n: Tuple[int, ...] = (1, 2, 3, 5, 10)
    alpha: Tuple[float, ...] = (0.0, 1.0, 3.0)
    # an expansion must beat the base ranking by more than this (mean AP) on the choosing queries
    min_gain: float = 0.005

    def check(self) -> None:
        bad = [m for m in self.modes if m not in EXPANSION_MODES]
        if bad:
            raise ConfigError(f"unknown expansion mode(s) {bad}; known: {EXPANSION_MODES}")
        if not self.n or min(self.n) < 1:
            raise ConfigError(f"expansion n must be >= 1, got {list(self.n)}")
        if not self.alpha or min(self.alpha) < 0:
            raise ConfigError(f"expansion alpha must be >= 0, got {list(self.alpha)}")


def expansion_candidates(conf: ExpandConfig) -> Dict[str, Optional[Tuple[int, float]]]:
    """``{label: (n, alpha) | None}``, the base ranking (``None``) first."""
    out: Dict[str, Optional[Tuple[int, float]]] = {"none (global order)": None}
    out.update({f"n={n} alpha={a:g}": (int(n), float(a)) for n in conf.n for a in conf.alpha})
    return out


def expansion_rankings(mode: str, db_vectors: np.ndarray, query_vectors: np.ndarray, db_ids: Sequence[str],
                       query_ids: Sequence[str], k: int) -> Callable[[object], Dict[str, List[str]]]:
    """``candidate -> predictions`` of ``mode`` (exact cosine top ``k``; the last one memoised, since
    the chooser asks for each candidate once and then for the chosen ones again)."""
    from retrieval.indexing.index import Index
    from retrieval.rerank.expansion import alpha_query_expansion, database_side_augmentation

    if mode not in EXPANSION_MODES:
        raise ConfigError(f"unknown expansion mode {mode!r}; known: {EXPANSION_MODES}")
    ids, qids = [str(i) for i in db_ids], [str(q) for q in query_ids]
    memo: Dict[object, dict] = {}

    def rankings(cand) -> Dict[str, List[str]]:
        if cand in memo:
            return memo[cand]
        db, q = db_vectors, query_vectors
        if cand is not None:
            n, alpha = cand
            if mode.startswith("DBA"):
                db = database_side_augmentation(db, n=n, alpha=alpha)
            if mode.endswith("alpha-QE"):
                q = alpha_query_expansion(q, db, n=n, alpha=alpha)
        preds = Index(db, ids=ids).search(q, k=min(k, len(ids)), query_ids=qids).to_predictions()
        memo.clear()
        memo[cand] = preds
        return preds

    return rankings
