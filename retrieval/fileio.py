"""Files this library writes and reads back: atomic writes, ``.npz`` archives read without pickle,
JSON headers (format / kind and version), SHA-256 digests of a header plus named arrays, and one
error type, :class:`FileFormatError`, that names the file and the problem.

Imports only the standard library and numpy, so :mod:`retrieval`, :mod:`features` and :mod:`rerank`
can all use it without import cycles (``import retrieval.fileio`` pulls in neither torch nor h5py).

* :func:`atomic_path`, :func:`atomic_write`, :func:`atomic_write_bytes`, :func:`atomic_write_text`:
  write to a temporary file in the destination's folder, then ``os.replace`` it over the final name,
  so a crash never leaves a half-written file there (and no temporary file is left behind on error).
* :func:`save_npz` / :func:`read_npz`: arrays (plus an optional JSON header stored as text under one
  key) written atomically; read with ``allow_pickle=False``, every low-level failure (missing file,
  not a zip, truncated, ...) raised as a :class:`FileFormatError` naming the file.
* :func:`parse_header`, :func:`pop_header`, :func:`read_json`: JSON text to a dict, with errors that
  name the file; :func:`check_header`: refuse another format / kind or another (newer) version.
* :func:`digest`: SHA-256 over a header dict (sorted-keys JSON) and each array's name, dtype, shape
  and bytes.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterator, Mapping, Optional, Sequence, Type, Union

import numpy as np

PathLike = Union[str, os.PathLike]

__all__ = ["FileFormatError", "atomic_path", "atomic_write", "atomic_write_bytes", "atomic_write_text",
           "save_npz", "read_npz", "parse_header", "pop_header", "read_json", "check_header", "digest"]

# what np.load / zipfile raise on a damaged, truncated or foreign file
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError, KeyError,
                NotImplementedError)  # a flipped bit in a zip entry's compression method


class FileFormatError(ValueError):
    """A file is missing, unreadable, damaged, or of another format / kind / version. ``path`` names
    the file and ``problem`` (also ``reason``) says what is wrong; ``str()`` is ``"<path>: <problem>"``."""

    def __init__(self, path: PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        self.reason = problem
        super().__init__(f"{self.path}: {problem}")


def _with_hint(problem: str, hint: str) -> str:
    return f"{problem}; {hint}" if hint else problem


# ---------------------------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder (created if needed) to write the file to; when
    the block ends normally it is synced and renamed over ``path`` (``os.replace``), when it raises it
    is removed. For writers that want a file name (h5py, matplotlib); see :func:`atomic_write` for a
    file object."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """``write(file)`` into a temporary binary file next to ``path``, then rename it over ``path``
    (e.g. ``atomic_write(p, lambda f: np.savez(f, **arrays))``). Returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        write(fh)
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write_bytes(path, text.encode(encoding))


# ---------------------------------------------------------------------------------------------
# .npz archives
# ---------------------------------------------------------------------------------------------

def save_npz(path: PathLike, arrays: Mapping[str, Any], header: Optional[dict] = None,
             header_key: str = "header", json_default: Callable[[Any], Any] = str,
             sort_keys: bool = False) -> Path:
    """Write ``arrays`` (and ``header`` as JSON text under ``header_key``) to the ``.npz`` file
    ``path`` (exactly that name), atomically. A ``header_key`` among the array names is refused."""
    contents = {}
    if header is not None:
        if header_key in arrays:
            raise ValueError(f"array name {header_key!r} is reserved")
        contents[header_key] = np.array(json.dumps(header, sort_keys=sort_keys, default=json_default))
    contents.update((name, np.asarray(value)) for name, value in arrays.items())
    return atomic_write(path, lambda fh: np.savez(fh, **contents))


def read_npz(path: PathLike, what: str = "", error: Type[FileFormatError] = FileFormatError,
             hint: str = "", keys: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
    """All arrays of the ``.npz`` file ``path`` (with ``keys``: only those of them it holds), read
    with ``allow_pickle=False``. A missing file, a file that is not an ``.npz`` archive, a truncated
    or damaged one are raised as ``error`` naming the file (``what`` says what the file should be,
    ``hint`` what to do about it)."""
    path = Path(path)
    label = f"{what} " if what else ""
    if not path.is_file():
        raise error(path, _with_hint(f"{label}file not found: no such file or directory", hint))
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not an .npz archive")
        with data:
            return {name: data[name] for name in data.files if keys is None or name in keys}
    except _READ_ERRORS as exc:
        raise error(path, _with_hint(f"not a readable {label}.npz archive, truncated or corrupt ({exc})",
                                     hint)) from None


# ---------------------------------------------------------------------------------------------
# JSON headers
# ---------------------------------------------------------------------------------------------

def parse_header(path: PathLike, text: Any, what: str = "header",
                 error: Type[FileFormatError] = FileFormatError) -> dict:
    """JSON ``text`` (a str, bytes or 0-d string array) as a dict; ``error`` naming ``path`` when it
    is not valid JSON or not a JSON object."""
    try:
        value = json.loads(text if isinstance(text, (str, bytes)) else str(text))
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise error(path, f"{what} is not valid JSON, truncated or corrupt ({exc})") from None
    if not isinstance(value, dict):
        raise error(path, f"{what} is not a JSON object (got {type(value).__name__})")
    return value


def pop_header(path: PathLike, arrays: Dict[str, np.ndarray], key: str = "header", what: str = "header",
               error: Type[FileFormatError] = FileFormatError) -> dict:
    """Remove the JSON header stored under ``key`` from ``arrays`` (as :func:`save_npz` writes it)
    and return it parsed."""
    if key not in arrays:
        raise error(path, f"has no {what} (not written by this library)")
    return parse_header(path, arrays.pop(key), what=what, error=error)


def read_json(path: PathLike, what: str = "", error: Type[FileFormatError] = FileFormatError) -> dict:
    """The JSON object in the text file ``path``; ``error`` naming the file when it is missing,
    unreadable, not JSON (e.g. truncated) or not an object."""
    path = Path(path)
    label = f"{what} " if what else ""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise error(path, f"{label}file not found: no such file or directory") from None
    except OSError as exc:
        raise error(path, f"{label}file is not readable ({exc})") from None
    return parse_header(path, text, what=f"{label}file", error=error)


def check_header(path: PathLike, header: Any, kind: str, version: int, kind_key: str = "format",
                 version_key: str = "version", error: Type[FileFormatError] = FileFormatError,
                 label: Optional[str] = None, older_ok: bool = False, hint: str = "") -> Mapping:
    """Refuse (``error`` naming ``path``) a ``header`` mapping whose ``kind_key`` is not ``kind`` or
    whose ``version_key`` is not ``version``: another version is refused, a newer one saying so;
    with ``older_ok`` only newer versions are. ``label`` names the expected kind in messages
    (default ``kind``); ``hint`` is appended to the version message. Returns ``header``."""
    label = kind if label is None else label
    if not isinstance(header, Mapping):
        raise error(path, f"not a {label} file (no header object)")
    found = header.get(kind_key)
    if found != kind:
        raise error(path, f"not a {label} file ({kind_key}={found!r})")
    stored = header.get(version_key)
    try:
        newer = int(stored) > version
    except (TypeError, ValueError):
        newer = False
    if newer:
        raise error(path, _with_hint(f"format version {stored} is newer than this code reads "
                                     f"(version {version})", hint))
    if stored != version and not older_ok:
        raise error(path, _with_hint(f"format version {stored}, this code reads version {version}", hint))
    return header


# ---------------------------------------------------------------------------------------------
# digests
# ---------------------------------------------------------------------------------------------

def digest(arrays: Mapping[str, Any], header: Optional[dict] = None, separator: str = "|") -> str:
    """SHA-256 hex digest of ``header`` (sorted-keys JSON, ``default=str``; nothing when ``None``)
    followed by, for each array in name order, ``name, dtype.str, shape`` (each followed by
    ``separator``) and the array's bytes (C order)."""
    h = hashlib.sha256()
    if header is not None:
        h.update(json.dumps(header, sort_keys=True, default=str).encode())
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        h.update(f"{name}{separator}{arr.dtype.str}{separator}{arr.shape}{separator}".encode())
        if arr.size:
            h.update(arr.reshape(-1).view(np.uint8))
    return h.hexdigest()
