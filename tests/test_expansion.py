"""Query expansion (average, alpha-QE) and database-side augmentation on global vectors."""
import numpy as np
import pytest

from retrieval.rerank.expansion import alpha_query_expansion, average_query_expansion, database_side_augmentation
from retrieval.indexing.index import Index


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture
def vectors(rng):
    # clustered unit vectors: 5 clusters of 20 around random centres, as a retrieval database looks
    centres = _unit(rng.standard_normal((5, 32)))
    db = _unit(np.repeat(centres, 20, axis=0) + 0.3 * rng.standard_normal((100, 32))).astype(np.float32)
    q = _unit(centres + 0.3 * rng.standard_normal((5, 32))).astype(np.float32)
    return q, db


def test_average_qe_by_hand(vectors):
    q, db = vectors
    n = 4
    sims = q @ db.T
    top = np.argsort(-sims, axis=1)[:, :n]
    expected = _unit(q + db[top].sum(axis=1))
    np.testing.assert_allclose(average_query_expansion(q, db, n=n), expected, atol=1e-5)


def test_alpha_qe_with_alpha_zero_is_average_qe(vectors):
    q, db = vectors
    np.testing.assert_allclose(alpha_query_expansion(q, db, n=7, alpha=0.0), average_query_expansion(q, db, n=7),
                               atol=1e-6)


def test_alpha_qe_weights_by_hand(vectors):
    q, db = vectors
    sims = q @ db.T
    top = np.argsort(-sims, axis=1)[:, :5]
    w = np.take_along_axis(sims, top, axis=1) ** 3
    expected = _unit(q + np.einsum("qn,qnd->qd", w, db[top]))
    index = Index(db)  # a prebuilt index is used as is
    np.testing.assert_allclose(alpha_query_expansion(q, db, n=5, alpha=3.0, index=index), expected, atol=1e-5)
    with pytest.raises(ValueError, match="index holds"):
        alpha_query_expansion(q, db, index=Index(db[:50]))


def test_qe_moves_queries_towards_their_cluster(vectors):
    q, db = vectors
    labels = np.repeat(np.arange(5), 20)
    expanded = alpha_query_expansion(q, db, n=10, alpha=3.0)
    for i in range(5):
        own = labels == i
        assert (expanded[i] @ db[own].T).mean() > (q[i] @ db[own].T).mean()


def test_dba_preserves_unit_norms_and_includes_self(vectors):
    _, db = vectors
    for alpha in (0.0, 3.0):
        aug = database_side_augmentation(db, n=5, alpha=alpha)
        assert aug.shape == db.shape and aug.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(aug, axis=1), 1.0, atol=1e-5)
    # n = 1: each vector's only neighbour is itself
    np.testing.assert_allclose(database_side_augmentation(db, n=1), db, atol=1e-6)
    # by hand for one row, alpha = 0: mean of its 3 nearest (itself first)
    top = np.argsort(-(db @ db.T), axis=1)[:, :3]
    np.testing.assert_allclose(database_side_augmentation(db, n=3, alpha=0.0), _unit(db[top].sum(axis=1)), atol=1e-5)


def test_bad_inputs():
    db = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError, match="4-d"):
        alpha_query_expansion(np.ones((2, 3), np.float32), db)
    with pytest.raises(ValueError, match="NaN"):
        average_query_expansion(np.full((1, 4), np.nan, np.float32), db)
    with pytest.raises(ValueError, match="n must be"):
        database_side_augmentation(db, n=0)
    # n larger than the database is clamped
    assert database_side_augmentation(db, n=10).shape == (4, 4)
