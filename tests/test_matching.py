"""Batched shortlist matching against OpenCV's brute-force matcher on real descriptors."""
import cv2
import numpy as np
import pytest

from retrieval.features.local import LocalFeatures
from retrieval.features.sift import SiftExtractor
from retrieval.rerank.matching import match_pair, match_shortlist

RATIO = 0.8


@pytest.fixture(scope="module")
def rootsift(pairs_dir):
    ex = SiftExtractor("rootsift-1k")
    names = ["opencv/box.png", "opencv/box_in_scene.png", "kornia/matching_kn_church-2.jpg",
             "opencv/leuvenA.jpg"]
    return [ex(pairs_dir / n) for n in names]


@pytest.fixture(scope="module")
def plain_sift(pairs_dir):
    ex = SiftExtractor("sift-1k")
    return [ex(pairs_dir / n) for n in ["opencv/box.png", "opencv/box_in_scene.png", "opencv/aero1.jpg"]]


def _reference(q, d):
    """cv2.BFMatcher knnMatch(k=2): nearest index, d1, d2 per query descriptor."""
    knn = cv2.BFMatcher(cv2.NORM_L2).knnMatch(q.astype(np.float32), d.astype(np.float32), k=2)
    nn = np.array([m[0].trainIdx for m in knn])
    d1 = np.array([m[0].distance for m in knn])
    d2 = np.array([m[1].distance for m in knn])
    return nn, d1, d2


def _assert_same_as_bf(q, shortlist, tol=1e-4):
    every = match_shortlist(q, shortlist, ratio=None, n_workers=2)
    tested = match_shortlist(q, shortlist, ratio=RATIO, n_workers=2)
    for j, d in enumerate(shortlist):
        nn, d1, d2 = _reference(q, d)
        pair = every[j]
        assert pair.n_tentative == len(q)
        np.testing.assert_array_equal(pair.query_idx, np.arange(len(q)))
        np.testing.assert_allclose(pair.distance, d1, rtol=1e-4, atol=tol)
        differ = pair.db_idx != nn
        # a different neighbour is only allowed for an exact tie (same distance within float error)
        if differ.any():
            other = np.linalg.norm(q[differ] - d[pair.db_idx[differ]], axis=1)
            np.testing.assert_allclose(other, d1[differ], atol=tol)
        assert differ.mean() < 0.01
        passed_ref = set(np.nonzero(d1 < RATIO * d2)[0].tolist())
        passed = set(tested[j].query_idx.tolist())
        for i in passed ^ passed_ref:  # disagreements only right at the threshold
            assert abs(d1[i] - RATIO * d2[i]) < 1e-3 * max(1.0, d2[i]), (j, i, d1[i], d2[i])
        assert len(passed ^ passed_ref) <= max(1, len(passed_ref) // 100)
        np.testing.assert_array_equal(tested[j].db_idx, pair.db_idx[tested[j].query_idx])
        np.testing.assert_allclose(tested[j].ratio, d1[tested[j].query_idx] / d2[tested[j].query_idx],
                                   rtol=1e-3, atol=1e-4)


def test_rootsift_matches_equal_bruteforce(rootsift):
    q = rootsift[0].descriptors
    _assert_same_as_bf(q, [f.descriptors for f in rootsift[1:]])


def test_plain_sift_uint8_matches_equal_bruteforce(plain_sift):
    q = plain_sift[0].descriptors
    assert q.dtype == np.uint8
    _assert_same_as_bf(q, [f.descriptors for f in plain_sift[1:]], tol=1e-2)


def test_mutual_equals_crosscheck(rootsift):
    q = rootsift[0].descriptors
    for d in (rootsift[1].descriptors, rootsift[2].descriptors):
        ref = {(m.queryIdx, m.trainIdx) for m in cv2.BFMatcher(cv2.NORM_L2, crossCheck=True).match(q, d)}
        got = match_pair(q, d, ratio=None, mutual=True)
        assert set(zip(got.query_idx.tolist(), got.db_idx.tolist())) == ref
        # mutual + ratio is the intersection of the two tests
        both = match_pair(q, d, ratio=RATIO, mutual=True)
        ratio_only = match_pair(q, d, ratio=RATIO)
        assert set(both.query_idx.tolist()) == set(ratio_only.query_idx.tolist()) & {a for a, _ in ref}


def test_box_matches_its_scene_more_than_unrelated(rootsift):
    res = match_shortlist(rootsift[0].descriptors, [f.descriptors for f in rootsift[1:]], ratio=RATIO)
    n = res.n_matches
    assert n[0] > 40 and n[0] > 4 * max(n[1], n[2])


def test_workers_and_float16_do_not_change_results(rootsift):
    q = rootsift[0].descriptors.astype(np.float16)
    db = [f.descriptors.astype(np.float16) for f in rootsift[1:]]
    one = match_shortlist(q, db, RATIO, n_workers=1, row_block=64)
    two = match_shortlist(q.astype(np.float32), [d.astype(np.float32) for d in db], RATIO, n_workers=2)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a.query_idx, b.query_idx)
        np.testing.assert_array_equal(a.db_idx, b.db_idx)


def test_empty_and_tiny_inputs(rootsift):
    q = rootsift[0].descriptors
    empty = np.zeros((0, 128), np.float32)
    single = rootsift[1].descriptors[:1]
    res = match_shortlist(q, [empty, single, rootsift[1].descriptors])
    assert len(res[0]) == 0 and res[0].n_tentative == 0
    # one database descriptor: the ratio test is undefined, nothing passes; without it, every query
    # descriptor matches that one descriptor
    assert len(res[1]) == 0 and res[1].n_tentative == len(q)
    all_nn = match_pair(q, single, ratio=None)
    assert len(all_nn) == len(q) and np.all(all_nn.db_idx == 0) and np.all(np.isinf(all_nn.ratio))
    none = match_shortlist(empty, [rootsift[1].descriptors, empty])
    assert [len(p) for p in none] == [0, 0] and none.n_tentative.tolist() == [0, 0]
    assert len(match_shortlist(q, [])) == 0


def test_bad_inputs_are_named(rootsift):
    q = rootsift[0].descriptors
    with pytest.raises(ValueError, match="shortlist image 1: 64-d"):
        match_shortlist(q, [rootsift[1].descriptors, np.zeros((5, 64), np.float32)])
    with pytest.raises(ValueError, match="ratio"):
        match_shortlist(q, [rootsift[1].descriptors], ratio=1.5)
    with pytest.raises(ValueError, match="2-D"):
        match_shortlist(q[0], [rootsift[1].descriptors])
    with pytest.raises(ValueError):
        LocalFeatures(np.zeros((3, 4)), np.zeros((2, 128), np.float32), (10, 10))
