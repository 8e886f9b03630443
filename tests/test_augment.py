"""Augmentation: shapes, value range, determinism with a seed, flip and identity warps exact,
colour jitter behaviour, evaluation transform."""
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from retrieval.core.imageio import load_image
from retrieval.training.augment import (AugmentConfig, affine_warp, augment_batch, color_jitter,
                                        eval_transform, hflip, mixup, sample_crop_params, uint8_to_float)


@pytest.fixture(scope="module")
def coil_batch(coil100_dir):
    names = ["obj1__0.png", "obj2__0.png", "obj3__45.png", "obj4__90.png"]
    images = np.stack([load_image(coil100_dir / "images" / n) for n in names])
    return uint8_to_float(torch.from_numpy(images))


def _gen(seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def test_uint8_to_float_layout_and_range():
    x = torch.zeros(2, 5, 7, 3, dtype=torch.uint8)
    x[1, 2, 3] = torch.tensor([255, 0, 51], dtype=torch.uint8)
    y = uint8_to_float(x)
    assert y.shape == (2, 3, 5, 7) and y.dtype == torch.float32
    assert torch.allclose(y[1, :, 2, 3], torch.tensor([1.0, 0.0, 0.2]))
    with pytest.raises(ValueError, match="uint8"):
        uint8_to_float(x.float())


def test_augment_shapes_range_and_seed_determinism(coil_batch):
    cfg = AugmentConfig(out_size=96)
    a = augment_batch(coil_batch, cfg, _gen(3))
    b = augment_batch(coil_batch, cfg, _gen(3))
    c = augment_batch(coil_batch, cfg, _gen(4))
    assert a.shape == (4, 3, 96, 96)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # images differ from each other: per-image randomness, not one draw for the batch
    params = sample_crop_params(4, 128, 128, cfg, _gen(3))
    assert len(set(params["w"].tolist())) == 4


def test_generator_state_continues_deterministically(coil_batch):
    cfg = AugmentConfig(out_size=64)
    g = _gen(7)
    augment_batch(coil_batch, cfg, g)
    state = g.get_state()
    second = augment_batch(coil_batch, cfg, g)
    g2 = torch.Generator()
    g2.set_state(state)
    assert torch.equal(second, augment_batch(coil_batch, cfg, g2))


def test_identity_and_flip_warps_are_exact(coil_batch):
    plain = AugmentConfig(out_size=128, scale=(1, 1), ratio=(1, 1), hflip_prob=0.0, rotation_deg=0,
                          brightness=0, contrast=0, saturation=0, hue=0)
    same = augment_batch(coil_batch, plain, _gen())
    assert torch.allclose(same, coil_batch, atol=1e-5)
    flipped_cfg = replace(plain, hflip_prob=1.0)
    flipped = augment_batch(coil_batch, flipped_cfg, _gen())
    assert torch.allclose(flipped, coil_batch.flip(-1), atol=1e-5)
    assert torch.allclose(hflip(coil_batch, torch.tensor([True, False, True, False]))[1], coil_batch[1])
    assert torch.equal(hflip(coil_batch)[0], coil_batch[0].flip(-1))


def test_rotation_by_90_degrees_matches_rot90():
    x = torch.rand(1, 3, 8, 8)
    params = {"cx": torch.zeros(1, dtype=torch.float64), "cy": torch.zeros(1, dtype=torch.float64),
              "w": torch.full((1,), 8.0, dtype=torch.float64), "h": torch.full((1,), 8.0, dtype=torch.float64),
              "flip": torch.zeros(1, dtype=torch.bool), "angle": torch.full((1,), math.pi / 2, dtype=torch.float64)}
    out = affine_warp(x, params, 8)
    # output pixel (i, j) samples the input at R(90)(u): rotating the content one quarter turn
    assert torch.allclose(out, torch.rot90(x, k=1, dims=(2, 3)), atol=1e-5) or \
        torch.allclose(out, torch.rot90(x, k=-1, dims=(2, 3)), atol=1e-5)


def test_crop_zooms_into_the_centre():
    # a crop of half the side around the centre, resampled to the full size, equals a 2x zoom
    x = torch.zeros(1, 3, 64, 64)
    x[:, :, 16:48, 16:48] = 1.0  # white centre square covering the central half
    params = {"cx": torch.zeros(1, dtype=torch.float64), "cy": torch.zeros(1, dtype=torch.float64),
              "w": torch.full((1,), 32.0, dtype=torch.float64), "h": torch.full((1,), 32.0, dtype=torch.float64),
              "flip": torch.zeros(1, dtype=torch.bool), "angle": torch.zeros(1, dtype=torch.float64)}
    out = affine_warp(x, params, 64)
    assert float(out[:, :, 2:-2, 2:-2].min()) > 0.99


def test_color_jitter_effects():
    x = torch.rand(3, 3, 16, 16, generator=_gen(1)) * 0.5 + 0.1  # x * 1.5 stays below 1: no clamping
    bright = AugmentConfig(brightness=0.5, contrast=0, saturation=0, hue=0)
    y = color_jitter(x, bright, _gen(2))
    ratio = (y / x).flatten(1)
    assert torch.allclose(ratio.min(1).values, ratio.max(1).values, atol=1e-4)  # one factor per image
    assert not torch.allclose(ratio[0], ratio[1])
    gray = x.mean(1, keepdim=True).expand(-1, 3, -1, -1).contiguous()
    huesat = AugmentConfig(brightness=0, contrast=0, saturation=0.5, hue=0.2)
    assert torch.allclose(color_jitter(gray, huesat, _gen(2)), gray, atol=1e-4)  # gray has no chroma
    allcfg = AugmentConfig(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
    z = color_jitter(x, allcfg, _gen(5))
    assert float(z.min()) >= 0 and float(z.max()) <= 1 and not torch.allclose(z, x)


def test_eval_transform_modes():
    x = torch.rand(2, 3, 60, 120)
    centre = eval_transform(x, 30, "centre")
    longest = eval_transform(x, 30, "longest")
    assert centre.shape == longest.shape == (2, 3, 30, 30)
    assert float(longest[:, :, :7].abs().max()) == 0.0 and float(longest[:, :, 23:].abs().max()) == 0.0
    assert torch.equal(eval_transform(x, 30, "centre"), centre)
    assert eval_transform(torch.rand(1, 3, 40, 40), 20, "squash").shape == (1, 3, 20, 20)
    with pytest.raises(ValueError, match="mode"):
        eval_transform(x, 30, "bogus")


def test_config_validation():
    with pytest.raises(ValueError, match="scale"):
        AugmentConfig(scale=(0.0, 1.0))
    with pytest.raises(ValueError, match="hue"):
        AugmentConfig(hue=0.9)
    with pytest.raises(ValueError, match="padding_mode"):
        AugmentConfig(padding_mode="wrap")


def test_mixup_blends_each_item_with_one_other_item(coil_batch):
    sets = torch.stack([coil_batch, coil_batch.flip(0)], dim=1)  # (4 sets, 2 views, 3, H, W)
    mixed = mixup(sets, 1.0, _gen(5))
    assert mixed.shape == sets.shape and torch.equal(mixed, mixup(sets, 1.0, _gen(5)))
    flat, src = mixed.flatten(1), sets.flatten(1)
    for i in range(4):
        # x_i' = lam x_i + (1 - lam) x_j for one j and one lam shared by all the set's views
        fits = []
        for j in range(4):
            if j == i:
                continue
            d = src[i] - src[j]
            lam = float(((flat[i] - src[j]) @ d) / (d @ d))
            err = float((lam * src[i] + (1 - lam) * src[j] - flat[i]).abs().max())
            fits.append((err, lam))
        err, lam = min(fits)
        assert err < 1e-5 and 0.0 <= lam <= 1.0
    same = coil_batch[:1].expand(4, -1, -1, -1)
    assert torch.allclose(mixup(same, 0.4, _gen(1)), same)  # blending equal images changes nothing
    with pytest.raises(ValueError, match="alpha"):
        mixup(sets, 0.0, _gen(0))
