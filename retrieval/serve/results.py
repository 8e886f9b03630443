"""A results folder as the server reads it, and what ``--experiment DIR`` serves.

:class:`ResultsFolder` reads what a benchmark or ``retrieval run`` wrote: ``results.json`` (``rows``, and
per-query APs under ``per_query`` when present: ``{experiment: {query id: AP}}``), ``results.md`` and the
figures (``*.png``, ``*.svg``, ``*.jpg`` in the folder). Figures are served by name from the table built
here when the folder is opened; a name not in it is a 404.

:func:`experiment_sources` finds the index, features, images and dataset of a results folder:

1. ``serve.json`` in the folder: ``{"index": ..., "features": ..., "queries": ..., "local": ...,
   "images": ..., "dataset": {"kind": ..., "data": ...}}`` (relative paths are relative to the folder);
2. else the E1-E7 run's ``results.json`` ``options`` (``cache``, ``quick``, ``gldv2``): E4's global
   features (``<cache>/<quick|full>/global/e4_{index,queries}.h5``), its RootSIFT store
   (``local/sift.h5``) and the GLDv2-format data the run used.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

__all__ = ["ResultsFolder", "experiment_sources", "markdown_blocks", "FIGURE_SUFFIXES"]

PathLike = Union[str, os.PathLike]
FIGURE_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg")
MEDIA_TYPES = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


class ResultsFolder:
    """The readable parts of a results folder (see the module docstring)."""

    def __init__(self, path: PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise ValueError(f"{self.path}: no such results folder")
        json_path = self.path / "results.json"
        self.data = _read_json(json_path) if json_path.is_file() else {}
        md = self.path / "results.md"
        self.markdown = md.read_text(errors="replace") if md.is_file() else None
        self.figures: Dict[str, Path] = {p.name: p for p in sorted(self.path.iterdir())
                                         if p.is_file() and p.suffix.lower() in FIGURE_SUFFIXES}
        if not self.data and self.markdown is None and not self.figures:
            raise ValueError(f"{self.path}: holds no results.json, results.md or figures")

    @property
    def rows(self) -> List[dict]:
        rows = self.data.get("rows", [])
        return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []

    def table(self) -> (List[str], List[List[str]]):
        """(columns, cells) of the rows, nested dicts flattened as ``outer.inner``."""
        from retrieval.core.report import _flatten, _fmt

        flat = [_flatten(r) for r in self.rows]
        columns: List[str] = []
        for r in flat:
            columns += [c for c in r if c not in columns]
        return columns, [[_fmt(r.get(c)) for c in columns] for r in flat]

    def markdown_blocks(self) -> List[Tuple[str, object]]:
        """``results.md`` as blocks in order: ``("heading", (level, text))``, ``("table", (header,
        rows))`` and ``("text", line)``; the page shows its tables (the pivoted per-dataset tables of
        the ladder, E1-E8 by split) as HTML tables."""
        return markdown_blocks(self.markdown or "")

    def per_query(self) -> Dict[str, Dict[str, float]]:
        """``{experiment: {query id: AP}}`` when the results hold per-query APs, else ``{}``."""
        pq = self.data.get("per_query", {})
        if not isinstance(pq, dict):
            return {}
        out = {}
        for name, scores in pq.items():
            if isinstance(scores, dict):
                out[str(name)] = {str(q): float(a) for q, a in scores.items() if isinstance(a, (int, float))}
        return out

    def figure(self, name: str) -> Optional[Path]:
        return self.figures.get(name)


def chosen_fusion(results: "ResultsFolder", local_method: str):
    """``(FusionConfig, source)`` the experiment of ``results`` chose on all its queries for the local
    evidence ``local_method`` serves (``inliers``: spatial verification, ``ratio``: the ratio test), or
    None when it chose none: the E1-E8 ladder's ``deployed`` (SV / E5, first relevance protocol) or
    ``retrieval run``'s ``choices[].deployed_fusion``."""
    from retrieval.rerank.fusion import FusionConfig

    rung, scorer = ("SV", "spatial") if local_method == "inliers" else ("E5", "ratio")
    for relevance, by_exp in (results.data.get("deployed") or {}).items():
        label = (by_exp or {}).get(rung)
        if label:
            return FusionConfig.from_label(label), f"chosen by {results.path} on all queries ({rung}, {relevance})"
    for choice in results.data.get("choices") or []:
        if f" + {scorer} " in choice.get("method", "") and choice.get("deployed_fusion"):
            return (FusionConfig.from_dict(choice["deployed_fusion"]),
                    f"chosen by {results.path} on all queries ({choice.get('protocol')})")
    return None

def _cells(line: str) -> List[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_blocks(text: str) -> List[Tuple[str, object]]:
    """The headings (``#`` lines, and ``**bold**`` lines that title a table), tables (``|`` lines; the
    ``|---|`` rule after the header dropped) and other non-empty lines of a markdown text, in order.
    Only what :func:`retrieval.core.report.write_results` and the benchmarks write is recognised."""
    blocks: List[Tuple[str, object]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("|"):
            table = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                table.append(lines[i])
                i += 1
            rows = [_cells(t) for t in table if not set(t.strip()) <= set("|-: ")]
            blocks.append(("table", (rows[0], rows[1:]) if rows else ([], [])))
            continue
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            blocks.append(("heading", (level, line[level:].strip())))
        elif line.startswith("**") and line.count("**") >= 2 and \
                any(n.strip().startswith("|") for n in lines[i + 1:i + 3]):
            blocks.append(("heading", (4, line.replace("**", ""))))
        elif line:
            blocks.append(("text", line))
        i += 1
    return blocks


def _first_existing(candidates: List[Path]) -> Optional[Path]:
    return next((c for c in candidates if c.exists()), None)


def experiment_sources(path: PathLike) -> dict:
    """``{"index", "features", "queries", "local", "images", "dataset": (kind, data) or None}`` of a
    results folder (see the module docstring); ValueError saying what is missing."""
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such results folder")
    manifest = folder / "serve.json"
    if manifest.is_file():
        spec = _read_json(manifest)
        unknown = set(spec) - {"index", "features", "queries", "local", "images", "dataset"}
        if unknown:
            raise ValueError(f"{manifest}: unknown keys {sorted(unknown)}")

        def resolve(key):
            return None if spec.get(key) is None else (folder / str(spec[key])).resolve()

        ds = spec.get("dataset")
        if ds is not None and (not isinstance(ds, dict) or "kind" not in ds or "data" not in ds):
            raise ValueError(f"{manifest}: 'dataset' must be {{\"kind\": ..., \"data\": ...}}")
        out = {k: resolve(k) for k in ("index", "features", "queries", "local", "images")}
        out["dataset"] = None if ds is None else (str(ds["kind"]), (folder / str(ds["data"])).resolve())
        return out
    results = folder / "results.json"
    options = _read_json(results).get("options") if results.is_file() else None
    if not isinstance(options, dict) or "cache" not in options:
        raise ValueError(f"{folder}: no serve.json, and no results.json with the run's options (cache); pass "
                         "--index/--features/--images instead")
    cache = Path(options["cache"]) / ("quick" if options.get("quick") else "full")
    # the cache path is relative to where the run started: here, or above the results folder
    bases = [Path.cwd(), *folder.resolve().parents]
    run_cache = _first_existing([b / cache if not cache.is_absolute() else cache for b in bases])
    if run_cache is None:
        raise ValueError(f"{folder}: the run's cache {cache} is gone (looked in {Path.cwd()} and above "
                         f"{folder}); rerun the experiment or pass --index/--features/--images")
    features = run_cache / "global" / "e4_index.h5"
    if not features.is_file():
        raise ValueError(f"{features}: the run's E4 index features are missing; rerun the experiment")
    queries = run_cache / "global" / "e4_queries.h5"
    local = run_cache / "local" / "sift.h5"
    data = Path(options["gldv2"]) if options.get("gldv2") else run_cache / "coil100-gldv2"
    return {"index": None, "features": features, "queries": queries if queries.is_file() else None,
            "local": local if local.is_file() else None, "images": None,
            "dataset": ("gldv2", data) if data.is_dir() else None}
