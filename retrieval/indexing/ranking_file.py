"""The binary ranking file: integer database rows and float32 scores as raw little-endian arrays, one
table of database ids, checksummed per block of rows, written and read a block at a time.

Layout (every byte is covered by a SHA-256 held in the trailer)::

    MAGIC (8 bytes) | header length (uint64) | header JSON | query ids JSON | database ids JSON
    | zero padding to 64 bytes | indices (Q, k) int32 or int64 | scores (Q, k) float32
    | trailer JSON | trailer length (uint64) | END (8 bytes)

The header holds the format name and version, ``num_queries``, ``k``, ``num_db``, ``id_type`` (str or
int), the index dtype (int32 while the database has fewer than 2**31 rows) and ``block_rows``. The
trailer holds the SHA-256 of header + id tables and one SHA-256 per block of ``block_rows`` rows
(its indices bytes, then its scores bytes), so a reader verifies each block as it reads it and never
needs the whole file in memory. Missing results (approximate backends) have row -1 and score -inf.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from retrieval.core.fileio import FileFormatError, atomic_path, check_header

__all__ = ["IndexFileError", "BINARY_FORMAT", "BINARY_VERSION", "MAGIC", "RankingWriter", "RankingFileReader",
           "is_binary_ranking", "BLOCK_ENTRIES"]

PathLike = Union[str, os.PathLike]
BINARY_FORMAT = "hybrid-retrieval/ranking-binary"
BINARY_VERSION = 1
MAGIC = b"\x89HRRANK\n"
END = b"HRRANKz\n"
#: entries (rows x k) per checksum block: about 8 MB of indices + scores
BLOCK_ENTRIES = 1 << 20
_ALIGN = 64
_LEN = struct.Struct("<Q")


class IndexFileError(FileFormatError):
    """An index or ranking file is missing, truncated, altered, or of another format/version."""


def is_binary_ranking(path: PathLike) -> bool:
    """Whether ``path`` starts with the binary ranking file's magic bytes."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def _ids_json(ids: Optional[Sequence]) -> bytes:
    return json.dumps(None if ids is None else [x.item() if isinstance(x, np.generic) else x for x in ids],
                      separators=(",", ":")).encode()


class RankingWriter:
    """Write a ranking of ``len(query_ids)`` queries x ``k`` results block by block::

        with RankingWriter(path, query_ids, db_ids, k) as writer:
            for rows, scores in batches:        # (b, k) database row positions, (b, k) scores
                writer.write(rows, scores)

    The file appears at ``path`` (atomically) only when every row was written; an exception inside
    the block leaves an earlier file at ``path`` unchanged."""

    def __init__(self, path: PathLike, query_ids: Optional[Sequence], db_ids: Sequence, k: int,
                 num_queries: Optional[int] = None):
        self.path = Path(path)
        self.num_queries = len(query_ids) if query_ids is not None else int(num_queries)
        self.k, self.num_db = int(k), len(db_ids)
        is_int = len(db_ids) > 0 and all(isinstance(x, (int, np.integer)) for x in db_ids[:1])
        self.index_dtype = np.dtype("<i4") if self.num_db < 2 ** 31 - 1 else np.dtype("<i8")
        self.block_rows = max(1, BLOCK_ENTRIES // max(self.k, 1))
        self.header = {"format": BINARY_FORMAT, "version": BINARY_VERSION, "num_queries": self.num_queries,
                       "k": self.k, "num_db": self.num_db, "id_type": "int" if is_int else "str",
                       "index_dtype": self.index_dtype.str, "score_dtype": "<f4", "block_rows": self.block_rows}
        self._tables = (_ids_json(query_ids), _ids_json(db_ids))
        self._rows_done = 0
        self._blocks: List[str] = []
        self._block_hash = hashlib.sha256()
        self._score_hash = hashlib.sha256()

    def __enter__(self) -> "RankingWriter":
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        self._fh = open(tmp, "wb")
        q, s = self._tables
        self.header.update(query_ids_bytes=len(q), db_ids_bytes=len(s))
        head = json.dumps(self.header, separators=(",", ":")).encode()
        prefix = MAGIC + _LEN.pack(len(head)) + head + q + s
        prefix += b"\0" * (-len(prefix) % _ALIGN)
        self._head_digest = hashlib.sha256(prefix).hexdigest()
        self._fh.write(prefix)
        self._indices_at = len(prefix)
        self._scores_at = self._indices_at + self.num_queries * self.k * self.index_dtype.itemsize
        return self

    def write(self, rows: np.ndarray, scores: np.ndarray) -> None:
        """Append the next ``len(rows)`` queries' database row positions and scores (both (b, k))."""
        rows, scores = np.asarray(rows), np.asarray(scores)
        if rows.shape != scores.shape or rows.ndim != 2 or rows.shape[1] != self.k:
            raise ValueError(f"a block of the ranking must be (rows, {self.k}) row positions and scores, got "
                             f"{rows.shape} and {scores.shape}")
        if self._rows_done + len(rows) > self.num_queries:
            raise ValueError(f"more rows than the {self.num_queries} queries the ranking was opened for")
        if rows.size and (rows.max(initial=-1) >= self.num_db or rows.min(initial=0) < -1):
            raise ValueError(f"row positions outside the database of {self.num_db} images")
        rows = np.ascontiguousarray(rows, dtype=self.index_dtype)
        scores = np.ascontiguousarray(scores, dtype="<f4")
        start = 0
        while start < len(rows):  # cut at checksum-block boundaries
            room = self.block_rows - self._rows_done % self.block_rows
            r, s = rows[start:start + room], scores[start:start + room]
            at = self._rows_done * self.k
            self._fh.seek(self._indices_at + at * self.index_dtype.itemsize)
            self._fh.write(r.tobytes())
            self._fh.seek(self._scores_at + at * 4)
            self._fh.write(s.tobytes())
            self._block_hash.update(r.tobytes())
            self._score_hash.update(s.tobytes())
            self._rows_done += len(r)
            start += len(r)
            if self._rows_done % self.block_rows == 0 or self._rows_done == self.num_queries:
                self._close_block()

    def _close_block(self) -> None:
        self._block_hash.update(self._score_hash.digest())
        self._blocks.append(self._block_hash.hexdigest())
        self._block_hash, self._score_hash = hashlib.sha256(), hashlib.sha256()

    def __exit__(self, kind, exc, tb) -> None:
        try:
            if exc is None:
                if self._rows_done != self.num_queries:
                    raise ValueError(f"{self.path}: {self._rows_done} of {self.num_queries} ranking rows written")
                if self.num_queries == 0:
                    self._blocks = []
                trailer = json.dumps({"head_sha256": self._head_digest, "block_sha256": self._blocks},
                                     separators=(",", ":")).encode()
                self._fh.seek(self._scores_at + self.num_queries * self.k * 4)
                self._fh.write(trailer + _LEN.pack(len(trailer)) + END)
        except BaseException as failure:
            self._fh.close()
            self._atomic.__exit__(type(failure), failure, failure.__traceback__)
            raise
        self._fh.close()
        self._atomic.__exit__(kind, exc, tb)


class RankingFileReader:
    """Open a binary ranking file: header, id tables and trailer are read and verified at once (a few
    MB); :meth:`blocks` then reads the rows a block at a time, verifying each block's checksum. Any damage is an :class:`IndexFileError` naming the file."""

    def __init__(self, path: PathLike):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as fh:
                self._open(fh, size)
        except OSError as exc:
            raise IndexFileError(self.path, f"ranking file is not readable ({exc.strerror or exc})") from None

    def _fail(self, problem: str) -> IndexFileError:
        return IndexFileError(self.path, f"{problem}; search again to rewrite the ranking")

    def _open(self, fh, size: int) -> None:
        if fh.read(len(MAGIC)) != MAGIC:
            raise IndexFileError(self.path, "not a binary ranking file (no ranking magic bytes)")
        try:
            (head_len,) = _LEN.unpack(fh.read(_LEN.size))
            if head_len > min(size, 1 << 20):
                raise ValueError("header length out of range")
            header = json.loads(fh.read(head_len))
        except (struct.error, ValueError, UnicodeDecodeError) as exc:
            raise self._fail(f"damaged ranking header ({exc})") from None
        check_header(self.path, header, BINARY_FORMAT, BINARY_VERSION, error=IndexFileError,
                     label="binary ranking", hint="search again with this version to rewrite it")
        try:
            self.num_queries, self.k, self.num_db = (int(header[key]) for key in ("num_queries", "k", "num_db"))
            self.index_dtype = np.dtype(header["index_dtype"])
            self.block_rows, self.id_type = int(header["block_rows"]), header["id_type"]
            q_len, db_len = int(header["query_ids_bytes"]), int(header["db_ids_bytes"])
            if (self.index_dtype.str not in ("<i4", "<i8") or header["score_dtype"] != "<f4" or self.block_rows < 1
                    or min(self.num_queries, self.k, self.num_db, q_len, db_len) < 0
                    or self.id_type not in ("str", "int")):
                raise ValueError("field out of range")
        except (KeyError, TypeError, ValueError) as exc:
            raise self._fail(f"damaged ranking header ({exc!r})") from None
        prefix_len = len(MAGIC) + _LEN.size + head_len + q_len + db_len
        prefix_len += -prefix_len % _ALIGN
        self._indices_at = prefix_len
        self._scores_at = prefix_len + self.num_queries * self.k * self.index_dtype.itemsize
        body_end = self._scores_at + self.num_queries * self.k * 4
        if size < body_end + _LEN.size + len(END):
            raise self._fail(f"truncated: {size:,} bytes, the header describes at least "
                             f"{body_end + _LEN.size + len(END):,}")
        fh.seek(size - _LEN.size - len(END))
        tail = fh.read(_LEN.size + len(END))
        (trailer_len,) = _LEN.unpack(tail[:_LEN.size])
        if tail[_LEN.size:] != END or body_end + trailer_len + _LEN.size + len(END) != size:
            raise self._fail(f"truncated or extended: {size:,} bytes do not end as the header describes")
        fh.seek(body_end)
        try:
            trailer = json.loads(fh.read(trailer_len))
            self._block_digests = list(trailer["block_sha256"])
            head_digest = trailer["head_sha256"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise self._fail(f"damaged ranking trailer ({exc!r})") from None
        fh.seek(0)
        prefix = fh.read(prefix_len)
        if hashlib.sha256(prefix).hexdigest() != head_digest:
            raise self._fail("checksum mismatch in the header or id tables: the ranking file was altered or damaged")
        if len(self._block_digests) != -(-self.num_queries // self.block_rows):
            raise self._fail("the trailer lists another number of blocks than the header describes")
        start = len(MAGIC) + _LEN.size + head_len
        try:
            self.query_ids = json.loads(prefix[start:start + q_len])
            self.db_ids = json.loads(prefix[start + q_len:start + q_len + db_len])
        except ValueError as exc:
            raise self._fail(f"damaged id tables ({exc})") from None
        if not isinstance(self.db_ids, list) or len(self.db_ids) != self.num_db or (
                self.query_ids is not None and len(self.query_ids) != self.num_queries):
            raise self._fail("the id tables do not match the header's num_queries / num_db")

    def db_id_array(self) -> np.ndarray:
        """The database id table as an array (int64, or numpy strings as a JSON ranking loads them)."""
        if self.id_type == "int":
            return np.asarray(self.db_ids, dtype=np.int64)
        return np.asarray(self.db_ids, dtype=str) if self.db_ids else np.zeros(0, dtype=str)

    def blocks(self, rows: Optional[int] = None) -> Iterator[Tuple[int, np.ndarray, np.ndarray]]:
        """``(first row, indices (b, k) int64, scores (b, k) float32)`` for consecutive blocks of at most
        ``rows`` queries (default: one checksum block), each checksum block verified before use. Read
        with plain file reads, not a memory map: a map of a file larger than memory would keep every
        page read in the process's resident set."""
        step = self.block_rows if rows is None else max(1, int(rows))
        pending: List[Tuple[np.ndarray, np.ndarray]] = []  # verified rows not yet handed out
        held, first = 0, 0
        for indices, scores in self._verified_blocks():
            pending.append((indices, scores))
            held += len(indices)
            while held >= step or (held and first + held == self.num_queries):
                joined_rows = np.concatenate([p[0] for p in pending]) if len(pending) > 1 else pending[0][0]
                joined_scores = np.concatenate([p[1] for p in pending]) if len(pending) > 1 else pending[0][1]
                take = min(step, held)
                yield first, joined_rows[:take], joined_scores[:take]
                first, held = first + take, held - take
                pending = [(joined_rows[take:], joined_scores[take:])] if held else []

    def _verified_blocks(self) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """Each checksum block's rows (int64) and scores, read from the file and verified."""
        if self.k == 0:
            for lo in range(0, self.num_queries, self.block_rows):
                n = min(self.block_rows, self.num_queries - lo)
                yield np.zeros((n, 0), np.int64), np.zeros((n, 0), np.float32)
            return
        with open(self.path, "rb") as fh:
            for block, lo in enumerate(range(0, self.num_queries, self.block_rows)):
                hi = min(lo + self.block_rows, self.num_queries)
                count = (hi - lo) * self.k
                fh.seek(self._indices_at + lo * self.k * self.index_dtype.itemsize)
                indices = np.fromfile(fh, dtype=self.index_dtype, count=count)
                fh.seek(self._scores_at + lo * self.k * 4)
                scores = np.fromfile(fh, dtype="<f4", count=count)
                if len(indices) != count or len(scores) != count:
                    raise self._fail(f"truncated in rows {lo}-{hi - 1}")
                digest = hashlib.sha256(indices.tobytes())
                digest.update(hashlib.sha256(scores.tobytes()).digest())
                if digest.hexdigest() != self._block_digests[block]:
                    raise self._fail(f"checksum mismatch in rows {lo}-{hi - 1}: the ranking file was altered or "
                                     "damaged")
                if indices.size and (indices.max() >= self.num_db or indices.min() < -1):
                    raise self._fail(f"rows {lo}-{hi - 1} point outside the database of {self.num_db} images")
                yield indices.astype(np.int64).reshape(hi - lo, self.k), scores.reshape(hi - lo, self.k)
