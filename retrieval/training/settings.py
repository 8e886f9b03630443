"""Named training configurations (:data:`TRAIN_CONFIGS`) and the configuration they are made of.

One :class:`TrainConfig` describes a whole run: the embedding network (backbone, pooling, which
layers train), the images (input size, decoding, cache), the augmentation, the method (``'classifier'``
for E2: cross-entropy through a classification head; ``'siamese'`` for E3/E4: contrastive or triplet
loss on P x K batches) and the optimisation (:class:`~retrieval.training.loop.LoopConfig`).

Override fields with dotted keys (:mod:`retrieval.core.config`): ``TRAIN_CONFIGS.get("coil-e3", {"loop.epochs": 2,
"P": 8})``, ``cfg.override(["loop.epochs=2"])`` or on the command line ``--set loop.epochs=2 --set P=8``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

from retrieval.core.config import Config, ConfigError, Registry

from retrieval.training.augment import AugmentConfig
from retrieval.training.loop import LoopConfig

__all__ = ["TrainConfig", "TRAIN_CONFIGS", "METHODS"]

METHODS = ("classifier", "siamese")
#: the EfficientNet trainers' arithmetic (LoopConfig.precision; retrieval bench train-speed measures it)
TRAIN_PRECISION = "auto"


@dataclass(frozen=True)
class TrainConfig(Config):
    """A training run. ``train_blocks``: how many of the backbone's last MBConv blocks train (the
    head convolution after them always does); -1 trains everything from the stem. ``bn``: 'frozen'
    keeps every BatchNorm in eval mode (ImageNet statistics; affine weights of trained layers still
    learn), 'train' updates batch statistics. ``image_size``: side of the square network input
    (``augment.out_size`` follows it). ``load_size``/``fit``: how decoded images are stored (see
    :mod:`retrieval.training.data`). ``backbone_lr_mult``/``head_lr_mult`` scale ``loop.lr``.
    ``channels_last``: NHWC activations; None (auto) = on for bfloat16 / float16 on CUDA, off on CPU
    (:func:`~retrieval.training.embedding.uses_channels_last`)."""

    name: str = "custom"
    method: str = "siamese"
    # embedding network
    backbone: str = "lite0"
    weights: str = "imagenet"
    pooling: str = "gem"
    gem_p: float = 3.0
    learn_p: bool = False
    train_blocks: int = 6
    bn: str = "frozen"
    channels_last: Optional[bool] = None
    # images
    image_size: int = 128
    load_size: Optional[int] = None
    fit: str = "centre"
    cache_images: bool = True
    n_jobs: int = 2
    decode_backend: str = "threading"
    on_error: str = "raise"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # classifier (E2)
    head: str = "cosine"
    head_scale: float = 16.0
    arcface_margin: float = 0.2
    label_smoothing: float = 0.0
    batch_size: int = 64
    head_lr_mult: float = 10.0
    # siamese (E3 / E4)
    loss: str = "contrastive"
    margin: float = 0.7
    reduction: str = "balanced"
    mining: str = "batch_hard"
    P: int = 16
    K: int = 4
    small_classes: str = "replace"
    # optimisation
    backbone_lr_mult: float = 1.0
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(precision=TRAIN_PRECISION))

    def __post_init__(self) -> None:
        super().__post_init__()
        # the augmentation's output is the network input: an override of image_size alone must not
        # leave the augmentation producing another size
        if self.augment.out_size != self.image_size:
            object.__setattr__(self, "augment", replace(self.augment, out_size=self.image_size))

    def check(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of {METHODS}")
        if self.bn not in ("frozen", "train"):
            raise ConfigError(f"bn must be 'frozen' or 'train', got {self.bn!r}")
        if self.image_size < 32:
            raise ConfigError(f"image_size must be >= 32, got {self.image_size}")


def _coil_augment() -> AugmentConfig:
    # turntable objects on black: moderate crops, small rotations, colour jitter; black padding
    return AugmentConfig(out_size=128, scale=(0.5, 1.0), ratio=(0.8, 1.25), hflip_prob=0.5,
                         rotation_deg=10.0, brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02)


def _gldv2_augment(size: int) -> AugmentConfig:
    return AugmentConfig(out_size=size, scale=(0.3, 1.0), ratio=(3 / 4, 4 / 3), hflip_prob=0.5,
                         rotation_deg=10.0, brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03,
                         padding_mode="reflection")


TRAIN_CONFIGS: Registry[TrainConfig] = Registry("training configuration", TrainConfig)
for _conf in (
    # COIL-100 on 2 CPU cores: 128 px (native), last blocks + head conv train, BN frozen, images cached
    TrainConfig(
        name="coil-e2", method="classifier", image_size=128, train_blocks=6, bn="frozen",
        head="cosine", head_scale=16.0, batch_size=64, head_lr_mult=10.0, augment=_coil_augment(),
        loop=LoopConfig(epochs=3, lr=3e-4, optimizer="adamw", weight_decay=1e-4, schedule="cosine",
                        warmup_steps=10, seed=0, device="auto", checkpoint_every=20,
                        precision=TRAIN_PRECISION)),
    # E3 from ImageNet: lr 1e-4 keeps more of the ImageNet features than 3e-4 (measured 91.3 vs
    # 89.8 mAP@100 on objects 51-100)
    TrainConfig(
        name="coil-e3", method="siamese", image_size=128, train_blocks=6, bn="frozen",
        loss="contrastive", margin=0.7, reduction="balanced", P=16, K=4, augment=_coil_augment(),
        loop=LoopConfig(epochs=3, lr=1e-4, optimizer="adamw", weight_decay=1e-4, schedule="cosine",
                        warmup_steps=10, seed=0, device="auto", checkpoint_every=20,
                        precision=TRAIN_PRECISION)),
    # E4 starts from E2's optimum: a third of E3's learning rate and two epochs (measured: 3
    # epochs at 3e-4 fell below E2, 91.5 vs 92.8 mAP@100; 2 at 1e-4 gave 93.4)
    TrainConfig(
        name="coil-e4", method="siamese", image_size=128, train_blocks=6, bn="frozen",
        loss="contrastive", margin=0.7, reduction="balanced", P=16, K=4, augment=_coil_augment(),
        loop=LoopConfig(epochs=2, lr=1e-4, optimizer="adamw", weight_decay=1e-4, schedule="cosine",
                        warmup_steps=10, seed=0, device="auto", checkpoint_every=20,
                        precision=TRAIN_PRECISION)),
    # GLDv2 (train split, ~4M images / 200k landmarks, or the 1.5M "clean" subset) on one GPU:
    # streaming decode with parallel workers, every layer trains, BN statistics update, AMP
    TrainConfig(
        name="gldv2-e2-gpu", method="classifier", image_size=320, load_size=352, fit="centre",
        cache_images=False, n_jobs=12, train_blocks=-1, bn="train", channels_last=True,
        head="arcface", head_scale=30.0, arcface_margin=0.3, batch_size=128, head_lr_mult=10.0,
        learn_p=True, augment=_gldv2_augment(320),
        loop=LoopConfig(epochs=10, lr=1e-3, optimizer="adamw", weight_decay=1e-5, schedule="cosine",
                        warmup_steps=1000, seed=0, device="cuda", amp=True, amp_dtype="float16",
                        checkpoint_every=2000, prefetch=4, grad_clip=5.0)),
    TrainConfig(
        name="gldv2-e3-gpu", method="siamese", image_size=320, load_size=352, fit="centre",
        cache_images=False, n_jobs=12, train_blocks=-1, bn="train", channels_last=True,
        loss="contrastive", margin=0.7, reduction="balanced", P=32, K=4, small_classes="skip",
        learn_p=True, augment=_gldv2_augment(320),
        loop=LoopConfig(epochs=10, lr=1e-4, optimizer="adamw", weight_decay=1e-5, schedule="cosine",
                        warmup_steps=500, seed=0, device="cuda", amp=True, amp_dtype="float16",
                        checkpoint_every=2000, prefetch=4, grad_clip=5.0)),
    TrainConfig(
        name="gldv2-e4-gpu", method="siamese", image_size=320, load_size=352, fit="centre",
        cache_images=False, n_jobs=12, train_blocks=-1, bn="train", channels_last=True,
        loss="contrastive", margin=0.7, reduction="balanced", P=32, K=4, small_classes="skip",
        learn_p=True, augment=_gldv2_augment(320),
        loop=LoopConfig(epochs=5, lr=5e-5, optimizer="adamw", weight_decay=1e-5, schedule="cosine",
                        warmup_steps=500, seed=0, device="cuda", amp=True, amp_dtype="float16",
                        checkpoint_every=2000, prefetch=4, grad_clip=5.0)),
):
    TRAIN_CONFIGS.register(_conf.name, _conf)
