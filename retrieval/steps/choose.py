"""Choosing a re-ranker's settings on held-out queries: the one chooser of the pipeline.

Every re-ranking step (a local scorer's fusion, query expansion) is a list of candidates whose first
is its base ranking (no re-ranking: :data:`retrieval.rerank.fusion.NO_RERANKING`, no expansion). Each
candidate's ranking is scored per query under every relevance protocol of the dataset;
:func:`retrieval.core.crossfit.cross_fit` then picks, for each fold of queries, the candidate with the best
mean on the OTHER folds, ties going to the base ranking, and a candidate must beat the base by more
than ``min_gain`` there to replace it: a re-ranker is used only where it wins on queries it is not
reported on. The predictions reported are each query's ranking at its fold's choice. The retrieval
chain (``retrieval run``) and the E1-E8 ladder both choose here.

Besides the held-out figures, a :class:`Choice` names the candidate chosen on ALL queries
(``deployed``): the setting to use on new queries (``retrieval serve``), whose expected quality is the
held-out figure.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Hashable, List, Mapping, Optional, Sequence

import numpy as np

from retrieval.core.crossfit import cross_fit, fold_groups
from retrieval.evaluation.evaluate import main_metric

__all__ = ["Relevance", "Choice", "choose", "relevances", "query_groups", "fusion_rankings", "mean_of"]

Predictions = Dict[str, List[str]]


@dataclass
class Relevance:
    """One relevance protocol of a dataset: ``name`` (shown in tables), the dataset whose ground
    truth it scores against, the :func:`retrieval.evaluation.evaluate.evaluate_per_query` ``protocol``, the
    per-query ``metric`` it reports, the cut-off ``k`` of @k metrics and the metric's ``label`` in
    tables (default: :func:`retrieval.evaluation.evaluate.metric_label`)."""

    name: str
    dataset: object
    protocol: str
    metric: str
    k: int = 100
    label: str = ""

    def __post_init__(self) -> None:
        from retrieval.evaluation.evaluate import metric_label

        self.label = self.label or metric_label(self.metric)

    def per_query(self, predictions: Mapping[str, Sequence[str]]) -> Dict[str, float]:
        from retrieval.evaluation.evaluate import evaluate_per_query

        scores = evaluate_per_query(self.dataset, predictions, protocol=self.protocol, k=self.k, check_ids=False)
        if self.metric not in scores:
            raise ValueError(f"protocol {self.protocol!r} has no per-query {self.metric!r}; it has {sorted(scores)}")
        return {str(q): float(v) for q, v in scores[self.metric].items()}


def relevances(dataset, protocols: Sequence[str], k: int = 100, titles: Optional[Mapping[str, str]] = None
               ) -> List[Relevance]:
    """A :class:`Relevance` per protocol, each reporting the protocol's main metric
    (:func:`retrieval.evaluation.evaluate.main_metric`); ``titles`` names them (default: the protocol)."""
    titles = titles or {}
    return [Relevance(titles.get(p, p), dataset, p, main_metric(p, k), k) for p in protocols]


def query_groups(dataset, folds: int = 2) -> Dict[str, str]:
    """``{query id: group}`` of the cross-fitting: GLDv2's Public / Private split where the queries
    have both, else ``folds`` folds of whole query labels (all views of an object or landmark in one
    fold, so no fold chooses on near-copies of its own queries) when there are enough labels, else
    queries dealt in order (a query no protocol scores is simply never used)."""
    usage = {}
    for qid in dataset.query_ids:
        truth = dataset.ground_truth.get(qid)
        if truth is not None and getattr(truth, "usage", None) in ("Public", "Private"):
            usage[str(qid)] = truth.usage
    if len(set(usage.values())) == 2:
        return usage
    qids = [str(q) for q in dataset.query_ids]
    labels = [str(lab) for lab in dataset.query_labels] if dataset.query_labels is not None else None
    if labels is not None and len(set(labels)) < folds:
        labels = None
    return fold_groups(qids, labels, folds)


@dataclass
class Choice:
    """A re-ranker under one relevance protocol: the cross-fit (``fit["chosen"][group]`` = candidate
    label, ``fit["score"]``, ``fit["curves"]``), the candidates by label, the reported predictions, the
    per-query scores at the chosen settings and the label chosen on all queries (``deployed``)."""

    experiment: str
    relevance: str
    fit: dict
    candidates: Dict[str, object]
    predictions: Predictions = field(default_factory=dict)
    per_query: Dict[str, float] = field(default_factory=dict)
    deployed: str = ""

    def report(self) -> dict:
        """The JSON-able summary written into results.json."""
        from retrieval.core.report import pct

        return {"relevance": self.relevance, "chosen": dict(self.fit["chosen"]),
                "held_out": {g: pct(m) for g, m in self.fit["score"].items()},
                "deployed": self.deployed, "candidates": len(self.candidates),
                # each candidate's mean over all queries (not a held-out figure: what a fixed default
                # would give; benchmarks/fusion_default.py compares them across data sets), in percent
                "mean_by_candidate": {str(c): pct(m) for c, m in self.fit["curves"]["all"].items()}}


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
        deployed = _best_with_margin(per_query[r.name], list(groups), labels, min_gain)
        out[r.name] = Choice(experiment, r.name, fit, dict(candidates), chosen_preds, fit["per_query"], deployed)
    return out


def _charged(per_query, labels, min_gain: float):
    base = labels[0]
    return {c: (scores if c == base else {q: v - min_gain for q, v in scores.items()})
            for c, scores in per_query.items()}


def _best_with_margin(per_query, queries, labels, min_gain: float) -> str:
    from retrieval.core.crossfit import choose as best

    return best(_charged(per_query, labels, min_gain), [q for q in queries if q in per_query[labels[0]]],
                prefer=labels)


def _cross_fit_with_margin(per_query, groups, labels, min_gain: float) -> dict:
    """:func:`retrieval.core.crossfit.cross_fit` where every candidate but the base (``labels[0]``) is
    charged ``min_gain`` per query while choosing, so the base is kept unless a candidate beats it
    by more than that on the choosing queries; the scores and curves reported are the true ones."""
    fit = cross_fit(_charged(per_query, labels, min_gain), groups, prefer=labels)
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
