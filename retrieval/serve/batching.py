"""Concurrent searches share one pass over the database.

An exact search of one query against N x D vectors reads the whole matrix for one matrix-vector
product: it is bound by memory bandwidth, and eight concurrent requests searched one by one read it
eight times. :class:`SearchBatcher` queues the requests that arrive while a search runs and searches
them together as one (Q, D) x (D, N) product (one read of the matrix), then hands each request its own
row. A request never waits for a timer: a worker thread takes whatever is queued as soon as it is free.
Each row is what a search of that query alone returns (:meth:`retrieval.Index.search` ranks rows
independently, ties by lower database row; scores equal up to float32 rounding of a matrix product
against a matrix-vector product), cut to that request's k.

A filtered request (``allowed``: a row mask, ``key``: what identifies the filter) is batched only with
requests of the same filter: one pass applies one mask. The worker thread ends after ``idle`` seconds
without requests and the next request starts another, so the batchers of a served collection's past
generations (:mod:`retrieval.serve.live`) do not keep threads.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Hashable, List, Optional

import numpy as np

from retrieval.indexing.index import Index, Ranking

__all__ = ["SearchBatcher"]


@dataclass
class _Request:
    vector: np.ndarray
    k: int
    query_id: str
    allowed: Optional[np.ndarray] = None
    key: Hashable = None
    done: threading.Event = field(default_factory=threading.Event)
    ranking: Optional[Ranking] = None
    error: Optional[BaseException] = None


class SearchBatcher:
    """``search(vector, k, query_id) -> Ranking`` (one row), batched with concurrent calls (at most
    ``max_batch`` queries per pass)."""

    def __init__(self, index: Index, max_batch: int = 64, idle: float = 10.0):
        self.index = index
        self.max_batch = int(max_batch)
        self.idle = float(idle)
        self._queue: List[_Request] = []
        self._cond = threading.Condition()
        self._worker: Optional[threading.Thread] = None
        self.batches = 0  # passes over the database so far (for tests and the load report)
        self.searched = 0

    def search(self, vector: np.ndarray, k: int, query_id: str, allowed: Optional[np.ndarray] = None,
               key: Hashable = None) -> Ranking:
        """``allowed``: rows the results may come from (None: all); ``key``: equal for equal masks."""
        request = _Request(np.asarray(vector, np.float32).reshape(-1), int(k), query_id, allowed,
                           key if allowed is not None else None)
        with self._cond:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="search-batcher", daemon=True)
                self._worker.start()
            self._queue.append(request)
            self._cond.notify()
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.ranking

    def _work(self) -> None:
        while True:
            with self._cond:
                if not self._queue:
                    self._cond.wait(self.idle)
                if not self._queue:  # idle: end (under the lock, so a new request starts a new worker)
                    self._worker = None
                    return
                key = self._queue[0].key
                batch: List[_Request] = []
                rest: List[_Request] = []
                for r in self._queue:
                    (batch if r.key == key and len(batch) < self.max_batch else rest).append(r)
                self._queue = rest
            self._run(batch)

    def _run(self, batch: List[_Request]) -> None:
        try:
            k = max(r.k for r in batch)
            ranking = self.index.search(np.stack([r.vector for r in batch]), k=k, allowed=batch[0].allowed)
            self.batches += 1
            self.searched += len(batch)
            for i, r in enumerate(batch):
                r.ranking = Ranking(ids=ranking.ids[i:i + 1, :r.k], scores=ranking.scores[i:i + 1, :r.k],
                                    indices=ranking.indices[i:i + 1, :r.k], query_ids=[r.query_id])
        except BaseException as exc:  # handed to every waiting request; the worker keeps serving
            for r in batch:
                r.error = exc
        finally:
            for r in batch:
                r.done.set()
