"""Where the data folder is: the ``RETRIEVAL_DATA`` environment variable, else ``../shared/data``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

DATA_ENV_VAR = "RETRIEVAL_DATA"


def data_root(override: Optional[str] = None) -> Path:
    """The data folder: ``override`` if given, else $RETRIEVAL_DATA, else ``../shared/data`` next to
    the source checkout (or the current directory when installed elsewhere)."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        return Path(env).expanduser()
    checkout = Path(__file__).resolve().parent.parent
    candidate = checkout.parent / "shared" / "data"
    if candidate.is_dir():
        return candidate
    return Path.cwd().parent / "shared" / "data"


def data_path(path: str) -> Path:
    """``path`` as given when it is absolute or exists from the current folder, else under the data folder
    (:func:`data_root`): how experiment files name datasets (``path = "coil100"``)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() or p.exists() else data_root() / p
