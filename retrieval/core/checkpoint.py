"""Checkpoints as training writes and reads them: a torch file of tensors and plain values (no
pickled objects, so it loads with ``torch.load(weights_only=True)``) plus a readable JSON sidecar.

Layout of ``name.pt``::

    {"format": "hybrid-retrieval-checkpoint", "version": 1, "kind": <str>,
     "config_json": <JSON text of the configuration>, "state": {...tensors, numbers, strings...}}

and ``name.json`` holds ``{"kind", "config", "sha256", "bytes", "meta"}``, where ``sha256`` is the
digest of ``name.pt``'s bytes: a file altered after it was written (truncated, edited, swapped) is
reported instead of silently loaded. Both files are written to a temporary name and renamed, so a
run killed mid-write leaves the previous checkpoint intact.

The two files commit as one: the new sidecar is first written next to them as ``name.json.pending``,
then ``name.pt`` is replaced, then the pending sidecar is renamed over ``name.json``. A run killed
between the two renames leaves a ``.pt`` whose digest is the pending sidecar's: reading it completes
the commit (rolls the sidecar forward) instead of refusing a good checkpoint for ever.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
import torch.nn as nn

from retrieval.core.fileio import FileFormatError, atomic_write_bytes, atomic_write_text, check_header

PathLike = Union[str, os.PathLike]

FORMAT = "hybrid-retrieval-checkpoint"
VERSION = 1

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "read_checkpoint_config",
           "load_state_dict_checked", "atomic_write_bytes", "atomic_write_text", "config_diff"]


class CheckpointError(FileFormatError):
    """A checkpoint could not be used; ``path`` names the file and ``reason`` says why."""


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def _pending(path: Path) -> Path:
    sidecar = _sidecar(path)
    return sidecar.with_name(sidecar.name + ".pending")


def _read_sidecar(sidecar: Path) -> Dict[str, Any]:
    try:
        value = json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(sidecar, f"unreadable checkpoint sidecar ({exc})") from None
    if not isinstance(value, dict):
        raise CheckpointError(sidecar, "unreadable checkpoint sidecar (not a JSON object)")
    return value


def _committed_sidecar(path: Path, data: bytes) -> Optional[Dict[str, Any]]:
    """The sidecar that describes ``data`` (the bytes of ``path``): ``name.json``, or a pending
    sidecar whose digest matches (a save killed between its two renames), which is then renamed over
    ``name.json`` to complete that save. None when there is no sidecar at all."""
    sidecar, pending = _sidecar(path), _pending(path)
    current = _read_sidecar(sidecar) if sidecar.is_file() else None
    actual = hashlib.sha256(data).hexdigest()
    if current is not None and current.get("sha256") in (None, actual):
        return current
    if pending.is_file():
        try:
            candidate = _read_sidecar(pending)
        except CheckpointError:
            candidate = None
        if candidate is not None and candidate.get("sha256") == actual:
            try:
                os.replace(pending, sidecar)
            except OSError:
                pass  # a read-only folder: the checkpoint is still good
            return candidate
    return current


def _canonical(config: Dict[str, Any]) -> Dict[str, Any]:
    """The configuration as JSON gives it back (tuples become lists), so comparisons are exact."""
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def config_diff(a: Dict[str, Any], b: Dict[str, Any], prefix: str = "") -> Dict[str, tuple]:
    """``{key: (a_value, b_value)}`` for every (nested, dotted) key whose values differ."""
    out: Dict[str, tuple] = {}
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
        name = f"{prefix}{key}"
        if isinstance(va, dict) and isinstance(vb, dict):
            out.update(config_diff(va, vb, name + "."))
        elif va != vb:
            out[name] = (va, vb)
    return out


def save_checkpoint(path: PathLike, state: Dict[str, Any], config: Dict[str, Any], kind: str,
                    meta: Optional[Dict[str, Any]] = None) -> Path:
    """Atomically write ``state`` (tensors, numbers, strings, lists/dicts of them) and the JSON
    ``config`` to ``path`` (a ``.pt`` file) and its ``.json`` sidecar; returns ``path``."""
    path = Path(path)
    config = _canonical(config)
    payload = {"format": FORMAT, "version": VERSION, "kind": str(kind),
               "config_json": json.dumps(config, sort_keys=True), "state": state}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    sidecar = {"format": FORMAT, "version": VERSION, "kind": str(kind), "config": config,
               "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "meta": meta or {}}
    # commit order (see the module notes): pending sidecar, checkpoint, sidecar
    atomic_write_text(_pending(path), json.dumps(sidecar, indent=2, sort_keys=True, default=str))
    atomic_write_bytes(path, data)
    os.replace(_pending(path), _sidecar(path))
    return path


def read_checkpoint_config(path: PathLike) -> Dict[str, Any]:
    """The ``config`` stored in ``path``'s JSON sidecar (no tensors are read)."""
    path = Path(path)
    sidecar = _sidecar(path)
    if path.is_file():
        found = _committed_sidecar(path, path.read_bytes())
    else:
        found = _read_sidecar(sidecar) if sidecar.is_file() else None
    if found is None:
        raise CheckpointError(path, f"no sidecar {sidecar.name} next to the checkpoint")
    if "config" not in found:
        raise CheckpointError(sidecar, "unreadable checkpoint sidecar (no 'config')")
    return found["config"]


def load_checkpoint(path: PathLike, kind: Optional[str] = None,
                    expected_config: Optional[Dict[str, Any]] = None,
                    map_location: Union[str, torch.device] = "cpu",
                    verify_hash: bool = True) -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` with ``torch.load(weights_only=True)``.

    Returns ``{"kind", "config", "state"}``. Raises :class:`CheckpointError` naming the file when it
    is missing, not a checkpoint of this format, altered since it was written (digest differs from
    the sidecar's), of another ``kind``, or written with a configuration other than
    ``expected_config`` (the differing keys are listed)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such checkpoint file")
    data = path.read_bytes()
    sidecar = _sidecar(path)
    if verify_hash:
        found = _committed_sidecar(path, data)
        recorded = None if found is None else found.get("sha256")
        if recorded and recorded != hashlib.sha256(data).hexdigest():
            what = "is empty (0 bytes) and does not" if not data else "content does not"
            raise CheckpointError(path, f"{what} match the SHA-256 recorded in {sidecar.name}: the file "
                                        "was modified or truncated after it was written")
    if not data:
        raise CheckpointError(path, "is empty (0 bytes): not a checkpoint (an interrupted copy?)")
    try:
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt / non-weights files
        first_line = (str(exc).strip().splitlines() or ["no details"])[0][:200]
        raise CheckpointError(path, f"cannot be read as a weights-only torch checkpoint "
                                    f"({type(exc).__name__}: {first_line})") from None
    check_header(path, payload, FORMAT, VERSION, error=CheckpointError, older_ok=True)
    if kind is not None and payload.get("kind") != kind:
        raise CheckpointError(path, f"is a {payload.get('kind')!r} checkpoint, expected {kind!r}")
    try:
        config = json.loads(payload["config_json"])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(path, f"configuration unreadable ({exc})") from None
    if expected_config is not None:
        diff = config_diff(config, _canonical(expected_config))
        if diff:
            shown = "; ".join(f"{k}: stored {v[0]!r} vs requested {v[1]!r}"
                              for k, v in list(diff.items())[:8])
            raise CheckpointError(path, f"written with a different configuration ({shown}); "
                                        "use another output folder or delete the checkpoint")
    return {"kind": payload.get("kind"), "config": config, "state": payload["state"]}


def load_state_dict_checked(module: nn.Module, state_dict: Dict[str, torch.Tensor],
                            source: PathLike, what: str = "model") -> None:
    """``module.load_state_dict(state_dict)`` with a :class:`CheckpointError` naming ``source``
    and the missing / unexpected / wrongly shaped entries when they do not fit."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shape = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if shape:
            parts.append(f"{len(shape)} with other shapes (e.g. {shape[:3]})")
        raise CheckpointError(source, f"{what} weights do not fit the {type(module).__name__} "
                                      f"built from the configuration: " + ", ".join(parts))
    module.load_state_dict(state_dict)
