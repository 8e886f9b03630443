"""Parallel, resumable extraction into a LocalFeatureStore, on real COIL-100 / Oxford images."""
from pathlib import Path

import numpy as np
import pytest

from retrieval.features.extract import ExtractionError, extract_local_features
from retrieval.features.sift import SiftExtractor
from retrieval.features.store import FeatureFileError, LocalFeatureStore


@pytest.fixture(scope="module")
def coil_files(coil100_dir):
    paths = [coil100_dir / "images" / f"obj{o}__{a}.png" for o in (3, 7) for a in (0, 10, 20)]
    return [p.stem for p in paths], paths


class CountingExtractor(SiftExtractor):
    """Counts how many images it was asked to extract (threads share the instance)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def extract_path(self, path, box=None):
        self.calls.append(Path(path).name)
        return super().extract_path(path, box=box)


def test_extract_then_resume_recomputes_nothing(tmp_path, coil_files):
    ids, paths = coil_files
    store = tmp_path / "feats.h5"
    ex = CountingExtractor("rootsift-small")
    first = extract_local_features(ids, paths, ex, store, n_jobs=2, batch_size=2, progress=False)
    assert first.computed == len(ids) and first.skipped == 0 and first.failed == []
    assert sorted(ex.calls) == sorted(p.name for p in paths)
    with LocalFeatureStore(store) as s:
        assert set(s.ids()) == set(ids)
        stored = s.get(ids[0])
        assert s.config == ex.config
    direct = ex.extract_path(paths[0])
    np.testing.assert_array_equal(stored.keypoints, direct.keypoints)
    # float16 storage of RootSIFT: within half-precision rounding of the computed values
    np.testing.assert_allclose(stored.descriptors, direct.descriptors, atol=1e-3)
    assert stored.image_size == direct.image_size

    again = CountingExtractor("rootsift-small")
    second = extract_local_features(ids, paths, again, store, n_jobs=2, progress=False)
    assert second.computed == 0 and second.skipped == len(ids) and again.calls == []
    # one new image: only it is computed
    extra = paths[0].with_name("obj9__0.png")
    third = extract_local_features(ids + ["obj9__0"], paths + [extra], again, store, progress=False)
    assert third.computed == 1 and again.calls == ["obj9__0.png"]


def test_store_made_with_another_config_is_refused(tmp_path, coil_files):
    ids, paths = coil_files
    store = tmp_path / "feats.h5"
    extract_local_features(ids[:2], paths[:2], SiftExtractor("rootsift-small"), store, progress=False)
    with pytest.raises(FeatureFileError, match="another configuration"):
        extract_local_features(ids[:2], paths[:2], SiftExtractor("rootsift-small", max_keypoints=50),
                               store, progress=False)


def test_plain_sift_is_stored_losslessly_as_uint8(tmp_path, coil_files):
    ids, paths = coil_files
    store = tmp_path / "sift.h5"
    ex = SiftExtractor("sift-1k", max_side=256, upscale=True)
    extract_local_features(ids[:2], paths[:2], ex, store, n_jobs=1, backend="loky", progress=False)
    with LocalFeatureStore(store) as s:
        got = s.get(ids[1])
    assert got.descriptors.dtype == np.uint8
    np.testing.assert_array_equal(got.descriptors, ex.extract_path(paths[1]).descriptors)


def test_corrupt_image_named_and_earlier_work_kept(tmp_path, coil_files):
    ids, paths = coil_files
    bad = tmp_path / "truncated.png"
    bad.write_bytes(paths[0].read_bytes()[:200])
    all_ids, all_paths = ids[:3] + ["broken"], paths[:3] + [bad]
    store = tmp_path / "feats.h5"
    ex = SiftExtractor("rootsift-small")
    with pytest.raises(ExtractionError, match="truncated.png") as info:
        extract_local_features(all_ids, all_paths, ex, store, n_jobs=1, batch_size=100, progress=False)
    assert info.value.image_id == "broken"
    with LocalFeatureStore(store) as s:
        assert set(s.ids()) == set(ids[:3])  # finished before the failure: kept
    skipped = extract_local_features(all_ids + [ids[3]], all_paths + [paths[3]], ex, store, n_jobs=2,
                                     on_error="skip", progress=False)
    assert skipped.computed == 1 and skipped.skipped == 3
    assert [(f[0], Path(f[1]).name) for f in skipped.failed] == [("broken", "truncated.png")]
    with LocalFeatureStore(store) as s:
        assert "broken" not in s and ids[3] in s


def test_boxes_crop_queries(tmp_path, oxford_dir):
    path = sorted((oxford_dir / "images").glob("*.jpg"))[0]
    store = tmp_path / "q.h5"
    ex = SiftExtractor("rootsift-1k")
    extract_local_features(["q"], [path], ex, store, boxes=[(10, 20, 110, 220)], progress=False)
    with LocalFeatureStore(store) as s:
        assert s.get("q").image_size == (200, 100)
    with pytest.raises(ValueError, match="boxes"):
        extract_local_features(["q"], [path], ex, tmp_path / "x.h5", boxes=[], progress=False)


def test_ordered_results_in_waves_never_work_beside_the_caller():
    """In waves, every task of a wave has finished when its first result is handed over, and no task of
    the next wave is drawn while the caller holds a result (the caller may use every core)."""
    import threading

    from retrieval.features.extract import ordered_results

    lock, drawn, finished = threading.Lock(), [], []

    def tasks():
        for k in range(7):
            drawn.append(k)
            yield (k,)

    def work(k):
        with lock:
            finished.append(k)
        return k

    seen = []
    with ordered_results(work, tasks(), n_jobs=2, ahead=3, in_waves=True) as results:
        for k in results:
            end = min(7, 3 * (k // 3) + 3)
            assert drawn == list(range(end))  # this wave's tasks, none of the next
            with lock:
                assert set(range(3 * (k // 3), end)) <= set(finished)
            seen.append(k)
    assert seen == list(range(7))
