"""Hessian-affine RootSIFT (kornia's modules): correct matches under a known homography, the affine
adaptation's and the orientation's effect, the store round trip, named configurations, the descriptor kind
that keeps it apart from DoG RootSIFT, box crops and images without features."""
from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest

from retrieval.core.config import ConfigError
from retrieval.core.imageio import ImageLoadError
from retrieval.features.extract import extract_local_features
from retrieval.features.local_extractors import (MixedKindsError, check_same_kind, descriptor_kind,
                                                 local_config_names, local_extractor)
from retrieval.features.store import LocalFeatureStore

pytest.importorskip("kornia")

from retrieval.features.hesaff import HESAFF_CONFIGS, HesAffExtractor  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _mutual_nn(a: np.ndarray, b: np.ndarray):
    sim = a.astype(np.float32) @ b.astype(np.float32).T
    ab, ba = sim.argmax(1), sim.argmax(0)
    i = np.nonzero(ba[ab] == np.arange(len(a)))[0]
    return i, ab[i]


def _correct_matches(fa, fb, H: np.ndarray, tol: float = 3.0) -> tuple:
    """(mutual nearest-neighbour matches, those that land within ``tol`` pixels of where ``H`` maps them)."""
    i, j = _mutual_nn(fa.descriptors, fb.descriptors)
    mapped = cv2.perspectiveTransform(fa.xy[i][None].astype(np.float64), H)[0]
    return len(i), int((np.linalg.norm(mapped - fb.xy[j], axis=1) < tol).sum())


@pytest.fixture(scope="module")
def homography_pair(pairs_dir):
    folder = pairs_dir / "kornia"
    if not (folder / "homography_H1to2p").is_file():
        pytest.skip(f"{folder} has no homography pair")
    return folder / "homography_img1.ppm", folder / "homography_img2.ppm", np.loadtxt(folder / "homography_H1to2p")


@pytest.fixture(scope="module")
def oxford_paths(oxford_dir):
    return sorted((oxford_dir / "images").glob("*.jpg"))[:3]


def test_known_homography_gives_many_correct_mutual_matches_and_affine_adaptation_adds_some(homography_pair):
    a, b, H = homography_pair
    counts = {}
    for affine in (True, False):
        ex = HesAffExtractor("hesaff-rootsift-upright-4k", affine=affine)
        fa, fb = ex.extract_path(a), ex.extract_path(b)
        assert len(fa) == len(fb) == 4000 and fa.descriptors.shape == (4000, 128)
        np.testing.assert_allclose(np.linalg.norm(fa.descriptors, axis=1), 1.0, atol=1e-4)  # RootSIFT
        assert (fa.descriptors >= 0).all() and (fa.keypoints[:, 3] == 0).all()  # upright
        counts[affine] = _correct_matches(fa, fb, H)
    matched, correct = counts[True]
    # a broken frame (centres, scale, shape) or descriptor gives a few dozen; measured: 1055 of 1674 correct
    assert correct >= 700 and correct >= 0.5 * matched, counts
    # the viewpoint change of this pair is what shape adaptation is for (measured 1055 against 742)
    assert correct >= 1.2 * counts[False][1], counts


def test_keypoint_frame_and_orientation(oxford_paths):
    """Centres lie in the image; sizes follow OpenCV's SIFT convention (twice the detection scale: Hessian and
    DoG blobs of one image have about the same sizes); a 90-degree rotation is matched by the
    rotation-invariant configuration, and not by the upright one (whose angles are all 0)."""
    image = cv2.cvtColor(cv2.imread(str(oxford_paths[0])), cv2.COLOR_BGR2RGB)
    rotated = np.ascontiguousarray(np.rot90(image))          # counter-clockwise: (x, y) -> (y, w - 1 - x)
    w = image.shape[1]
    H = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, w - 1.0], [0.0, 0.0, 1.0]])
    dog_size = np.median(local_extractor("rootsift-upright-c02-4k").extract(image).keypoints[:, 2])
    correct = {}
    for name in ("hesaff-rootsift-4k", "hesaff-rootsift-upright-4k"):
        ex = local_extractor(name, max_keypoints=1000)
        fa, fb = ex.extract(image), ex.extract(rotated)
        h_, w_ = fa.image_size
        assert (fa.xy >= 0).all() and (fa.xy[:, 0] <= w_ - 1).all() and (fa.xy[:, 1] <= h_ - 1).all()
        assert 0.7 < np.median(fa.keypoints[:, 2]) / dog_size < 1.5  # measured 3.09 against DoG's 2.67
        correct[name] = _correct_matches(fa, fb, H)[1]
        angles = fa.keypoints[:, 3]
        if "upright" in name:
            assert (angles == 0).all()
        else:
            assert ((angles >= 0) & (angles < 360)).all() and len(np.unique(np.round(angles))) > 100
    assert correct["hesaff-rootsift-4k"] >= 250 and correct["hesaff-rootsift-4k"] > 5 * correct["hesaff-rootsift-upright-4k"], correct


def test_named_configurations_resolve_through_the_one_entry_point():
    names = local_config_names()
    assert {"hesaff-rootsift-upright-4k", "hesaff-rootsift-upright-2k", "hesaff-rootsift-4k"} <= set(names)
    ex = local_extractor("hesaff-rootsift-upright-4k")
    assert isinstance(ex, HesAffExtractor) and ex.dim == 128 and ex.store_dtype == "float16"
    assert ex.config["magnification"] == pytest.approx(3 * np.sqrt(3)) and ex.config["patch_size"] == 41
    assert descriptor_kind(ex.config) == "hesaff-rootsift"
    # a recorded configuration (what a store holds) and its name with overrides rebuild the same extractor
    over = local_extractor("hesaff-rootsift-upright-4k+affine=false,max_keypoints=500")
    assert isinstance(over, HesAffExtractor) and over.config["affine"] is False
    assert over.config["name"] == "hesaff-rootsift-upright-4k+affine=false,max_keypoints=500"
    assert local_extractor(over.config).config == over.config
    assert HESAFF_CONFIGS.get("hesaff-rootsift-4k").upright is False
    with pytest.raises(ConfigError, match="unknown key"):
        local_extractor("hesaff-rootsift-upright-4k", contrast_threshold=0.02)
    with pytest.raises(ConfigError, match="patch_size"):
        local_extractor("hesaff-rootsift-upright-4k", patch_size=8)


def test_store_round_trip_resumes_and_refuses_dog_rootsift(tmp_path, oxford_paths):
    import torch

    ex = HesAffExtractor("hesaff-rootsift-upright-2k")
    blob = pickle.dumps(ex)
    assert len(blob) < 1000  # only the configuration travels to joblib / Ray workers
    ids = [p.stem for p in oxford_paths]
    store_path = tmp_path / "hesaff.h5"
    first = extract_local_features(ids[:2], oxford_paths[:2], pickle.loads(blob), store_path, n_jobs=1,
                                   progress=False)
    again = extract_local_features(ids, oxford_paths, ex, store_path, n_jobs=2, progress=False)
    assert (first.computed, again.skipped, again.computed) == (2, 2, 1)
    with LocalFeatureStore(store_path) as store:
        assert store.descriptor_kind == "hesaff-rootsift" and store.config == ex.config
        got, direct = store.get(ids[2]), ex.extract_path(oxford_paths[2])
        np.testing.assert_allclose(got.keypoints, direct.keypoints, atol=1e-3)
        np.testing.assert_allclose(got.descriptors, direct.descriptors, atol=2e-3)  # float16 storage
        assert got.image_size == direct.image_size
    dog_path = tmp_path / "rootsift.h5"
    extract_local_features(ids[:1], oxford_paths[:1], local_extractor("rootsift-upright-c02-4k"), dog_path,
                           progress=False)
    with LocalFeatureStore(store_path) as hes, LocalFeatureStore(dog_path) as dog:
        assert check_same_kind(hes, hes) == "hesaff-rootsift"
        with pytest.raises(MixedKindsError, match="hesaff-rootsift descriptors.*holds rootsift"):
            check_same_kind(hes, dog)
    with pytest.raises(ValueError, match="another configuration"):
        extract_local_features(ids[:1], oxford_paths[:1], HesAffExtractor("hesaff-rootsift-upright-4k"),
                               store_path, progress=False)
    # torch runs one thread per worker inside extract_local_features, and gets its count back after
    seen = []

    class Recording(HesAffExtractor):
        def extract_path(self, path, box=None):
            seen.append(torch.get_num_threads())
            return super().extract_path(path, box)

    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        extract_local_features(ids[:2], oxford_paths[:2], Recording("hesaff-rootsift-upright-2k", max_keypoints=100),
                               tmp_path / "threads.h5", n_jobs=2, progress=False)
        assert seen == [1, 1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)


def test_box_crops_first_and_bad_boxes_name_the_file(oxford_paths):
    ex = local_extractor("hesaff-rootsift-upright-2k", max_keypoints=500)
    path = oxford_paths[0]
    crop = ex.extract_path(path, box=(10, 20, 210, 180))
    assert crop.image_size == (160, 200) and 100 < len(crop) <= 500
    assert (crop.xy[:, 0] <= 199).all() and (crop.xy[:, 1] <= 159).all()
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    direct = ex.extract(image[20:180, 10:210])
    np.testing.assert_allclose(crop.keypoints, direct.keypoints, atol=1e-4)
    with pytest.raises(ValueError, match=f"{path.name}.*lies outside"):
        ex.extract_path(path, box=(5000, 5000, 6000, 6000))


def test_images_without_features_and_unreadable_files(tmp_path):
    ex = HesAffExtractor("hesaff-rootsift-upright-2k")
    for image in (np.full((1, 1), 90, np.uint8), np.full((3, 40, 3), 90, np.uint8),
                  np.full((16, 16), 100, np.uint8), np.full((200, 240), 100, np.uint8)):  # flat: rounding noise only
        feats = ex.extract(image)
        assert len(feats) == 0 and feats.descriptors.shape == (0, 128) and feats.image_size == image.shape[:2]
    with pytest.raises(ValueError, match="empty image"):
        ex.extract(np.zeros((0, 10), np.uint8))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        ex.extract_path(bad)


def test_sharded_extraction_in_worker_processes_equals_the_single_store(tmp_path, oxford_paths):
    """The extractor travels to joblib processes with only its configuration (its modules are built there,
    torch one thread a worker) and fills shards equal to a single-file store."""
    from retrieval.features.shards import ShardedStore
    from retrieval.features.sharded_extract import extract_local_sharded

    ex = HesAffExtractor("hesaff-rootsift-upright-2k", max_keypoints=300)
    ids, paths = [p.stem for p in oxford_paths[:2]], oxford_paths[:2]
    run = extract_local_sharded(ex, ids, paths, tmp_path / "h.shards", n_jobs=2, shard_size=1, progress=False)
    assert (run.computed, run.images) == (2, 2)
    extract_local_features(ids, paths, ex, tmp_path / "single.h5", n_jobs=1, progress=False)
    shards = ShardedStore(tmp_path / "h.shards")
    with LocalFeatureStore(tmp_path / "single.h5") as single:
        assert descriptor_kind(shards.config) == "hesaff-rootsift"
        for i in ids:
            a, b = shards.get(i), single.get(i)
            assert len(a) == 300 and a.image_size == b.image_size
            np.testing.assert_allclose(a.keypoints, b.keypoints, atol=1e-4)
            np.testing.assert_allclose(a.descriptors, b.descriptors, atol=1e-3)
