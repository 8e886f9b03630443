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

from ..config import Config, ConfigError
from ..features.encoders.config import ENCODER_CONFIGS, EncoderConfig

__all__ = ["EncodeConfig", "main", "register"]


@dataclass(frozen=True)
class EncodeConfig(Config):
    """``encoder``: what to learn (:data:`retrieval.features.encoders.config.ENCODER_CONFIGS`);
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

    from ..features.encoders.config import build_encoder
    from ..features.store import LocalFeatureStore

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

    from ..features.encoders import load_encoder
    from ..features.store import GlobalFeatureWriter, LocalFeatureStore

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


def register(subparsers) -> None:
    parser = subparsers.add_parser("encode", help="encode a local feature store into a global feature file "
                                                  "(BoW, VLAD, Fisher)")
    parser.add_argument("features", help="local feature store (retrieval extract local)")
    parser.add_argument("--out", required=True, help="global feature file to write (HDF5)")
    parser.add_argument("--encoder", default="vlad-64",
                        help=f"named encoder configuration: {', '.join(ENCODER_CONFIGS.names())} (default vlad-64)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", dest="overrides",
                        help="override a field of the encoder configuration (k=128, power=0.5 ...), repeatable")
    parser.add_argument("--model", default=None,
                        help="encoder file: loaded when it exists, else the learned encoder is saved there")
    parser.add_argument("--train", default=None, help="local feature store to learn the encoder from "
                                                      "(default: the one encoded)")
    parser.add_argument("--train-images", type=int, default=2000, help="images sampled to learn it (default 2000)")
    parser.set_defaults(func=_handle)


def _handle(args) -> int:
    from ..cli import emit_json, progress_enabled, require_file, require_output, writing

    features = require_file(args.features, "local feature store", "hdf5")
    train = require_file(args.train, "training store", "hdf5") if args.train else None
    require_output(args.out, "global feature file")
    require_output(args.model, "encoder file")
    conf = EncodeConfig(encoder=ENCODER_CONFIGS.get(args.encoder, args.overrides), train_images=args.train_images)
    info: dict = {}
    with writing(args.out, "global feature file"):
        out = main(conf, features, Path(args.out), model=Path(args.model) if args.model else None, train=train,
                   progress=progress_enabled(args), info=info)
    emit_json({"features": str(out), "model": args.model, **info})
    return 0
