"""Training of embedding networks for retrieval (issue 4).

* E2 :func:`train_classifier`: fine-tuning with a classification head (cosine / ArcFace / linear).
* E3 / E4 :func:`train_siamese`: Siamese metric learning (contrastive or triplet loss, P x K batches),
  from ImageNet (E3) or from an E2 model (E4).
* :func:`load_trained_efficientnet`: a trained ``model.pt`` back as an ``EfficientNetGlobal``.

Building blocks reused by other trainers (e.g. multi-view distillation): :mod:`.augment`,
:mod:`.samplers`, :mod:`.losses`, :mod:`.heads`, :mod:`.data`, :mod:`.loop`, :mod:`.checkpoint`.
Named configurations: :data:`TRAIN_CONFIGS`.
"""
from .augment import AugmentConfig, augment_batch, eval_transform
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import TRAIN_CONFIGS, TrainConfig
from .data import TrainImages
from .embedding import load_trained_efficientnet, read_trained_config
from .finetune import train_classifier
from .heads import ArcFaceHead, LinearHead, make_head
from .loop import LoopConfig, run_training
from .losses import contrastive_loss, triplet_loss
from .samplers import PKSampler, RandomBatchSampler
from .siamese import train_siamese

__all__ = ["AugmentConfig", "augment_batch", "eval_transform", "CheckpointError", "load_checkpoint",
           "save_checkpoint", "TRAIN_CONFIGS", "TrainConfig", "TrainImages",
           "load_trained_efficientnet", "read_trained_config", "train_classifier", "ArcFaceHead",
           "LinearHead", "make_head", "LoopConfig", "run_training", "contrastive_loss", "triplet_loss",
           "PKSampler", "RandomBatchSampler", "train_siamese"]
