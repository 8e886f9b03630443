"""Spatial verification on real image pairs with ground-truth homographies, and the other local
scorers (ratio test, VLAD similarity)."""
import cv2
import numpy as np
import pytest

from retrieval.features.encoders.vlad import VladEncoder
from retrieval.features.local import LocalFeatures
from retrieval.features.sift import SiftExtractor
from retrieval.rerank import RatioTestScorer, SpatialConfig, SpatialVerifier, VladSimilarityScorer
from retrieval.rerank.spatial import count_inliers, fit_model, reprojection_errors


@pytest.fixture(scope="module")
def feats(pairs_dir):
    ex = SiftExtractor("rootsift-2k")
    names = {"graf1": "opencv/graf1.png", "graf3": "opencv/graf3.png",
             "k1": "kornia/homography_img1.ppm", "k2": "kornia/homography_img2.ppm",
             "box": "opencv/box.png", "scene": "opencv/box_in_scene.png",
             "leuven": "opencv/leuvenA.jpg", "church": "kornia/matching_kn_church-2.jpg"}
    return {k: ex(pairs_dir / v) for k, v in names.items()}


@pytest.fixture(scope="module")
def truths(pairs_dir):
    fs = cv2.FileStorage(str(pairs_dir / "opencv/H1to3p.xml"), cv2.FILE_STORAGE_READ)
    graf = fs.getNode("H13").mat()
    fs.release()
    return {"graf": graf, "kornia": np.loadtxt(pairs_dir / "kornia/homography_H1to2p")}


def _grid_error(model, truth, image_size):
    h, w = image_size
    gx, gy = np.meshgrid(np.linspace(0, w - 1, 12), np.linspace(0, h - 1, 12))
    pts = np.c_[gx.ravel(), gy.ravel()]
    proj = np.c_[pts, np.ones(len(pts))] @ truth.T
    return np.median(reprojection_errors(model, pts, proj[:, :2] / proj[:, 2:]))


@pytest.mark.parametrize("method", ["magsac", "ransac"])
@pytest.mark.parametrize("pair", [("graf1", "graf3", "graf"), ("k1", "k2", "kornia")])
def test_homography_matches_ground_truth(feats, truths, method, pair):
    a, b, name = pair
    verifier = SpatialVerifier(model="homography", method=method, threshold=4.0)
    result = verifier.verify(feats[a], [feats[b]])[0]
    assert result.model is not None and result.model.shape == (3, 3)
    assert result.inliers >= 100
    assert _grid_error(result.model, truths[name], feats[a].image_size) < 3.0
    # the score is the inlier count of the returned model, recomputed independently
    src = feats[a].xy[result.matches.query_idx]
    dst = feats[b].xy[result.matches.db_idx]
    assert result.inliers == int(count_inliers(result.model, src, dst, 4.0).sum()) == int(result.inlier_mask.sum())
    assert set(verifier.last_timings) == {"matching", "ransac"}


def test_object_in_clutter_scores_high_unrelated_low(feats):
    for cfg in (SpatialConfig(), SpatialConfig(model="affine", method="magsac", ratio=0.8, mutual=False),
                SpatialConfig(model="similarity", method="ransac")):
        scores = SpatialVerifier(cfg).score(feats["box"], [feats["scene"], feats["leuven"], feats["church"]])
        assert scores.dtype == np.float64 and scores.shape == (3,)
        assert scores[0] >= 40, cfg
        assert scores[1] <= 10 and scores[2] <= 10, cfg


def test_box_model_places_the_box_in_the_scene(feats):
    # the box occupies roughly x 100-250, y 170-350 of box_in_scene.png (OpenCV's tutorial image)
    result = SpatialVerifier(model="homography").verify(feats["box"], [feats["scene"]])[0]
    h, w = feats["box"].image_size
    centre = np.array([[w / 2, h / 2, 1.0]]) @ result.model.T
    cx, cy = centre[0, :2] / centre[0, 2]
    assert 100 < cx < 260 and 150 < cy < 350


def test_empty_features_score_zero(feats):
    empty = LocalFeatures.empty(128, (100, 100))
    verifier = SpatialVerifier()
    np.testing.assert_array_equal(verifier.score(empty, [feats["scene"], feats["box"]]), [0.0, 0.0])
    res = verifier.verify(feats["box"], [empty, feats["scene"]])
    assert res[0].inliers == 0 and res[0].model is None and res[1].inliers > 0
    assert verifier.score(feats["box"], []).shape == (0,)
    assert fit_model(np.zeros((2, 2)), np.zeros((2, 2)), SpatialConfig()) is None
    # degenerate: all points identical
    same = np.ones((10, 2), np.float32)
    model = fit_model(same, same, SpatialConfig(method="ransac"))
    assert model is None or np.all(np.isfinite(model))


def test_config_errors():
    with pytest.raises(ValueError, match="similarity"):
        SpatialConfig(model="similarity", method="magsac")
    with pytest.raises(ValueError, match="unknown model"):
        SpatialConfig(model="fundamental")
    with pytest.raises(ValueError, match="threshold"):
        SpatialConfig(threshold=0)
    with pytest.raises(ValueError, match="unknown spatial configuration"):
        SpatialVerifier("nope")
    assert SpatialVerifier("affine-ransac-r0.8", threshold=5.0).config.threshold == 5.0


def test_ratio_scorer(feats):
    scorer = RatioTestScorer(ratio=0.8)
    s = scorer.score(feats["box"], [feats["scene"], feats["leuven"], LocalFeatures.empty(128, (5, 5))])
    assert np.all((s >= 0) & (s <= 1))
    assert s[0] > 3 * s[1] and s[2] == 0.0
    # exactly passing / tentative, with tentative = number of query descriptors
    from retrieval.rerank.matching import match_pair
    n_pass = len(match_pair(feats["box"].descriptors, feats["scene"].descriptors, 0.8))
    assert s[0] == pytest.approx(n_pass / len(feats["box"]))
    assert np.all(scorer.score(LocalFeatures.empty(128, (5, 5)), [feats["scene"]]) == 0)


def test_vlad_scorer(feats):
    train = [feats[k] for k in ("graf1", "k1", "leuven", "church")]
    enc = VladEncoder(k=8, seed=0, niter=5).fit(train)
    scorer = VladSimilarityScorer(enc)
    shortlist = [feats["box"], feats["scene"], feats["church"], LocalFeatures.empty(128, (5, 5))]
    s = scorer.score(feats["box"], shortlist)
    assert s[0] == pytest.approx(1.0, abs=1e-5)
    assert s[3] == 0.0
    assert np.all(np.abs(s) <= 1 + 1e-5)
    v = enc.encode_many([feats["box"], feats["scene"]])
    assert s[1] == pytest.approx(float(v[0] @ v[1]) / np.linalg.norm(v[0]) / np.linalg.norm(v[1]), abs=1e-5)
    with pytest.raises(ValueError, match="not fitted"):
        VladSimilarityScorer(VladEncoder(k=8))


def test_shortlist_scoring_resumes_and_reranks(feats, tmp_path):
    from retrieval.rerank import FusionConfig, Shortlist, rerank

    class Counting(SpatialVerifier):
        calls = 0

        def score(self, query, shortlist):
            Counting.calls += 1
            return super().score(query, shortlist)

    # two queries whose global order puts the true match last
    sl = Shortlist(["box", "graf1"], [["leuven", "church", "scene"], ["church", "leuven", "graf3"]],
                   [[0.9, 0.8, 0.7], [0.9, 0.8, 0.7]], config={"test": 1})
    path = tmp_path / "sl"
    scores = sl.score_with(Counting(), feats, feats, path=path)
    assert Counting.calls == 2 and scores[0, 2] >= 40 and scores[1, 2] >= 40
    again = Shortlist.load(path, expect_config={"test": 1})
    again.score_with(Counting(), feats, feats)  # everything cached: no matching at all
    assert Counting.calls == 2
    again.local["spatial"][1, 0] = np.nan  # as if interrupted during row 1: only row 1 is redone
    again.score_with(Counting(), feats, feats)
    assert Counting.calls == 3
    np.testing.assert_array_equal(again.local_scores("spatial"), scores)
    preds = rerank(again, FusionConfig("linear", v=0.5, norm="saturate", T=20), "spatial")
    assert preds["box"][0] == "scene" and preds["graf1"][0] == "graf3"
