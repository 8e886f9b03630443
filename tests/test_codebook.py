"""Codebooks and descriptor-to-word assignment on real RootSIFT descriptors (COIL-100 images)."""
import numpy as np
import pytest

from retrieval.features.codebook import (Codebook, assign_nearest, faiss_available, learn_codebook,
                               sample_descriptors, train_codebook)
from retrieval.features.local import LocalFeatures
from retrieval.features.sift import SiftExtractor
from retrieval.features.store import FeatureFileError


@pytest.fixture(scope="module")
def coil_features(coil100_dir):
    ex = SiftExtractor("rootsift-small")
    paths = [coil100_dir / "images" / f"obj{o}__{a}.png" for o in (1, 12, 40, 77) for a in (0, 90)]
    return [ex.extract_path(p) for p in paths]


@pytest.fixture(scope="module")
def descriptors(coil_features):
    return np.concatenate([f.descriptors for f in coil_features])


def _brute_force(x, c):
    d2 = ((x[:, None, :].astype(np.float64) - c[None, :, :]) ** 2).sum(-1)
    return np.argsort(d2, axis=1, kind="stable"), np.sort(d2, axis=1)


def test_assign_nearest_matches_brute_force(descriptors):
    rng = np.random.default_rng(1)
    x = descriptors[:300]
    c = descriptors[rng.choice(len(descriptors), 40, replace=False)] + 0.01
    order, d2 = _brute_force(x, c)
    idx, sq = assign_nearest(x, c)
    assert idx.shape == (300, 1) and sq.dtype == np.float32
    np.testing.assert_array_equal(idx[:, 0], order[:, 0])
    np.testing.assert_allclose(sq[:, 0], d2[:, 0], atol=1e-4)
    # several nearest, sorted; small blocks give the same answer as one block
    idx3, sq3 = assign_nearest(x, c, n_nearest=3, block_rows=7)
    np.testing.assert_array_equal(idx3, order[:, :3])
    np.testing.assert_allclose(sq3, d2[:, :3], atol=1e-4)
    # empty input and bad shapes
    e_idx, e_sq = assign_nearest(np.zeros((0, 128), np.float32), c)
    assert e_idx.shape == (0, 1) and e_sq.shape == (0, 1)
    with pytest.raises(ValueError, match="do not match"):
        assign_nearest(x[:, :64], c)
    with pytest.raises(ValueError, match="n_nearest"):
        assign_nearest(x, c, n_nearest=41)


def test_sample_descriptors_is_seeded_and_uniform_across_images(coil_features):
    total = sum(len(f) for f in coil_features)
    a = sample_descriptors(coil_features, 200, seed=3)
    b = sample_descriptors(coil_features, 200, seed=3)
    c = sample_descriptors(coil_features, 200, seed=4)
    assert a.shape == (200, 128) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    every = np.concatenate([f.descriptors for f in coil_features])
    assert {r.tobytes() for r in a} <= {r.tobytes() for r in every}
    assert len(sample_descriptors(coil_features, 10 ** 9)) == total
    with pytest.raises(ValueError, match="every image is empty"):
        sample_descriptors([LocalFeatures.empty(128, (5, 5))], 10)


@pytest.mark.parametrize("backend", ["faiss", "sklearn"])
def test_train_codebook_seeded_and_saved(tmp_path, descriptors, backend):
    if backend == "faiss" and not faiss_available():
        pytest.skip("faiss not installed")
    cb1 = train_codebook(descriptors, 16, seed=5, niter=8, backend=backend,
                         metadata={"trained_on": "coil test images"})
    cb2 = train_codebook(descriptors, 16, seed=5, niter=8, backend=backend)
    assert cb1.centroids.shape == (16, 128) and cb1.k == 16
    np.testing.assert_allclose(cb1.centroids, cb2.centroids, atol=1e-6)
    assert cb1.config["trained_on"] == "coil test images" and cb1.config["backend"] == backend
    assert cb1.config["n_train"] == len(descriptors) and cb1.config["seed"] == 5
    # k-means lowers the distortion of the initial random words
    idx, sq = cb1.assign(descriptors)
    start = descriptors[np.random.default_rng(0).choice(len(descriptors), 16, replace=False)]
    assert sq.mean() < assign_nearest(descriptors, start)[1].mean()
    path = cb1.save(tmp_path / "words")
    assert path.suffix == ".npz"
    loaded = Codebook.load(path)
    np.testing.assert_array_equal(loaded.centroids, cb1.centroids)
    assert loaded.config == cb1.config
    np.testing.assert_array_equal(loaded.assign(descriptors)[0], idx)


def test_subsampling_and_bad_inputs(descriptors, coil_features):
    cb = train_codebook(descriptors, 8, seed=0, niter=4, max_points_per_centroid=20)
    assert cb.config["n_train"] == 160 and cb.config["n_available"] == len(descriptors)
    with pytest.raises(ValueError, match="cannot learn"):
        train_codebook(descriptors[:5], 8)
    with pytest.raises(ValueError, match="backend"):
        train_codebook(descriptors, 4, backend="nope")
    bad = descriptors[:100].copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        train_codebook(bad, 4)
    learned = learn_codebook(coil_features, 8, n_sample=500, seed=1, niter=4,
                             metadata={"trained_on": "x"})
    assert learned.config["n_images"] == len(coil_features) and learned.config["n_train"] == 500
    with pytest.raises(ValueError, match="do not fit"):
        learned.assign(descriptors[:, :10])


def test_damaged_or_foreign_files_are_refused(tmp_path, descriptors):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file at all")
    with pytest.raises(FeatureFileError, match="junk.npz"):
        Codebook.load(junk)
    np.savez(tmp_path / "plain.npz", centroids=descriptors[:4])
    with pytest.raises(FeatureFileError, match="no configuration header"):
        Codebook.load(tmp_path / "plain.npz")
    with pytest.raises(FeatureFileError, match="no such"):
        Codebook.load(tmp_path / "absent.npz")
    from retrieval.features.whitening import PCAWhitening
    w = PCAWhitening(dim=2).fit(descriptors[:50, :8])
    w.save(tmp_path / "w.npz")
    with pytest.raises(FeatureFileError, match="not a 'codebook'"):
        Codebook.load(tmp_path / "w.npz")
