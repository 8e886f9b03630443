"""Learned models (codebooks, encoders, whitening) on disk as one ``.npz`` file: numeric arrays plus
the configuration as JSON text, never pickle. Written to a temporary name and renamed, so a crash never
leaves a half-written model under the final name; loading checks the kind and version and names the
file in every error."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Tuple, Union

import numpy as np

from retrieval.core.fileio import check_header, pop_header, read_npz, save_npz

from retrieval.features.store import FeatureFileError

PathLike = Union[str, os.PathLike]
MODEL_VERSION = 1
_CONFIG_KEY = "__config_json__"

__all__ = ["save_model", "load_model", "read_model_header"]


def save_model(path: PathLike, kind: str, arrays: Dict[str, np.ndarray], config: dict) -> Path:
    """Write ``arrays`` and ``config`` (JSON-serialisable) to ``path`` (``.npz`` is appended if missing).
    ``kind`` names what the file holds (``"codebook"``, ``"vlad"``, ...) and is checked on load."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    header = {"kind": kind, "version": MODEL_VERSION, "config": config}
    return save_npz(path, arrays, header, header_key=_CONFIG_KEY, json_default=_json_default, sort_keys=True)


def load_model(path: PathLike, kind: str) -> Tuple[Dict[str, np.ndarray], dict]:
    """Read a file written by :func:`save_model`: ``(arrays, config)``. Raises
    :class:`~retrieval.features.store.FeatureFileError` naming the file when it is missing, not such a file, of
    another kind or version, or damaged."""
    path = Path(path)
    if not path.is_file() and path.suffix != ".npz" and path.with_name(path.name + ".npz").is_file():
        path = path.with_name(path.name + ".npz")
    arrays = read_npz(path, kind, error=FeatureFileError)
    header = _pop_config(path, arrays)
    check_header(path, header, kind, MODEL_VERSION, kind_key="kind", label=repr(kind), error=FeatureFileError)
    return arrays, dict(header.get("config") or {})


def read_model_header(path: PathLike, what: str = "model") -> dict:
    """The header (``kind``, ``version``, ``config``) of a file written by :func:`save_model`, read
    without its arrays; :class:`~retrieval.features.store.FeatureFileError` naming the file (``what`` says what
    it should be) when it is missing, damaged or has no header."""
    path = Path(path)
    return _pop_config(path, read_npz(path, what, error=FeatureFileError, keys=(_CONFIG_KEY,)))


def _pop_config(path: Path, arrays: Dict[str, np.ndarray]) -> dict:
    return pop_header(path, arrays, _CONFIG_KEY, "configuration header", error=FeatureFileError)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
