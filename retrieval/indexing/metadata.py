"""Metadata of database rows and the filters that restrict a search to some of them.

A :class:`Metadata` is a table of string columns, one value per row of an index (``""``: unknown):
the label, the folder and file an image came from, its EXIF date (``YYYY-MM-DD HH:MM:SS``, which
sorts as it reads), any column of a labels CSV. A filter is a list of conditions, all of which a row
must meet, each written ``COLUMN OP VALUE`` with OP one of ``=  !=  <  <=  >  >=`` or ``~`` (the value
is a prefix: ``folder~trips/2024`` keeps every folder under it), for example ``label=cat``,
``date>=2024-01-01``, ``date<2025``. Comparisons are numeric when both sides are numbers, otherwise by
string (ISO dates compare correctly as strings); a row whose value is unknown meets no condition but
``!=``. :meth:`Metadata.mask` turns a filter into the boolean row mask that
:meth:`retrieval.indexing.index.Index.search` applies inside the search.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np

__all__ = ["Metadata", "Condition", "parse_where", "OPERATORS"]

OPERATORS = ("!=", "<=", ">=", "=", "<", ">", "~")
_CONDITION = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(!=|<=|>=|=|<|>|~)\s*(.*?)\s*$")


@dataclass(frozen=True)
class Condition:
    """One condition of a filter: ``column op value``."""

    column: str
    op: str
    value: str

    def __str__(self) -> str:
        return f"{self.column}{self.op}{self.value}"


def parse_where(where: Union[None, str, Iterable[str]]) -> List[Condition]:
    """Conditions from ``COLUMN OP VALUE`` strings (module docstring); a malformed one is a ValueError
    saying how to write it."""
    if where is None:
        return []
    items = [where] if isinstance(where, str) else list(where)
    out = []
    for text in items:
        match = _CONDITION.match(str(text))
        if not match:
            raise ValueError(f"filter {text!r} is not COLUMN OP VALUE (OP one of {' '.join(OPERATORS)}), "
                             "e.g. label=cat or date>=2024-01-01")
        out.append(Condition(*match.groups()))
    return out


def _numbers(values: np.ndarray) -> Optional[np.ndarray]:
    try:
        return values.astype(np.float64)
    except ValueError:
        return None


class Metadata:
    """String columns over ``rows`` rows (module docstring)."""

    def __init__(self, rows: int, columns: Optional[Mapping[str, Sequence]] = None):
        self.rows = int(rows)
        self.columns: Dict[str, np.ndarray] = {}
        for name, values in (columns or {}).items():
            arr = np.asarray(["" if v is None else str(v) for v in values], dtype=str)
            if arr.shape != (self.rows,):
                raise ValueError(f"metadata column {name!r} has {arr.shape[0]} values for {self.rows} rows")
            self.columns[str(name)] = arr

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, object]]) -> "Metadata":
        """One mapping per row (missing keys: unknown)."""
        names = sorted({key for rec in records for key in rec})
        return cls(len(records), {n: [rec.get(n, "") for rec in records] for n in names})

    def to_json(self) -> dict:
        return {"rows": self.rows, "columns": {name: values.tolist() for name, values in self.columns.items()}}

    @classmethod
    def from_json(cls, data: Mapping) -> "Metadata":
        return cls(int(data["rows"]), data.get("columns") or {})

    def column(self, name: str) -> np.ndarray:
        """A column's values (all unknown when the table has no such column)."""
        return self.columns.get(name, np.full(self.rows, "", dtype=str))

    def record(self, row: int) -> Dict[str, str]:
        """The known values of one row."""
        return {name: str(values[row]) for name, values in self.columns.items() if values[row] != ""}

    @staticmethod
    def concat(parts: Sequence["Metadata"]) -> "Metadata":
        rows = sum(p.rows for p in parts)
        names = sorted({n for p in parts for n in p.columns})
        return Metadata(rows, {n: np.concatenate([p.column(n) for p in parts]) if parts else [] for n in names})

    def take(self, keep: np.ndarray) -> "Metadata":
        """The rows where ``keep`` (a boolean mask) is True."""
        return Metadata(int(np.count_nonzero(keep)), {n: v[keep] for n, v in self.columns.items()})

    def mask(self, where: Union[None, str, Iterable[str]]) -> Optional[np.ndarray]:
        """Rows meeting every condition of ``where`` (None when there is none). A column no row has is
        a ValueError naming the columns there are (a typo would otherwise silently match nothing)."""
        conditions = parse_where(where)
        if not conditions:
            return None
        keep = np.ones(self.rows, dtype=bool)
        for cond in conditions:
            if cond.column not in self.columns:
                raise ValueError(f"filter {cond}: no metadata column {cond.column!r}; columns: "
                                 f"{sorted(self.columns) or 'none'}")
            keep &= _meets(self.columns[cond.column], cond)
        return keep


def _meets(values: np.ndarray, cond: Condition) -> np.ndarray:
    known = values != ""
    if cond.op == "=":
        return values == cond.value
    if cond.op == "!=":
        return values != cond.value
    if cond.op == "~":
        return np.char.startswith(values, cond.value) & known
    number = _numbers(np.asarray([cond.value]))
    out = np.zeros(len(values), dtype=bool)
    left: np.ndarray = values[known]
    right: object = cond.value
    if number is not None:
        as_numbers = _numbers(left)
        if as_numbers is not None:  # every known value and the bound are numbers: compare as numbers
            left, right = as_numbers, number[0]
    compare = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal}[cond.op]
    out[known] = compare(left, right)
    return out
