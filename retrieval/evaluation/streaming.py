"""Score a ranking a block of queries at a time, with the figures of :func:`retrieval.evaluation.evaluate.evaluate`.

Every metric of every protocol is a mean of per-query scores, and a query's score depends only on its
own ranked list and the dataset's relevance tables (built once, :class:`TruthTables`; NMRR's GTM over
all queries). :class:`StreamingEvaluation` takes ``{query id: [db ids]}`` blocks, keeps the per-query
scores (a few floats per query, never the ranked lists), scores the queries no block named as empty
rankings, and averages in the dataset's query order, so the means are bit-for-bit the in-memory ones.
Memory: the relevance tables + one block + O(queries) floats.
"""
from __future__ import annotations

from typing import Callable, Dict, Hashable, List, Mapping, Optional, Union

from retrieval.datasets.dataset import RetrievalDataset
from retrieval.evaluation.evaluate import TruthTables, summarize

__all__ = ["StreamingEvaluation"]

Block = Mapping[Hashable, List[Hashable]]


class StreamingEvaluation:
    """Per-query metrics of ``protocol`` accumulated over blocks of predictions (module docstring).
    ``prepare`` turns a block into what the protocol scores (e.g. junk removal); with ``check_ids``
    a block ranking ids that are not the dataset's database ids is refused, as
    :func:`retrieval.evaluation.evaluate.evaluate` refuses them."""

    def __init__(self, dataset: RetrievalDataset, protocol: str, k: int = 100, check_ids: bool = True,
                 prepare: Optional[Callable[[Block], Block]] = None):
        self.dataset, self.protocol = dataset, protocol
        self.tables = TruthTables(dataset, protocol, k)
        self.check_ids, self.prepare = check_ids, prepare
        self._known_queries = set(dataset.query_ids)
        self._known_db = set(dataset.db_ids) if check_ids else set()
        self._seen: set = set()
        self._any_known = False
        # every metric name the protocol reports, in the in-memory order, even if no block scores it
        self._scores: Dict[str, Dict[Hashable, float]] = self.tables.scores({}, only=set())

    def add(self, block: Block) -> None:
        """Score one block of ``{query id: [db ids best first]}``."""
        known = [q for q in block if q in self._known_queries]
        self._any_known = self._any_known or bool(known)
        if self.check_ids and known:
            self._check_db_ids(block, known)
        self._seen.update(block)
        prepared = self.prepare(block) if self.prepare is not None else block
        for name, scores in self.tables.scores(dict(prepared), only=set(block)).items():
            self._scores.setdefault(name, {}).update(scores)

    def _check_db_ids(self, block: Block, known: List[Hashable]) -> None:
        unknown: List[Hashable] = []
        for q in known:
            unknown.extend(x for x in block[q] if x not in self._known_db)
            if len(unknown) >= 5:
                break
        if unknown:
            raise ValueError(f"predictions rank ids that are not database ids of dataset {self.dataset.name!r}: "
                             f"{unknown[:5]} (database ids look like {self.dataset.db_ids[0]!r})")

    def per_query(self) -> Dict[str, Dict[Hashable, float]]:
        """``{metric name: {query id: score}}`` over every block, queries that no block named scored
        as empty rankings, in the dataset's query order (:func:`evaluate_per_query`'s result)."""
        if self._seen and not self._any_known and self.check_ids:
            first = next(iter(self._seen))
            raise ValueError(f"no prediction is for a query of dataset {self.dataset.name!r}: predictions have "
                             f"query ids like {first!r}, the dataset like "
                             f"{self.dataset.query_ids[0] if self.dataset.query_ids else None!r}")
        missing = {q for q in self.dataset.query_ids if q not in self._seen}
        if missing:
            for name, scores in self.tables.scores({}, only=missing).items():
                self._scores.setdefault(name, {}).update(scores)
        order = {q: i for i, q in enumerate(self.dataset.query_ids)}
        return {name: dict(sorted(scores.items(), key=lambda item: order.get(item[0], len(order))))
                for name, scores in self._scores.items()}

    def result(self) -> Dict[str, Union[float, int]]:
        """The means :func:`retrieval.evaluation.evaluate.evaluate` reports."""
        return summarize(self.dataset, self.per_query())
