"""retrieval.scale.engine on a local Ray instance (one per test session, 2 CPUs, quiet): the same results
as the local engine for SIFT (bit-identical), ONNX global descriptors (bit-identical), encoding and
shortlist re-ranking on real images; a worker SIGKILLed mid-task is retried; address resolution."""
import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'hybrid-retrieval[ray]')")

from retrieval.scale import engine as eng
from retrieval.features.sharded_extract import extract_global_sharded, extract_local_sharded  # noqa: E402
from retrieval.features.shards import ShardedStore  # noqa: E402
from retrieval.features.sift import SiftExtractor  # noqa: E402


@pytest.fixture(scope="session")
def ray_cluster():
    started = not ray.is_initialized()
    if started:
        import logging
        import os

        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def oxford_images(oxford_dir):
    paths = sorted((oxford_dir / "images").glob("*.jpg"))[6:12]
    return [p.stem for p in paths], [str(p) for p in paths]


def test_map_units_same_order_and_errors_on_both_engines(ray_cluster):
    import operator  # importable in the workers (this test module is not)

    units = list(range(7))
    for engine in ("local", "ray"):
        assert eng.map_units(operator.mul, units, engine=engine, shared=3, progress=False) == [3 * u for u in units]
        with pytest.raises(ZeroDivisionError, match="division by zero"):  # the task's own error
            eng.map_units(operator.truediv, [1, 2], engine=engine, shared=0, progress=False)
    with pytest.raises(eng.EngineError, match="unknown engine"):
        eng.map_units(operator.mul, units, engine="spark")


def _same_local(a, b, ids):
    for i in ids:
        fa, fb = a.get(i, dtype=None), b.get(i, dtype=None)
        assert np.array_equal(fa.keypoints, fb.keypoints) and np.array_equal(fa.descriptors, fb.descriptors)


def test_sift_identical_on_ray_and_a_killed_worker_is_retried(ray_cluster, oxford_images, tmp_path):
    ids, paths = oxford_images
    ex = SiftExtractor("rootsift-1k")
    local = extract_local_sharded(ex, ids, paths, tmp_path / "local", engine="local", n_jobs=2, shard_size=2,
                                  progress=False)
    on_ray = extract_local_sharded(ex, ids, paths, tmp_path / "ray", engine="ray", n_jobs=2, shard_size=2,
                                   progress=False)
    assert local.images == on_ray.images == 6
    _same_local(ShardedStore(tmp_path / "local"), ShardedStore(tmp_path / "ray"), ids)
    marker = tmp_path / "killed"
    killed = extract_local_sharded(ex, ids, paths, tmp_path / "killed_run", engine="ray", n_jobs=2, shard_size=2,
                                   progress=False, kill_once=marker)
    assert marker.exists()  # a worker did SIGKILL itself mid-task
    assert killed.computed == 3 and not list((tmp_path / "killed_run").glob(".shard-*.tmp"))
    _same_local(ShardedStore(tmp_path / "killed_run"), ShardedStore(tmp_path / "local"), ids)


@pytest.mark.slow  # three EfficientNet builds (local probe, actor, restarted actor)
def test_onnx_global_identical_on_ray_actors_even_with_an_actor_killed(ray_cluster, coil20_dir, tmp_path):
    from functools import partial

    from retrieval.features.efficientnet import EfficientNetExtractor

    paths = [str(coil20_dir / "images" / f"obj{o}__{v}.png") for o in (3, 7) for v in (0, 30)]
    ids = [p.rsplit("/", 1)[1] for p in paths]
    make = partial(EfficientNetExtractor, "lite0-gem-224", threads=1, backend="onnxruntime")
    out = {}
    marker = tmp_path / "killed"
    for engine in ("local", "ray"):
        # on Ray, the actor SIGKILLs itself mid-shard once: Ray Data restarts it and retries the shard
        extract_global_sharded(make, ids, paths, tmp_path / engine, engine=engine, n_jobs=1, shard_size=2,
                               progress=False, kill_once=marker if engine == "ray" else None)
        out[engine] = ShardedStore(tmp_path / engine).load_global()
    assert marker.exists()
    assert out["local"][0] == out["ray"][0] == ids
    assert np.array_equal(out["local"][1], out["ray"][1])


def test_encoding_and_reranking_do_not_depend_on_the_engine(ray_cluster, oxford_images, tmp_path):
    from retrieval.features.codebook import learn_codebook
    from retrieval.features.encoders import VladEncoder
    from retrieval.rerank import Shortlist, SpatialVerifier

    ids, paths = oxford_images
    extract_local_sharded(SiftExtractor("rootsift-1k"), ids, paths, tmp_path / "s", shard_size=3, n_jobs=1,
                          progress=False)
    store = ShardedStore(tmp_path / "s")
    feats = [store.get(i) for i in ids]
    enc = VladEncoder(learn_codebook(feats, 8, n_sample=3000, seed=0, niter=5))
    enc.batch_descriptors = 2500  # several batches, so the Ray path has several units
    local = enc.encode_many(feats)
    on_ray = enc.encode_many(feats, engine="ray", n_jobs=2)
    cos = np.sum(local * on_ray, axis=1) / np.maximum(np.linalg.norm(local, axis=1) * np.linalg.norm(on_ray, axis=1),
                                                      1e-12)
    assert np.all(cos > 1 - 1e-6)
    shortlist_ids = [[j for j in ids if j != q][:3] for q in ids[:3]]

    def fresh():
        return Shortlist(ids[:3], shortlist_ids, np.ones((3, 3)), config={"t": 1})

    expected = fresh().score_with(SpatialVerifier(), store, store, progress=False)
    dict_feats = dict(zip(ids, feats))
    for source in (store, dict_feats):
        scores = fresh().score_with(SpatialVerifier(), source, source, progress=False, engine="ray", n_jobs=2)
        np.testing.assert_array_equal(scores, expected)


def test_address_resolution(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(eng, "_running_cluster", lambda: None)
    assert eng.resolve_address(None) is None  # a local instance for the run
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert eng.resolve_address(None) == "10.0.0.1:6379"
    assert eng.resolve_address("ray://head:10001") == "ray://head:10001"
    monkeypatch.setattr(eng, "_running_cluster", lambda: "127.0.0.1:6379")
    assert eng.resolve_address(None) == "auto"  # a `ray start` cluster comes before $RAY_ADDRESS


def test_ladder_engine_ray_gives_the_local_features_and_scores(ray_cluster, oxford_images, tmp_path):
    """The E1-E8 ladder's engine = "ray": sharded SIFT on Ray merged into the file the local path writes,
    and local scoring as Ray tasks, give the local path's entries and scores."""
    from retrieval.features.store import LocalFeatureStore
    from retrieval.experiments.ladder.stages import RunCache, extract_local
    from retrieval.rerank.ratio import RatioTestScorer
    from retrieval.rerank.shortlist import Shortlist
    from retrieval.indexing.index import Ranking
    from retrieval.experiments.files import load_experiment

    # the ladder's engine is a setting of the experiment (retrieval run e1-e7 --set engine=ray ...)
    conf = load_experiment("e1-e7", ["engine=ray", "ray_address=local", "quick=true"]).conf
    assert (conf.engine, conf.ray_address, conf.quick) == ("ray", "local", True)

    ids, paths = oxford_images
    sift = SiftExtractor("rootsift-1k")
    stores, scores = {}, {}
    for engine in ("local", "ray"):
        cache = RunCache(tmp_path / engine, n_jobs=2, progress=False, engine=engine)
        path = extract_local(sift, (ids, paths, None), tmp_path / engine / "sift.h5", cache, "sift", "sift")
        with LocalFeatureStore(path, mode="r") as store:
            stores[engine] = {i: store.get(i) for i in ids}
        ranking = Ranking(ids=np.array([ids[1:4], ids[2:5]]), scores=np.array([[0.9, 0.8, 0.7]] * 2, np.float32),
                          indices=np.array([[1, 2, 3], [2, 3, 4]]), query_ids=list(ids[:2]))
        shortlist = Shortlist.from_ranking(ranking, k=3)
        from retrieval.experiments.ladder.stages import score_local

        score_local(shortlist, tmp_path / engine / "sl", RatioTestScorer(), "ratio", stores[engine], cache, "score")
        scores[engine] = shortlist.local_scores("ratio")
    for i in ids:
        assert np.array_equal(stores["local"][i].descriptors, stores["ray"][i].descriptors)
        assert np.array_equal(stores["local"][i].keypoints, stores["ray"][i].keypoints)
    assert np.array_equal(scores["local"], scores["ray"])


def test_retrieval_experiment_on_ray_equals_local_on_the_gldv2_thesis_protocol(ray_cluster, coil20_dir, tmp_path):
    """The `retrieval` experiment (extract -> index -> search -> evaluate) on a small generated GLDv2
    folder under the thesis protocol: Ray extraction gives the local engine's ranking and mAP@100, and
    results.json holds every stage's seconds and bytes per image."""
    pytest.importorskip("pyarrow")
    import json

    from retrieval.datasets.gldv2_synth import generate_gldv2
    from retrieval.experiments.files import load_experiment

    root = tmp_path / "gldv2"
    generate_gldv2(root, [coil20_dir], scale=0.001, seed=3, progress=False)
    results = {}
    for engine in ("local", "ray"):
        exp = load_experiment("gldv2-thesis-e1", data=root, overrides=[
            f"extract.engine={engine}", "extract.config=lite0-gem-224", "dataset.thesis_queries=8",
            "dataset.thesis_index=60"])
        out = exp.module.main(exp.conf, tmp_path / engine, cache_dir=tmp_path / f"cache-{engine}", progress=False)
        results[engine] = json.loads((out / "results.json").read_text())
    local, on_ray = results["local"], results["ray"]
    assert local["rows"][0]["map@100"] == pytest.approx(on_ray["rows"][0]["map@100"], abs=1e-9)
    assert on_ray["summary"]["queries"] == 8 and on_ray["summary"]["database"] == 60
    extract = on_ray["stages"]["extract"]          # the pipeline's one extraction, on Ray
    assert extract["engine"] == "ray" and extract["images"] == 68 and extract["bytes_per_image"] > 0
    for stage in ("index build", "search", "evaluate"):
        assert on_ray["stages"][stage]["seconds"] >= 0
