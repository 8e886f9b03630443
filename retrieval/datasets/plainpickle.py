"""Read a pickle that holds plain data only (the revisited benchmark's ``gnd_*.pkl``), never running
anything it names.

A pickle is a small program: the opcodes that name a class or function (``GLOBAL``, ``STACK_GLOBAL``,
``INST``, ``OBJ``), call one (``REDUCE``, ``NEWOBJ``, ``BUILD``) or fetch one from a registry
(``EXT1/2/4``, ``PERSID``) are how a downloaded file runs code on load. :func:`load_plain_pickle`
first walks the opcodes (:mod:`pickletools`, which decodes and executes nothing) and refuses any
outside the plain-data set, then unpickles with ``find_class`` / ``persistent_load`` that refuse
everything, so a file the walk missed is still stopped before anything is looked up. What comes
back is built from dicts, lists, tuples, sets, str, bytes, int, float, bool and None only.
"""
from __future__ import annotations

import io
import os
import pickle
import pickletools
from pathlib import Path
from typing import Any, Union

from retrieval.datasets.files import DatasetError, read_bytes

__all__ = ["load_plain_pickle", "PLAIN_OPCODES"]

#: opcodes that build built-in containers, strings and numbers, plus the framing / memo bookkeeping
PLAIN_OPCODES = frozenset({
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP",
    "NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4",
    "FLOAT", "BINFLOAT", "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE",
    "BINUNICODE", "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8",
    "EMPTY_LIST", "APPEND", "APPENDS", "LIST", "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
    "EMPTY_DICT", "DICT", "SETITEM", "SETITEMS", "EMPTY_SET", "ADDITEMS", "FROZENSET",
    "GET", "BINGET", "LONG_BINGET", "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE",
})


class _NoGlobals(pickle.Unpickler):
    """An unpickler that looks nothing up: every class, function and persistent id is refused."""

    def __init__(self, data: bytes, path: Path):
        super().__init__(io.BytesIO(data))
        self._path = path

    def find_class(self, module, name):  # noqa: D401 - pickle's hook
        raise DatasetError(f"{self._path}: refused: the pickle names {module}.{name}; only built-in "
                           "containers, strings and numbers are read")

    def persistent_load(self, pid):
        raise DatasetError(f"{self._path}: refused: the pickle asks for a persistent object {pid!r}")


def _refuse_opcodes(data: bytes, path: Path) -> None:
    strings = []  # the last strings pushed: STACK_GLOBAL's module and name
    try:
        for op, arg, pos in pickletools.genops(data):
            if isinstance(arg, str):
                strings = (strings + [arg])[-2:]
            if op.name in PLAIN_OPCODES:
                continue
            if op.name == "GLOBAL" or op.name == "INST":
                what = f"names {str(arg).replace(' ', '.')}"
            elif op.name == "STACK_GLOBAL" and len(strings) == 2:
                what = f"names {strings[0]}.{strings[1]}"
            else:
                what = f"uses opcode {op.name}"
            raise DatasetError(f"{path}: refused: the pickle {what} (byte {pos}); only built-in "
                               "containers, strings and numbers are read")
    except DatasetError:
        raise
    except Exception as exc:  # ValueError from a truncated or malformed stream
        raise DatasetError(f"{path}: not a readable pickle ({exc})") from None


def load_plain_pickle(path: Union[str, os.PathLike], what: str = "pickle") -> Any:
    """The plain data in the pickle at ``path`` (module docstring); :class:`DatasetError` naming the
    file when it is missing, malformed, or names anything that is not built-in data."""
    path = Path(path)
    data = read_bytes(path, what)
    _refuse_opcodes(data, path)
    try:
        return _NoGlobals(data, path).load()
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from None
