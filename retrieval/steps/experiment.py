"""Experiment files: one TOML (or YAML) file names an experiment's protocol and all its settings.

::

    kind = "retrieval"                 # the protocol (retrieval.protocols.PROTOCOLS)
    description = "optional free text"

    [dataset]                          # retrieval.datasets.open.DatasetConfig
    kind = "folder"
    path = "~/photos"

    [extract]                          # ... every other key is a setting of the protocol's CONFIG
    config = "lite0-gem-512"

Every key but ``kind`` and ``description`` is read into the protocol module's ``CONFIG`` with
:meth:`retrieval.config.Config.from_dict`, strictly: an unknown key anywhere is an error naming the
key and the file. A protocol whose ``CONFIG`` has a ``dataset`` section (a
:class:`~retrieval.datasets.open.DatasetConfig` or any Config with ``kind`` and ``path``) can be
pointed at other data with ``--dataset KIND --data PATH``; ``--set key.sub=value`` overrides any
setting (dotted keys, values read as JSON unless the field is text).

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

from ..config import Config, ConfigError, parse_overrides

__all__ = ["Experiment", "load_experiment", "read_experiment_file", "find_experiment", "shipped_experiments",
           "EXPERIMENT_DIR", "RESERVED_KEYS"]

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


def _dataset_overrides(conf_cls, dataset: Optional[str], data: Optional[str], path: Path) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    if dataset is None and data is None:
        return out
    from ..config import config_fields

    if "dataset" not in config_fields(conf_cls):
        raise ConfigError(f"{path}: this experiment's protocol takes no [dataset] section, so --dataset/--data "
                          f"cannot apply to it")
    if dataset is not None:
        out["dataset.kind"] = dataset
    if data is not None:
        out["dataset.path"] = str(data)
    return out


def load_experiment(name: Union[str, os.PathLike], overrides: Union[None, Sequence[str], Mapping[str, Any]] = None,
                    dataset: Optional[str] = None, data: Optional[Union[str, os.PathLike]] = None) -> Experiment:
    """Read, validate and override an experiment (module docstring): ``name`` is a path or a shipped
    experiment's name; ``overrides`` dotted ``KEY=VALUE`` strings or a mapping; ``dataset`` / ``data``
    replace the ``[dataset]`` section's ``kind`` / ``path``."""
    from ..protocols import load_protocol

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
    pairs: Dict[str, Any] = _dataset_overrides(module.CONFIG, dataset, None if data is None else str(data), path)
    if overrides:
        pairs.update(parse_overrides(list(overrides)) if not isinstance(overrides, Mapping) else dict(overrides))
    if pairs:
        try:
            conf = conf.override(pairs)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return Experiment(name=path.stem, path=path, kind=kind, description=description, module=module, conf=conf)
