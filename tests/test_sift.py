"""SIFT / RootSIFT extraction on real images (COIL-100, COIL-20, Oxford)."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from retrieval.features.local import LocalFeatures
from retrieval.features.sift import SIFT_CONFIGS, SiftExtractor, root_sift, sift_config, to_gray
from retrieval.core.imageio import ImageLoadError, load_image


@pytest.fixture(scope="module")
def coil_image(coil100_dir) -> Path:
    return coil100_dir / "images" / "obj5__0.png"


@pytest.fixture(scope="module")
def oxford_image(oxford_dir) -> Path:
    return sorted((oxford_dir / "images").glob("*.jpg"))[0]


def test_named_configs_are_complete_and_typos_refused():
    for name in SIFT_CONFIGS:
        cfg = sift_config(name)
        assert cfg["name"] == name and cfg["type"] == "sift"
        assert isinstance(cfg["max_side"], int)  # every configuration caps the image size
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['max_keypionts'\]"):
        sift_config({"max_keypionts": 10})
    with pytest.raises(ValueError, match="unknown SIFT configuration"):
        SiftExtractor("rootsift-99k")
    assert SiftExtractor("rootsift-1k", max_keypoints=10).config["max_keypoints"] == 10
    # the one configuration idiom: dotted KEY=VALUE strings (as --set gives them) and dicts
    assert SiftExtractor("rootsift-1k", ["max_side=1024", "upright=true"]).config["max_side"] == 1024
    assert sift_config(SIFT_CONFIGS.get("rootsift-1k", {"max_side": 800}))["max_side"] == 800
    # a stored configuration (with its name) rebuilds the same extractor
    stored = SiftExtractor("rootsift-small").config
    assert SiftExtractor(stored).config == stored
    for bad in ({"max_side": None}, {"max_side": 4}, {"max_keypoints": 0}, {"root": "yes"}):
        with pytest.raises(ValueError):
            sift_config("rootsift-1k", bad)


def test_default_cap_bounds_the_longest_side():
    """A 4000 x 3000 image is worked on at 1600 x 1200 by default (SIFT memory ~240 bytes per
    pixel), at the configured cap otherwise; the cap is recorded, so stores made with another one are
    refused; smaller images are untouched."""
    rng = np.random.default_rng(0)
    big = cv2.resize(rng.integers(0, 256, (300, 400), dtype=np.uint8), (4000, 3000), interpolation=cv2.INTER_NEAREST)
    ex = SiftExtractor("rootsift-1k")
    assert ex.config["max_side"] == 1600 and ex.prepare(big).shape == (1200, 1600)
    assert SiftExtractor("rootsift-1k", max_side=1000).prepare(big).shape == (750, 1000)
    small = big[:500, :700]
    assert ex.prepare(small).shape == (500, 700)
    assert SiftExtractor("rootsift-1k", max_side=1000).config != ex.config


def test_rootsift_properties_and_relation_to_sift(oxford_image):
    sift = SiftExtractor("sift-1k").extract_path(oxford_image)
    root = SiftExtractor("rootsift-1k").extract_path(oxford_image)
    assert sift.descriptors.dtype == np.uint8 and len(sift) > 100
    assert root.descriptors.dtype == np.float32 and root.dim == 128
    np.testing.assert_array_equal(sift.keypoints, root.keypoints)
    assert (root.descriptors >= 0).all()
    np.testing.assert_allclose(np.linalg.norm(root.descriptors, axis=1), 1.0, atol=1e-5)
    d = sift.descriptors.astype(np.float64)
    expected = np.sqrt(d / d.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(root.descriptors, expected, atol=1e-6)
    # the helper alone: zero rows stay zero, not NaN
    out = root_sift(np.array([[0, 0, 0], [1, 3, 0]], dtype=np.float32))
    np.testing.assert_allclose(out, [[0, 0, 0], [0.5, np.sqrt(0.75), 0]], atol=1e-7)


def test_keypoint_cap_keeps_strongest_by_response(oxford_image):
    cap = 150
    gray = to_gray(load_image(oxford_image))
    detector = cv2.SIFT_create(contrastThreshold=0.04)
    every = detector.detect(gray, None)
    assert len(every) > cap
    response = np.array([k.response for k in every])
    strongest = {(round(k.pt[0], 2), round(k.pt[1], 2), round(k.size, 2), round(k.angle, 1))
                 for k in (every[i] for i in np.argsort(-response, kind="stable")[:cap])}
    feats = SiftExtractor("rootsift-1k", max_keypoints=cap).extract_path(oxford_image)
    assert len(feats) == cap
    got = {(round(float(x), 2), round(float(y), 2), round(float(s), 2), round(float(a), 1))
           for x, y, s, a in feats.keypoints}
    # ties at the cut may swap one keypoint for an equal one; all others must be the strongest
    assert len(got & strongest) >= cap - 2
    uncapped = SiftExtractor("rootsift-1k", max_keypoints=None).extract_path(oxford_image)
    assert len(uncapped) >= len(every) - 5


def test_gray_rgb_rgba_arrays_give_the_same_features(coil_image, coil20_dir):
    rgb = load_image(coil_image)
    ex = SiftExtractor("rootsift-small")
    from_rgb = ex.extract(rgb)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    from_gray = ex.extract(gray)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    from_rgba = ex.extract(rgba)
    assert len(from_rgb) > 20
    for other in (from_gray, from_rgba):
        np.testing.assert_array_equal(from_rgb.keypoints, other.keypoints)
        np.testing.assert_array_equal(from_rgb.descriptors, other.descriptors)
    # 16-bit and a (H, W, 1) array are accepted too
    from16 = ex.extract(gray.astype(np.uint16) * 257)
    np.testing.assert_array_equal(from16.descriptors, from_gray.descriptors)
    assert len(ex.extract(gray[:, :, None])) == len(from_gray)
    # a grayscale file on disk (COIL-20)
    gray_file = sorted((coil20_dir / "images").glob("*.png"))[0]
    feats = ex.extract_path(gray_file)
    assert len(feats) > 10 and feats.image_size == (256, 256)


def test_resize_upscale_and_box_crop(coil_image, oxford_image):
    small = SiftExtractor("rootsift-small").extract_path(coil_image)
    assert small.image_size == (256, 256)
    assert (small.keypoints[:, :2] >= 0).all() and (small.keypoints[:, :2] < 256).all()
    ex = SiftExtractor("rootsift-1k", max_side=256)
    image = load_image(oxford_image)
    h, w = image.shape[:2]
    box = (w * 0.25, h * 0.25, w * 0.75, h * 0.75)
    crop = ex.extract(image, box=box)
    full = ex.extract(image)
    assert max(full.image_size) == 256
    assert abs(crop.image_size[0] - full.image_size[0] / 2) <= 2
    assert abs(crop.image_size[1] - full.image_size[1] / 2) <= 2
    assert (crop.keypoints[:, 0] < crop.image_size[1]).all() and (crop.keypoints[:, 1] < crop.image_size[0]).all()
    with pytest.raises(ValueError, match=str(oxford_image.name)):
        ex.extract_path(oxford_image, box=(w + 10, 0, w + 20, 10))


def test_upright_has_zero_angles_and_no_duplicate_locations(oxford_image):
    feats = SiftExtractor("rootsift-upright-4k").extract_path(oxford_image)
    assert len(feats) > 100
    assert (feats.keypoints[:, 3] == 0).all()
    assert len(np.unique(feats.keypoints[:, :3], axis=0)) == len(feats)


def test_image_without_keypoints_is_a_valid_empty_entry():
    flat = np.full((64, 80, 3), 128, np.uint8)
    for name, dtype in (("rootsift-1k", np.float32), ("sift-1k", np.uint8)):
        feats = SiftExtractor(name).extract(flat)
        assert isinstance(feats, LocalFeatures) and len(feats) == 0
        assert feats.descriptors.shape == (0, 128) and feats.descriptors.dtype == dtype
        assert feats.image_size == (64, 80)
    feats = SiftExtractor("rootsift-upright-4k").extract(flat)
    assert len(feats) == 0


def test_corrupt_file_is_named(tmp_path, oxford_image):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(oxford_image.read_bytes()[:500])
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        SiftExtractor("rootsift-1k").extract_path(bad)
