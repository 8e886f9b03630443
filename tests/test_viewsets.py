"""The view-set protocol (retrieval.datasets.viewsets) on the real COIL-100 labels."""
import numpy as np
import pytest

from retrieval.datasets.viewsets import (COIL100_SEEN, COIL100_UNSEEN, ViewSet, make_benchmark,
                                         read_view_catalog, sample_views, split_view_sets)


@pytest.fixture(scope="module")
def catalog(coil100_dir):
    return read_view_catalog(coil100_dir)


def test_catalog_reads_coil100(catalog):
    assert len(catalog) == 7178  # 7200 - 22 missing views
    assert set(np.unique(catalog.object_ids)) == set(range(1, 101))
    # sorted by (object, azimuth)
    key = catalog.object_ids * 1000 + catalog.azimuths
    assert np.all(np.diff(key) > 0)
    i = int(np.flatnonzero((catalog.object_ids == 7) & (catalog.azimuths == 35))[0])
    assert catalog.paths[i].name == "obj7__35.png"


def test_sets_cover_every_view_once(catalog):
    sets = split_view_sets(catalog, COIL100_SEEN + COIL100_UNSEEN, n_sets=6)
    assert len(sets) == 600
    views = np.concatenate([s.views for s in sets])
    assert len(views) == len(catalog) and len(np.unique(views)) == len(catalog)
    for s in sets:
        assert np.all(catalog.object_ids[s.views] == s.object_id)
        az = catalog.azimuths[s.views]
        assert np.all((az >= 60 * s.index) & (az < 60 * (s.index + 1)))  # 12 consecutive azimuths
        assert 1 <= len(s) <= 12
    # object 22 misses azimuths 120, 190, 195, 275: its sets 2, 3, 4 are short
    sizes = {s.index: len(s) for s in sets if s.object_id == 22}
    assert sizes == {0: 12, 1: 12, 2: 11, 3: 10, 4: 11, 5: 12}


def test_seeded_sampling_is_deterministic(catalog):
    s = split_view_sets(catalog, [3])[2]
    a = sample_views(s, 3, seed=5)
    assert np.array_equal(a, sample_views(s, 3, seed=5))
    assert len(set(a.tolist())) == 3 and set(a.tolist()) <= set(s.views.tolist())
    draws = {tuple(sample_views(s, 3, seed=k)) for k in range(10)}
    assert len(draws) > 1  # the seed matters
    assert np.array_equal(sample_views(s, 12, seed=0), s.views)
    assert np.array_equal(sample_views(s, 50, seed=0), s.views)  # a short set gives all it has
    with pytest.raises(ValueError, match=">= 1"):
        sample_views(s, 0, seed=0)


def test_no_query_view_in_its_database(catalog):
    sets = split_view_sets(catalog, COIL100_UNSEEN)
    by_id = {s.set_id: s for s in sets}
    for k in (1, 3, 12):
        bench = make_benchmark(sets, k, seed=0, name="DU")
        assert len(bench.query_ids) == 300 and len(bench.db_ids) == 300
        db_view_sets = {sid: set(v.tolist()) for sid, v in zip(bench.db_ids, bench.db_views)}
        for qid, qviews, obj in zip(bench.query_ids, bench.query_views, bench.query_objects):
            own = bench.excluded[qid]
            assert len(own) == 1 and len(qviews) == min(k, len(by_id[next(iter(own))].views))
            visible = set().union(*(v for sid, v in db_view_sets.items() if sid not in own))
            assert not (set(qviews.tolist()) & visible)
            assert bench.solution[qid] == {s.set_id for s in sets if s.object_id == obj} - own
            assert len(bench.solution[qid]) == 5
    # the same seed gives the same queries; query and database draws use different streams
    again = make_benchmark(sets, 3, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(again.query_views, make_benchmark(sets, 3, 0).query_views))


def test_rank_drops_own_set_and_scores(catalog):
    sets = split_view_sets(catalog, COIL100_SEEN[:10])
    bench = make_benchmark(sets, 1, seed=0)
    # descriptors that identify the object exactly: a perfect ranking
    eye = np.eye(16, dtype=np.float32)
    q = eye[bench.query_objects]
    d = eye[bench.db_objects]
    preds = bench.rank(q, d, k=100)
    for qid, ranked in preds.items():
        assert not (bench.excluded[qid] & set(ranked))
        assert set(ranked[:5]) == bench.solution[qid]
        assert len(ranked) == len(bench.db_ids) - 1
    from retrieval.metrics import map_at_k

    assert map_at_k(preds, bench.solution, 100) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="dimension"):
        bench.rank(q[:, :8], d, k=10)
    with pytest.raises(ValueError, match="queries"):
        bench.rank(q[:3], d, k=10)


def test_protocol_errors(tmp_path, catalog):
    with pytest.raises(FileNotFoundError, match="labels"):
        read_view_catalog(tmp_path)
    (tmp_path / "labels.csv").write_text("filename,object_id,azimuth_deg\na.png,1,x\n")
    with pytest.raises(ValueError, match="labels.csv:2"):
        read_view_catalog(tmp_path, check_files=False)
    (tmp_path / "labels.csv").write_text("filename,object_id,azimuth_deg\na.png,1,0\nb.png,1,0\n")
    with pytest.raises(ValueError, match="two images at azimuth"):
        read_view_catalog(tmp_path, check_files=False)
    (tmp_path / "labels.csv").write_text("filename,object_id,azimuth_deg\na.png,1,0\n")
    with pytest.raises(FileNotFoundError, match="missing"):
        read_view_catalog(tmp_path)
    with pytest.raises(ValueError, match="no images"):
        split_view_sets(catalog, [101])
    with pytest.raises(ValueError, match="n_sets"):
        split_view_sets(catalog, [1], n_sets=1)
    lonely = [ViewSet("a", 1, 0, np.array([0, 1])), ViewSet("b", 2, 0, np.array([2]))]
    with pytest.raises(ValueError, match="single view set"):
        make_benchmark(lonely, 1)
    with pytest.raises(ValueError, match="no view sets"):
        make_benchmark([], 1)
