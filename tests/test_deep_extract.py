"""Resumable deep extraction into global feature files and patch stores, on real COIL-100 images of
mixed sizes, with a corrupt file in the middle."""

import numpy as np
import pytest

from retrieval.features.deep_extract import ExtractionError, extract_global, extract_patches
from retrieval.features.efficientnet import EfficientNetExtractor
from retrieval.features.store import FeatureFileError, LocalFeatureStore, load_global
from retrieval.core.imageio import load_image


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def extractor():
    # aspect kept, longest side 96: small and fast, and crops of different shapes give mixed sizes
    return EfficientNetExtractor("lite0-gem-512", backend="folded", size=96, batch_size=3)


@pytest.fixture
def images(coil100_dir, tmp_path):
    """8 real images (some cropped to other aspect ratios, saved as PNG) and a truncated file at
    position 5."""
    import cv2

    ids, paths = [], []
    for k, obj in enumerate((1, 2, 3, 4, 5, 6, 7, 8)):
        img = load_image(coil100_dir / "images" / f"obj{obj}__0.png")
        if k % 3 == 1:
            img = img[:, 16:112]  # 128 x 96
        elif k % 3 == 2:
            img = img[24:104]     # 80 x 128
        path = tmp_path / f"img{k}.png"
        cv2.imwrite(str(path), img[:, :, ::-1])
        ids.append(f"im/{k}")
        paths.append(path)
    bad = tmp_path / "broken.png"
    bad.write_bytes(paths[0].read_bytes()[:300])
    ids.insert(5, "im/broken")
    paths.insert(5, bad)
    return ids, paths


def test_global_extraction_resumes_after_a_corrupt_file(extractor, images, tmp_path):
    ids, paths = images
    out = tmp_path / "global.h5"
    with pytest.raises(ExtractionError, match="broken.png"):
        extract_global(extractor, ids, paths, out, n_jobs=2, progress=False)
    done, vecs, cfg = load_global(out)
    assert sorted(done) == sorted(ids[:5])  # everything decoded before the bad file is kept
    assert cfg["name"] == "lite0-gem-512" and cfg["size"] == 96
    result = extract_global(extractor, ids, paths, out, n_jobs=2, on_error="skip", progress=False)
    assert result.skipped == 5 and result.computed == 3
    assert [f[0] for f in result.failed] == ["im/broken"] and "broken.png" in result.failed[0][1]
    got_ids, got, _ = load_global(out)
    good = [i for i in ids if i != "im/broken"]
    assert sorted(got_ids) == sorted(good)
    direct = extractor.extract_arrays([load_image(p) for i, p in zip(ids, paths) if i != "im/broken"])
    order = [got_ids.index(i) for i in good]
    np.testing.assert_allclose(got[order], direct, atol=1e-5)
    again = extract_global(extractor, ids, paths, out, on_error="skip", progress=False)
    assert again.computed == 0 and again.skipped == 8
    other = EfficientNetExtractor("lite0-avg-512", backend="folded", size=96)
    with pytest.raises(FeatureFileError, match="configuration"):
        extract_global(other, ids, paths, out, progress=False)


def test_boxes_crop_before_extraction(extractor, images, tmp_path):
    ids, paths = images
    ids, paths = ids[:3], paths[:3]
    boxes = [(10.2, 5.0, 90.7, 100.0), None, (0, 0, 50, 40)]
    extract_global(extractor, ids, paths, tmp_path / "q.h5", boxes=boxes, n_jobs=1, progress=False)
    got_ids, got, _ = load_global(tmp_path / "q.h5")
    for image_id, path, box in zip(ids, paths, boxes):
        want = extractor.extract(load_image(path), box)
        np.testing.assert_allclose(got[got_ids.index(image_id)], want, atol=1e-5)
    whole = extractor.extract(load_image(paths[0]))
    assert float(whole @ got[got_ids.index(ids[0])]) < 0.999  # the crop did change the descriptor


def test_patch_store_resumes(images, tmp_path):
    ids, paths = images
    ext = EfficientNetExtractor("lite0-patch-224", backend="folded", batch_size=4)
    store_path = tmp_path / "patches.h5"
    with pytest.raises(ExtractionError, match="broken.png"):
        extract_patches(ext, ids, paths, store_path, progress=False)
    with LocalFeatureStore(store_path) as store:
        assert sorted(store.ids()) == sorted(ids[:5])
    result = extract_patches(ext, ids, paths, store_path, on_error="skip", progress=False)
    assert result.computed == 3 and result.skipped == 5 and result.n_keypoints == 3 * 49
    with LocalFeatureStore(store_path) as store:
        feats = store.get("im/5")  # an 80 x 128 crop, squashed to 224 x 224: 7 x 7 cells
        assert store.config["features"] == "patch-tokens"
    assert feats.descriptors.shape == (49, 1280) and feats.image_size == (80, 128)
    np.testing.assert_allclose(np.linalg.norm(feats.descriptors, axis=1), 1.0, atol=2e-3)
    assert feats.keypoints[:, 0].max() < 128 and feats.keypoints[:, 1].max() < 80
    direct = ext.extract_patches([load_image(paths[ids.index("im/5")])])[0]
    np.testing.assert_allclose(feats.descriptors, direct.descriptors, atol=2e-3)


def test_bad_arguments(extractor, images, tmp_path):
    ids, paths = images
    with pytest.raises(ValueError, match="paths"):
        extract_global(extractor, ids, paths[:-1], tmp_path / "x.h5", progress=False)
    with pytest.raises(ValueError, match="unique"):
        extract_global(extractor, ["a", "a"], paths[:2], tmp_path / "x.h5", progress=False)
    with pytest.raises(ValueError, match="on_error"):
        extract_global(extractor, ids, paths, tmp_path / "x.h5", on_error="ignore", progress=False)
    empty = extract_global(extractor, [], [], tmp_path / "empty.h5", progress=False)
    assert empty.computed == 0 and load_global(tmp_path / "empty.h5")[1].shape == (0, 1280)


def test_decoding_in_turns_or_beside_the_network_gives_the_same_file(extractor, images, tmp_path):
    from types import SimpleNamespace

    import torch

    from retrieval.features.deep_extract import decode_overlaps

    ids, paths = images
    ids, paths = ids[:5] + ids[6:], paths[:5] + paths[6:]  # without the broken file
    assert not decode_overlaps(extractor) and decode_overlaps(extractor, True)  # the network runs on the CPU
    assert decode_overlaps(SimpleNamespace(device=torch.device("cuda")))  # a GPU network: decoding beside it
    files = {}
    for overlap in (False, True):
        files[overlap] = tmp_path / f"overlap-{overlap}.h5"
        result = extract_global(extractor, ids, paths, files[overlap], n_jobs=2, overlap=overlap, progress=False)
        assert result.computed == len(ids)
    (ids_a, a, _), (ids_b, b, _) = load_global(files[False]), load_global(files[True])
    assert sorted(ids_a) == sorted(ids)
    np.testing.assert_allclose(a[np.argsort(ids_a)], b[np.argsort(ids_b)], atol=1e-6)
