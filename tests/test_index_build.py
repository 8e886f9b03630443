"""Building IVF indexes chunk by chunk (retrieval.scale): identical to the in-memory build given the
same training sample, per-shard indexes merged, exact streaming search, re-ranking, file checks."""
import json

import numpy as np
import pytest

pytest.importorskip("faiss")

from retrieval.features.store import FeatureFileError, save_global  # noqa: E402
from retrieval.indexing.index import Index, IndexFileError  # noqa: E402
from retrieval.scale.ivf_build import (ShardedIndex, build_index, build_sharded_index, exact_topk,  # noqa: E402
                                       gather_rows, merge_topk, recall_at_k, rerank_exact, sample_rows)
from retrieval.scale.measure import _allocate_for_test, run_measured  # noqa: E402
from retrieval.scale.sources import (ArraySource, H5GlobalSource, h5_shards, unit_vectors,  # noqa: E402
                                     write_synthetic_shards)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centres = unit_vectors(rng, 20, 32)
    return unit_vectors(rng, 3000, 32, centres), unit_vectors(rng, 40, 32, centres)


@pytest.mark.parametrize("backend, options", [("faiss-ivf", {}), ("faiss-ivfpq", {"m": 4, "nbits": 6})])
def test_chunked_build_equals_in_memory_index(data, backend, options):
    vectors, queries = data
    reference = Index(vectors, backend=backend, nlist=16, **options)
    built = build_index(ArraySource(vectors, chunk_rows=700), backend=backend, train_size=len(vectors),
                        nlist=16, progress=False, **options)
    a, b = reference.search(queries, k=20, nprobe=4), built.search(queries, k=20, nprobe=4)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert built.options == reference.options


def test_sampled_training_matches_in_memory_training_on_that_sample(data):
    vectors, queries = data
    rows = sample_rows(len(vectors), 800, seed=5)
    assert np.all(np.diff(rows) > 0) and len(rows) == 800
    sample = gather_rows(ArraySource(vectors, chunk_rows=333), rows)
    np.testing.assert_array_equal(sample, vectors[rows])
    reference = Index.trained(sample, "faiss-ivf", nlist=16, seed=5)
    reference.add(vectors)
    built = build_index(ArraySource(vectors, chunk_rows=512), backend="faiss-ivf", train_size=800, seed=5,
                        nlist=16, progress=False)
    np.testing.assert_array_equal(reference.search(queries, 10).indices, built.search(queries, 10).indices)


def test_built_index_reloads_with_the_file_checks(tmp_path, data):
    vectors, queries = data
    ids = [f"img{i:05d}" for i in range(len(vectors))]
    built = build_index(ArraySource(vectors, ids=ids, chunk_rows=1000, config={"net": "x"}),
                        backend="faiss-ivfpq", nlist=16, m=4, nbits=6, progress=False)
    path = built.save(tmp_path / "ivfpq.npz")
    loaded = Index.load(path, expect_config={"net": "x"})
    assert loaded.dim == 32 and len(loaded) == 3000 and loaded.ids[7] == "img00007"
    np.testing.assert_array_equal(loaded.search(queries, 5).ids, built.search(queries, 5).ids)
    with pytest.raises(IndexFileError, match="configuration"):
        Index.load(path, expect_config={"net": "y"})
    with pytest.raises(ValueError, match="dimension"):
        loaded.search(queries[:, :16], 5)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (tmp_path / "bad.npz").write_bytes(bytes(raw))
    with pytest.raises(IndexFileError):
        Index.load(tmp_path / "bad.npz")


def test_sharded_index_equals_one_index_and_resumes(tmp_path):
    paths, queries = write_synthetic_shards(tmp_path / "shards", n=2500, dim=32, shards=3, clusters=10,
                                            queries=30, seed=2)
    source = h5_shards(paths, chunk_rows=400)
    assert source.n == 2500 and source.dim == 32
    one = build_index(source, backend="faiss-ivf", nlist=12, progress=False)
    out = build_sharded_index(source, tmp_path / "idx", backend="faiss-ivf", nlist=12, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [e["count"] for e in manifest["shards"]] == [p.n for p in source.sources]
    for resident in (True, False):
        merged = ShardedIndex.load(out, resident=resident).search(queries, k=15, nprobe=3)
        single = one.search(queries, k=15, nprobe=3)
        np.testing.assert_array_equal(merged.ids, single.ids)
        np.testing.assert_allclose(merged.scores, single.scores, atol=1e-6)
    stamp = (out / "shard-00001.npz").stat().st_mtime_ns
    build_sharded_index(source, out, backend="faiss-ivf", nlist=12, progress=False)
    assert (out / "shard-00001.npz").stat().st_mtime_ns == stamp  # resumed: not rebuilt


def test_exact_streaming_and_reranking(data):
    vectors, queries = data
    source = ArraySource(vectors, chunk_rows=450)
    scores, rows = exact_topk(source, queries, k=25)
    full = Index(vectors).search(queries, k=25)
    np.testing.assert_array_equal(rows, full.indices)
    np.testing.assert_allclose(scores, full.scores, atol=1e-6)
    # re-ranking a shortlist that contains the true top-25 (plus noise) recovers it exactly
    noise = np.random.default_rng(1).integers(0, len(vectors), size=(len(queries), 40))
    shortlist = np.concatenate([noise, rows[:, ::-1], -np.ones((len(queries), 3), np.int64)], axis=1)
    _, reranked = rerank_exact(source, queries, shortlist, k=25)
    np.testing.assert_array_equal(reranked, rows)
    assert recall_at_k(reranked, rows) == 1.0
    assert recall_at_k(noise[:, :25], rows) < 0.2


def test_merge_topk_orders_ties_by_row_and_drops_missing():
    s, r = merge_topk([np.array([[0.5, 0.2]]), np.array([[0.5, 0.9]])], [np.array([[7, 1]]), np.array([[3, -1]])], 3)
    np.testing.assert_array_equal(r, [[3, 7, 1]])
    np.testing.assert_array_equal(s, np.array([[0.5, 0.5, 0.2]], np.float32))


def test_h5_source_checks_the_file(tmp_path, data):
    vectors, _ = data
    save_global(tmp_path / "g.h5", [str(i) for i in range(100)], vectors[:100], config={"a": 1})
    src = H5GlobalSource(tmp_path / "g.h5", chunk_rows=30)
    chunks = list(src.iter_chunks())
    assert [len(v) for _, v in chunks] == [30, 30, 30, 10] and chunks[1][0][0] == "30"
    np.testing.assert_array_equal(np.concatenate([v for _, v in chunks]), vectors[:100])
    with pytest.raises(FeatureFileError, match="configuration"):
        H5GlobalSource(tmp_path / "g.h5", expect_config={"a": 2})
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(FeatureFileError):
        H5GlobalSource(tmp_path / "junk.h5")


def test_run_measured_reports_the_child_peak():
    result, stats = run_measured(_allocate_for_test, megabytes=200)
    assert result == 200
    assert stats["peak_rss_mb"] - stats["baseline_rss_mb"] > 150


def test_sharded_feature_store_is_a_source(tmp_path, data):
    from retrieval.features.shards import ShardedStore, plan_shards, write_shard
    from retrieval.scale.sources import ShardedStoreSource

    vectors, queries = data
    ids = [f"im{i:05d}" for i in range(1000)]
    root = tmp_path / "store"
    store = ShardedStore(root, kind="global", config={"net": "x"}, shard_size=300, create=True)
    for unit in plan_shards(ids, ids, 300):
        rows = [ids.index(i) for i in unit["ids"]]
        write_shard(root, unit, lambda tmp, rows=rows, unit=unit: save_global(tmp, unit["ids"], vectors[rows],
                                                                              config={"net": "x"}) and {})
    source = ShardedStoreSource(ShardedStore(root))
    assert (source.n, source.dim, source.config) == (1000, 32, {"net": "x"})
    built = build_index(source, backend="faiss-ivf", nlist=8, progress=False)
    reference = build_index(ArraySource(vectors[:1000], ids=ids), backend="faiss-ivf", nlist=8, progress=False)
    np.testing.assert_array_equal(built.search(queries, 10).ids, reference.search(queries, 10).ids)
