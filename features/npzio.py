"""Learned models (codebooks, encoders, whitening) on disk as one ``.npz`` file: numeric arrays plus
the configuration as JSON text, never pickle. Written to a temporary name and renamed, so a crash never
leaves a half-written model under the final name; loading checks the kind and version and names the
file in every error."""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Dict, Tuple, Union

import numpy as np

from .store import FeatureFileError

PathLike = Union[str, os.PathLike]
MODEL_VERSION = 1
_CONFIG_KEY = "__config_json__"

__all__ = ["save_model", "load_model"]


def save_model(path: PathLike, kind: str, arrays: Dict[str, np.ndarray], config: dict) -> Path:
    """Write ``arrays`` and ``config`` (JSON-serialisable) to ``path`` (``.npz`` is appended if missing).
    ``kind`` names what the file holds (``"codebook"``, ``"vlad"``, ...) and is checked on load."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    if _CONFIG_KEY in arrays:
        raise ValueError(f"array name {_CONFIG_KEY!r} is reserved")
    header = {"kind": kind, "version": MODEL_VERSION, "config": config}
    text = json.dumps(header, sort_keys=True, default=_json_default)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()}, **{_CONFIG_KEY: np.array(text)})
    os.replace(tmp, path)
    return path


def load_model(path: PathLike, kind: str) -> Tuple[Dict[str, np.ndarray], dict]:
    """Read a file written by :func:`save_model`: ``(arrays, config)``. Raises
    :class:`~features.store.FeatureFileError` naming the file when it is missing, not such a file, of
    another kind or version, or damaged."""
    path = Path(path)
    if not path.is_file() and path.suffix != ".npz" and path.with_name(path.name + ".npz").is_file():
        path = path.with_name(path.name + ".npz")
    if not path.is_file():
        raise FeatureFileError(path, f"no such {kind} file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise FeatureFileError(path, f"not a readable .npz model file ({exc})") from None
    if _CONFIG_KEY not in arrays:
        raise FeatureFileError(path, "has no configuration header (not written by this library)")
    try:
        header = json.loads(str(arrays.pop(_CONFIG_KEY)))
    except json.JSONDecodeError as exc:
        raise FeatureFileError(path, f"configuration header is not valid JSON ({exc})") from None
    if header.get("kind") != kind:
        raise FeatureFileError(path, f"holds a {header.get('kind')!r}, not a {kind!r}")
    if header.get("version") != MODEL_VERSION:
        raise FeatureFileError(path, f"model file version {header.get('version')}, this code reads "
                               f"{MODEL_VERSION}")
    return arrays, dict(header.get("config") or {})


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
