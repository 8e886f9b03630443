"""Experiment files: one TOML (or YAML) file names an experiment's protocol and all its settings.

::

    kind = "retrieval"                 # the protocol (retrieval.experiments.kinds.EXPERIMENT_KINDS)
    description = "optional free text"

    [dataset]                          # retrieval.datasets.open.DatasetConfig
    kind = "folder"
    path = "~/photos"

    [extract]                          # ... every other key is a setting of the protocol's CONFIG
    config = "lite0-gem-512"

Every key but ``kind`` and ``description`` is read into the protocol module's ``CONFIG`` with
:meth:`retrieval.core.config.Config.from_dict`, strictly: an unknown key anywhere is an error naming the
key and the file. A protocol of one dataset reads it from its ``[dataset]`` table (``kind``, ``path``
and the reader options of :class:`~retrieval.datasets.open.DatasetConfig`), and ``--dataset KIND --data
PATH`` replace them (:func:`apply_dataset_options`); ``--set key.sub=value``
overrides any setting (dotted keys, values read as JSON unless the field is text).

Experiment files shipped with the package (``retrieval/experiments/*.toml``) are named without a
path or extension: ``retrieval run e1-e7`` (:func:`shipped_experiments` lists them).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from retrieval.core.config import Config, ConfigError, config_fields, parse_overrides

__all__ = ["Experiment", "load_experiment", "apply_dataset_options", "read_experiment_file", "find_experiment",
           "shipped_experiments", "EXPERIMENT_DIR", "RESERVED_KEYS"]

EXPERIMENT_DIR = Path(__file__).resolve().parent.parent / "experiments"
RESERVED_KEYS = ("kind", "description")
_SUFFIXES = (".toml", ".yaml", ".yml")


@dataclass
class Experiment:
    """A loaded experiment: its ``name`` (file stem), ``path``, ``kind``, the protocol ``module`` and
    the checked configuration ``conf`` (overrides applied)."""

    name: str
    path: Path
    kind: str
    description: str
    module: ModuleType
    conf: Config


def shipped_experiments() -> List[str]:
    """Names of the experiment files shipped with the package."""
    if not EXPERIMENT_DIR.is_dir():
        return []
    return sorted(p.stem for p in EXPERIMENT_DIR.iterdir() if p.suffix in _SUFFIXES)


def find_experiment(name: Union[str, os.PathLike]) -> Path:
    """The file of ``name``: an existing path, else a shipped experiment of that name."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if path.suffix not in _SUFFIXES and len(path.parts) == 1:
        for suffix in _SUFFIXES:
            shipped = EXPERIMENT_DIR / f"{path.name}{suffix}"
            if shipped.is_file():
                return shipped
    raise ConfigError(f"{name}: no such experiment file, and no shipped experiment of that name "
                      f"(shipped: {', '.join(shipped_experiments()) or 'none'})")


def read_experiment_file(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The table of a TOML (``.toml``) or YAML (``.yaml`` / ``.yml``) file; a syntax error names the file."""
    path = Path(path)
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or write the "
                              f"experiment as TOML") from None
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    else:
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python < 3.11
            import tomli as tomllib
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: an experiment file is a table of settings")
    return dict(data)


def apply_dataset_options(module: ModuleType, conf: Config, dataset: Optional[str] = None,
                          data: Optional[Union[str, os.PathLike]] = None, experiment: str = "experiment") -> Config:
    """``conf`` with ``--dataset KIND --data PATH`` applied: the one rule of ``retrieval run``:

    1. a protocol of one dataset has a ``dataset`` section with ``kind`` and ``path`` (a
       :class:`~retrieval.datasets.open.DatasetConfig`): ``dataset.kind`` / ``dataset.path``;
    2. a protocol of several datasets (the ladder) has its own ``apply_dataset(conf, kind, path)`` hook
       (the ladder: the kind picks the half that runs).

    An option the protocol has no place for is an error naming ``experiment``."""
    if dataset is None and data is None:
        return conf
    path = None if data is None else str(data)
    try:
        hook = getattr(module, "apply_dataset", None)
        if hook is not None:
            return hook(conf, dataset, path)
        section = config_fields(type(conf)).get("dataset")
        if not (isinstance(section, type) and issubclass(section, Config) and
                {"kind", "path"} <= set(config_fields(section))):
            raise ConfigError("its protocol takes no dataset (--dataset / --data)")
        pairs = {"dataset.kind": dataset, "dataset.path": path}
        return conf.override({k: v for k, v in pairs.items() if v is not None})
    except ConfigError as exc:
        raise ConfigError(f"experiment {experiment}: {exc}") from None


def load_experiment(name: Union[str, os.PathLike], overrides: Union[None, Sequence[str], Mapping[str, Any]] = None,
                    dataset: Optional[str] = None, data: Optional[Union[str, os.PathLike]] = None) -> Experiment:
    """Read, validate and override an experiment (module docstring): ``name`` is a path or a shipped
    experiment's name; ``overrides`` dotted ``KEY=VALUE`` strings or a mapping, applied after ``dataset``
    / ``data`` (:func:`apply_dataset_options`)."""
    from retrieval.experiments.kinds import load_protocol

    path = find_experiment(name)
    table = read_experiment_file(path)
    kind = table.get("kind")
    if not isinstance(kind, str) or not kind:
        raise ConfigError(f"{path}: no 'kind' (the protocol to run), e.g. kind = \"retrieval\"")
    description = table.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{path}: description must be text")
    try:
        module = load_protocol(kind)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    settings = {k: v for k, v in table.items() if k not in RESERVED_KEYS}
    conf = module.CONFIG.from_dict(settings, where=str(path))
    conf = apply_dataset_options(module, conf, dataset, data, experiment=str(name))
    pairs: Dict[str, Any] = {}
    if overrides:
        pairs.update(parse_overrides(list(overrides)) if not isinstance(overrides, Mapping) else dict(overrides))
    if pairs:
        try:
            conf = conf.override(pairs)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return Experiment(name=path.stem, path=path, kind=kind, description=description, module=module, conf=conf)
