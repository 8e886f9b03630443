"""The experiment protocols that ``retrieval run EXPERIMENT`` knows, by kind.

An experiment file names its ``kind``; the kind's module provides

* ``CONFIG``: the :class:`retrieval.config.Config` subclass its settings are read into (strictly: an
  unknown key is an error), and
* ``main(conf, out_dir: Path, cache_dir: Path | None = None) -> Path``: runs the experiment (resumable,
  with progress) and returns the results folder holding ``results.json``, ``results.md`` and figures.

A protocol that runs on a dataset gives its ``CONFIG`` a ``dataset`` section (preferably
:class:`retrieval.datasets.open.DatasetConfig`, opened with :func:`~retrieval.datasets.open.open_dataset`):
``--dataset KIND --data PATH`` then set its ``kind`` and ``path``. Older shapes are still read (text
fields ``dataset`` / ``data``, or an ``apply_dataset(conf, kind, path)`` hook in the module):
:func:`retrieval.steps.experiment.apply_dataset_options` is the one rule, for ``retrieval run`` and
the benchmark scripts alike.

Adding a protocol is one line here, ``"kind": "package.module"``; the module is imported only when
its kind is run, so the command line stays light.
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Dict

from .config import ConfigError

__all__ = ["PROTOCOLS", "load_protocol"]

PROTOCOLS: Dict[str, str] = {
    "classical": "retrieval.bench.classical",
    "ladder": "retrieval.ladder.run",
    "oxford-descriptors": "retrieval.bench.descriptors",
    "multiview": "retrieval.bench.multiview",
    "retrieval": "retrieval.steps.chain",
}


def load_protocol(kind: str) -> ModuleType:
    """The module of protocol ``kind`` (checked to have ``CONFIG`` and ``main``)."""
    if kind not in PROTOCOLS:
        raise ConfigError(f"unknown experiment kind {kind!r}; known: {sorted(PROTOCOLS)}")
    module = importlib.import_module(PROTOCOLS[kind])
    if not hasattr(module, "CONFIG") or not hasattr(module, "main"):
        raise ConfigError(f"protocol module {PROTOCOLS[kind]} lacks CONFIG or main")
    return module
