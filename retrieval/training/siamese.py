"""E3 / E4: Siamese metric learning of the embedding network.

Batches hold ``P`` classes x ``K`` images (:class:`~retrieval.training.samplers.PKSampler`); the
network embeds each (augmented) image and the loss is computed over all pairs of the batch:
the contrastive loss (default; positives pulled to distance 0, negatives pushed beyond the margin
``tau``) or the triplet loss (batch-hard or batch-all mining), see :mod:`retrieval.training.losses`.
E3 starts from ImageNet weights, E4 from an E2 checkpoint (``init_checkpoint``); the embeddings
trained are the very descriptors retrieval uses (GeM-pooled, L2-normalised), so no head is involved.

CLI: ``retrieval train siamese --config coil-e4 --init runs/e2 --data DATA/coil100 --labels 1-50 --out runs/e4``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

from retrieval.training.settings import TRAIN_CONFIGS, TrainConfig
from retrieval.training.data import TrainImages
from retrieval.training.embedding import prepare_embedding_model, run_embedding_training
from retrieval.training.finetune import images_for
from retrieval.training.losses import make_metric_loss
from retrieval.training.samplers import PKSampler

PathLike = Union[str, os.PathLike]

__all__ = ["train_siamese", "build_metric_loss"]


def build_metric_loss(cfg: TrainConfig):
    if cfg.loss == "contrastive":
        return make_metric_loss("contrastive", cfg.margin, reduction=cfg.reduction)
    if cfg.loss == "triplet":
        return make_metric_loss("triplet", cfg.margin, mining=cfg.mining)
    return make_metric_loss(cfg.loss, cfg.margin)  # raises a clear error for an unknown name


def train_siamese(config: Union[str, TrainConfig], train_paths: Sequence[PathLike], train_labels: Sequence,
                  out_dir: PathLike, init_checkpoint: Optional[PathLike] = None, resume: bool = True,
                  progress: bool = True, images: Optional[TrainImages] = None,
                  stop_after_steps: Optional[int] = None) -> Optional[Path]:
    """Train E3 (``init_checkpoint=None``: from ImageNet) or E4 (``init_checkpoint``: an E2
    ``model.pt`` or its folder) and return ``out_dir/model.pt`` (None when ``stop_after_steps``
    interrupted the run). Same outputs and resuming as
    :func:`~retrieval.training.finetune.train_classifier`."""
    cfg = TRAIN_CONFIGS.get(config)
    if cfg.method != "siamese":
        raise ValueError(f"configuration {cfg.name!r} is for method {cfg.method!r}, not 'siamese'")
    loss = build_metric_loss(cfg)
    images = images or images_for(cfg, train_paths, train_labels, progress)
    sampler = PKSampler(images.label_codes, cfg.P, cfg.K, seed=cfg.loop.seed, small_classes=cfg.small_classes)
    model, params, init_info = prepare_embedding_model(cfg, init_checkpoint)
    path, _ = run_embedding_training(cfg, model, params, init_info, images, out_dir, sampler, loss,
                                     resume=resume, progress=progress, stop_after_steps=stop_after_steps)
    return path
