"""Trained networks read back for extraction, and the device rule, at the features level: the
extractors load what :mod:`retrieval.training` wrote without importing training (the orchestration
layer), which keeps the layers free of import cycles."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import torch

from retrieval.core.checkpoint import CheckpointError, load_checkpoint, load_state_dict_checked, read_checkpoint_config

from retrieval.features.efficientnet_net import EfficientNetGlobal

__all__ = ["MODEL_KIND", "MODEL_FILE", "resolve_device", "read_trained_config", "load_trained_efficientnet"]

PathLike = Union[str, os.PathLike]

#: the checkpoint kind and file name of a trained embedding network (written by retrieval.training)
MODEL_KIND = "embedding-model"
MODEL_FILE = "model.pt"


def resolve_device(name: str) -> torch.device:
    """``'auto'`` -> a GPU when torch sees one, else the CPU; a named CUDA device without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r} is not a torch device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for but CUDA is not available in this torch build")
    return device


def read_trained_config(path: PathLike) -> dict:
    """The configuration stored with a trained model (reads the JSON sidecar only)."""
    return read_checkpoint_config(path)


def load_trained_efficientnet(path: PathLike, device: Union[str, torch.device] = "cpu") -> EfficientNetGlobal:
    """The trained EfficientNetGlobal in ``path`` (a ``model.pt`` written by training, or the training
    folder holding one), in eval mode on ``device``. Its input size is
    ``read_trained_config(path)["image_size"]``."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    ckpt = load_checkpoint(path, kind=MODEL_KIND)
    cfg = ckpt["config"]
    if cfg.get("architecture") != "EfficientNetGlobal":
        raise CheckpointError(path, f"holds a {cfg.get('architecture')!r}, not an EfficientNetGlobal")
    try:
        model = EfficientNetGlobal(cfg["backbone"], weights="random", pooling=cfg["pooling"],
                                   gem_p=float(cfg["gem_p"]), learn_p=bool(cfg["learn_p"]))
    except (KeyError, ValueError) as exc:
        raise CheckpointError(path, f"model configuration unusable ({exc})") from None
    load_state_dict_checked(model, ckpt["state"]["model"], path, what="embedding model")
    return model.to(device).eval()
