"""Checks of user input and error messages as one line: input files of the right kind, outputs that can
be written, operating-system errors (disk full, file size limit) as one line naming the file.

:class:`CLIError` is the user error the command line (:mod:`retrieval.cli`) raises and prints as
``retrieval: error: ...`` with exit code 2; it is a ValueError, so code below the command line can
raise it too. Imports only the standard library, so the command line starts fast.
"""
from __future__ import annotations

import contextlib
import errno
from pathlib import Path
from typing import Optional, Tuple, Union

__all__ = ["CLIError", "require_file", "require_output", "writing", "os_error_message"]


class CLIError(ValueError):
    """A user error: reported as one line, exit code 2 (a ValueError, so callers that catch bad
    input catch it too)."""


# the first bytes of the file kinds the commands take, to say "this is an index, not a feature file"
# instead of the reader's low-level complaint
_SIGNATURES = (("hdf5", b"\x89HDF\r\n\x1a\n", "an HDF5 file (a feature file?)"),
               ("npz", b"PK\x03\x04", "an .npz archive (an index or model file?)"),
               ("json", b"{", "a JSON file (a ranking?)"),
               ("ranking", b"\x89HRRANK\n", "a binary ranking file"))


def _a(what: str) -> str:
    return f"{'an' if what[:1] in 'aeiou' else 'a'} {what}"


def _file_kind(path: Path) -> Optional[str]:
    try:
        with open(path, "rb") as fh:
            head = fh.read(16).lstrip()
    except OSError:
        return None
    return next((kind for kind, magic, _ in _SIGNATURES if head.startswith(magic)), None)


def require_file(path: str, what: str, kind: Union[str, Tuple[str, ...], None] = None) -> Path:
    """``path`` when it is a non-empty file (of ``kind``: hdf5, npz, json or ranking, or one of a
    tuple of them, when given); else a :class:`CLIError` naming it and saying what it is instead."""
    p = Path(path)
    if p.is_dir():
        raise CLIError(f"{p}: is a folder, expected {_a(what)}")
    if not p.is_file():
        raise CLIError(f"{p}: no such {what}")
    if p.stat().st_size == 0:
        raise CLIError(f"{p}: {what} is empty (0 bytes)")
    found = _file_kind(p)
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds is not None and found is not None and found not in kinds:
        described = next(text for k, _, text in _SIGNATURES if k == found)
        raise CLIError(f"{p}: is {described}, not {_a(what)}")
    return p


def require_output(path: Optional[str], what: str, folder: bool = False) -> Optional[Path]:
    """Check, before any work, that ``path`` can be written as a ``what`` (a file, or a folder with
    ``folder=True``): not an existing folder (file) and not under a regular file. Returns the path."""
    if path is None:
        return None
    p = Path(path)
    if folder and p.exists() and not p.is_dir():
        raise CLIError(f"{p}: is a file, expected an output folder for the {what}")
    if not folder and p.is_dir():
        raise CLIError(f"{p}: is a folder, expected a file name for the {what}")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CLIError(f"{p}: cannot write the {what} there: {parent} is a file, not a folder")
            break
    return p


@contextlib.contextmanager
def writing(path, what: str):
    """Around the write of an output file: an OS error (disk full, file size limit, permissions) is
    a :class:`CLIError` naming ``path``, the file the user asked for (the write goes to a temporary
    file first, so an earlier file at ``path`` is unchanged)."""
    try:
        yield
    except OSError as exc:
        exc.filename, exc.filename2 = str(path), None
        raise CLIError(f"cannot write the {what}: {os_error_message(exc)}") from None


def os_error_message(exc: OSError) -> str:
    """One line for an operating-system error: the file, what failed, and what the disk-full /
    file-size-limit cases mean for the files already there."""
    if exc.strerror is None:  # raised with a message of ours, which names the file already
        return str(exc)
    text = exc.strerror
    if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        text += " (disk full or file size limit); nothing was replaced: an earlier file there is unchanged"
    # os.replace(tmp, final): the final name is the one the user knows
    where = exc.filename2 or exc.filename
    return f"{where}: {text}" if where else text
