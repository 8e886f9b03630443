"""What an index file holds, checked against what its header says, before anything is searched.

The SHA-256 of an index file vouches that nothing changed since it was written, not that what was
written is consistent: a header edited and re-signed, faiss bytes replaced, an ids array of another
length or kind would otherwise surface as a numpy or faiss error deep inside a search. Each check
here raises :class:`~retrieval.indexing.ranking.IndexFileError`, one line naming the file and saying what
to do. Shared by :meth:`retrieval.indexing.index.Index.load` and :mod:`retrieval.scale` (shards, on-disk
indexes).
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from retrieval.core.config import ConfigError
from retrieval.core.fileio import check_header, digest, pop_header, read_npz
from retrieval.indexing.index_options import resolve_options
from retrieval.indexing.ranking import FORMAT_VERSION, IndexFileError

__all__ = ["check_index_arrays", "read_faiss_bytes", "load_ids", "load_index", "index_from_parts"]

PathLike = Union[str, os.PathLike]
_REBUILD = "rebuild the index"


def _whole(header: Mapping, key: str, path: PathLike) -> int:
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise IndexFileError(path, f"header field {key}={value!r} is not a count; {_REBUILD}")
    return value


def check_index_arrays(path: PathLike, header: Mapping, contents: Mapping[str, np.ndarray]) -> None:
    """The header's ``dim``, ``count``, ``backend`` and ``id_type`` against the arrays: ``ids`` a 1-D
    array of ``count`` integers or strings as ``id_type`` says, and (exact backend) ``vectors`` a
    float ``(count, dim)`` matrix, or (faiss) ``faiss_index`` a 1-D uint8 array."""
    dim, count = _whole(header, "dim", path), _whole(header, "count", path)
    if dim == 0:
        raise IndexFileError(path, f"header says dimension 0; {_REBUILD}")
    ids = contents.get("ids")
    if ids is None or ids.ndim != 1:
        raise IndexFileError(path, f"has no 1-D ids array; {_REBUILD}")
    want = "iu" if header.get("id_type") == "int" else "U"
    if ids.dtype.kind not in want:
        raise IndexFileError(path, f"ids are {ids.dtype} but the header says id_type={header.get('id_type')!r}; "
                                   f"{_REBUILD}")
    if len(ids) != count:
        raise IndexFileError(path, f"header says {count} vectors, the file holds {len(ids)} ids; {_REBUILD}")
    if header.get("backend") == "exact":
        vectors = contents.get("vectors")
        if vectors is None or vectors.ndim != 2 or vectors.dtype.kind != "f":
            raise IndexFileError(path, f"has no float vector matrix; {_REBUILD}")
        if vectors.shape != (count, dim):
            raise IndexFileError(path, f"header says {count} vectors of dimension {dim}, the file holds "
                                       f"{vectors.shape[0]} of dimension {vectors.shape[1]}; {_REBUILD}")
    else:
        data = contents.get("faiss_index")
        if data is None or data.ndim != 1 or data.dtype != np.uint8:
            raise IndexFileError(path, f"has no faiss index bytes; {_REBUILD}")
    removed = contents.get("removed")
    if removed is not None and (removed.dtype != bool or removed.shape != (count,)):
        raise IndexFileError(path, f"its removed-rows mask is not {count} booleans; {_REBUILD}")


def read_faiss_bytes(path: PathLike, data: np.ndarray, dim: int, count: int) -> Any:
    """The faiss index serialised in ``data`` (an index file's ``faiss_index``), checked against the
    header's ``dim`` and ``count``; bytes faiss cannot read are one line naming ``path``, never
    faiss' C++ error."""
    from retrieval.indexing.faiss_backend import import_faiss

    try:
        index = import_faiss().deserialize_index(data)
    except (RuntimeError, ValueError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]
        raise IndexFileError(path, f"faiss cannot read the index stored in it ({first}); {_REBUILD}") from None
    if index.d != dim or index.ntotal != count:
        raise IndexFileError(path, f"header says {count} vectors of dimension {dim}, its faiss index holds "
                                   f"{index.ntotal} of dimension {index.d}; {_REBUILD}")
    return index


def load_ids(path: PathLike) -> np.ndarray:
    """A 1-D ids array saved with ``np.save`` (integers or strings), read without pickle: an object
    array, another kind of file or a damaged one is one line naming ``path`` (the pickle never runs)."""
    path = Path(path)
    try:
        ids = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise IndexFileError(path, "holds pickled Python objects, not an ids array (refused unread: "
                                       f"pickles can run code); {_REBUILD}") from None
        raise IndexFileError(path, f"not a readable ids array ({exc}); {_REBUILD}") from None
    except (OSError, EOFError) as exc:
        raise IndexFileError(path, f"not a readable ids array ({exc}); {_REBUILD}") from None
    if not isinstance(ids, np.ndarray) or ids.ndim != 1 or ids.dtype.kind not in "iuU":
        raise IndexFileError(path, f"not a 1-D array of integer or string ids; {_REBUILD}")
    return ids


def load_index(cls, path, index_format: str, expect_config: Optional[dict] = None):
    """:meth:`Index.load <retrieval.indexing.index.Index.load>` (``cls``: the class to make)."""
    path = Path(path)
    contents = read_npz(path, "index", error=IndexFileError)
    header = pop_header(path, contents, error=IndexFileError)
    check_header(path, header, index_format, FORMAT_VERSION, version_key="format_version",
                 error=IndexFileError, hint=_REBUILD)
    stored = header.pop("sha256", None)
    if stored != digest(contents, header):
        raise IndexFileError(path, f"checksum mismatch: the file was altered or damaged; {_REBUILD}")
    if expect_config is not None and json.dumps(expect_config, sort_keys=True, default=str) != \
            json.dumps(header["config"], sort_keys=True, default=str):
        raise IndexFileError(path, f"built with extractor configuration {header['config']}, expected "
                                   f"{expect_config}")
    check_index_arrays(path, header, contents)  # a re-signed header must still match its arrays
    if header["backend"] == "exact":
        parts = {"vectors": contents["vectors"]}
    else:
        parts = {"faiss_index": read_faiss_bytes(path, contents["faiss_index"], header["dim"], header["count"])}
    index = cls.from_parts(header["backend"], header["backend_options"], contents["ids"], int(header["dim"]),
                           normalize=header["normalize"], config=header["config"], source=path,
                           int_ids=header["id_type"] == "int", zero_rows=header.get("zero_rows", "error"),
                           removed=contents.get("removed"), **parts)
    if index.rows != header["count"]:
        raise IndexFileError(path, f"header says {header['count']} vectors, file holds {index.rows}")
    return index


def index_from_parts(index, backends: Sequence[str], backend: str, options: dict, ids: np.ndarray, dim: int,
                     normalize: bool, config: Optional[dict], source, int_ids: bool, vectors: Optional[np.ndarray],
                     faiss_index: Any, zero_rows: str, removed: Optional[np.ndarray]):
    """Fill the bare ``index`` (:meth:`Index.from_parts <retrieval.indexing.index.Index.from_parts>`)."""
    where = Path(source) if source is not None else Path("<index>")
    index._lock = threading.Lock()
    index._reset_search_state()
    index._pending = []
    index.backend, index.normalize, index.config = backend, bool(normalize), dict(config or {})
    index.zero_rows = "keep" if zero_rows == "keep" else "error"
    try:
        if backend not in backends:
            raise ConfigError(f"unknown backend {backend!r}")
        index.option_config = resolve_options(backend, options)
    except (ConfigError, TypeError, AttributeError) as exc:
        raise IndexFileError(where, f"invalid backend options ({exc}); {_REBUILD}") from None
    index.dim = int(dim)
    index.source = None if source is None else str(source)
    index._ids = ids.astype(np.int64) if int_ids else ids
    index._id_set = set(index._ids.tolist())
    index._vectors = np.zeros((0, index.dim), dtype=np.float32)
    index._faiss = faiss_index
    if backend == "exact":
        index._vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        count = index._vectors.shape[0]
    else:
        count = int(faiss_index.ntotal)
    if len(index._ids) != count:
        raise IndexFileError(where, f"holds {count} vectors and {len(index._ids)} ids")
    index.removed = None
    if removed is not None and removed.any():
        if backend == "exact":
            raise IndexFileError(where, "an exact index keeps no removed rows (they are dropped); " + _REBUILD)
        index.removed = np.asarray(removed, dtype=bool)
        index._id_set -= set(index._ids[index.removed].tolist())
    return index
