"""Files this library writes and reads back: atomic writes, ``.npz`` archives read without pickle,
JSON headers (format / kind and version), SHA-256 digests of a header plus named arrays, and one
error type, :class:`FileFormatError`, that names the file and the problem.

Imports only the standard library and numpy, so :mod:`retrieval`, :mod:`features` and :mod:`rerank`
can all use it without import cycles (``import retrieval.core.fileio`` pulls in neither torch nor h5py).

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
* Faults: :func:`reserve_space` makes sure the disk has room for what is about to be written (else
  :class:`DiskFullError`, before anything is written); :func:`is_lock_conflict` tells an open refused
  because another process holds the file's lock; :func:`describe_file` says what a file that is not
  the expected kind looks like (so messages name an index passed for a feature file as such).
"""
from __future__ import annotations

import contextlib
import errno
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
           "save_npz", "read_npz", "parse_header", "pop_header", "read_json", "check_header", "digest",
           "DiskFullError", "reserve_space", "is_lock_conflict", "describe_file", "exclusive_lock"]

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

    def __reduce__(self):  # picklable, so worker processes (loky, Ray) can hand it back
        return type(self), (self.path, self.problem)


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
    try:
        return atomic_write(path, lambda fh: np.savez(fh, **contents))
    except OSError as exc:  # numpy's bare "[Errno 27] File too large" names no file: this names the one asked for
        if exc.errno not in _FULL or isinstance(exc, DiskFullError):
            raise
        raise DiskFullError(path, f"disk full or file size limit ({exc.strerror}): nothing was written and an "
                                  "earlier file there is unchanged; free space and write it again", exc.errno) from None


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
        kind = describe_file(path)
        if "zip archive" not in kind and kind != "a Python pickle":  # another kind of file: say which
            kind = "an HDF5 feature file" if kind == "an HDF5 file" else kind  # what this library writes
            raise error(path, f"is {kind}, not {_an(label)} .npz archive; check the path") from None
        raise error(path, _with_hint(f"not a readable {label}.npz archive, truncated or corrupt ({exc})",
                                     hint)) from None


def _an(label: str) -> str:
    return f"{'an' if label[:1] in 'aeiou' else 'a'} {label.strip()}" if label.strip() else "an"


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

def file_hash(path: PathLike, algorithm: str = "sha256"):
    """``hashlib`` object of a file's bytes, read in 1 MiB chunks (``.hexdigest()`` / ``.digest()``)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h


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


# ---------------------------------------------------------------------------------------------
# faults: full disks, locked files, files of another kind
# ---------------------------------------------------------------------------------------------

#: errno values meaning "no room to write": no space left, the process's file-size limit
#: (RLIMIT_FSIZE, errno 27), a disk quota
_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class DiskFullError(FileFormatError, OSError):
    """``path`` could not grow by what was about to be written (no space left on the device, a
    disk quota or the process's file-size limit); raised before anything was written. Both a
    :class:`FileFormatError` (a ``ValueError``: one line in the CLI) and an ``OSError`` whose
    ``errno`` is the system's (ENOSPC, EFBIG or EDQUOT), as any other failed write would be."""

    def __init__(self, path: PathLike, problem: str, code: int = errno.ENOSPC):
        super().__init__(path, problem)
        self.errno = code

    def __str__(self) -> str:  # OSError's would be "[Errno N] ...", without the file
        return f"{self.path}: {self.problem}"

    def __reduce__(self):
        return type(self), (self.path, self.problem, self.errno)


def reserve_space(fd: int, size: int, path: PathLike, ahead: int = 0,
                  error: Type[FileFormatError] = DiskFullError) -> int:
    """Make sure the first ``size`` bytes of the open file ``fd`` are allocated on disk (growing it
    with ``posix_fallocate``; ``ahead`` more bytes when they fit, so that small writes do not ask
    every time). Writes inside the allocated range then cannot fail for lack of space, which is
    what keeps a file whose format updates itself in place (HDF5) valid on a full disk.

    Raises ``error`` (a :class:`DiskFullError` by default) naming ``path`` when the space is not
    there; returns the allocated size. Filesystems without fallocate get no guarantee (no error)."""
    allocated = os.fstat(fd).st_size
    if size <= allocated:
        return allocated
    targets = [size + ahead, size] if ahead > 0 else [size]
    while True:
        target = targets.pop(0)
        try:
            os.posix_fallocate(fd, 0, target)
            return target
        except OSError as exc:
            if exc.errno not in _FULL:
                return allocated  # fallocate unsupported here: best effort
            if not targets:
                failure = exc.errno
                break
    reason = {errno.EFBIG: "the process's file-size limit (ulimit -f) is reached",
              errno.EDQUOT: "the disk quota is exceeded"}.get(failure, "no space left on the device")
    exc = error(path, f"disk full: cannot write {size - allocated} more bytes ({reason}, "
                      f"{os.strerror(failure)}). Everything written before is intact; free some space and "
                      "rerun to resume")
    exc.errno = failure
    raise exc


@contextlib.contextmanager
def exclusive_lock(lock_file: PathLike, owner: PathLike, error: Type[FileFormatError] = FileFormatError):
    """Hold an exclusive ``flock`` on ``lock_file`` (created if needed) for the block, so that a
    second process writing the same output (``owner``, the path the user named) is refused up
    front, "in use by another process", instead of the two deleting each other's temporary files.
    The lock goes with the process: a killed run never leaves a stale lock."""
    import fcntl

    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise error(owner, f"in use by another process (a run writing it holds {lock_file}); wait for "
                               "that run to finish or use another output") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def is_lock_conflict(exc: BaseException) -> bool:
    """True when ``exc`` (from opening a file) means another process holds the file's lock (HDF5's
    file locking reports it as errno 11 / EAGAIN, "unable to lock file")."""
    return isinstance(exc, OSError) and (
        exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK) or "unable to lock file" in str(exc))


_MAGIC = ((b"\x89HDF\r\n\x1a\n", "an HDF5 file"), (b"PK\x03\x04", "a zip archive"),
          (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"\x93NUMPY", "a .npy array"),
          (b"\x80", "a Python pickle"), (b"GIF8", "a GIF image"))


def describe_file(path: PathLike) -> str:
    """What the file ``path`` looks like from its first bytes, for error messages: "an empty file",
    "an HDF5 file", "a hybrid-retrieval/index .npz archive", "a torch checkpoint", "JSON text", ...
    Never raises (an unreadable file is "an unreadable file (...)")."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError as exc:
        return f"an unreadable file ({exc.strerror or exc})"
    if not head:
        return "an empty file (0 bytes)"
    kind = next((name for magic, name in _MAGIC if head.startswith(magic)), None)
    if kind == "a zip archive":
        return _describe_zip(path)
    if kind is not None:
        return kind
    if head.lstrip()[:1] in (b"{", b"["):
        return "JSON text"
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return f"a file of unknown kind (starts with {head[:8]!r})"


def _describe_zip(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if any(n.endswith("data.pkl") for n in names):
                return "a torch checkpoint"
            for name in names:
                if name.endswith(".npy") and name[:-4] in ("header", "config", "meta"):
                    with archive.open(name) as member:
                        header = json.loads(str(np.lib.format.read_array(member, allow_pickle=False)))
                    kind = (header.get("format") or header.get("kind")) if isinstance(header, dict) else None
                    if kind:
                        return f"a {kind} .npz archive"
            if all(n.endswith(".npy") for n in names):
                return "a .npz archive"
    except (zipfile.BadZipFile, OSError, ValueError, KeyError):
        return "a damaged zip archive"
    return "a zip archive"
