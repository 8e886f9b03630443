"""Choosing a re-ranker's parameters on held-out queries (:mod:`retrieval.crossfit`).

Every re-ranker is a list of candidates, the first of which is its base ranking (no re-ranking:
fusion weight v = 1, no expansion). Each candidate's ranking is scored per query under every
relevance protocol; :func:`retrieval.crossfit.cross_fit` then picks, for each group of queries, the
candidate with the best mean on the OTHER groups, ties going to the base ranking, so a re-ranker is
used only where it wins on queries it is not reported on. The predictions reported are each query's
ranking at its group's choice."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Hashable, List, Mapping, Sequence

import numpy as np

from retrieval.crossfit import cross_fit

__all__ = ["Relevance", "Choice", "choose", "fusion_rankings"]

Predictions = Dict[str, List[str]]


@dataclass
class Relevance:
    """One relevance protocol of a dataset: ``name`` (shown in tables), the dataset whose ground
    truth it scores against, the :func:`retrieval.evaluate.evaluate_per_query` ``protocol`` and the
    metric reported."""

    name: str
    dataset: object
    protocol: str
    metric: str

    def per_query(self, predictions: Mapping[str, Sequence[str]]) -> Dict[str, float]:
        from retrieval.evaluate import evaluate_per_query

        scores = evaluate_per_query(self.dataset, predictions, protocol=self.protocol, k=100, check_ids=False)
        return scores[{"gldv2": "map@100", "landmark": "landmark_map"}.get(self.protocol, "oxford_map")]


@dataclass
class Choice:
    """A re-ranker under one relevance protocol: the cross-fit (``fit["chosen"][group]`` = candidate
    label, ``fit["score"]``, ``fit["curves"]``), the candidates by label, and the reported predictions."""

    experiment: str
    relevance: str
    fit: dict
    candidates: Dict[str, object]
    predictions: Predictions = field(default_factory=dict)
    per_query: Dict[str, float] = field(default_factory=dict)


def choose(experiment: str, candidates: Mapping[str, object], rankings: Callable[[object], Predictions],
           relevances: Sequence[Relevance], groups: Mapping[Hashable, str], min_gain: float = 0.0
           ) -> Dict[str, Choice]:
    """Cross-fit ``candidates`` (label -> candidate, the base ranking first) under every relevance
    protocol. ``rankings(candidate)`` returns the predictions of a candidate; a candidate must beat
    the base ranking by more than ``min_gain`` (mean AP) on the choosing queries to replace it.
    Returns ``{relevance name: Choice}``."""
    labels = list(candidates)
    per_query = {r.name: {} for r in relevances}
    for label in labels:
        preds = rankings(candidates[label])
        for r in relevances:
            per_query[r.name][label] = r.per_query(preds)
    out = {}
    for r in relevances:
        fit = _cross_fit_with_margin(per_query[r.name], groups, labels, min_gain)
        chosen_preds: Predictions = {}
        cache: Dict[str, Predictions] = {}
        for q, g in groups.items():
            label = fit["chosen"][g]
            if label not in cache:
                cache[label] = rankings(candidates[label])
            if q in cache[label]:
                chosen_preds[q] = cache[label][q]
        out[r.name] = Choice(experiment, r.name, fit, dict(candidates), chosen_preds, fit["per_query"])
    return out


def _cross_fit_with_margin(per_query, groups, labels, min_gain: float) -> dict:
    """:func:`retrieval.crossfit.cross_fit` where every candidate but the base (``labels[0]``) is
    charged ``min_gain`` per query while choosing, so the base is kept unless a candidate beats it
    by more than that on the choosing queries; the scores and curves reported are the true ones."""
    base = labels[0]
    charged = {c: (scores if c == base else {q: v - min_gain for q, v in scores.items()})
               for c, scores in per_query.items()}
    fit = cross_fit(charged, groups, prefer=labels)
    true = cross_fit({c: per_query[c] for c in labels}, groups, prefer=labels)
    fitted = {q: float(per_query[fit["chosen"][g]][q]) for q, g in groups.items() if q in fit["per_query"]}
    score = {g: mean_of(v for q, v in fitted.items() if groups[q] == g) for g in fit["chosen"]}
    score["all"] = mean_of(fitted.values())
    return {"chosen": fit["chosen"], "per_query": fitted, "score": score, "curves": true["curves"]}


def fusion_rankings(shortlist, local_name: str) -> Callable[[object], Predictions]:
    """``candidate (FusionConfig) -> predictions`` over a cached shortlist's scores."""
    from retrieval.rerank.fusion import fused_order

    local = shortlist.local_scores(local_name)

    def rankings(conf) -> Predictions:
        return shortlist.predictions(fused_order(shortlist.global_scores, local, conf))

    return rankings


def mean_of(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")
