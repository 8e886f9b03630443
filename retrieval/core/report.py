"""Results as the benchmarks write them: JSON rows plus a readable markdown table, figures, and the
small measuring helpers (wall time per stage, peak memory) every benchmark reports.

The one matplotlib set-up: :func:`subplots` (Agg backend) and :func:`save_figure` (atomic)."""
from __future__ import annotations

import json
import math
import os
import resource
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from retrieval.core.fileio import atomic_write_text

PathLike = Union[str, os.PathLike]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def subplots(*args, **kwargs):
    """``plt.subplots(*args, **kwargs)`` on the Agg backend: ``(fig, axes)``; finish with
    :func:`save_figure`."""
    return _pyplot().subplots(*args, **kwargs)


def save_figure(fig, path: PathLike, dpi: int = 120, fmt: Optional[str] = None) -> Path:
    """Lay ``fig`` out (``tight_layout``), save it to ``path`` at ``dpi`` atomically (a temporary file
    renamed over ``path``, its folder created) and close it; returns ``Path(path)``. The format is
    ``fmt``, else the suffix of ``path``, else matplotlib's default with its suffix appended to the
    name (as ``savefig`` does)."""
    from retrieval.core.fileio import atomic_path

    plt = _pyplot()
    fig.tight_layout()
    target = Path(path)
    if fmt is None:
        fmt = target.suffix[1:] or plt.rcParams["savefig.format"]
        if not target.suffix:
            target = target.with_name(f"{target.name.rstrip('.')}.{fmt}")
    try:
        with atomic_path(target) as tmp:
            fig.savefig(tmp, dpi=dpi, format=fmt, bbox_inches="tight")
    finally:
        plt.close(fig)
    return Path(path)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class _Stage:
    """What ``with timer(stage) as st`` yields: set ``st.computed = False`` when the stage found its
    result in a cache (its stored seconds then stay those of the run that computed it)."""

    computed = True


class StageTimer:
    """The one stage timer: wall-clock seconds per named stage, ``with timer("extract"): ...``.

    With a ``path`` (a JSON file) the seconds of computed stages persist there, so a resumed run still
    reports what a stage cost when it ran (a stage found complete in the cache adds nothing to its
    stored seconds; ``this_run`` holds what this run spent). Each write re-reads the file and replaces
    only this run's stages, so two runs sharing a cache keep each other's entries."""

    def __init__(self, path: Optional[PathLike] = None) -> None:
        self.path = Path(path) if path is not None else None
        self.seconds: Dict[str, float] = self._read()
        self.this_run: Dict[str, float] = {}
        self._fresh: set = set()
        # called as listener(stage, seconds, computed) after each stage (e.g. retrieval.experiments.ladder.eta)
        self.listeners: list = []

    def _read(self) -> Dict[str, float]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            return {k: float(v) for k, v in json.loads(self.path.read_text()).items()}
        except (ValueError, AttributeError):
            return {}

    @contextmanager
    def __call__(self, stage: str):
        handle = _Stage()
        start = time.perf_counter()
        try:
            yield handle
        except BaseException:
            raise
        else:
            self.add(stage, time.perf_counter() - start, handle.computed)

    def add(self, stage: str, seconds: float, computed: bool = True) -> None:
        self.this_run[stage] = self.this_run.get(stage, 0.0) + seconds
        for listener in self.listeners:
            listener(stage, seconds, computed)
        if not computed:
            return
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds if stage in self._fresh else seconds
        self._fresh.add(stage)
        if self.path is None:
            return
        on_disk = self._read()
        on_disk.update({k: self.seconds[k] for k in self._fresh})
        self.seconds = {**on_disk, **self.seconds}
        atomic_write_text(self.path, json.dumps(on_disk, indent=1, sort_keys=True))

    def __getitem__(self, stage: str) -> float:
        return self.seconds.get(stage, 0.0)

    def total(self, *stages: str) -> float:
        return float(sum(self.seconds.get(s, 0.0) for s in stages))


def _fmt(value) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        # four significant digits kept with their trailing zeros ("0.4000" beside "0.8657", not "0.4")
        return f"{value:#.4g}".rstrip(".") if abs(value) < 1000 else f"{value:.0f}"
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


def finite_metrics(metrics: Dict[str, object]) -> Dict[str, object]:
    """``metrics`` with every undefined (NaN or infinite) float as None: JSON has no NaN, so an
    undefined metric is reported as null."""
    import math

    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}


#: metrics that are not fractions (UKBench's N-S score counts the group's images in the top 4, 0-4)
NOT_FRACTIONS = ("ns_score",)


def pct(x: float) -> float:
    """A fraction as the percent every results table reports (two decimals; NaN stays NaN)."""
    return round(100.0 * x, 2) if x == x else math.nan


def percent_metrics(metrics: Dict[str, object]) -> Dict[str, object]:
    """``metrics`` with every fractional metric in percent (the one unit of results tables; counts and
    :data:`NOT_FRACTIONS` as they are)."""
    return {k: (pct(v) if isinstance(v, float) and k not in NOT_FRACTIONS else v) for k, v in metrics.items()}

