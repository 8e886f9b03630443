"""Search results as data: :class:`Ranking` (database ids, scores and row positions per query, best
first), its JSON file (checksummed, no pickle) and the error raised for damaged index or ranking files.
Kept apart from :mod:`retrieval.indexing.index` so that readers of rankings (evaluation, re-ranking, the web page)
need neither torch nor faiss."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Hashable, List, Optional, Sequence, Union

import numpy as np

from retrieval.core.fileio import FileFormatError, atomic_write_text, check_header, read_json

__all__ = ["Ranking", "IndexFileError", "RANKING_FORMAT", "FORMAT_VERSION"]

PathLike = Union[str, os.PathLike]
RANKING_FORMAT = "hybrid-retrieval/ranking"
FORMAT_VERSION = 1


class IndexFileError(FileFormatError):
    """An index or ranking file is missing, truncated, altered, or of another format/version."""


_RANKING_KEYS = frozenset({"format", "version", "num_queries", "k", "id_type", "query_ids", "ids", "scores",
                           "indices", "sha256"})


def _ranking_digest(payload: dict) -> str:
    """SHA-256 of a ranking file's content (every key but ``sha256``, as sorted-keys JSON)."""
    import hashlib

    body = {key: value for key, value in payload.items() if key != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass
class Ranking:
    """Search results for ``Q`` queries, best first.

    ``ids``: (Q, k) database ids; ``scores``: (Q, k) float32 inner products (cosine similarity);
    ``indices``: (Q, k) int64 database row positions. Approximate faiss backends may find fewer
    than ``k`` results for a query: the missing entries have ``indices == -1``, ``scores == -inf``
    and an empty id (``""`` or ``-1``); :meth:`to_predictions` drops them. ``query_ids`` is
    optional and names the rows."""

    ids: np.ndarray
    scores: np.ndarray
    indices: np.ndarray
    query_ids: Optional[List[Hashable]] = None

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids)
        self.scores = np.asarray(self.scores, dtype=np.float32)
        self.indices = np.asarray(self.indices, dtype=np.int64)
        if not (self.ids.shape == self.scores.shape == self.indices.shape) or self.ids.ndim != 2:
            raise ValueError(f"Ranking arrays must all be (Q, k); got ids {self.ids.shape}, scores "
                             f"{self.scores.shape}, indices {self.indices.shape}")
        if self.query_ids is not None:
            self.query_ids = list(self.query_ids)
            if len(self.query_ids) != self.ids.shape[0]:
                raise ValueError(f"{len(self.query_ids)} query ids for {self.ids.shape[0]} ranked queries")

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def k(self) -> int:
        return self.ids.shape[1]

    def to_predictions(self, query_ids: Optional[Sequence[Hashable]] = None) -> Dict[Hashable, List[Hashable]]:
        """``{query_id: [db ids best first]}`` as :mod:`retrieval.evaluation.metrics` takes it. ``query_ids``
        names the rows (defaults to the ranking's own ``query_ids``, else 0..Q-1)."""
        if query_ids is None:
            query_ids = self.query_ids if self.query_ids is not None else list(range(len(self)))
        query_ids = list(query_ids)
        if len(query_ids) != len(self):
            raise ValueError(f"{len(query_ids)} query ids given for a ranking of {len(self)} queries")
        if len(set(query_ids)) != len(query_ids):
            raise ValueError("query ids must be unique")
        ids = self.ids.tolist()
        if (self.indices < 0).any():
            valid = (self.indices >= 0).tolist()
            return {q: [i for i, ok in zip(row, mask) if ok] for q, row, mask in zip(query_ids, ids, valid)}
        return dict(zip(query_ids, ids))

    def save(self, path: PathLike) -> Path:
        """Write the ranking as JSON (atomically): format, version, query ids, and per query the
        database ids, scores and row positions, with a SHA-256 of it all (``sha256``) that
        :meth:`load` checks."""
        path = Path(path)
        payload = {
            "format": RANKING_FORMAT, "version": FORMAT_VERSION,
            "num_queries": len(self), "k": self.k,
            "id_type": "int" if np.issubdtype(self.ids.dtype, np.integer) else "str",
            "query_ids": self.query_ids,
            "ids": self.ids.tolist(),
            "scores": [[float(s) if math.isfinite(s) else None for s in row] for row in self.scores.tolist()],
            "indices": self.indices.tolist(),
        }
        payload["sha256"] = _ranking_digest(payload)
        atomic_write_text(path, json.dumps(payload))
        return path

    @classmethod
    def load(cls, path: PathLike) -> "Ranking":
        """Read a ranking written by :meth:`save`; refuses other formats and versions."""
        payload = read_json(path, "ranking", error=IndexFileError)
        check_header(path, payload, RANKING_FORMAT, FORMAT_VERSION, error=IndexFileError)
        missing = [key for key in ("num_queries", "k", "ids", "scores", "indices") if key not in payload]
        if missing:
            raise IndexFileError(path, f"ranking file lacks the key(s) {missing}; write it with "
                                       "'retrieval index search' (Ranking.save)")
        unknown = sorted(set(payload) - _RANKING_KEYS)
        if unknown:
            raise IndexFileError(path, f"ranking file has unknown key(s) {unknown}: altered or damaged")
        # files written before the checksum have none; any file that has one must match it
        if "sha256" in payload and payload.pop("sha256") != _ranking_digest(payload):
            raise IndexFileError(path, "checksum mismatch: the ranking file was altered or damaged; "
                                       "search again to rewrite it")
        try:
            q, k = int(payload["num_queries"]), int(payload["k"])
            dtype = np.int64 if payload.get("id_type") == "int" else str
            ids = np.asarray(payload["ids"], dtype=dtype).reshape(q, k)
            scores = np.asarray([[-np.inf if s is None else s for s in row] for row in payload["scores"]],
                                dtype=np.float32).reshape(q, k)
            indices = np.asarray(payload["indices"], dtype=np.int64).reshape(q, k)
            ranking = cls(ids=ids, scores=scores, indices=indices, query_ids=payload.get("query_ids"))
        except (TypeError, ValueError, OverflowError) as exc:
            raise IndexFileError(path, f"ranking arrays do not match num_queries={payload['num_queries']!r}, "
                                       f"k={payload['k']!r} or are not numbers ({exc})") from None
        repeated = _first_repeat(ranking.ids, ranking.indices)
        if repeated is not None:
            row, image_id = repeated
            query = ranking.query_ids[row] if ranking.query_ids is not None else row
            raise IndexFileError(path, f"query {query!r} lists database id {image_id!r} more than once (a "
                                       "ranking ranks each image once: the file was edited or merged wrongly); "
                                       "search again to rewrite it")
        return ranking


def _first_repeat(ids: np.ndarray, indices: np.ndarray):
    """``(row, id)`` of the first ranking row that lists one database id twice (missing entries,
    ``indices == -1``, excepted), else None."""
    if ids.shape[1] < 2:
        return None
    ordered = np.sort(ids, axis=1)
    same = ordered[:, 1:] == ordered[:, :-1]
    missing = (indices < 0).any(axis=1)
    for row in np.flatnonzero(same.any(axis=1)):
        if not missing[row]:
            return int(row), ordered[row, 1:][same[row]][0].item()
        valid = ids[row][indices[row] >= 0].tolist()
        if len(set(valid)) != len(valid):
            seen: set = set()
            return int(row), next(x for x in valid if x in seen or seen.add(x))
    return None
