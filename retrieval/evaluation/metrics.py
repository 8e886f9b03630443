"""Retrieval metrics, each as the benchmark it comes from defines it.

Every aggregate metric takes the same two dicts:

* ``predictions``: ``{query_id: [db_id, ...]}``, best first (what :meth:`Ranking.to_predictions`
  returns);
* ``solution``: ``{query_id: set of relevant db ids}`` (what :meth:`RetrievalDataset.solution`
  returns).

Conventions shared by all of them (they follow the Google Landmarks v2 / Kaggle metric):

* a query whose relevant set is empty (GLDv2 ``Usage=Ignored``) is left out of the mean;
* a query in the solution without a prediction is scored as if its ranking were empty (0 for AP,
  precision, recall, nDCG and top-k accuracy; the worst value, 1, for NMRR);
* predictions for queries absent from the solution are ignored;
* a database id repeated in a ranking keeps its rank position but only its first occurrence can
  count as a hit (so a repeated correct answer cannot inflate a score).

Ranks below are 1-based: ``rel(i) = 1`` when the item at rank ``i`` is relevant (first occurrence),
``P(i) = (1/i) * sum_{j<=i} rel(j)``, and ``m_q`` is the number of relevant database items of query
``q``.

Oxford / Paris (Philbin et al. 2007) and their revisited versions (Radenovic et al. 2018) score one
query at a time with :func:`oxford_ap` / :func:`revisited_ap`; :func:`oxford_map` and
:func:`revisited_map` average those over queries.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Hashable, Iterable, List, Mapping, Optional, Sequence, Set

import numpy as np

__all__ = [
    "first_hit_ranks", "average_precision_at_k", "average_precision", "ndcg", "nmrr",
    "map_at_k", "mean_ap", "ndcg_at_k", "anmrr", "top_k_accuracy", "precision_at_k", "recall_at_k",
    "oxford_ap", "revisited_ap", "oxford_precision_at_k", "oxford_map", "revisited_map", "per_query_scores",
    "REVISITED_PROTOCOLS",
]

Predictions = Mapping[Hashable, Sequence[Hashable]]
Solution = Mapping[Hashable, Iterable[Hashable]]

REVISITED_PROTOCOLS = ("easy", "medium", "hard")


# ---------------------------------------------------------------------------------------------
# one query
# ---------------------------------------------------------------------------------------------

def first_hit_ranks(ranked: Sequence[Hashable], relevant: Set[Hashable],
                    k: Optional[int] = None) -> np.ndarray:
    """1-based ranks (sorted) at which a relevant id first appears among the first ``k`` entries of
    ``ranked`` (all entries when ``k`` is None). A repeated id keeps its position in the ranking
    but only its first occurrence is a hit."""
    if k is not None:
        ranked = ranked[:k]
    seen: Set[Hashable] = set()
    ranks: List[int] = []
    # one pass at C speed over the ranking, a Python step only per relevant entry
    for position in [i for i, item in enumerate(ranked) if item in relevant]:
        item = ranked[position]
        if item not in seen:
            seen.add(item)
            ranks.append(position + 1)
    return np.asarray(ranks, dtype=np.float64)


def average_precision_at_k(ranked: Sequence[Hashable], relevant: Set[Hashable], k: int = 100) -> float:
    """GLDv2 / Kaggle AP@k of one query:

        AP@k = 1 / min(m_q, k) * sum_{i=1..k} P(i) * rel(i)

    NaN when ``relevant`` is empty (the query is not scored)."""
    _check_k(k)
    m = len(relevant)
    if m == 0:
        return math.nan
    ranks = first_hit_ranks(ranked, relevant, k)
    if ranks.size == 0:
        return 0.0
    precisions = np.arange(1, ranks.size + 1) / ranks
    return float(precisions.sum() / min(m, k))


def average_precision(ranked: Sequence[Hashable], relevant: Set[Hashable]) -> float:
    """Non-interpolated average precision over the whole ranking:

        AP = 1 / m_q * sum_i P(i) * rel(i)

    Relevant items never retrieved contribute 0 (they still count in ``m_q``). NaN when
    ``relevant`` is empty. On a ranking of the whole database without tied scores this equals
    ``sklearn.metrics.average_precision_score``."""
    m = len(relevant)
    if m == 0:
        return math.nan
    ranks = first_hit_ranks(ranked, relevant)
    if ranks.size == 0:
        return 0.0
    return float((np.arange(1, ranks.size + 1) / ranks).sum() / m)


def ndcg(ranked: Sequence[Hashable], relevant: Set[Hashable], k: int = 100) -> float:
    """Normalised discounted cumulative gain at ``k`` with binary gains:

        DCG@k  = sum_{i=1..k} rel(i) / log2(i + 1)
        IDCG@k = sum_{i=1..min(m_q, k)} 1 / log2(i + 1)
        nDCG@k = DCG@k / IDCG@k

    NaN when ``relevant`` is empty."""
    _check_k(k)
    m = len(relevant)
    if m == 0:
        return math.nan
    ranks = first_hit_ranks(ranked, relevant, k)
    dcg = float((1.0 / np.log2(ranks + 1.0)).sum())
    ideal = float((1.0 / np.log2(np.arange(1, min(m, k) + 1) + 1.0)).sum())
    return dcg / ideal


def nmrr(ranked: Sequence[Hashable], relevant: Set[Hashable], max_ground_truth: int) -> float:
    """MPEG-7 normalised modified retrieval rank of one query (0 = perfect, 1 = nothing found):

        NG    = m_q,   K = min(4 * NG, 2 * GTM)      (GTM = ``max_ground_truth``, max NG over queries)
        Rank(r) = r if r <= K else 1.25 * K           for each relevant item at rank r
                                                      (items never retrieved: 1.25 * K)
        AVR   = (1 / NG) * sum_relevant Rank
        MRR   = AVR - 0.5 * (1 + NG)
        NMRR  = MRR / (1.25 * K - 0.5 * (1 + NG))

    NaN when ``relevant`` is empty."""
    ng = len(relevant)
    if ng == 0:
        return math.nan
    if max_ground_truth < ng:
        raise ValueError(f"max_ground_truth (GTM) = {max_ground_truth} is smaller than this query's "
                         f"{ng} relevant items; GTM is the largest relevant-set size over all queries")
    cutoff = min(4 * ng, 2 * max_ground_truth)
    ranks = first_hit_ranks(ranked, relevant, cutoff)  # hits beyond K all get 1.25 K
    penalty = 1.25 * cutoff
    total = float(ranks.sum()) + (ng - ranks.size) * penalty
    avr = total / ng
    mrr = avr - 0.5 * (1 + ng)
    return float(mrr / (penalty - 0.5 * (1 + ng)))


def oxford_ap(ranked_ids: Sequence[Hashable], positives: Iterable[Hashable],
              junk: Iterable[Hashable] = ()) -> float:
    """Average precision of one Oxford / Paris query, as the official ``compute_ap.cpp``.

    Junk ids are removed from the ranking first (ranks are counted after removal). Walking down
    the remaining ranking, at each rank ``j`` (1-based)

        recall_j    = hits_j / |positives|
        precision_j = hits_j / j
        AP += (recall_j - recall_{j-1}) * (precision_{j-1} + precision_j) / 2

    with ``recall_0 = 0`` and ``precision_0 = 1`` (the trapezoid under the precision-recall
    curve; each hit adds a recall step of ``1 / |positives|``). Positives never retrieved add
    nothing, so they count as missed. A repeated id is a hit only at its first occurrence.
    An id in both ``positives`` and ``junk`` is junk (the official code tests junk first).
    NaN when there are no positives (the revisited protocols leave such queries out)."""
    positives = set(positives)
    junk = set(junk)
    if not positives:
        return math.nan
    good = positives - junk
    watch = good | junk
    # one pass over the ranking; ranks after junk removal = position - junk entries before it
    flagged = [(i, item) for i, item in enumerate(ranked_ids) if item in watch]
    junk_positions = np.asarray([i for i, item in flagged if item in junk], dtype=np.int64)
    seen: Set[Hashable] = set()
    hit_positions = []
    for i, item in flagged:
        if item in good and item not in seen:
            seen.add(item)
            hit_positions.append(i)
    if not hit_positions:
        return 0.0
    hit_positions = np.asarray(hit_positions, dtype=np.int64)
    ranks = (hit_positions + 1 - np.searchsorted(junk_positions, hit_positions)).astype(np.float64)
    hits = np.arange(1, ranks.size + 1, dtype=np.float64)
    precision_at_hit = hits / ranks                           # hits_j / j at the hit's rank j
    # precision one rank before the hit: (hits - 1) / (j - 1), and 1 at the very first rank
    previous = np.where(ranks > 1, (hits - 1) / np.maximum(ranks - 1, 1), 1.0)
    return float(((previous + precision_at_hit) / 2).sum() / len(positives))


def revisited_ap(ranked_ids: Sequence[Hashable], easy: Iterable[Hashable], hard: Iterable[Hashable],
                 junk: Iterable[Hashable] = (), protocol: str = "medium") -> float:
    """AP of one query of revisited Oxford / Paris (Radenovic et al. 2018), :func:`oxford_ap` with

        easy:   positives = easy,          junk = junk + hard
        medium: positives = easy + hard,   junk = junk
        hard:   positives = hard,          junk = junk + easy

    NaN when the protocol leaves the query no positives."""
    easy, hard, junk = set(easy), set(hard), set(junk)
    protocol = protocol.lower()
    if protocol == "easy":
        return oxford_ap(ranked_ids, easy, junk | hard)
    if protocol == "medium":
        return oxford_ap(ranked_ids, easy | hard, junk)
    if protocol == "hard":
        return oxford_ap(ranked_ids, hard, junk | easy)
    raise ValueError(f"unknown revisited protocol {protocol!r}; expected one of {REVISITED_PROTOCOLS}")


def oxford_precision_at_k(ranked_ids: Sequence[Hashable], positives: Iterable[Hashable],
                          junk: Iterable[Hashable] = (), k: int = 10) -> float:
    """Precision at ``k`` of one query as the revisited benchmark's ``compute_map`` reports it
    (mP@1, 5, 10): junk removed from the ranking first, then

        k_q = min(rank of the last positive retrieved, k),   P@k = hits within the first k_q / k_q

    so a query with fewer than ``k`` positives, all ranked first, scores 1. 0 when no positive is
    retrieved; NaN when there are no positives (the query is left out, as for the AP)."""
    _check_k(k)
    positives, junk = set(positives), set(junk)
    if not positives:
        return math.nan
    good = positives - junk
    kept = [item for item in ranked_ids if item not in junk]
    ranks = first_hit_ranks(kept, good)
    if ranks.size == 0:
        return 0.0
    k_q = min(float(ranks[-1]), float(k))
    return float((ranks <= k_q).sum() / k_q)


# ---------------------------------------------------------------------------------------------
# over queries
# ---------------------------------------------------------------------------------------------

def _check_k(k: int) -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")


def _check_inputs(predictions, solution) -> None:
    if not isinstance(predictions, Mapping):
        raise TypeError(f"predictions must be a dict {{query_id: [db ids]}}, got {type(predictions).__name__}")
    if not isinstance(solution, Mapping):
        raise TypeError(f"solution must be a dict {{query_id: set of db ids}}, got {type(solution).__name__}")


def _scored(solution: Solution) -> Dict[Hashable, Set[Hashable]]:
    """Queries that count: those with at least one relevant item."""
    out = {}
    for qid, relevant in solution.items():
        relevant = relevant if isinstance(relevant, (set, frozenset)) else set(relevant)
        if relevant:
            out[qid] = relevant
    return out


def _ranking(predictions: Predictions, qid: Hashable) -> Sequence[Hashable]:
    ranked = predictions.get(qid)
    if ranked is None:
        return []
    if isinstance(ranked, np.ndarray):
        return ranked.tolist()
    if isinstance(ranked, (str, bytes)):
        raise TypeError(f"prediction for query {qid!r} is a string, expected a list of db ids")
    return ranked


def per_query_scores(metric: str, predictions: Predictions, solution: Solution,
                     k: int = 100, max_ground_truth: Optional[int] = None) -> Dict[Hashable, float]:
    """``{query_id: score}`` for every scored query (relevant set not empty) of ``solution``.

    ``metric`` is one of ``"ap@k"`` (GLDv2 AP@k), ``"ap"`` (full-ranking AP), ``"ndcg@k"``,
    ``"nmrr"``, ``"top@k"`` (1 if a hit in the first k), ``"precision@k"``, ``"recall@k"``.
    ``max_ground_truth``: NMRR's GTM (default: the largest relevant set of ``solution``)."""
    _check_inputs(predictions, solution)
    scored = _scored(solution)
    if metric in ("ap@k", "ndcg@k", "top@k", "precision@k", "recall@k"):
        _check_k(k)
    if metric == "ap@k":
        fn: Callable[[Sequence, Set], float] = lambda r, rel: average_precision_at_k(r, rel, k)
    elif metric == "ap":
        fn = average_precision
    elif metric == "ndcg@k":
        fn = lambda r, rel: ndcg(r, rel, k)
    elif metric == "nmrr":
        gtm = max_ground_truth if max_ground_truth is not None else max((len(rel) for rel in scored.values()),
                                                                        default=0)
        fn = lambda r, rel: nmrr(r, rel, gtm)
    elif metric == "top@k":
        fn = lambda r, rel: float(first_hit_ranks(r, rel, k).size > 0)
    elif metric == "precision@k":
        fn = lambda r, rel: first_hit_ranks(r, rel, k).size / k
    elif metric == "recall@k":
        fn = lambda r, rel: first_hit_ranks(r, rel, k).size / len(rel)
    else:
        raise ValueError(f"unknown metric {metric!r}; expected ap@k, ap, ndcg@k, nmrr, top@k, "
                         "precision@k or recall@k")
    return {qid: fn(_ranking(predictions, qid), rel) for qid, rel in scored.items()}


def _mean(scores: Dict[Hashable, float]) -> float:
    """Mean over scored queries; NaN when no query is scored."""
    if not scores:
        return math.nan
    return float(np.mean(list(scores.values())))


def map_at_k(predictions: Predictions, solution: Solution, k: int = 100) -> float:
    """Mean average precision at ``k`` as Google Landmarks v2 (Kaggle) defines it:

        mAP@k = (1 / Q) * sum_q AP@k(q),   AP@k(q) = 1 / min(m_q, k) * sum_{i=1..k} P(i) rel(i)

    over the ``Q`` queries of ``solution`` that have relevant items. In [0, 1]; NaN when no query
    is scored."""
    return _mean(per_query_scores("ap@k", predictions, solution, k))


def mean_ap(predictions: Predictions, solution: Solution) -> float:
    """Mean over queries of the non-interpolated AP of the whole ranking (:func:`average_precision`):
    ``AP(q) = 1 / m_q * sum_i P(i) rel(i)`` with ``i`` over every rank given."""
    return _mean(per_query_scores("ap", predictions, solution))


def ndcg_at_k(predictions: Predictions, solution: Solution, k: int = 100) -> float:
    """Mean over queries of :func:`ndcg` (binary gains, log2 discount, ideal DCG from
    ``min(m_q, k)`` relevant items)."""
    return _mean(per_query_scores("ndcg@k", predictions, solution, k))


def anmrr(predictions: Predictions, solution: Solution) -> float:
    """MPEG-7 average normalised modified retrieval rank: mean over queries of :func:`nmrr` with
    ``GTM = max_q NG(q)``. In [0, 1], LOWER is better (0: every query's relevant items ranked
    first)."""
    return _mean(per_query_scores("nmrr", predictions, solution))


def top_k_accuracy(predictions: Predictions, solution: Solution, k: int = 1) -> float:
    """Fraction of queries with at least one relevant item among their first ``k`` results."""
    return _mean(per_query_scores("top@k", predictions, solution, k))


def precision_at_k(predictions: Predictions, solution: Solution, k: int = 10) -> float:
    """Mean over queries of ``(1/k) * sum_{i=1..k} rel(i)`` (a ranking shorter than ``k`` is
    padded with misses)."""
    return _mean(per_query_scores("precision@k", predictions, solution, k))


def recall_at_k(predictions: Predictions, solution: Solution, k: int = 100) -> float:
    """Mean over queries of ``(1/m_q) * sum_{i=1..k} rel(i)``."""
    return _mean(per_query_scores("recall@k", predictions, solution, k))


def oxford_map(predictions: Predictions, positives: Mapping[Hashable, Iterable[Hashable]],
               junk: Optional[Mapping[Hashable, Iterable[Hashable]]] = None,
               per_query: bool = False):
    """Mean of :func:`oxford_ap` over the queries of ``positives`` that have positives (a query
    without a prediction scores 0). ``per_query=True`` returns ``{query_id: AP}`` instead."""
    junk = junk or {}
    scores = {}
    for qid, pos in positives.items():
        ap = oxford_ap(_ranking(predictions, qid), pos, junk.get(qid, ()))
        if not math.isnan(ap):
            scores[qid] = ap
    return scores if per_query else _mean(scores)


def revisited_map(predictions: Predictions, easy: Mapping[Hashable, Iterable[Hashable]],
                  hard: Mapping[Hashable, Iterable[Hashable]],
                  junk: Optional[Mapping[Hashable, Iterable[Hashable]]] = None,
                  protocol: str = "medium", per_query: bool = False):
    """Mean of :func:`revisited_ap` over queries; queries left without positives by ``protocol``
    are excluded (as in Radenovic et al.'s evaluation code). ``per_query=True`` returns
    ``{query_id: AP}``."""
    junk = junk or {}
    scores = {}
    for qid in dict.fromkeys([*easy, *hard]):
        ap = revisited_ap(_ranking(predictions, qid), easy.get(qid, ()), hard.get(qid, ()),
                          junk.get(qid, ()), protocol)
        if not math.isnan(ap):
            scores[qid] = ap
    return scores if per_query else _mean(scores)


# metrics other benchmarks of the field define (formulas and conventions there)
from retrieval.evaluation.fieldmetrics import (cosine_ranking, gap, map_at_r, mean_precision_at_k, os3dor_scores,  # noqa: E402
                           precision_recall_curve, shape_tiers)

__all__ += ["os3dor_scores", "cosine_ranking", "mean_precision_at_k", "gap", "map_at_r", "shape_tiers",
            "precision_recall_curve"]
