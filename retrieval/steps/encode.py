"""``retrieval encode``: a local feature store -> a global feature file (BoW tf-idf, VLAD or Fisher).

The encoder is learned on a seeded sample of ``train_images`` images of a training store (default: the
store being encoded) or loaded from ``model``. With ``model`` given, a learned encoder is saved there
and reused by the next call, so the database and the queries are encoded with the same codebook::

    retrieval encode db-sift.h5 --out db-vlad.h5 --encoder vlad-64 --model vlad.npz   # learns, saves
    retrieval encode q-sift.h5 --out q-vlad.h5 --encoder vlad-64 --model vlad.npz     # loads

The output records the encoder's and the local features' configuration; it is written in chunks
and an interrupted run resumes (a file made with another encoder is refused).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from retrieval.core.config import Config, ConfigError
from retrieval.features.encoders.named import ENCODER_CONFIGS, EncoderConfig

__all__ = ["EncodeConfig", "main"]


@dataclass(frozen=True)
class EncodeConfig(Config):
    """``encoder``: what to learn (:data:`retrieval.features.encoders.named.ENCODER_CONFIGS`);
    ``train_images``: images sampled (seeded by ``encoder.seed``) to learn it; ``chunk``: images
    encoded (and written) at a time."""

    encoder: EncoderConfig = field(default_factory=lambda: ENCODER_CONFIGS.get("vlad-64"))
    train_images: int = 2000
    chunk: int = 256

    def check(self) -> None:
        if self.train_images < 1 or self.chunk < 1:
            raise ConfigError("train_images and chunk must be positive")


def _learn(conf: EncodeConfig, train: Path, progress: bool):
    import numpy as np

    from retrieval.features.encoders.named import build_encoder
    from retrieval.features.store import LocalFeatureStore

    with LocalFeatureStore(train, "r") as store:
        ids = sorted(store.ids())
        if not ids:
            raise ConfigError(f"{train}: the local feature store holds no image")
        rng = np.random.default_rng(conf.encoder.seed)
        pick = sorted(rng.choice(len(ids), size=min(conf.train_images, len(ids)), replace=False).tolist())
        features = store.get_many([ids[i] for i in pick])
    encoder = build_encoder(conf.encoder, trained_on=f"{Path(train).name}:{len(pick)} images")
    try:
        return encoder.fit(features)
    except ValueError as exc:
        raise ConfigError(f"{train}: cannot learn the {conf.encoder.kind} encoder ({exc})") from None


def _check_model(encoder, conf: EncodeConfig, model: Path) -> None:
    mismatch = [name for name in ("k",) if getattr(encoder, name, None) != getattr(conf.encoder, name)]
    if encoder.kind != conf.encoder.kind or mismatch:
        raise ConfigError(f"{model}: holds a {encoder.kind} encoder with k={getattr(encoder, 'k', '?')}, "
                          f"not the {conf.encoder.kind} k={conf.encoder.k} asked for; use another --model path")


def main(conf: EncodeConfig, features: Path, out: Path, model: Optional[Path] = None,
         train: Optional[Path] = None, progress: bool = True, info: Optional[dict] = None) -> Path:
    """Encode every image of the local store ``features`` into the global feature file ``out``;
    returns ``out``. ``model``: encoder file to load, or to save the learned encoder to; ``train``:
    store to learn it from (default ``features``)."""
    from tqdm.auto import tqdm

    from retrieval.features.encoders import load_encoder
    from retrieval.features.store import GlobalFeatureWriter, LocalFeatureStore

    start = time.perf_counter()
    learned = False
    if model is not None and Path(model).is_file():
        encoder = load_encoder(model)
        _check_model(encoder, conf, Path(model))
    else:
        encoder = _learn(conf, Path(train or features), progress)
        learned = True
        if model is not None:
            encoder.save(model)
    with LocalFeatureStore(features, "r") as store:
        config = {"encoder": encoder.config, "local": store.config}
        ids = sorted(store.ids())
        if not ids:
            raise ConfigError(f"{features}: the local feature store holds no image")
        with GlobalFeatureWriter(out, encoder.dim, config=config) as writer:
            done = set(writer.done_ids)
            todo = [i for i in ids if i not in done]
            chunks = range(0, len(todo), conf.chunk)
            empty = []  # images without a keypoint: their vector is all zero
            for lo in tqdm(chunks, desc=f"encode {encoder.kind}", unit="chunk", disable=not progress,
                           leave=False):
                chunk = todo[lo:lo + conf.chunk]
                local = store.get_many(chunk)
                empty += [i for i, f in zip(chunk, local) if len(f) == 0]
                writer.append(chunk, encoder.encode_many(local))
    if empty:
        warnings.warn(f"{features}: {len(empty)} image(s) have no keypoints, so their {encoder.kind} vectors are "
                      f"all zero: {', '.join(map(repr, empty[:5]))}{' ...' if len(empty) > 5 else ''}; the index "
                      "keeps them scoring 0 against every query (index build --zero-rows drop leaves them out)")
    if info is not None:
        info.update(images=len(ids), encoded=len(todo), dim=encoder.dim, encoder=encoder.kind, learned=learned,
                    no_keypoints=empty, seconds=round(time.perf_counter() - start, 3))
    return Path(out)
