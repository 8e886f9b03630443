"""The bfloat16 matcher with an exact check against the float32 matcher: the same matches on real image
pairs and on synthetic descriptors built to sit right at the ratio threshold, on near-tied nearest
neighbours and near-tied mutual owners (closer than bfloat16 can tell apart); the scorers' scores."""
import gc

import numpy as np
import pytest

from retrieval.features.sift import SiftExtractor
from retrieval.rerank import bf16_products
from retrieval.rerank.matching import match_shortlist
from retrieval.rerank.bf16_products import prepared
from retrieval.rerank.matching_bf16 import match_shortlist_bf16
from retrieval.rerank.ratio import RatioTestScorer
from retrieval.rerank.spatial import SpatialConfig, SpatialVerifier


@pytest.fixture(scope="module")
def rootsift(pairs_dir):
    ex = SiftExtractor("rootsift-1k")
    names = ["opencv/box.png", "opencv/box_in_scene.png", "kornia/matching_kn_church-2.jpg", "opencv/leuvenA.jpg",
             "opencv/graf1.png", "opencv/graf3.png"]
    return [ex(pairs_dir / n) for n in names]


def _assert_same(old, new):
    assert len(old) == len(new)
    for a, b in zip(old, new):
        np.testing.assert_array_equal(a.query_idx, b.query_idx)
        np.testing.assert_array_equal(a.db_idx, b.db_idx)
        assert a.n_tentative == b.n_tentative
        # the float32 path's own rounding: |a|^2 - G cancels to ~1e-6 absolute
        np.testing.assert_allclose(a.distance, b.distance, rtol=1e-4, atol=2e-5)
        np.testing.assert_allclose(a.ratio, b.ratio, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("ratio,mutual", [(0.8, False), (0.9, True), (None, True), (None, False), (0.7, True)])
def test_real_pairs_same_matches(rootsift, ratio, mutual):
    for q in (rootsift[0], rootsift[4]):
        db = [f.descriptors for f in rootsift if f is not q]
        old = match_shortlist(q.descriptors, db, ratio=ratio, mutual=mutual)
        new = match_shortlist_bf16(q.descriptors, db, ratio=ratio, mutual=mutual, row_block=128)
        _assert_same(old, new)
        assert new.n_matches.sum() > 0


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _at_distance(a, d, rng):
    """A unit vector at Euclidean distance ``d`` from unit vector ``a`` (in a random direction)."""
    u = rng.standard_normal(a.shape)
    u -= (u @ a) * a
    u /= np.linalg.norm(u)
    theta = 2 * np.arcsin(d / 2)
    return np.cos(theta) * a + np.sin(theta) * u


def _exact(q, db):
    """float64 nearest index, d1, d2 per query row."""
    d = np.sqrt(np.maximum(((q.astype(np.float64)[:, None, :] - db.astype(np.float64)[None]) ** 2).sum(-1), 0))
    order = np.argsort(d, axis=1, kind="stable")
    rows = np.arange(len(q))
    return order[:, 0], d[rows, order[:, 0]], d[rows, order[:, 1]]


def test_ratio_threshold_near_ties(rng):
    """Query rows whose d1 / d2 lies within 1e-3 .. 1e-5 of the threshold on both sides: bfloat16
    estimates (error ~1e-2) cannot decide them, the exact check must, exactly as float32 does."""
    ratio = 0.8
    n = 400
    q = _unit(rng.standard_normal((n, 128)))
    offsets = np.concatenate([-np.logspace(-3, -5, n // 2), np.logspace(-5, -3, n - n // 2)])
    d2 = rng.uniform(0.6, 1.2, n)
    near = np.stack([_at_distance(q[i], ratio * (1 + offsets[i]) * d2[i], rng) for i in range(n)])
    second = np.stack([_at_distance(q[i], d2[i], rng) for i in range(n)])
    far = _unit(rng.standard_normal((600, 128)))
    db = np.concatenate([far[:300], near, second, far[300:]]).astype(np.float32)
    db = _unit(db)
    nn, e1, e2 = _exact(q, db)
    truth = e1 < ratio * e2
    gap = np.abs(e1 / e2 - ratio)
    assert truth.sum() > 50 and (~truth).sum() > 50 and (gap < 1e-4).sum() > 50
    old = match_shortlist(q, [db], ratio=ratio)[0]
    new = match_shortlist_bf16(q, [db], ratio=ratio)[0]
    _assert_same([old], [new])
    np.testing.assert_array_equal(new.query_idx, np.flatnonzero(truth))
    np.testing.assert_array_equal(new.db_idx, nn[truth])


def test_near_tied_neighbours_and_mutual_owners(rng):
    """Two database descriptors 1e-4 apart in distance from a query row (which one is nearest?), and
    two query rows 1e-4 apart from one database descriptor (which one owns it, mutually?)."""
    n = 200
    q = _unit(rng.standard_normal((n, 128)))
    d = rng.uniform(0.3, 0.6, n)
    first = np.stack([_at_distance(q[i], d[i], rng) for i in range(n)])
    runner = np.stack([_at_distance(q[i], d[i] * (1 + rng.choice([-1, 1]) * 1e-4), rng) for i in range(n)])
    db = _unit(np.concatenate([first, runner, rng.standard_normal((400, 128))]))
    # query rows near-tied for the same database descriptor: a second query row close to q[i]'s target
    twins = np.stack([_at_distance(db[i], np.linalg.norm(q[i] - db[i]) * (1 + 1e-4), rng) for i in range(0, n, 2)])
    q2 = _unit(np.concatenate([q, twins]))
    nn, _, _ = _exact(q2, db)
    for ratio in (None, 1.0):
        old = match_shortlist(q2, [db], ratio=ratio, mutual=True)[0]
        new = match_shortlist_bf16(q2, [db], ratio=ratio, mutual=True)[0]
        _assert_same([old], [new])
        np.testing.assert_array_equal(new.db_idx, nn[new.query_idx])
    every = match_shortlist_bf16(q2, [db], ratio=None)[0]
    np.testing.assert_array_equal(every.db_idx, nn)


def test_top_two_in_one_column_class(rng):
    """The one reduction pass bounds the second-largest estimate by the maxima of interleaved column
    classes (columns ``o, o + 64, ...``): a nearest neighbour and its runner-up in the same class
    (64 columns apart) leave the bound below the true runner-up; the matches must not change."""
    from retrieval.rerank.matching_bf16 import _STRIDE

    n = 96
    q = _unit(rng.standard_normal((n, 128)))
    d1 = rng.uniform(0.3, 0.6, n)
    ratio = 0.9
    db = _unit(rng.standard_normal((n * _STRIDE // 32 + 3 * _STRIDE, 128)))
    # row i's nearest neighbour at column cols[i] (every other class of a block of 2 * _STRIDE
    # columns), its runner-up _STRIDE columns later, at d1 / ratio give or take 0.1%
    cols = (np.arange(n) % (_STRIDE // 2)) * 2 + (np.arange(n) // (_STRIDE // 2)) * 2 * _STRIDE
    for i, c in enumerate(cols):
        db[c] = _at_distance(q[i], d1[i], rng)
        db[c + _STRIDE] = _at_distance(q[i], d1[i] / ratio * (1 + rng.choice([-1, 1]) * 1e-3), rng)
    db = _unit(db)
    nn, e1, e2 = _exact(q, db)
    assert np.array_equal(nn, cols)  # the planted pairs are each row's top two
    for mutual in (False, True):
        old = match_shortlist(q, [db], ratio=ratio, mutual=mutual)[0]
        new = match_shortlist_bf16(q, [db], ratio=ratio, mutual=mutual)[0]
        _assert_same([old], [new])
    truth = e1 < ratio * e2
    assert 10 < truth.sum() < n - 10
    np.testing.assert_array_equal(match_shortlist_bf16(q, [db], ratio=ratio)[0].query_idx, np.flatnonzero(truth))


def test_edge_cases_and_dtypes(rootsift, pairs_dir):
    q = rootsift[0].descriptors
    empty = np.zeros((0, 128), np.float32)
    single = rootsift[1].descriptors[:1]
    for ratio in (0.8, None):
        old = match_shortlist(q, [empty, single, rootsift[1].descriptors], ratio=ratio)
        new = match_shortlist_bf16(q, [empty, single, rootsift[1].descriptors], ratio=ratio)
        _assert_same(old, new)
    assert len(match_shortlist_bf16(empty, [rootsift[1].descriptors])[0]) == 0
    # a ratio so strict that every row of a block certainly fails: no candidate at all
    strict = match_shortlist_bf16(q, [f.descriptors for f in rootsift[2:]], ratio=0.05, row_block=64)
    assert strict.n_matches.sum() == 0 and strict.n_tentative.tolist() == [len(q)] * 4
    half = [f.descriptors.astype(np.float16) for f in rootsift[1:4]]
    _assert_same(match_shortlist(q.astype(np.float16), half, ratio=0.8, mutual=True),
                 match_shortlist_bf16(q.astype(np.float16), half, ratio=0.8, mutual=True))
    # unnormalised uint8 SIFT: norms spread too widely for the pre-selection, the float32 path answers
    sift = SiftExtractor("sift-1k")
    a, b = sift(pairs_dir / "opencv/box.png").descriptors, sift(pairs_dir / "opencv/box_in_scene.png").descriptors
    assert a.dtype == np.uint8
    _assert_same(match_shortlist(a, [b], ratio=0.8), match_shortlist_bf16(a, [b], ratio=0.8))


def test_prepared_descriptors_are_cached_while_the_array_lives(rootsift):
    arr = rootsift[2].descriptors.copy()
    first = prepared(arr)
    assert prepared(arr) is first
    size = len(bf16_products._CACHE)
    del arr
    gc.collect()
    assert len(bf16_products._CACHE) == size - 1
    other = rootsift[2].descriptors.copy()
    assert prepared(other) is not first  # an equal but distinct array is prepared afresh


def test_scorers_give_equal_scores(rootsift):
    q, shortlist = rootsift[0], rootsift[1:] * 3
    old = SpatialVerifier(SpatialConfig(precision="float32"))
    new = SpatialVerifier(SpatialConfig(precision="bfloat16"))
    inliers = new.score(q, shortlist)
    np.testing.assert_array_equal(old.score(q, shortlist), inliers)
    assert inliers[0] > 20 and inliers[0] > 2 * max(inliers[1:4].max(), 1)  # the box in its scene
    ratio_old = RatioTestScorer(0.8, precision="float32").score(q, shortlist)
    ratio_new = RatioTestScorer(0.8, precision="bfloat16").score(q, shortlist)
    np.testing.assert_array_equal(ratio_old, ratio_new)
    assert ratio_new[0] > 2 * ratio_new[1:4].max()
    with pytest.raises(ValueError, match="precision"):
        RatioTestScorer(0.8, precision="half")


def test_auto_takes_the_bfloat16_path_only_where_it_pays(rootsift, monkeypatch):
    """'auto': bfloat16 products only with a ratio test on descriptors of >= 128 dimensions (without a
    ratio test, or on XFeat's 64-d descriptors, the float32 GEMM was 1.3-4x faster); named precisions
    are obeyed whatever the matching."""
    from retrieval.rerank import matching_bf16, spatial

    monkeypatch.setattr(matching_bf16, "bf16_available", lambda: True)
    use = matching_bf16.use_bf16_matching
    assert use("auto", 0.9, 128) and not use("auto", None, 128) and not use("auto", 0.9, 64)
    assert use("bfloat16", None, 64) and not use("float32", 0.9, 128)
    monkeypatch.setattr(matching_bf16, "bf16_available", lambda: False)
    assert not use("auto", 0.9, 128)
    with pytest.raises(ValueError, match="precision"):
        use("half")
    # the verifier asks with its own ratio and the query's dimension
    monkeypatch.setattr(matching_bf16, "bf16_available", lambda: True)
    calls = []
    monkeypatch.setattr(spatial, "match_shortlist_bf16",
                        lambda *a, **k: calls.append("bf16") or match_shortlist_bf16(*a, **k))
    q, shortlist = rootsift[0], rootsift[1:3]
    SpatialVerifier(SpatialConfig(ratio=None)).score(q, shortlist)
    assert calls == []
    SpatialVerifier(SpatialConfig(ratio=0.9)).score(q, shortlist)
    assert calls == ["bf16"]


def test_shortlist_scoring_reads_each_database_image_once(rootsift, tmp_path):
    from retrieval.features.store import LocalFeatureStore
    from retrieval.rerank import Shortlist

    ids = [f"img{i}" for i in range(len(rootsift))]
    with LocalFeatureStore(tmp_path / "local.h5", "a", config={"name": "rootsift-1k"}) as store:
        for i, f in zip(ids, rootsift):
            store.put(i, f)
    db_ids = [[ids[1], ids[2], ids[3]], [ids[2], ids[3], ids[1]], [ids[3], ids[1], ids[2]]]
    shortlist = Shortlist([ids[0], ids[4], ids[5]], db_ids, np.ones((3, 3)))
    reads = []
    with LocalFeatureStore(tmp_path / "local.h5", "r") as store:
        class Counting:
            path, config = store.path, store.config

            def put(self, *a):
                raise AssertionError("read only")

            def get(self, image_id):
                reads.append(image_id)
                return store.get(image_id)

            def __getitem__(self, image_id):
                return self.get(image_id)

        scores = shortlist.score_with(RatioTestScorer(0.8), Counting(), Counting(), progress=False)
    queries = [r for r in reads if r in (ids[0], ids[4], ids[5])]
    assert sorted(r for r in reads if r not in queries) == sorted(ids[1:4])  # each database image once
    plain = RatioTestScorer(0.8, precision="float32")
    np.testing.assert_array_equal(scores[0], plain.score(rootsift[0], [rootsift[1], rootsift[2], rootsift[3]]))


def test_best_first_order_is_the_lexsort_order(rng):
    """The one-key sort of the exact check orders as ``np.lexsort((tie, -score, segment))``: ties in
    score (+0.0 and -0.0 among them) by the lower tie index, negative scores below positive ones."""
    from retrieval.rerank.matching_bf16 import _best_first

    n = 5000
    segment = rng.integers(0, 300, n)
    tie = rng.permutation(n)  # (segment, tie) unique, as (row, column) pairs are
    score = rng.choice(np.float32([0.5, -0.25, -0.0, 0.0, 1e-30, -1e-30, 3.0]), n)
    score = np.where(rng.random(n) < 0.5, score, rng.standard_normal(n)).astype(np.float32)
    np.testing.assert_array_equal(_best_first(segment, tie, score), np.lexsort((tie, -score, segment)))


@pytest.mark.parametrize("signed", [False, True])
def test_mutual_owners_in_one_row_class_and_padding_rows(rng, signed):
    """The mutual test's one reduction pass takes the maxima of interleaved query-row classes (rows
    ``o, o + 64, ...``) of each matched column: near-tied owners of a column 64 rows apart share a
    class; and the query's padding rows (its row count is no multiple of 64) must never own a
    column, not even one whose every product is 0 (the cut then lies below the padding's zero
    products). The owners must be the float32 path's."""
    from retrieval.rerank.matching_bf16 import _STRIDE

    def draw(shape):
        x = rng.standard_normal(shape)
        return x if signed else np.abs(x)

    n = 3 * _STRIDE + 5
    q = np.zeros((n, 128))
    q[:-1, :64] = draw((n - 1, 64))
    # rows i and i + _STRIDE near-tied (1e-4 relative) for whichever column is nearest to both
    for i in range(0, 2 * _STRIDE, 3):
        q[i + _STRIDE, :64] = q[i, :64] * (1 + 1e-4 * rng.standard_normal(64))
    q[-1, 64:96] = draw(32)  # the last row: orthogonal to every database row
    db = np.zeros((301, 128))
    db[:300, :64] = draw((300, 64))
    db[300, 96:] = draw(32)  # orthogonal to every query row: its products are all 0
    q, db = _unit(q), _unit(db)
    # all products of the last row and of the last column are 0: the shortest column is the last
    # row's nearest, and the shortest row owns the last column
    db[300] *= np.float32(0.999)
    q[-1] *= np.float32(0.999)
    for ratio in (None, 1.0, 0.9):
        old = match_shortlist(q, [db], ratio=ratio, mutual=True)[0]
        new = match_shortlist_bf16(q, [db], ratio=ratio, mutual=True)[0]
        _assert_same([old], [new])
        assert len(new) > (10 if ratio is None else 0)
    every = match_shortlist_bf16(q, [db], ratio=None, mutual=True)[0]
    assert every.db_idx[every.query_idx == n - 1].tolist() == [300]  # the zero column, owned by the last row
