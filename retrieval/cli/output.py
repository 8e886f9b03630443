"""What a command prints: JSON on stdout, optionally also written to a file (atomically)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from retrieval.core.checks import writing

__all__ = ["emit_json"]


def emit_json(payload: Any, out: Optional[str] = None) -> None:
    """Print ``payload`` as JSON on stdout, and write it to ``out`` too when given (atomically)."""
    text = json.dumps(payload, indent=2, sort_keys=False, default=_json_default)
    if out:
        from retrieval.core.fileio import atomic_write_text  # here: the command line starts without numpy

        with writing(out, "output"):
            atomic_write_text(out, text + "\n")
    print(text)


def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set):
        return sorted(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
