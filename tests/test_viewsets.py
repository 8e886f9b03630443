"""The view-set protocol (retrieval.datasets.viewsets) on the real COIL-100 labels."""
import numpy as np
import pytest

from retrieval.datasets.viewsets import (ViewSet, make_benchmark, read_view_catalog, sample_views,
                                         split_objects, split_view_sets)

COIL100_SEEN, COIL100_UNSEEN = split_objects(range(1, 101))


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
    from retrieval.evaluation.metrics import map_at_k

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
    with pytest.raises(ValueError, match="two images at azimuth 0.0 and elevation 0.0"):
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


def _write_set(tmp_path, header, rows):
    (tmp_path / "images").mkdir(exist_ok=True)
    for r in rows:
        (tmp_path / "images" / r[0]).write_bytes(b"x")
    (tmp_path / "labels.csv").write_text(header + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")


def test_elevation_rings_make_sets_across_elevations(tmp_path):
    # 2 objects x 2 elevations x 12 azimuths (30 degree steps): the old catalogue refused this set
    rows = [(f"o{o}_e{e}_a{a}.png", o, a, e) for o in (1, 2) for e in (0, 30) for a in range(0, 360, 30)]
    _write_set(tmp_path, "filename,object_id,azimuth_deg,elevation_deg", rows)
    cat = read_view_catalog(tmp_path)
    assert cat.geometry == "azimuth" and len(cat) == 48
    assert set(cat.elevations.tolist()) == {0.0, 30.0}
    sets = split_view_sets(cat, n_sets=4)
    assert len(sets) == 8
    for s in sets:  # 3 azimuths x 2 elevations per 90-degree arc
        assert len(s) == 6 and set(cat.elevations[s.views].tolist()) == {0.0, 30.0}
        assert np.all(cat.azimuths[s.views] // 90 == s.index)
    bench = make_benchmark(sets, 2, seed=0)
    assert all(len(v) == 3 for v in bench.solution.values())
    _write_set(tmp_path, "filename,object_id,azimuth_deg,elevation_deg", rows + [("dup.png", 1, 0, 30)])
    with pytest.raises(ValueError, match="object 1 has two images at azimuth 0.0 and elevation 30.0"):
        read_view_catalog(tmp_path)


def test_ordered_index_and_file_order_geometry(tmp_path):
    rows = [(f"obj{o}_{i}.png", o, i) for o in (3, 4) for i in range(10)]
    _write_set(tmp_path, "filename,object_id,view_index", rows[::-1])
    cat = read_view_catalog(tmp_path)
    assert cat.geometry == "index" and np.isnan(cat.azimuths).all()
    assert [p.name for p in cat.paths[:3]] == ["obj3_0.png", "obj3_1.png", "obj3_2.png"]
    sets = split_view_sets(cat, n_sets=3)
    assert [len(s) for s in sets] == [4, 3, 3] * 2  # runs of the order: 0-3, 4-6, 7-9
    assert [p.name for p in (cat.paths[i] for i in sets[1].views)] == ["obj3_4.png", "obj3_5.png", "obj3_6.png"]
    _write_set(tmp_path, "filename,object_id", [(f"obj{o}_{i}.png", o) for o in (3,) for i in (10, 2, 1)])
    cat = read_view_catalog(tmp_path)  # no geometry column: natural file-name order
    assert [p.name for p in cat.paths] == ["obj3_1.png", "obj3_2.png", "obj3_10.png"]
    _write_set(tmp_path, "filename,object_id,view_index", [("a.png", 1, 0), ("b.png", 1, 0)])
    with pytest.raises(ValueError, match="two images at view_index 0"):
        read_view_catalog(tmp_path)


def test_split_objects_defaults_and_options():
    assert split_objects(range(1, 101)) == (tuple(range(1, 51)), tuple(range(51, 101)))
    assert split_objects([5, 1, 9, 7], seen_fraction=0.25) == ((1,), (5, 7, 9))
    assert split_objects([1, 2, 3, 4], seen=[2, 4]) == ((2, 4), (1, 3))
    assert split_objects([1, 2, 3, 4], unseen=[1]) == ((2, 3, 4), (1,))
    with pytest.raises(ValueError, match="not in the dataset"):
        split_objects([1, 2], seen=[3])
    with pytest.raises(ValueError, match="both seen and unseen"):
        split_objects([1, 2, 3], seen=[1, 2], unseen=[2])
