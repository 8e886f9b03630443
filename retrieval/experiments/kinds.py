"""The experiment protocols that ``retrieval run EXPERIMENT`` knows, by kind.

An experiment file names its ``kind``; the kind's module provides

* ``CONFIG``: the :class:`retrieval.core.config.Config` subclass its settings are read into (strictly: an
  unknown key is an error), and
* ``main(conf, out_dir: Path, cache_dir: Path | None = None) -> Path``: runs the experiment (resumable,
  with progress) and returns the results folder holding ``results.json``, ``results.md`` and figures.

A protocol that runs on one dataset gives its ``CONFIG`` a ``dataset`` section, a
:class:`retrieval.datasets.open.DatasetConfig` (opened with :func:`~retrieval.datasets.open.open_dataset`):
``--dataset KIND --data PATH`` then set its ``kind`` and ``path``. A protocol with several datasets
(the ladder) has an ``apply_dataset(conf, kind, path)`` hook instead:
:func:`retrieval.experiments.files.apply_dataset_options` is the one rule.

Adding a protocol: its kind in :data:`EXPERIMENT_KINDS` and one branch in :func:`load_protocol`. Each module
is imported only when its kind is run (the command line stays light), by a plain import statement, so
that static import analysis sees every edge.
"""
from __future__ import annotations

from types import ModuleType

from retrieval.core.config import ConfigError

__all__ = ["EXPERIMENT_KINDS", "load_protocol"]

#: the experiment kinds, each loaded by its branch of :func:`load_protocol`
EXPERIMENT_KINDS = ("classical", "ladder", "oxford-descriptors", "multiview", "retrieval")


def load_protocol(kind: str) -> ModuleType:
    """The module of protocol ``kind`` (checked to have ``CONFIG`` and ``main``)."""
    if kind == "classical":
        from retrieval.experiments import classical as module
    elif kind == "ladder":
        from retrieval.experiments.ladder import run as module
    elif kind == "oxford-descriptors":
        from retrieval.experiments import descriptors as module
    elif kind == "multiview":
        from retrieval.experiments import multiview as module
    elif kind == "retrieval":
        from retrieval.experiments import chain as module
    else:
        raise ConfigError(f"unknown experiment kind {kind!r}; known: {sorted(EXPERIMENT_KINDS)}")
    if not hasattr(module, "CONFIG") or not hasattr(module, "main"):
        raise ConfigError(f"protocol module {module.__name__} lacks CONFIG or main")
    return module
