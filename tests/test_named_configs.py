"""The named configurations of training, the EfficientNet extractor and AlexNet are registries of frozen
:class:`retrieval.core.config.Config` classes: unknown keys name the key, configurations cannot be changed in
place, and what is recorded on disk (training
checkpoints' configuration, feature files' extractor configuration) is what it was before."""
import dataclasses
import json

import pytest

from retrieval.core.config import ConfigError
from retrieval.features.alexnet import ALEXNET_CONFIGS
from retrieval.features.efficientnet_configs import EXTRACTOR_CONFIGS, EfficientNetConfig, resolve_config
from retrieval.training.augment import AugmentConfig
from retrieval.training.settings import TRAIN_CONFIGS, TrainConfig
from retrieval.training.loop import LoopConfig

# EfficientNetExtractor(name).config of two named configurations as written by the version before these
# were Config classes: feature files store this dict and refuse to be reopened with another one
LITE0_GEM_512 = {"model": "lite0", "weights": "imagenet", "layer": "head", "pooling": "gem", "gem_p": 3.0,
                 "input": "longest", "size": 512, "upscale": True, "scales": [1.0], "whitening": None,
                 "name": "lite0-gem-512", "extractor": "efficientnet"}
LITE0_COIL_128 = {"model": "lite0", "weights": "imagenet", "layer": "head", "pooling": "gem", "gem_p": 3.0,
                  "input": "square", "size": 128, "upscale": True, "scales": [1.0], "whitening": None,
                  "name": "lite0-coil-128", "extractor": "efficientnet"}

# TRAIN_CONFIGS["coil-e3"].to_dict() before TrainConfig was a Config: the "train_config" that model
# sidecars and training checkpoints hold (the ladder reuses a trained model only when it is equal)
COIL_E3 = {
    "K": 4, "P": 16, "arcface_margin": 0.2,
    "augment": {"brightness": 0.2, "contrast": 0.2, "hflip_prob": 0.5, "hue": 0.02, "out_size": 128,
                "padding_mode": "zeros", "ratio": [0.8, 1.25], "rotation_deg": 10.0, "saturation": 0.2,
                "scale": [0.5, 1.0]},
    "backbone": "lite0", "backbone_lr_mult": 1.0, "batch_size": 64, "bn": "frozen", "cache_images": True,
    "channels_last": False, "decode_backend": "threading", "fit": "centre", "gem_p": 3.0, "head": "cosine",
    "head_lr_mult": 10.0, "head_scale": 16.0, "image_size": 128, "label_smoothing": 0.0, "learn_p": False,
    "load_size": None,
    "loop": {"amp": False, "amp_dtype": "float16", "checkpoint_every": 20, "device": "auto", "epochs": 3,
             "gamma": 0.1, "grad_clip": 0.0, "lr": 0.0001, "max_steps_per_epoch": 0, "min_lr_frac": 0.01,
             "momentum": 0.9, "optimizer": "adamw", "prefetch": 2, "schedule": "cosine", "seed": 0,
             "step_epochs": 1, "warmup_steps": 10, "weight_decay": 0.0001},
    "loss": "contrastive", "margin": 0.7, "method": "siamese", "mining": "batch_hard", "n_jobs": 2,
    "name": "coil-e3", "on_error": "raise", "pooling": "gem", "reduction": "balanced",
    "small_classes": "replace", "train_blocks": 6, "weights": "imagenet"}


def test_unknown_override_key_is_an_error_naming_it():
    with pytest.raises(ConfigError, match="unknown key 'epoch' of LoopConfig"):
        TRAIN_CONFIGS.get("coil-e3", {"loop.epoch": 2})
    with pytest.raises(ConfigError, match="unknown key 'batchsize' of TrainConfig"):
        TRAIN_CONFIGS.get("coil-e2", ["batchsize=8"])
    with pytest.raises(ConfigError, match="unknown key 'sise' of EfficientNetConfig"):
        EXTRACTOR_CONFIGS.get("lite0-gem-512", {"sise": 256})
    with pytest.raises(ConfigError, match="unknown key 'sise' of EfficientNetConfig"):
        resolve_config("lite0-gem-512", sise=256)  # what EfficientNetExtractor(name, **overrides) runs first
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['sise'\]"):
        resolve_config({"pooling": "avg", "sise": 256})
    with pytest.raises(ConfigError, match="unknown key 'depth' of AlexNetConfig"):
        ALEXNET_CONFIGS.get("alexnet-half", {"depth": 3})


@pytest.mark.parametrize("conf, field", [
    (TRAIN_CONFIGS["coil-e3"], "image_size"), (TRAIN_CONFIGS["coil-e3"].loop, "epochs"),
    (AugmentConfig(), "out_size"), (LoopConfig(), "lr"), (EXTRACTOR_CONFIGS["lite0-gem-512"], "size"),
    (ALEXNET_CONFIGS["alexnet"], "out_dim")])
def test_configurations_cannot_be_changed_in_place(conf, field):
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(conf, field, 1)


def test_overrides_make_checked_copies():
    base = TRAIN_CONFIGS["coil-e3"]
    small = base.override(["image_size=64", "loop.epochs=1"])
    assert (small.image_size, small.augment.out_size, small.loop.epochs) == (64, 64, 1)
    assert (base.image_size, base.augment.out_size, base.loop.epochs) == (128, 128, 3)
    # the augmentation's output follows the network input whichever way the copy is made
    assert dataclasses.replace(base, image_size=96).augment.out_size == 96
    with pytest.raises(ConfigError, match="image_size must be >= 32"):
        base.override({"image_size": 16})
    with pytest.raises(ConfigError, match="widths: expected 5 values, got 6"):
        ALEXNET_CONFIGS.get("alexnet", {"widths": [8, 16, 16, 16, 16, 16]})


def test_training_configuration_on_disk_reads_both_ways():
    from retrieval.training.settings import TRAIN_PRECISION

    # the training precision (and the channels-last layout that follows it) joined the configuration
    now = {**COIL_E3, "channels_last": None, "loop": {**COIL_E3["loop"], "precision": TRAIN_PRECISION}}
    assert TRAIN_CONFIGS["coil-e3"].to_dict() == now
    assert TrainConfig.from_dict(json.loads(json.dumps(now))) == TRAIN_CONFIGS["coil-e3"]
    # a configuration written before reads back as what it ran: float32, NCHW
    old = TrainConfig.from_dict(json.loads(json.dumps(COIL_E3)))
    assert old.loop.precision == "float32" and old.channels_last is False
    assert old.override({"loop.precision": TRAIN_PRECISION, "channels_last": None}) == TRAIN_CONFIGS["coil-e3"]
    cfg = TRAIN_CONFIGS.get("gldv2-e2-gpu", ["load_size=288", "loop.lr=3e-4"])
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_extractor_configuration_dicts_are_unchanged():
    from retrieval.features.efficientnet import EfficientNetExtractor

    for expected in (LITE0_GEM_512, LITE0_COIL_128):
        extractor = EfficientNetExtractor(expected["name"], backend="eager")
        assert extractor.config == expected
        assert json.dumps(extractor.config, sort_keys=True) == json.dumps(expected, sort_keys=True)
        # a recorded configuration rebuilds the same extractor (upload search in the server does this)
        assert EfficientNetExtractor(extractor.config, backend="eager").config == expected


def test_resolved_configuration_keeps_the_old_conventions():
    over = resolve_config("lite0-gem-512", size=256, scales=[1, 0.5], pooling="AVG", layer=None)
    assert over == {"model": "lite0", "weights": "imagenet", "layer": "head", "pooling": "avg", "input": "longest",
                    "size": 256, "upscale": True, "scales": [1.0, 0.5], "whitening": None, "name": "lite0-gem-512"}
    assert resolve_config({"model": "EfficientNet-Lite0", "size": 300})["name"] == "custom"
    assert resolve_config(EfficientNetConfig(input="square", size=224)) == \
        dict(resolve_config("lite0-gem-224"), name="custom")
    with pytest.raises(ConfigError, match="unknown EfficientNet extractor configuration 'lite0-nope'"):
        resolve_config("lite0-nope")
