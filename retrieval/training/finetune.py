"""E2: fine-tune the embedding network with a classification head on the training labels.

The network maps an image to its L2-normalised pooled descriptor ``x``; a head turns ``x`` into
class logits and the loss is the softmax cross-entropy. Heads (:mod:`retrieval.training.heads`):
``'cosine'`` (default; ``s cos(x, w_j)``, the normalised softmax), ``'arcface'`` (additive angular
margin ``cfg.arcface_margin``) or ``'linear'`` (``scale (W x + b)``). After training only the network
(backbone + pooling) is kept: ``model.pt`` loads with
:func:`~retrieval.training.embedding.load_trained_efficientnet`.

CLI: ``retrieval train classifier --config coil-e2 --data DATA/coil100 --labels 1-50 --out runs/e2``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import torch.nn as nn

from retrieval.training.settings import TRAIN_CONFIGS, TrainConfig
from retrieval.training.data import TrainImages
from retrieval.training.embedding import prepare_embedding_model, run_embedding_training
from retrieval.training.heads import make_head
from retrieval.training.loop import seeded_init
from retrieval.training.losses import classification_loss
from retrieval.training.samplers import RandomBatchSampler

PathLike = Union[str, os.PathLike]

__all__ = ["train_classifier", "build_head", "images_for"]


def images_for(cfg: TrainConfig, train_paths: Sequence[PathLike], train_labels: Sequence,
               progress: bool = True) -> TrainImages:
    """The :class:`TrainImages` ``cfg`` asks for (size, fit, cache, decoding workers)."""
    return TrainImages(train_paths, train_labels, load_size=cfg.load_size, fit=cfg.fit,
                       cache=cfg.cache_images, n_jobs=cfg.n_jobs, backend=cfg.decode_backend,
                       on_error=cfg.on_error, progress=progress)


def build_head(cfg: TrainConfig, in_dim: int, n_classes: int) -> nn.Module:
    if cfg.head == "linear":
        return make_head("linear", in_dim, n_classes, scale=cfg.head_scale)
    if cfg.head == "arcface":
        return make_head("arcface", in_dim, n_classes, s=cfg.head_scale, m=cfg.arcface_margin)
    return make_head(cfg.head, in_dim, n_classes, s=cfg.head_scale)


def train_classifier(config: Union[str, TrainConfig], train_paths: Sequence[PathLike], train_labels: Sequence,
                     out_dir: PathLike, init_checkpoint: Optional[PathLike] = None, resume: bool = True,
                     progress: bool = True, images: Optional[TrainImages] = None,
                     stop_after_steps: Optional[int] = None) -> Optional[Path]:
    """Train E2 and return the path of the trained model (``out_dir/model.pt``; None when
    ``stop_after_steps`` interrupted the run). ``config``: a :class:`TrainConfig` or a name in
    ``TRAIN_CONFIGS``. Progress, ``last.pt`` (resumable state), ``losses.json`` and
    ``losses.png`` go to ``out_dir``; calling again with the same arguments resumes (or returns at
    once when finished). ``images``: an already decoded :class:`TrainImages` of the same paths."""
    cfg = TRAIN_CONFIGS.get(config)
    if cfg.method != "classifier":
        raise ValueError(f"configuration {cfg.name!r} is for method {cfg.method!r}, not 'classifier'")
    images = images or images_for(cfg, train_paths, train_labels, progress)
    n_classes = len(images.classes)
    if n_classes < 2:
        raise ValueError(f"classification needs at least 2 classes, the training labels have {n_classes}")
    model, params, init_info = prepare_embedding_model(cfg, init_checkpoint)
    # unseeded, E2 (and E4 after it) differed between two runs of one configuration
    with seeded_init(cfg.loop.seed):
        head = build_head(cfg, model.out_dim, n_classes)
    sampler = RandomBatchSampler(len(images), min(cfg.batch_size, len(images)), seed=cfg.loop.seed)

    def loss_fn(emb, labels):
        return classification_loss(head(emb, labels), labels, cfg.label_smoothing)

    path, _ = run_embedding_training(
        cfg, model, params, init_info, images, out_dir, sampler, loss_fn, extra_modules={"head": head},
        extra_groups=[{"params": list(head.parameters()), "lr_mult": cfg.head_lr_mult}],
        resume=resume, progress=progress,
        stop_after_steps=stop_after_steps, run_extra={"n_classes": n_classes})
    return path

