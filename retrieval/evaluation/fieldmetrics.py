"""Metrics other benchmarks of the field define, next to the standard ones of :mod:`retrieval.evaluation.metrics`
(which re-exports every public name here). Each is stated with its formula; where a benchmark's
convention differs from the standard metric of the same name, both are given.

Notation: a query's ranking of the targets, ``rel(i) = 1`` when the item at 1-based rank ``i`` is
relevant, ``P(i) = (1/i) sum_{j<=i} rel(j)``, ``m`` = the number of relevant targets.

Open-set 3D object retrieval (OS-MN40-core, OS-ESB-core, OS-NTU-core, OS-ABO-core; the SHREC'22
track's published evaluation), :func:`os3dor_scores`, relevant = same label, ranking by cosine
distance ``1 - q.t / (|q| |t|)`` over the WHOLE target set:

* mAP, interpolated: at the n-th hit (rank ``r_n``) the precision is replaced by the largest
  precision at that hit or any later one, ``IP_n = max_{n' >= n} P(r_n')``, and
  ``AP = (1/m) sum_n IP_n`` over every hit of the full ranking. Standard AP
  (:func:`retrieval.evaluation.metrics.average_precision`) averages ``P(r_n)`` itself, so interpolated AP >=
  standard AP.
* NDCG@100: ``DCG = sum_{i<=100} rel(i) / log2(i + 1)`` divided by the DCG of a list relevant at
  EVERY one of the 100 positions, ``sum_{i<=100} 1 / log2(i + 1)``, whatever m is. The standard
  nDCG (:func:`retrieval.evaluation.metrics.ndcg`) divides by an ideal list of ``min(m, 100)`` hits, so a
  query with few relevant items can reach 1 there, not here.
* ANMRR: ``NG`` = the number of targets with the query's label, ``K = min(4 NG, 2 GTM)`` with
  ``GTM = max NG`` over all queries; ranks beyond NG are not looked at: a relevant item at rank
  ``r <= NG`` costs ``r``, every other relevant item ``K + 1``;
  ``AVR = (1/NG) sum cost``, ``MRR = AVR - 0.5 - NG/2``, ``NMRR = MRR / (K + 0.5 - 0.5 NG)``,
  ANMRR = mean NMRR (lower is better). The MPEG-7 standard (:func:`retrieval.evaluation.metrics.nmrr`) looks at
  the first K ranks (a hit at ``NG < r <= K`` costs r).

Revisited Oxford / Paris (Radenovic et al. 2018; revisitop's ``compute_map``), :func:`mean_precision_at_k`:
junk items are removed from the ranking first; with ``r_last`` the rank of the query's last retrieved
positive, ``k' = min(r_last, k)`` and ``P@k = (1/k') sum_{i<=k'} rel(i)`` (so a query whose positives are
all in its first 2 ranks scores 1 at k = 10, where the plain precision at 10 is 0.2); a query with no
positive retrieved scores 0, one without positives is left out; mP@k is the mean.

GLDv2 recognition (Kaggle), :func:`gap`: each query has one predicted label with a confidence;
sort the N predictions by confidence (descending), ``GAP = (1/M) sum_{i<=N} P(i) rel(i)`` with
``P(i)`` the precision of the first i predictions and M the number of queries that have a true
landmark (non-landmark queries count in the ranking but add no relevant item).

mAP@R (Musgrave et al., "A Metric Learning Reality Check", 2020), :func:`map_at_r`: ``R = m``;
``AP@R = (1/R) sum_{i<=R} P(i) rel(i)``.

Shape retrieval (Princeton Shape Benchmark), :func:`shape_tiers`: with ``C = m`` (the query's class
size minus the query, when it is in the database), first tier ``FT = (1/C) sum_{i<=C} rel(i)``,
second tier ``ST = (1/C) sum_{i<=2C} rel(i)``, and the F-measure of the first 32 results,
``F = 2 P R / (P + R)`` with ``P = hits/32`` and ``R = hits/C``.
"""
from __future__ import annotations

from typing import Dict, Hashable, Iterable, Mapping, Optional, Sequence

import numpy as np

__all__ = ["os3dor_scores", "cosine_ranking", "mean_precision_at_k", "gap", "map_at_r", "shape_tiers",
           "precision_recall_curve"]


def cosine_ranking(query_vectors, target_vectors) -> np.ndarray:
    """(Q, T) target indices per query sorted by increasing cosine distance (stable: ties keep target
    order)."""
    q = np.asarray(query_vectors, dtype=np.float64)
    t = np.asarray(target_vectors, dtype=np.float64)
    if q.ndim != 2 or t.ndim != 2 or q.shape[1] != t.shape[1]:
        raise ValueError(f"query vectors {q.shape} and target vectors {t.shape} must be (n, D) with one D")
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    return np.argsort(1.0 - q @ t.T, axis=1, kind="stable")


def _relevance(query_labels, target_labels, order: np.ndarray) -> np.ndarray:
    ql, tl = np.asarray(query_labels), np.asarray(target_labels)
    if len(ql) != order.shape[0] or len(tl) != order.shape[1]:
        raise ValueError(f"{len(ql)} query labels / {len(tl)} target labels for {order.shape} vectors")
    return (tl[order] == ql[:, None])


def os3dor_scores(query_vectors, query_labels, target_vectors, target_labels) -> Dict[str, float]:
    """``{"map", "ndcg@100", "anmrr"}`` with the open-set 3D retrieval conventions (module docstring).
    Queries without a relevant target are left out of the means."""
    rel = _relevance(query_labels, target_labels, cosine_ranking(query_vectors, target_vectors))
    ng = rel.sum(axis=1)
    keep = ng > 0
    if not keep.any():
        raise ValueError("no query has a target with its label")
    rel, ng = rel[keep], ng[keep]
    n_targets = rel.shape[1]
    ranks = np.arange(1, n_targets + 1)
    precision = np.cumsum(rel, axis=1) / ranks
    aps = []
    for row, p, m in zip(rel, precision, ng):
        at_hits = p[row]
        interpolated = np.maximum.accumulate(at_hits[::-1])[::-1]
        aps.append(interpolated.sum() / m)
    depth = min(100, n_targets)
    discount = 1.0 / np.log2(np.arange(2, depth + 2))
    ndcg = (rel[:, :depth] @ discount) / (1.0 / np.log2(np.arange(2, 102))).sum()
    gtm = int(ng.max())
    nmrr = []
    for row, g in zip(rel, ng):
        k = min(4 * g, 2 * gtm)
        hit_ranks = np.flatnonzero(row[:g]) + 1
        cost = hit_ranks.sum() + (g - len(hit_ranks)) * (k + 1)
        mrr = cost / g - 0.5 - g / 2
        nmrr.append(mrr / (k + 0.5 - 0.5 * g))
    return {"map": float(np.mean(aps)), "ndcg@100": float(np.mean(ndcg)), "anmrr": float(np.mean(nmrr))}


def _hits(ranked: Sequence[Hashable], relevant, junk=()) -> np.ndarray:
    junk = set(junk)
    return np.asarray([r in relevant for r in ranked if r not in junk], dtype=bool)


def mean_precision_at_k(predictions: Mapping[Hashable, Sequence[Hashable]],
                        positives: Mapping[Hashable, Iterable[Hashable]],
                        junk: Optional[Mapping[Hashable, Iterable[Hashable]]] = None,
                        k: int = 10) -> float:
    """revisitop's mP@k (module docstring): junk removed, the cut at the last positive's rank."""
    scores = []
    for qid, pos in positives.items():
        pos = set(pos)
        if not pos:
            continue
        ranks = np.flatnonzero(_hits(predictions.get(qid, []), pos, (junk or {}).get(qid, ()))) + 1
        if len(ranks) == 0:
            scores.append(0.0)
            continue
        cut = min(int(ranks.max()), k)
        scores.append(float((ranks <= cut).sum() / cut))
    return float(np.mean(scores)) if scores else float("nan")


def gap(predicted_labels: Mapping[Hashable, Hashable], confidences: Mapping[Hashable, float],
        true_labels: Mapping[Hashable, Optional[Hashable]]) -> float:
    """GLDv2 recognition Global Average Precision (module docstring). ``true_labels[q]`` is None for
    a query without a landmark; a query without a prediction adds no term but still counts in M."""
    m = sum(1 for v in true_labels.values() if v is not None)
    if m == 0:
        raise ValueError("no query has a true landmark: GAP is undefined")
    order = sorted((q for q in predicted_labels if q in true_labels), key=lambda q: -float(confidences[q]))
    correct = np.asarray([true_labels[q] is not None and predicted_labels[q] == true_labels[q] for q in order])
    if len(correct) == 0:
        return 0.0
    precision = np.cumsum(correct) / np.arange(1, len(correct) + 1)
    return float((precision * correct).sum() / m)


def map_at_r(predictions: Mapping[Hashable, Sequence[Hashable]],
             solution: Mapping[Hashable, Iterable[Hashable]]) -> float:
    """mAP@R (module docstring); queries without relevant items are left out."""
    scores = []
    for qid, rel in solution.items():
        rel = set(rel)
        if not rel:
            continue
        r = len(rel)
        hits = _hits(list(predictions.get(qid, []))[:r], rel)
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        scores.append(float((precision * hits).sum() / r))
    return float(np.mean(scores)) if scores else float("nan")


def shape_tiers(predictions: Mapping[Hashable, Sequence[Hashable]],
                solution: Mapping[Hashable, Iterable[Hashable]], f_depth: int = 32) -> Dict[str, float]:
    """Mean first tier, second tier and F-measure at ``f_depth`` (module docstring)."""
    ft, st, fm = [], [], []
    for qid, rel in solution.items():
        rel = set(rel)
        if not rel:
            continue
        c = len(rel)
        hits = _hits(predictions.get(qid, []), rel)
        ft.append(hits[:c].sum() / c)
        st.append(hits[:2 * c].sum() / c)
        h = hits[:f_depth].sum()
        p, r = h / f_depth, h / c
        fm.append(0.0 if h == 0 else 2 * p * r / (p + r))
    if not ft:
        return {"first_tier": float("nan"), "second_tier": float("nan"), "f_measure": float("nan")}
    return {"first_tier": float(np.mean(ft)), "second_tier": float(np.mean(st)), "f_measure": float(np.mean(fm))}


def precision_recall_curve(predictions: Mapping[Hashable, Sequence[Hashable]],
                           solution: Mapping[Hashable, Iterable[Hashable]],
                           recall_levels: Sequence[float] = tuple(np.linspace(0, 1, 11))) -> Dict[str, list]:
    """The 11-point (by default) interpolated precision-recall curve averaged over queries:
    ``P_interp(r) = max {P(i) : R(i) >= r}`` (0 when the ranking never reaches recall r)."""
    levels = np.asarray(recall_levels, dtype=np.float64)
    curves = []
    for qid, rel in solution.items():
        rel = set(rel)
        if not rel:
            continue
        hits = _hits(predictions.get(qid, []), rel)
        if len(hits) == 0:
            curves.append(np.zeros(len(levels)))
            continue
        cum = np.cumsum(hits)
        precision = cum / np.arange(1, len(hits) + 1)
        recall = cum / len(rel)
        best_after = np.maximum.accumulate(precision[::-1])[::-1]
        idx = np.searchsorted(recall, levels - 1e-12, side="left")
        curves.append(np.where(idx < len(hits), best_after[np.minimum(idx, len(hits) - 1)], 0.0))
    if not curves:
        raise ValueError("no query has relevant items")
    return {"recall": levels.tolist(), "precision": np.mean(curves, axis=0).tolist()}
