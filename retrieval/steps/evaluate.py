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
from typing import Any, Dict, Optional, Union

from retrieval.core.config import Config, ConfigError
from retrieval.datasets.dataset import RetrievalDataset
from retrieval.datasets.open import DEFAULT_PROTOCOL, DatasetConfig, open_dataset

__all__ = ["EvaluateConfig", "ShortRankingError", "main", "score", "score_per_query"]


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
    from retrieval.evaluation.evaluate import evaluate, required_depth

    protocols = conf.protocols(dataset_kind)
    scored = dataset.solution()
    ranked = [len(predictions[q]) for q in scored if q in predictions]
    depth = min(ranked) if ranked else 0
    result: Dict[str, Any] = {"protocol": ",".join(protocols)}
    need = max(required_depth(dataset, p, conf.k) for p in protocols)
    if ranked and depth < need:
        message = (f"{source}: ranks {depth} of {len(dataset.db_ids)} database images for some query; "
                   f"protocol {result['protocol']!r} needs {need} (a positive that is not ranked counts as "
                   f"missed, so the figures would be too low)")
        if not conf.allow_short:
            raise ShortRankingError(f"{message}; search again with the default k (the whole database) or "
                                    f"--k {need}, or pass --allow-short to score it as a lower bound")
        print(f"retrieval: WARNING: {message}; scoring it anyway as a lower bound", file=sys.stderr)
        result["short_ranking"] = {"depth": depth, "needed": need}
    for protocol in protocols:
        try:
            metrics = evaluate(dataset, _without_junk(dataset, predictions, protocol), protocol=protocol, k=conf.k)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
        result.update(metrics)
    result["queries_without_prediction"] = sum(1 for q in scored if q not in predictions)
    result["bad_files"] = len(dataset.bad_files)
    return result


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
    from retrieval.indexing.index import Ranking
    from retrieval.core.report import finite_metrics

    ranking = Path(ranking)
    loaded = Ranking.load(ranking)
    if loaded.query_ids is None:
        raise ConfigError(f"{ranking}: the ranking does not name its queries (no query_ids); search with a "
                          f"feature file, whose ids name them")
    kind = dataset.kind if isinstance(dataset, DatasetConfig) else None
    ds = open_dataset(dataset) if isinstance(dataset, DatasetConfig) else dataset
    metrics = score(conf, loaded.to_predictions(), ds, kind, source=str(ranking))
    result = {"ranking": str(ranking), "dataset": ds.name, "data": str(ds.root), **finite_metrics(metrics)}
    if "upright" in ds.metadata:  # Holidays: whether the rotated photos were read upright
        result["upright"] = ds.metadata["upright"]
    out = Path(out) if out is not None else ranking.with_suffix(".metrics.json")
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    if info is not None:
        info.update(result)
    return out
