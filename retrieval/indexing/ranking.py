"""Search results as data: :class:`Ranking` (database ids, scores and row positions per query, best
first), its two files (checksummed, no pickle) and the error raised for damaged index or ranking files.

Files. :meth:`Ranking.save` writes the compact binary file of :mod:`retrieval.indexing.ranking_file`
(integer rows, float32 scores, one database id table) unless the path ends in ``.json`` (or
``format="json"``): JSON is for small rankings a person reads. :meth:`Ranking.load` and
:func:`open_ranking` recognise the format from the file's first bytes, so every reader reads both;
:func:`open_ranking` reads a binary file a block of queries at a time (bounded memory).
Kept apart from :mod:`retrieval.indexing.index` so that readers of rankings (evaluation, re-ranking, the web page)
need neither torch nor faiss."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Hashable, Iterator, List, Optional, Sequence, Union

import numpy as np

from retrieval.core.fileio import atomic_write_text, check_header, read_json
from retrieval.indexing.ranking_file import IndexFileError, RankingFileReader, RankingWriter, is_binary_ranking

__all__ = ["Ranking", "IndexFileError", "RANKING_FORMAT", "FORMAT_VERSION", "RankingSource", "open_ranking",
           "ranking_format", "RANKING_FORMATS"]

PathLike = Union[str, os.PathLike]
RANKING_FORMAT = "hybrid-retrieval/ranking"
FORMAT_VERSION = 1
#: ``format`` of :meth:`Ranking.save`: auto (JSON for a ``.json`` path, else binary), binary, json
RANKING_FORMATS = ("auto", "binary", "json")


def ranking_format(path: PathLike, fmt: str = "auto") -> str:
    """``"json"`` or ``"binary"``: the file format ``fmt`` means for ``path`` (auto: JSON only for a
    ``.json`` path)."""
    if fmt not in RANKING_FORMATS:
        raise ValueError(f"unknown ranking format {fmt!r}; choose from {', '.join(RANKING_FORMATS)}")
    if fmt == "auto":
        return "json" if Path(path).suffix.lower() == ".json" else "binary"
    return fmt


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

    def save(self, path: PathLike, format: str = "auto") -> Path:
        """Write the ranking atomically: binary (module docstring) unless ``path`` ends in ``.json``
        or ``format="json"``. JSON holds format, version, query ids, and per query the database ids,
        scores and row positions, with a SHA-256 of it all (``sha256``) that :meth:`load` checks."""
        path = Path(path)
        if ranking_format(path, format) == "binary":
            with RankingWriter(path, self.query_ids, self.db_table(), self.k, num_queries=len(self)) as writer:
                writer.write(self.indices, self.scores)
            return path
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

    def db_table(self) -> np.ndarray:
        """The database id of every row position the ranking uses (``table[indices] == ids``; rows it
        never ranks get an empty id): the one id table of the binary file."""
        valid = self.indices >= 0
        size = int(self.indices.max(initial=-1)) + 1
        empty = -1 if np.issubdtype(self.ids.dtype, np.integer) else ""
        table = np.full(size, empty, dtype=self.ids.dtype if self.ids.dtype != object else object)
        table[self.indices[valid]] = self.ids[valid]
        if not np.array_equal(table[self.indices[valid]], self.ids[valid]):
            raise ValueError("the ranking's ids do not follow its row positions (one row position with two ids); "
                             "save it as JSON")
        return table

    @classmethod
    def load(cls, path: PathLike) -> "Ranking":
        """Read a ranking written by :meth:`save` (binary or JSON, told by the file's first bytes);
        refuses other formats and versions."""
        if is_binary_ranking(path):
            return _load_binary(cls, path)
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
        _refuse_repeats(path, ranking)
        return ranking


def _refuse_repeats(path: PathLike, ranking: Ranking) -> None:
    repeated = _first_repeat(ranking.ids, ranking.indices)
    if repeated is not None:
        row, image_id = repeated
        query = ranking.query_ids[row] if ranking.query_ids is not None else row
        raise IndexFileError(path, f"query {query!r} lists database id {image_id!r} more than once (a "
                                   "ranking ranks each image once: the file was edited or merged wrongly); "
                                   "search again to rewrite it")


def _ids_of(table: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Database ids of row positions; a missing result (-1) gets an empty id ("" or -1)."""
    if table.size == 0:
        return np.zeros(indices.shape, dtype=table.dtype if table.dtype.kind == "i" else str)
    ids = table[np.maximum(indices, 0)]
    missing = indices < 0
    if missing.any():
        ids[missing] = -1 if np.issubdtype(ids.dtype, np.integer) else ""
    return ids


def _load_binary(cls, path: PathLike) -> Ranking:
    reader = RankingFileReader(path)
    shape = (reader.num_queries, reader.k)
    indices, scores = np.empty(shape, np.int64), np.empty(shape, np.float32)
    for lo, rows, block_scores in reader.blocks():
        indices[lo:lo + len(rows)], scores[lo:lo + len(rows)] = rows, block_scores
    ranking = cls(ids=_ids_of(reader.db_id_array(), indices), scores=scores, indices=indices,
                  query_ids=reader.query_ids)
    _refuse_repeats(path, ranking)
    return ranking


class RankingSource:
    """A ranking file read a block of queries at a time (binary: from disk; JSON: loaded whole, as JSON
    files are small). ``query_ids``, ``k``, ``num_queries``; :meth:`prediction_blocks`."""

    def __init__(self, path: PathLike):
        self.path = Path(path)
        if is_binary_ranking(path):
            self._reader: Optional[RankingFileReader] = RankingFileReader(path)
            self._ranking: Optional[Ranking] = None
            self.query_ids = self._reader.query_ids
            self.k, self.num_queries = self._reader.k, self._reader.num_queries
        else:
            self._reader, self._ranking = None, Ranking.load(path)
            self.query_ids = self._ranking.query_ids
            self.k, self.num_queries = self._ranking.k, len(self._ranking)

    def prediction_blocks(self, entries: int = 2_000_000) -> Iterator[Dict[Hashable, List[Hashable]]]:
        """``{query id: [db ids best first]}`` (missing results dropped) for consecutive blocks of about
        ``entries`` query x result entries, in file order."""
        rows = max(1, entries // max(self.k, 1))
        query_ids = self.query_ids if self.query_ids is not None else list(range(self.num_queries))
        if self._ranking is not None:
            for lo in range(0, len(self._ranking), rows):
                part = self._ranking
                yield Ranking(ids=part.ids[lo:lo + rows], scores=part.scores[lo:lo + rows],
                              indices=part.indices[lo:lo + rows]).to_predictions(query_ids[lo:lo + rows])
            return
        table = np.asarray(self._reader.db_ids, dtype=object)  # one Python object per database id
        for lo, indices, _ in self._reader.blocks(rows):
            names = query_ids[lo:lo + len(indices)]
            if (indices < 0).any():
                yield {q: table[row[row >= 0]].tolist() for q, row in zip(names, indices)}
            else:
                yield dict(zip(names, table[indices].tolist()))


def open_ranking(path: PathLike) -> RankingSource:
    """A :class:`RankingSource` for either ranking file format."""
    return RankingSource(path)


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
