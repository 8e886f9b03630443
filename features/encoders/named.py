"""Named encoder configurations in the one configuration idiom (:mod:`retrieval.core.config`).

``ENCODER_CONFIGS.get("vlad-64", ["k=128"])`` -> an :class:`EncoderConfig`; :func:`build_encoder`
makes the (unfitted) encoder it describes. Fields that a kind does not use must keep their defaults
(a BoW configuration with ``pca_dim`` set is refused rather than silently ignored).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from retrieval.core.config import Config, ConfigError, Registry

from retrieval.features.encoders.encoder import LocalEncoder

__all__ = ["EncoderConfig", "ENCODER_CONFIGS", "build_encoder"]

# which fields each kind takes (besides kind itself)
_FIELDS = {
    "bow": ("k", "n_nearest", "sigma", "tf_power", "idf", "seed", "n_sample", "niter"),
    "vlad": ("k", "n_nearest", "sigma", "power", "intra_norm", "residual_norm", "seed", "n_sample", "niter"),
    "fisher": ("k", "pca_dim", "power", "seed", "n_sample"),
}


@dataclass(frozen=True)
class EncoderConfig(Config):
    """``kind``: bow (tf-idf bag of words), vlad or fisher; ``k``: words / Gaussians; ``n_sample``:
    descriptors sampled to train the codebook / GMM (None: the kind's default); the rest as in
    :class:`~.bow.BowEncoder`, :class:`~.vlad.VladEncoder`, :class:`~.fisher.FisherEncoder`."""

    kind: Literal["bow", "vlad", "fisher"] = "vlad"
    k: int = 64
    n_nearest: int = 1
    sigma: Optional[float] = None
    power: float = 0.5
    tf_power: float = 1.0
    idf: bool = True
    intra_norm: bool = True
    residual_norm: bool = False
    pca_dim: Optional[int] = 64
    seed: int = 0
    n_sample: Optional[int] = None
    niter: int = 20

    def check(self) -> None:
        if self.k < 1:
            raise ConfigError(f"k must be >= 1, got {self.k}")
        default = EncoderConfig.__dataclass_fields__
        used = set(_FIELDS[self.kind]) | {"kind"}
        stray = [name for name in default if name not in used
                 and getattr(self, name) != default[name].default]
        if stray:
            raise ConfigError(f"{self.kind} encoders do not take {stray}; they take {list(_FIELDS[self.kind])}")


ENCODER_CONFIGS: Registry[EncoderConfig] = Registry("encoder configuration", EncoderConfig)
ENCODER_CONFIGS.register("bow-1k", EncoderConfig(kind="bow", k=1000))
ENCODER_CONFIGS.register("bow-20k", EncoderConfig(kind="bow", k=20000))
ENCODER_CONFIGS.register("vlad-64", EncoderConfig(kind="vlad", k=64))
ENCODER_CONFIGS.register("vlad-256", EncoderConfig(kind="vlad", k=256))
ENCODER_CONFIGS.register("fisher-64", EncoderConfig(kind="fisher", k=64, pca_dim=64))


def build_encoder(conf: EncoderConfig, trained_on: Optional[str] = None) -> LocalEncoder:
    """The unfitted encoder ``conf`` describes."""
    from retrieval.features.encoders import ENCODERS

    kwargs = {name: getattr(conf, name) for name in _FIELDS[conf.kind]}
    if kwargs.get("n_sample") is None:
        kwargs.pop("n_sample", None)
    try:
        return ENCODERS[conf.kind](trained_on=trained_on, **kwargs)
    except ValueError as exc:
        raise ConfigError(f"{conf.kind} encoder: {exc}") from None
