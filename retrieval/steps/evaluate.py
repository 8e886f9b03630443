"""``retrieval evaluate``: a ranking x a dataset's ground truth -> metrics (JSON).

``protocol`` is one protocol of :mod:`retrieval.evaluation.evaluate` or several, comma-separated, reported side by
side (default: the dataset kind's own, :data:`retrieval.datasets.open.DEFAULT_PROTOCOL`; Oxford and
Paris get the official ``oxford`` protocol and the GLDv2-style ``landmark`` one).

A ranking too short for its protocol is refused: a protocol that scores the full ranking counts
every positive that is not ranked as missed, so a ranking cut at 100 reports a lower figure than the
descriptor earns (measured on Oxford: 0.609 at k=100 for a descriptor whose full-ranking mAP is 0.687).
``allow_short=True`` (``--allow-short``) scores it anyway, with a warning on stderr and the depth in
the result (``short_ranking``), as a lower bound.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Union

from retrieval.core.config import Config, ConfigError
from retrieval.datasets.dataset import RetrievalDataset
from retrieval.datasets.open import DEFAULT_PROTOCOL, DatasetConfig, open_dataset

__all__ = ["EvaluateConfig", "ShortRankingError", "main", "score", "score_blocks", "score_per_query"]

#: query x result entries per block of the streaming evaluation (about 16 MB of references + the lists)
BLOCK_ENTRIES = 2_000_000


class ShortRankingError(ValueError):
    """A ranking holds fewer results per query than its protocol needs."""


@dataclass(frozen=True)
class EvaluateConfig(Config):
    """``protocol``: comma-separated protocols ("" = the dataset kind's default); ``k``: cut-off of
    map@k / ndcg@k / recall@k; ``allow_short``: score a too-short ranking (as a lower bound)."""

    protocol: str = ""
    k: int = 100
    allow_short: bool = False

    def check(self) -> None:
        from retrieval.evaluation.evaluate import PROTOCOLS

        for name in self.protocols():
            if name not in PROTOCOLS:
                raise ConfigError(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
        if self.k < 1:
            raise ConfigError(f"k must be positive, got {self.k}")

    def protocols(self, dataset_kind: Optional[str] = None):
        text = self.protocol or DEFAULT_PROTOCOL.get(dataset_kind, "general")
        return [p.strip() for p in text.split(",") if p.strip()]


def score(conf: EvaluateConfig, predictions: Dict[Any, list], dataset: RetrievalDataset,
          dataset_kind: Optional[str] = None, source: str = "ranking") -> Dict[str, Any]:
    """Metrics of ``predictions`` (``{query id: [db ids best first]}``) under every protocol of
    ``conf``, after the depth check (module docstring)."""
    ranked = [len(predictions[q]) for q in dataset.solution() if q in predictions]
    return score_blocks(conf, [predictions], dataset, dataset_kind, source, depth_bound=min(ranked, default=None))


def score_blocks(conf: EvaluateConfig, blocks: Iterable[Dict[Any, list]], dataset: RetrievalDataset,
                 dataset_kind: Optional[str] = None, source: str = "ranking",
                 depth_bound: Optional[int] = None) -> Dict[str, Any]:
    """:func:`score` of a ranking given as consecutive blocks of ``{query id: [db ids]}`` (one
    pass, one block in memory at a time: :mod:`retrieval.evaluation.streaming`); ``depth_bound``
    (the ranking's k, when known) refuses a too-short ranking before the pass."""
    from retrieval.evaluation.evaluate import required_depth
    from retrieval.evaluation.streaming import StreamingEvaluation

    protocols = conf.protocols(dataset_kind)
    scored = dataset.solution()
    result: Dict[str, Any] = {"protocol": ",".join(protocols)}
    need = max(required_depth(dataset, p, conf.k) for p in protocols)
    if depth_bound is not None and depth_bound < need and scored:
        _short(conf, source, dataset, result, depth_bound, need)
    try:
        evaluations = [StreamingEvaluation(dataset, p, conf.k,
                                           prepare=lambda block, p=p: _without_junk(dataset, block, p))
                       for p in protocols]
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None
    depth: Optional[int] = None
    seen: set = set()
    for block in blocks:
        lengths = [len(ranked) for q, ranked in block.items() if q in scored]
        if lengths:
            depth = min(lengths) if depth is None else min(depth, min(lengths))
        seen.update(block)
        for evaluation in evaluations:
            try:
                evaluation.add(block)
            except ValueError as exc:
                raise ValueError(f"{source}: {exc}") from None
    if depth is not None and depth < need:
        if "short_ranking" in result:  # missing results (approximate search) make it shorter than k
            result["short_ranking"]["depth"] = min(depth, result["short_ranking"]["depth"])
        else:
            _short(conf, source, dataset, result, depth, need)
    for evaluation in evaluations:
        try:
            result.update(evaluation.result())
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
    result["queries_without_prediction"] = sum(1 for q in scored if q not in seen)
    result["bad_files"] = len(dataset.bad_files)
    return result


def _short(conf: EvaluateConfig, source: str, dataset: RetrievalDataset, result: Dict[str, Any], depth: int,
           need: int) -> None:
    """Refuse a ranking of ``depth`` results where ``need`` are needed, or (``allow_short``) warn and note it."""
    message = (f"{source}: ranks {depth} of {len(dataset.db_ids)} database images for some query; "
               f"protocol {result['protocol']!r} needs {need} (a positive that is not ranked counts as "
               f"missed, so the figures would be too low)")
    if not conf.allow_short:
        raise ShortRankingError(f"{message}; search again with the default k (the whole database) or "
                                f"--k {need}, or pass --allow-short to score it as a lower bound")
    print(f"retrieval: WARNING: {message}; scoring it anyway as a lower bound", file=sys.stderr)
    result["short_ranking"] = {"depth": depth, "needed": need}


def score_per_query(conf: EvaluateConfig, predictions: Dict[Any, list], dataset: RetrievalDataset, protocol: str,
                    metric: str) -> Dict[str, float]:
    """``{query id: value}`` of ``metric`` under ``protocol``, the rankings prepared as :func:`score`
    prepares them, so the mean over the queries is the figure :func:`score` reports (no depth check:
    score the same rankings with :func:`score` first)."""
    from retrieval.evaluation.evaluate import evaluate_per_query

    per_query = evaluate_per_query(dataset, _without_junk(dataset, predictions, protocol), protocol=protocol,
                                   k=conf.k)
    if metric not in per_query:
        raise ConfigError(f"protocol {protocol!r} has no per-query {metric!r}; it has {sorted(per_query)}")
    return {str(q): float(v) for q, v in per_query[metric].items()}


def _without_junk(dataset: RetrievalDataset, predictions: Dict[Any, list], protocol: str) -> Dict[Any, list]:
    """Junk (the query's own image, Oxford junk) leaves the ranking before any metric sees it; the
    landmark protocol counts junk as relevant, so it gets the ranking as is."""
    from retrieval.datasets.splits import drop_junk

    return predictions if protocol == "landmark" else drop_junk(dataset, predictions)


def main(conf: EvaluateConfig, ranking: Path, dataset: Union[DatasetConfig, RetrievalDataset],
         out: Optional[Path] = None, info: Optional[dict] = None) -> Path:
    """Score the ranking file ``ranking`` on ``dataset``; writes the metrics JSON to ``out`` (default
    ``<ranking>.metrics.json``) and returns its path; ``info`` receives the metrics."""
    import json

    from retrieval.core.fileio import atomic_write_text
    from retrieval.indexing.ranking import open_ranking
    from retrieval.core.report import finite_metrics

    ranking = Path(ranking)
    loaded = open_ranking(ranking)
    if loaded.query_ids is None:
        raise ConfigError(f"{ranking}: the ranking does not name its queries (no query_ids); search with a "
                          f"feature file, whose ids name them")
    kind = dataset.kind if isinstance(dataset, DatasetConfig) else None
    ds = open_dataset(dataset) if isinstance(dataset, DatasetConfig) else dataset
    # a block of queries at a time: memory does not grow with the number of queries x results
    metrics = score_blocks(conf, loaded.prediction_blocks(BLOCK_ENTRIES), ds, kind, source=str(ranking),
                           depth_bound=loaded.k)
    result = {"ranking": str(ranking), "dataset": ds.name, "data": str(ds.root), **finite_metrics(metrics)}
    if "upright" in ds.metadata:  # Holidays: whether the rotated photos were read upright
        result["upright"] = ds.metadata["upright"]
    out = Path(out) if out is not None else ranking.with_suffix(".metrics.json")
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    if info is not None:
        info.update(result)
    return out
