"""Training of embedding networks for retrieval (issue 4).

* E2 :func:`train_classifier`: fine-tuning with a classification head (cosine / ArcFace / linear).
* E3 / E4 :func:`train_siamese`: Siamese metric learning (contrastive or triplet loss, P x K batches),
  from ImageNet (E3) or from an E2 model (E4).
* :func:`load_trained_efficientnet`: a trained ``model.pt`` back as an ``EfficientNetGlobal``.

Building blocks reused by other trainers (e.g. multi-view distillation): :mod:`.augment`,
:mod:`.samplers`, :mod:`.losses`, :mod:`.heads`, :mod:`.data`, :mod:`.loop`, :mod:`.checkpoint`.
Named configurations: :data:`TRAIN_CONFIGS`.
"""
from retrieval.training.augment import AugmentConfig, augment_batch, eval_transform
from retrieval.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from retrieval.training.settings import TRAIN_CONFIGS, TrainConfig
from retrieval.training.data import TrainImages
from retrieval.training.embedding import load_trained_efficientnet, read_trained_config
from retrieval.training.finetune import train_classifier
from retrieval.training.heads import ArcFaceHead, LinearHead, make_head
from retrieval.training.loop import LoopConfig, run_training
from retrieval.training.losses import contrastive_loss, triplet_loss
from retrieval.training.samplers import PKSampler, RandomBatchSampler
from retrieval.training.siamese import train_siamese

__all__ = ["AugmentConfig", "augment_batch", "eval_transform", "CheckpointError", "load_checkpoint",
           "save_checkpoint", "TRAIN_CONFIGS", "TrainConfig", "TrainImages",
           "load_trained_efficientnet", "read_trained_config", "train_classifier", "ArcFaceHead",
           "LinearHead", "make_head", "LoopConfig", "run_training", "contrastive_loss", "triplet_loss",
           "PKSampler", "RandomBatchSampler", "train_siamese"]
