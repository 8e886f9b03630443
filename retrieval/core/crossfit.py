"""The one held-out chooser: pick a setting on some queries, report it on the others.

Every parameter that the toolkit picks from data (a fusion weight v, a fusion method and its
parameters, a pooling, a distillation weight) is chosen here, so that no reported figure was
chosen on the queries it is reported on.

``per_query[candidate][query] = score`` holds a score (AP, say) of every query under every candidate
setting; ``groups[query]`` names the query's group (Public / Private, a landmark half, a fold).
:func:`cross_fit` chooses, for each group, the candidate with the best mean over the OTHER groups
and reports each query at its group's choice. :func:`choose` picks on one set of queries (the
validation split) for use elsewhere.

Ties go to the candidate that comes first in ``prefer`` order (by default the order of
``per_query``): put the safest setting first (v = 1, i.e. no re-ranking; no distillation) so that a
candidate must be strictly better on held-out queries to be picked.
"""
from __future__ import annotations

import math
from typing import Dict, Hashable, Iterable, List, Mapping, Optional, Sequence

import numpy as np

__all__ = ["cross_fit", "choose", "fold_groups"]


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return float(np.mean(values)) if values else math.nan


def _ordered(per_query: Mapping[Hashable, Mapping[Hashable, float]], prefer: Optional[Sequence[Hashable]]
             ) -> List[Hashable]:
    if not per_query:
        raise ValueError("no candidate settings to choose from")
    if prefer is None:
        return list(per_query)
    unknown = [c for c in prefer if c not in per_query]
    if unknown:
        raise ValueError(f"preferred candidates {unknown[:3]} have no scores")
    return list(prefer) + [c for c in per_query if c not in set(prefer)]


def choose(per_query: Mapping[Hashable, Mapping[Hashable, float]], queries: Optional[Iterable[Hashable]] = None,
           prefer: Optional[Sequence[Hashable]] = None, tolerance: float = 1e-12) -> Hashable:
    """The candidate with the best mean score over ``queries`` (default: all); ties by ``prefer``."""
    order = _ordered(per_query, prefer)
    qs = list(queries) if queries is not None else list(per_query[order[0]])
    if not qs:
        raise ValueError("no queries to choose on")
    means = []
    for c in order:
        missing = [q for q in qs if q not in per_query[c]]
        if missing:
            raise ValueError(f"candidate {c!r}: no score for queries {missing[:3]}")
        means.append(_mean(per_query[c][q] for q in qs))
    best = max(means)
    return order[next(i for i, m in enumerate(means) if m >= best - tolerance)]


def cross_fit(per_query: Mapping[Hashable, Mapping[Hashable, float]], groups: Mapping[Hashable, str],
              prefer: Optional[Sequence[Hashable]] = None) -> dict:
    """Choose a candidate for each group on the other groups' queries.

    Returns ``{"chosen": {group: candidate}, "per_query": {q: score at its group's choice},
    "score": {group: mean, "all": mean over every query}, "curves": {group | "all": {candidate: mean}}}``.
    Needs at least two groups; queries without a group are left out."""
    order = _ordered(per_query, prefer)
    queries = [q for q in per_query[order[0]] if q in groups]
    names = sorted({groups[q] for q in queries})
    if len(names) < 2:
        raise ValueError(f"cross-fitting needs queries of at least two groups, got {names}")
    members = {g: [q for q in queries if groups[q] == g] for g in names}
    chosen = {g: choose(per_query, [q for q in queries if groups[q] != g], order) for g in names}
    fitted = {q: float(per_query[chosen[groups[q]]][q]) for q in queries}
    score = {g: _mean(fitted[q] for q in members[g]) for g in names}
    score["all"] = _mean(fitted.values())
    curves: Dict[str, Dict[Hashable, float]] = {
        g: {c: _mean(per_query[c][q] for q in members[g]) for c in order} for g in names}
    curves["all"] = {c: _mean(per_query[c][q] for q in queries) for c in order}
    return {"chosen": chosen, "per_query": fitted, "score": score, "curves": curves}


def fold_groups(query_ids: Sequence[Hashable], labels: Optional[Sequence[Hashable]] = None, n_folds: int = 2,
                ) -> Dict[Hashable, str]:
    """Deterministic folds: by label when given (every query of a label in one fold, labels dealt in
    sorted order), else queries dealt in order. ``{query: "fold 0" | "fold 1" | ...}``."""
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    if labels is None:
        return {q: f"fold {i % n_folds}" for i, q in enumerate(query_ids)}
    if len(labels) != len(query_ids):
        raise ValueError(f"{len(query_ids)} queries but {len(labels)} labels")
    order = {lab: i % n_folds for i, lab in enumerate(sorted(set(labels), key=str))}
    if len(order) < n_folds:
        raise ValueError(f"{len(order)} labels cannot make {n_folds} folds")
    return {q: f"fold {order[lab]}" for q, lab in zip(query_ids, labels)}
