"""Run an experiment file through its protocol (the command is ``retrieval run``, :mod:`retrieval.cli.run_command`).

    retrieval run e1-e7                                  # a shipped experiment, by name
    retrieval run my.toml --dataset folder --data ~/photos --set rerank.v=0.3 --out results/mine

Writes ``results.json``, ``results.md`` and figures under ``--out`` (default ``results/<name>``),
caches what it computes under ``--cache`` (default ``cache/<name>``) and resumes from it. The
experiment file format is described in :mod:`retrieval.experiments.files`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from retrieval.experiments.files import Experiment

__all__ = ["main"]


def main(experiment: Experiment, out_dir: Optional[Path] = None, cache_dir: Optional[Path] = None,
         progress: bool = True) -> Path:
    """Run a loaded :class:`Experiment`; returns the results folder (holding ``results.json``).
    ``progress`` reaches protocols whose ``main`` takes it."""
    import inspect

    from retrieval.core.fileio import atomic_write_text

    out_dir = Path(out_dir) if out_dir is not None else Path("results") / experiment.name
    cache_dir = Path(cache_dir) if cache_dir is not None else Path("cache") / experiment.name
    out_dir.mkdir(parents=True, exist_ok=True)
    # what was run, next to what it gave (the file as checked, every override applied)
    atomic_write_text(out_dir / "experiment.json", json.dumps(
        {"experiment": str(experiment.path), "kind": experiment.kind, "description": experiment.description,
         "settings": experiment.conf.to_dict()}, indent=2) + "\n")
    extra = {"progress": progress} if "progress" in inspect.signature(experiment.module.main).parameters else {}
    return Path(experiment.module.main(experiment.conf, out_dir, cache_dir, **extra))
