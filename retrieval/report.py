"""Results as the benchmarks write them: JSON rows plus a readable markdown table, and the small
measuring helpers (wall time per stage, peak memory) every benchmark reports."""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Union

from .fileio import atomic_write_text

PathLike = Union[str, os.PathLike]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class StageTimer:
    """Accumulates wall-clock seconds per named stage: ``with timer("extract"): ...``."""

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def _fmt(value) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    if value is None:
        return "-"
    return str(value)


def markdown_table(rows: Sequence[dict], columns: Optional[Sequence[str]] = None) -> str:
    """A markdown table of ``rows`` (dicts); nested dicts are flattened as ``outer.inner``."""
    flat = [_flatten(r) for r in rows]
    if columns is None:
        columns = []
        for r in flat:
            for key in r:
                if key not in columns:
                    columns.append(key)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in flat:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def _flatten(row: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def write_results(rows: List[dict], out_dir: PathLike, columns: Optional[Sequence[str]] = None,
                  title: str = "", extra: Optional[dict] = None) -> str:
    """Write ``results.json`` (``{"rows": rows, **extra}``) and ``results.md`` into ``out_dir`` and
    return the markdown table."""
    out_dir = Path(out_dir)
    payload = {"rows": rows}
    if extra:
        payload.update(extra)
    atomic_write_text(out_dir / "results.json", json.dumps(payload, indent=2, default=str))
    table = markdown_table(rows, columns)
    atomic_write_text(out_dir / "results.md", (f"## {title}\n\n" if title else "") + table + "\n")
    return table
