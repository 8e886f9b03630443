"""Score a ranking against a dataset's ground truth with the protocol the dataset comes with.

``evaluate(dataset, predictions, protocol)`` returns a flat dict of metric name -> value (what the
benchmarks write into results.json); ``evaluate_per_query`` returns ``{metric name: {query id:
score}}`` for plots and per-query analysis.

Protocols
---------
``"gldv2"``     Google Landmarks v2 / Kaggle: ``map@k`` over all scored queries, plus ``map@k_public``
                and ``map@k_private`` over the queries of each ``Usage`` split present (queries
                marked ``Ignored`` never count).
``"oxford"``    Oxford / Paris: ``oxford_map``, the mean of :func:`retrieval.evaluation.metrics.oxford_ap`
                (positives = good + ok, junk removed). Give the FULL ranking of each query:
                positives that are not ranked count as missed.
``"revisited"`` revisited Oxford / Paris: ``revisited_map_easy``, ``_medium``, ``_hard`` and the
                benchmark's mean precision at 1, 5 and 10, ``revisited_mp@10_medium`` ...
                (:func:`retrieval.evaluation.metrics.oxford_precision_at_k`; needs the ``easy`` / ``hard``
                lists in the ground truth).
``"general"``   multi-view / labelled-folder datasets (COIL): ``map@k``, ``mean_ap``,
                ``ndcg@k``, ``anmrr``, ``top1``, ``top10``, ``precision@10``, ``recall@k``.
``"landmark"``  the landmark-level relevance GLDv2 uses: every image of the query's landmark is
                relevant, nothing is ignored. ``landmark_map`` = mean AP over the full ranking with
                positives = positives and junk of every query that shares the query's label (on
                Oxford / Paris: good, ok AND junk of the query's landmark; on GLDv2 and labelled
                folders: the label's images). Only the query's own image (when it is also a database
                entry) is left out. Give the FULL ranking.
``"holidays"``  INRIA Holidays: ``holidays_map``, the mean of the same trapezoid AP as Oxford's (the
                benchmark's ``holidays_map.py`` computes it so) with the query's own image removed.
``"ukbench"``   UKBench: ``ns_score``, the mean number of the query's 4 group images (itself
                included) in its top 4 (out of 4), and ``mean_ap``.
``"all"``       ``general`` plus every other protocol the ground truth supports.

A dataset given distractors (:mod:`retrieval.datasets.distractors`) has their count in
:func:`evaluate`'s result (``distractors``).

:func:`required_depth` says how long each query's ranking must be for a protocol's figures to be
exact (``retrieval evaluate`` refuses shorter rankings).

Junk. Each query's ``QueryTruth.junk`` (Oxford junk; the query's own image under
:func:`retrieval.datasets.every_nth_query`) is removed from its ranking before the ``general`` and
``gldv2`` metrics see it, as the Oxford AP does, so junk neither helps nor hurts (removing it twice,
e.g. after :func:`retrieval.datasets.drop_junk`, changes nothing).
"""
from __future__ import annotations

import math
from typing import Dict, Hashable, List, Mapping, Optional, Sequence, Union

from retrieval.evaluation import metrics
from retrieval.datasets.dataset import RetrievalDataset
from retrieval.datasets.splits import drop_junk

__all__ = ["evaluate", "evaluate_per_query", "summarize", "TruthTables", "ranking_to_predictions", "required_depth", "landmark_solution",
           "PROTOCOLS", "main_metric", "metric_label"]

PROTOCOLS = ("gldv2", "oxford", "revisited", "landmark", "general", "holidays", "ukbench", "all")
USAGE_SPLITS = ("Public", "Private")
#: the mP@k the revisited benchmark reports beside mAP
REVISITED_PRECISION_AT = (1, 5, 10)

Predictions = Mapping[Hashable, Sequence[Hashable]]


def ranking_to_predictions(ranking, query_ids: Optional[Sequence[Hashable]] = None) -> Dict[Hashable, List]:
    """``{query_id: [db ids]}`` from a :class:`retrieval.indexing.index.Ranking` (rows named by
    ``query_ids``, else the ranking's own query ids) or from such a dict (returned as is)."""
    if isinstance(ranking, Mapping):
        return dict(ranking)
    return ranking.to_predictions(query_ids)


def _as_predictions(dataset: RetrievalDataset, predictions) -> Dict[Hashable, List]:
    if isinstance(predictions, Mapping):
        return dict(predictions)
    # a Ranking: its rows are the dataset's queries unless it names them itself
    query_ids = predictions.query_ids if predictions.query_ids is not None else dataset.query_ids
    return predictions.to_predictions(query_ids)


def _check_ids(dataset: RetrievalDataset, predictions: Dict[Hashable, List]) -> None:
    """Refuse predictions whose query or database ids are not the dataset's (e.g. row numbers or
    ints where the dataset has string ids): they would silently score 0."""
    known_queries = set(dataset.query_ids)
    scored = [q for q in predictions if q in known_queries]
    if predictions and not scored:
        raise ValueError(f"no prediction is for a query of dataset {dataset.name!r}: predictions have "
                         f"query ids like {next(iter(predictions))!r}, the dataset like "
                         f"{dataset.query_ids[0] if dataset.query_ids else None!r}")
    known_db = set(dataset.db_ids)
    unknown = []
    for q in scored:
        unknown.extend(x for x in predictions[q] if x not in known_db)
        if len(unknown) >= 5:
            break
    if unknown:
        raise ValueError(f"predictions rank ids that are not database ids of dataset {dataset.name!r}: "
                         f"{unknown[:5]} (database ids look like {dataset.db_ids[0]!r})")


def _has_revisited(dataset: RetrievalDataset) -> bool:
    truths = [t for t in dataset.ground_truth.values()]
    return bool(truths) and all(t.easy is not None and t.hard is not None for t in truths)


def _has_usage(dataset: RetrievalDataset) -> bool:
    return any(t.usage in USAGE_SPLITS for t in dataset.ground_truth.values())


def _check_scored_truth(dataset: RetrievalDataset) -> None:
    """Kaggle / DELF score a Public or Private query without relevant images 0; the metrics leave
    queries without relevant images out of the mean (which would raise the score), so such a query
    is refused: it must be marked Ignored."""
    empty = [q for q, t in _query_truths(dataset) if t.usage in USAGE_SPLITS and not t.positives]
    if empty:
        raise ValueError(f"dataset {dataset.name!r}: {len(empty)} {dataset.ground_truth[empty[0]].usage} "
                         f"quer{'y has' if len(empty) == 1 else 'ies have'} no relevant images (e.g. "
                         f"{empty[0]!r}); Kaggle scores such a query 0: give its images or mark it Ignored")


def _query_truths(dataset: RetrievalDataset):
    """(qid, truth) for the dataset's queries that have ground truth and are not Ignored."""
    for qid in dataset.query_ids:
        truth = dataset.ground_truth.get(qid)
        if truth is not None and truth.usage != "Ignored":
            yield qid, truth


def required_depth(dataset: RetrievalDataset, protocol: str, k: int = 100) -> int:
    """Results per query a ranking needs for ``protocol``'s figures to be exact: ``k`` for the
    cut-off metrics of ``gldv2`` (map@k), the whole database for the others (their AP counts a
    positive that is not ranked as missed, so a short ranking scores lower than the descriptor is)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    n = len(dataset.db_ids)
    return min(int(k), n) if protocol == "gldv2" else n


def landmark_solution(dataset: RetrievalDataset) -> Dict[Hashable, set]:
    """``{query id: relevant db ids}`` of the landmark-level protocol (module docstring)."""
    truths = dict(_query_truths(dataset))
    labels = dataset.query_labels
    if labels is None:
        groups = {q: [q] for q in truths}
    else:
        by_label: Dict[str, List] = {}
        label_of = dict(zip(dataset.query_ids, labels))
        for q in truths:
            by_label.setdefault(label_of[q], []).append(q)
        groups = {q: by_label[label_of[q]] for q in truths}
    db = set(dataset.db_ids)
    out = {}
    for q in truths:
        relevant = set()
        for other in groups[q]:
            relevant |= truths[other].positives | truths[other].junk
        # the query's own image (a database entry under every_nth_query) is neither relevant nor ranked
        out[q] = (relevant & db) - {q}
    return out


def revisited_precision(preds, easy, hard, junk, level: str, k: int) -> Dict[Hashable, float]:
    """``{query id: P@k}`` under revisited ``level`` (the benchmark's mP@k, per query), for the
    queries the level leaves positives."""
    from retrieval.datasets.oxford import revisited_truth

    out = {}
    for q in easy:
        t = revisited_truth(easy[q], hard.get(q, ()), junk.get(q, ()), level)
        if t.positives:
            out[q] = metrics.oxford_precision_at_k(preds.get(q, []), t.positives, t.junk, k)
    return out


def evaluate_per_query(dataset: RetrievalDataset, predictions, protocol: str = "all",
                       k: int = 100, check_ids: bool = True) -> Dict[str, Dict[Hashable, float]]:
    """``{metric name: {query id: score}}`` for the metrics of ``protocol`` (see module doc).
    ``predictions`` is ``{query id: [db ids best first]}`` or a :class:`Ranking` whose rows are
    ``dataset.query_ids``."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    preds = _as_predictions(dataset, predictions)
    if check_ids:
        _check_ids(dataset, preds)
    return TruthTables(dataset, protocol, k).scores(preds)


def _only(mapping: Mapping, only) -> Dict:
    return dict(mapping) if only is None else {q: v for q, v in mapping.items() if q in only}


class TruthTables:
    """The relevance tables of one protocol on one dataset, built once, so that rankings can be
    scored a block of queries at a time (:mod:`retrieval.evaluation.streaming`) with exactly the
    figures of :func:`evaluate_per_query`."""

    def __init__(self, dataset: RetrievalDataset, protocol: str, k: int = 100):
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
        self.dataset, self.protocol, self.k = dataset, protocol, k
        self.solution = dataset.solution()
        # NMRR normalises by the largest relevant set over ALL queries, not a block's
        self.max_ground_truth = max((len(r) for r in self.solution.values()), default=0)
        self.usage = protocol == "gldv2" or (protocol == "all" and _has_usage(dataset))
        if self.usage:
            _check_scored_truth(dataset)
            self.splits = {split: dataset.solution([split]) for split in USAGE_SPLITS}
        self.landmark = landmark_solution(dataset) if protocol == "landmark" else None
        self.truths = list(_query_truths(dataset))
        self.revisited = protocol == "revisited" or (protocol == "all" and _has_revisited(dataset))
        if self.revisited and not _has_revisited(dataset):
            raise ValueError(f"dataset {dataset.name!r} has no revisited easy/hard ground truth; use "
                             "protocol='oxford'")

    def scores(self, preds: Dict[Hashable, List], only=None) -> Dict[str, Dict[Hashable, float]]:
        """Per-query scores of ``preds`` for the queries in ``only`` (all queries when None; a query
        without a prediction scores as an empty ranking)."""
        protocol, k = self.protocol, self.k
        out: Dict[str, Dict[Hashable, float]] = {}
        # the Oxford / revisited APs remove junk themselves; the other metrics get junk-free rankings
        clean = drop_junk(self.dataset, preds) if protocol in ("general", "gldv2", "all") else preds
        solution = _only(self.solution, only)
        if protocol in ("general", "all"):
            out[f"map@{k}"] = metrics.per_query_scores("ap@k", clean, solution, k)
            out["mean_ap"] = metrics.per_query_scores("ap", clean, solution)
            out[f"ndcg@{k}"] = metrics.per_query_scores("ndcg@k", clean, solution, k)
            out["nmrr"] = metrics.per_query_scores("nmrr", clean, solution, max_ground_truth=self.max_ground_truth)
            out["top1"] = metrics.per_query_scores("top@k", clean, solution, 1)
            out["top10"] = metrics.per_query_scores("top@k", clean, solution, 10)
            out["precision@10"] = metrics.per_query_scores("precision@k", clean, solution, 10)
            out[f"recall@{k}"] = metrics.per_query_scores("recall@k", clean, solution, k)
        if self.usage:
            out[f"map@{k}"] = metrics.per_query_scores("ap@k", clean, solution, k)
            for split, split_solution in self.splits.items():
                if split_solution:
                    out[f"map@{k}_{split.lower()}"] = metrics.per_query_scores(
                        "ap@k", clean, _only(split_solution, only), k)
        if protocol == "landmark":
            landmark = _only(self.landmark, only)
            own = {q: [d for d in preds.get(q, []) if d != q] for q in landmark}
            out["landmark_map"] = metrics.per_query_scores("ap", own, landmark)
        truths = [(q, t) for q, t in self.truths if only is None or q in only]
        if protocol in ("oxford", "all", "holidays"):
            name = "holidays_map" if protocol == "holidays" else "oxford_map"
            out[name] = metrics.oxford_map(preds, {q: t.positives for q, t in truths},
                                           {q: t.junk for q, t in truths}, per_query=True)
        if protocol == "ukbench":
            out["ns_score"] = {q: 4 * v for q, v in metrics.per_query_scores("precision@k", preds, solution, 4).items()}
            out["mean_ap"] = metrics.per_query_scores("ap", preds, solution)
        if self.revisited:
            easy = {q: t.easy for q, t in truths}
            hard = {q: t.hard for q, t in truths}
            junk = {q: t.junk for q, t in truths}
            for level in metrics.REVISITED_PROTOCOLS:
                out[f"revisited_map_{level}"] = metrics.revisited_map(preds, easy, hard, junk, level, per_query=True)
            for level in metrics.REVISITED_PROTOCOLS:
                for k_p in REVISITED_PRECISION_AT:
                    out[f"revisited_mp@{k_p}_{level}"] = revisited_precision(preds, easy, hard, junk, level, k_p)
        return out


def summarize(dataset: RetrievalDataset, per_query: Dict[str, Dict[Hashable, float]]) -> Dict[str, Union[float, int]]:
    """:func:`evaluate`'s result from per-query scores: means (``nmrr`` reported as ``anmrr``),
    ``num_queries`` and the dataset's distractor count."""
    result: Dict[str, Union[float, int]] = {}
    for name, scores in per_query.items():
        value = float(sum(scores.values()) / len(scores)) if scores else math.nan
        result["anmrr" if name == "nmrr" else name] = value
    main = next(iter(per_query.values()), {})
    result["num_queries"] = len(main)
    if "distractors" in dataset.metadata:
        result["distractors"] = int(dataset.metadata["distractors"])
    return result


def evaluate(dataset: RetrievalDataset, predictions, protocol: str = "all", k: int = 100,
             check_ids: bool = True) -> Dict[str, Union[float, int]]:
    """Metrics of ``protocol`` as ``{name: value}`` (means over scored queries; ``anmrr`` is the
    mean NMRR, lower is better), plus ``num_queries`` (queries scored by the protocol's main
    metric). With ``check_ids`` predictions naming ids unknown to the dataset are refused."""
    return summarize(dataset, evaluate_per_query(dataset, predictions, protocol, k, check_ids))


def main_metric(protocol: str, k: int = 100) -> str:
    """The per-query metric a protocol is reported and chosen by (the one table): ``map@k`` for
    ``gldv2``, ``oxford_map`` / ``landmark_map`` / ``revisited_map_medium`` for the landmark protocols,
    ``mean_ap`` for ``general`` and ``all``."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    return {"gldv2": f"map@{k}", "oxford": "oxford_map", "landmark": "landmark_map",
            "revisited": "revisited_map_medium"}.get(protocol, "mean_ap")


def metric_label(metric: str) -> str:
    """How tables name a metric: ``oxford mAP``, ``landmark mAP``, else the metric's key."""
    return {"oxford_map": "oxford mAP", "landmark_map": "landmark mAP"}.get(metric, metric)

