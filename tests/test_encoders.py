"""BoW (+ inverted file), VLAD, Fisher and PCA-whitening on RootSIFT of real COIL-100 / Oxford images."""
import numpy as np
import pytest
import scipy.sparse as sp

from retrieval.features.codebook import Codebook, learn_codebook
from retrieval.features.encoders import (BowEncoder, BowInvertedIndex, FisherEncoder, VladEncoder,
                               load_encoder)
from retrieval.features.local import LocalFeatures
from retrieval.features.sift import SiftExtractor
from retrieval.features.store import FeatureFileError
from retrieval.features.whitening import PCAWhitening

EMPTY = LocalFeatures.empty(128, (128, 128))


@pytest.fixture(scope="module")
def features(coil100_dir):
    ex = SiftExtractor("rootsift-small")
    paths = [coil100_dir / "images" / f"obj{o}__{a}.png" for o in (2, 8, 31, 55, 90) for a in (0, 45, 180)]
    return [ex.extract_path(p) for p in paths]


@pytest.fixture(scope="module")
def codebook(features):
    return learn_codebook(features, 16, n_sample=5000, seed=0, niter=10, metadata={"trained_on": "test"})


def _encoders(codebook):
    return [
        BowEncoder(codebook),
        BowEncoder(codebook, n_nearest=3, sigma=0.2, tf_power=0.5, idf=False),
        VladEncoder(codebook),
        VladEncoder(codebook, intra_norm=False, power=1.0, residual_norm=True),
        VladEncoder(codebook, n_nearest=3, sigma=0.2, residual_norm=True),
        FisherEncoder(k=4, pca_dim=16, n_sample=5000, seed=0, gmm_max_iter=50),
    ]


@pytest.mark.parametrize("which", range(6))
def test_encoder_shapes_norms_empty_and_roundtrip(tmp_path, features, codebook, which):
    enc = _encoders(codebook)[which].fit(features)
    items = features + [EMPTY]
    x = enc.encode_many(items)
    assert x.shape == (len(items), enc.dim) and x.dtype == np.float32
    assert np.isfinite(x).all()
    norms = np.linalg.norm(x, axis=1)
    np.testing.assert_allclose(norms[:-1], 1.0, atol=1e-5)
    assert norms[-1] == 0.0  # an empty image encodes to the zero vector
    np.testing.assert_allclose(enc.encode(features[3]), x[3], atol=1e-6)
    # bare descriptor arrays are accepted too
    np.testing.assert_allclose(enc.encode(features[3].descriptors), x[3], atol=1e-6)
    # the same image is nearest to itself and views of one object are closer than other objects
    sims = x[:-1] @ x[:-1].T
    assert (np.argmax(sims, axis=1) == np.arange(len(features))).all()
    # small batches and threads give the same vectors
    enc.batch_descriptors = 300
    np.testing.assert_allclose(enc.encode_many(items, n_jobs=2), x, atol=1e-5)
    path = enc.save(tmp_path / "enc")
    again = load_encoder(path)
    assert type(again) is type(enc) and again.config == enc.config
    np.testing.assert_allclose(again.encode_many(items), x, atol=1e-5)
    with pytest.raises(ValueError, match="64-d descriptors"):
        enc.encode(np.zeros((3, 64), np.float32))


def test_fitting_is_deterministic_with_a_seed(features):
    a = VladEncoder(k=8, seed=3, n_sample=3000, niter=5).fit(features).encode_many(features)
    b = VladEncoder(k=8, seed=3, n_sample=3000, niter=5).fit(features).encode_many(features)
    np.testing.assert_allclose(a, b, atol=1e-6)
    f1 = FisherEncoder(k=4, pca_dim=8, n_sample=3000, seed=1).fit(features).encode_many(features)
    f2 = FisherEncoder(k=4, pca_dim=8, n_sample=3000, seed=1).fit(features).encode_many(features)
    np.testing.assert_allclose(f1, f2, atol=1e-5)
    bow = BowEncoder(k=10, seed=2, n_sample=3000, niter=5)
    assert not bow.is_fitted
    with pytest.raises(RuntimeError, match="not fitted"):
        bow.encode_many(features)
    x1 = bow.fit(features).encode_many(features)
    x2 = BowEncoder(k=10, seed=2, n_sample=3000, niter=5).fit(features).encode_many(features)
    np.testing.assert_array_equal(x1, x2)


def test_vlad_matches_its_definition(features, codebook):
    enc = VladEncoder(codebook, intra_norm=True, power=0.5)
    got = enc.encode(features[0])
    x = features[0].descriptors.astype(np.float64)
    c = codebook.centroids.astype(np.float64)
    nearest = ((x[:, None] - c[None]) ** 2).sum(-1).argmin(1)
    v = np.zeros_like(c)
    for word in range(len(c)):  # reference: one word at a time
        members = x[nearest == word]
        if len(members):
            r = (members - c[word]).sum(0)
            v[word] = r / np.linalg.norm(r)
    v = np.sign(v) * np.sqrt(np.abs(v))
    v = v.ravel() / np.linalg.norm(v)
    np.testing.assert_allclose(got, v, atol=1e-5)


def test_multiple_assignment_vlad_matches_its_definition(features, codebook):
    sigma = 0.2
    got = VladEncoder(codebook, n_nearest=2, sigma=sigma, intra_norm=False, power=1.0).encode(features[4])
    x = features[4].descriptors.astype(np.float64)
    c = codebook.centroids.astype(np.float64)
    d2 = ((x[:, None] - c[None]) ** 2).sum(-1)
    v = np.zeros_like(c)
    for i in range(len(x)):  # reference: one descriptor at a time
        near = np.argsort(d2[i])[:2]
        a = np.exp(-d2[i, near] / (2 * sigma ** 2))
        a /= a.sum()
        for word, weight in zip(near, a):
            v[word] += weight * (x[i] - c[word])
    v = v.ravel() / np.linalg.norm(v)
    np.testing.assert_allclose(got, v, atol=1e-5)
    with pytest.raises(ValueError, match="sigma"):
        VladEncoder(codebook, n_nearest=2)


def test_fisher_matches_its_definition(features):
    enc = FisherEncoder(k=3, pca_dim=8, n_sample=4000, seed=0, power=1.0).fit(features)
    got = enc.encode(features[1])
    y = (features[1].descriptors - enc.pca_mean) @ enc.pca_components.T
    y = y.astype(np.float64)
    gamma = enc.gmm.predict_proba(y.astype(np.float32)).astype(np.float64)
    w, mu, var = (np.asarray(a, np.float64) for a in (enc.gmm.weights_, enc.gmm.means_, enc.gmm.covariances_))
    t = len(y)
    g_mu = np.stack([(gamma[:, i, None] * (y - mu[i]) / np.sqrt(var[i])).sum(0) / (t * np.sqrt(w[i]))
                     for i in range(3)])
    g_sig = np.stack([(gamma[:, i, None] * ((y - mu[i]) ** 2 / var[i] - 1)).sum(0) / (t * np.sqrt(2 * w[i]))
                      for i in range(3)])
    fv = np.concatenate([g_mu.ravel(), g_sig.ravel()])
    np.testing.assert_allclose(got, fv / np.linalg.norm(fv), atol=2e-4)
    assert enc.dim == 2 * 3 * 8


def test_bow_tfidf_and_inverted_file_equal_dense_cosine(tmp_path, features, codebook):
    enc = BowEncoder(codebook).fit(features)
    n_docs = len(features)
    tf = enc.term_frequencies(features)
    assert tf.shape == (n_docs, 16)
    np.testing.assert_allclose(np.asarray(tf.sum(axis=1)).ravel(), [len(f) for f in features])
    df = (tf.toarray() > 0).sum(0)
    expected_idf = np.where(df > 0, np.log(n_docs / np.maximum(df, 1)), 0.0)
    np.testing.assert_allclose(enc.idf, expected_idf, atol=1e-6)
    dense = enc.encode_many(features + [EMPTY])
    sparse = enc.encode_sparse(features + [EMPTY])
    assert sp.issparse(sparse) and sparse.nnz < dense.size
    np.testing.assert_allclose(sparse.toarray(), dense, atol=1e-6)
    # one quantisation shared: idf and weighting from precomputed term frequencies give the same vectors
    shared = BowEncoder(codebook).fit_idf_from_tf(tf)
    np.testing.assert_allclose(shared.idf, enc.idf)
    np.testing.assert_allclose(shared.weight(enc.term_frequencies(features + [EMPTY])).toarray(), dense, atol=1e-6)
    with pytest.raises(ValueError, match="words"):
        shared.weight(tf[:, :5])
    ids = [f"img{i}" for i in range(len(dense))]
    index = BowInvertedIndex(sparse, ids=ids)
    np.testing.assert_allclose(index.scores(sparse[:5]), dense[:5] @ dense.T, atol=1e-5)
    ranking = index.search(sparse[:5], k=4, query_ids=["q0", "q1", "q2", "q3", "q4"])
    assert ranking.ids.shape == (5, 4) and list(ranking.ids[:, 0]) == ids[:5]
    expected_scores = -np.sort(-(dense[:5] @ dense.T), axis=1)[:, :4]
    np.testing.assert_allclose(ranking.scores, expected_scores, atol=1e-5)
    path = index.save(tmp_path / "inv")
    again = BowInvertedIndex.load(path)
    np.testing.assert_array_equal(again.search(sparse[:5], k=4).ids, ranking.ids)


def test_inverted_file_with_a_large_vocabulary_matches_dense(oxford_dir):
    rng = np.random.default_rng(0)
    # 20k-word vocabulary from real descriptors; a few Oxford images
    ex = SiftExtractor("rootsift-1k", max_keypoints=300)
    feats = [ex.extract_path(p) for p in sorted((oxford_dir / "images").glob("*.jpg"))[:6]]
    pool = np.concatenate([f.descriptors for f in feats])
    words = pool[rng.choice(len(pool), 1500, replace=False)] + rng.normal(0, 0.01, (1500, 128)).astype(np.float32)
    words = np.concatenate([words, rng.random((18500, 128), dtype=np.float32)])
    enc = BowEncoder(Codebook(words), tf_power=0.5).fit(feats)
    sparse = enc.encode_sparse(feats)
    dense = enc.encode_many(feats)
    index = BowInvertedIndex(sparse)
    np.testing.assert_allclose(index.scores(sparse), dense @ dense.T, atol=1e-5)
    from retrieval.indexing.index import Index
    exact = Index(dense).search(dense, k=5)
    inv = index.search(sparse, k=5)
    np.testing.assert_array_equal(inv.indices, exact.indices)


def test_whitening_decorrelates_and_round_trips(tmp_path, features):
    x = np.concatenate([f.descriptors for f in features])[:, :32]
    for data in (x, x[:20]):  # covariance path (N > D) and Gram path (N <= D)
        w = PCAWhitening(dim=10, l2_normalize=False).fit(data, trained_on="coil")
        y = w.transform(data)
        assert y.shape == (len(data), 10)
        np.testing.assert_allclose(np.cov(y, rowvar=False), np.eye(10), atol=2e-3)
    full = PCAWhitening(dim=10, l2_normalize=False).fit(x[:30])
    gram_path = PCAWhitening(dim=10, l2_normalize=False).fit(np.vstack([x[:30]]))
    np.testing.assert_allclose(np.abs(full.components @ gram_path.components.T), np.eye(10), atol=1e-3)
    partial = PCAWhitening(dim=5, eigen_power=0.25, shrinkage=0.1).fit(x)
    z = partial.transform(x)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    partial.save(tmp_path / "w.npz")
    again = PCAWhitening.load(tmp_path / "w.npz")
    np.testing.assert_allclose(again.transform(x), z, atol=1e-6)
    assert again.config["trained_on"] is None and again.config["dim"] == 5
    with pytest.raises(ValueError, match="do not fit"):
        partial.transform(x[:, :8])
    with pytest.raises(ValueError, match="identical"):
        PCAWhitening().fit(np.ones((5, 4)))


def test_vlad_whitening_learned_on_other_images(tmp_path, features, codebook, oxford_dir):
    ex = SiftExtractor("rootsift-1k", max_keypoints=300)
    other = [ex.extract_path(p) for p in sorted((oxford_dir / "images").glob("*.jpg"))[:12]]
    enc = VladEncoder(codebook).fit_whitening(other, dim=8, trained_on="oxford sample")
    assert enc.dim == 8 and enc.config["whitening"]["trained_on"] == "oxford sample"
    x = enc.encode_many(features + [EMPTY])
    np.testing.assert_allclose(np.linalg.norm(x[:-1], axis=1), 1.0, atol=1e-5)
    assert not x[-1].any()
    again = load_encoder(enc.save(tmp_path / "vw"))
    np.testing.assert_allclose(again.encode_many(features), x[:-1], atol=1e-5)


def test_damaged_encoder_file_named(tmp_path):
    bad = tmp_path / "enc.npz"
    bad.write_bytes(b"garbage")
    with pytest.raises(FeatureFileError, match="enc.npz"):
        load_encoder(bad)
