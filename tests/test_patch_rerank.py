"""Patch re-ranking (E7) on real COIL-100 photos: an image's augmented copy outscores unrelated
objects; batched scoring equals per-image scoring; empty and mismatched inputs."""
import cv2
import numpy as np
import pytest
import torch

from retrieval.features.efficientnet import EfficientNetExtractor
from retrieval.features.local import LocalFeatures
from retrieval.rerank.patch import PATCH_METHODS, PatchScorer
from retrieval.core.imageio import load_image


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread: a 2-thread forward pass is many times slower on a loaded shared machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _augment(img: np.ndarray) -> np.ndarray:
    """A different photo of the same thing: rotated 8 degrees, scaled 1.1, brighter, with noise."""
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), 8, 1.1)
    out = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    noise = np.random.default_rng(0).normal(0, 6, out.shape)
    return np.clip(out.astype(np.float32) * 1.15 + 10 + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def patches(coil100_dir):
    ext = EfficientNetExtractor("lite0-patch-224", backend="folded")
    query = load_image(coil100_dir / "images" / "obj1__0.png")
    others = [load_image(coil100_dir / "images" / f"obj{k}__0.png") for k in (2, 17, 44, 60, 88)]
    feats = ext.extract_patches([query, _augment(query)] + others)
    return feats[0], feats[1:]  # query, [augmented copy, 5 unrelated objects]


@pytest.mark.parametrize("method", PATCH_METHODS)
def test_augmented_copy_ranks_first(patches, method):
    query, shortlist = patches
    scores = PatchScorer(method).score(query, shortlist)
    assert scores.shape == (6,) and scores.dtype == np.float64
    assert int(np.argmax(scores)) == 0, scores
    assert scores[0] > scores[1:].max()
    # the image itself: every patch is its own mutual nearest neighbour
    self_score = PatchScorer(method).score(query, [query])[0]
    expected = {"mean_max": 1.0, "mutual_sum": 1.0, "mutual_count": len(query)}[method]
    assert self_score == pytest.approx(expected, abs=1e-4)


def test_batched_equals_one_by_one_and_bounds(patches):
    query, shortlist = patches
    for method in PATCH_METHODS:
        scorer = PatchScorer(method)
        batched = scorer.score(query, shortlist)
        single = np.array([scorer.score(query, [f])[0] for f in shortlist])
        np.testing.assert_allclose(batched, single, atol=1e-6)
    mean_max = PatchScorer("mean_max").score(query, shortlist)
    assert np.all(mean_max <= 1.0 + 1e-6) and np.all(mean_max > 0)
    counts = PatchScorer("mutual_count").score(query, shortlist)
    assert np.all(counts == np.round(counts)) and np.all(counts <= len(query))
    # a threshold removes weak matches: scores can only drop
    strict = PatchScorer("mutual_count", threshold=0.6).score(query, shortlist)
    assert np.all(strict <= counts) and strict[0] >= 1


def test_empty_inputs_and_mismatched_dimensions(patches):
    query, shortlist = patches
    empty = LocalFeatures.empty(query.dim, (224, 224))
    for method in PATCH_METHODS:
        scorer = PatchScorer(method)
        assert scorer.score(query, []).shape == (0,)
        np.testing.assert_array_equal(scorer.score(empty, shortlist), 0.0)
        mixed = scorer.score(query, [shortlist[1], empty, shortlist[0]])
        np.testing.assert_allclose(mixed[[0, 2]], scorer.score(query, [shortlist[1], shortlist[0]]))
        assert mixed[1] == 0.0
        np.testing.assert_array_equal(scorer.score(query, [empty, empty]), 0.0)
    other = LocalFeatures(np.zeros((3, 4), np.float32), np.ones((3, 64), np.float32), (10, 10))
    with pytest.raises(ValueError, match="dimensions"):
        PatchScorer().score(query, [shortlist[0], other])
    with pytest.raises(ValueError, match="unknown patch score"):
        PatchScorer("best")


def test_float16_tokens_from_a_store(patches, tmp_path):
    from retrieval.features.store import LocalFeatureStore

    query, shortlist = patches
    with LocalFeatureStore(tmp_path / "p.h5", "a", config={"t": 1}) as store:
        for i, f in enumerate(shortlist):
            store.put(str(i), f)
        stored = store.get_many([str(i) for i in range(len(shortlist))])
    np.testing.assert_allclose(PatchScorer().score(query, stored), PatchScorer().score(query, shortlist),
                               atol=2e-3)
