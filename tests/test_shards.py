"""Sharded, resumable feature stores (features.shards, features.sharded_extract, retrieval extract)
on real Oxford / COIL-20 images, with the local engine: resume, refusal of another configuration,
checksums, a full disk (RLIMIT_FSIZE in a child process) and Ctrl-C. Ray: tests/test_engine.py."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from retrieval.features.sharded_extract import extract_local_sharded
from retrieval.features.shards import ShardedStore, plan_shards
from retrieval.features.sift import SiftExtractor
from retrieval.features.store import FeatureFileError, LocalFeatureStore, load_global

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def oxford_images(oxford_dir):
    paths = sorted((oxford_dir / "images").glob("*.jpg"))[:6]
    return [p.stem for p in paths], [str(p) for p in paths]


def _same_local(a, b, ids):
    for i in ids:
        fa, fb = a.get(i, dtype=None), b.get(i, dtype=None)
        assert fa.image_size == fb.image_size
        assert np.array_equal(fa.keypoints, fb.keypoints) and np.array_equal(fa.descriptors, fb.descriptors)


def test_second_run_computes_only_missing_shards_and_matches_single_file(oxford_images, tmp_path):
    ids, paths = oxford_images
    ex = SiftExtractor("rootsift-1k")
    root = tmp_path / "s.shards"
    first = extract_local_sharded(ex, ids, paths, root, n_jobs=2, shard_size=2, progress=False)
    assert (first.computed, first.skipped, first.images) == (3, 0, 6)
    assert first.bytes > 0 and first.bytes_per_image > 0
    (root / "shard-000001.json").unlink()  # as if the worker died before its manifest entry
    again = extract_local_sharded(ex, ids, paths, root, n_jobs=2, shard_size=2, progress=False)
    assert (again.computed, again.skipped) == (1, 2)
    store = ShardedStore(root)
    assert store.ids() == ids
    merged = store.merge(tmp_path / "merged.h5", ids)
    from retrieval.features.extract import extract_local_features

    extract_local_features(ids, paths, ex, tmp_path / "single.h5", n_jobs=1, progress=False)
    with LocalFeatureStore(merged) as m, LocalFeatureStore(tmp_path / "single.h5") as single:
        assert m.config == single.config
        _same_local(m, single, ids)
        _same_local(store, single, ids)


def test_other_configuration_refused_and_damage_detected(oxford_images, tmp_path):
    ids, paths = oxford_images
    root = tmp_path / "s.shards"
    extract_local_sharded(SiftExtractor("rootsift-1k"), ids[:2], paths[:2], root, n_jobs=1, shard_size=1,
                          progress=False)
    with pytest.raises(FeatureFileError, match="another configuration"):
        extract_local_sharded(SiftExtractor("rootsift-2k"), ids[:2], paths[:2], root, n_jobs=1, shard_size=1,
                              progress=False)
    with pytest.raises(FeatureFileError, match="shard size"):
        extract_local_sharded(SiftExtractor("rootsift-1k"), ids[:2], paths[:2], root, n_jobs=1, shard_size=2,
                              progress=False)
    shard = root / "shard-000000.h5"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes
    shard.write_bytes(bytes(data))
    with pytest.raises(FeatureFileError, match="checksum"):
        ShardedStore(root).get(ids[0])
    assert ShardedStore(root).get(ids[1]).descriptors.shape[1] == 128  # the other shard still reads


def test_plan_is_stable_and_checked():
    units = plan_shards(["a", "b", "c"], ["1", "2", "3"], 2)
    assert [u["ids"] for u in units] == [["a", "b"], ["c"]] and [u["shard"] for u in units] == [0, 1]
    with pytest.raises(ValueError, match="unique"):
        plan_shards(["a", "a"], ["1", "2"], 1)
    with pytest.raises(ValueError, match="shard size"):
        plan_shards(["a"], ["1"], 0)


CHILD = """
import resource, signal, sys
from retrieval.features.sharded_extract import extract_local_sharded
from retrieval.features.sift import SiftExtractor
from retrieval.features.shards import ShardWriteError
ids, paths, root, limit = sys.argv[1].split(","), sys.argv[2].split(","), sys.argv[3], int(sys.argv[4])
if limit:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, like a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    extract_local_sharded(SiftExtractor("rootsift-1k"), ids, paths, root, n_jobs=1, shard_size=1, progress=False)
except ShardWriteError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)
"""


def _child_env():
    return dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")


def test_full_disk_stops_with_one_line_and_keeps_finished_shards(coil20_dir, oxford_dir, tmp_path):
    # a small COIL-20 image first (a small shard), then a 512 px Oxford image (a larger shard)
    small = coil20_dir / "images" / "obj1__0.png"
    large = sorted((oxford_dir / "images").glob("*.jpg"))[0]
    ids, paths = ["small", "large"], [str(small), str(large)]
    clean = tmp_path / "clean"
    run = subprocess.run([sys.executable, "-c", CHILD, ",".join(ids), ",".join(paths), str(clean), "0"],
                         env=_child_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    sizes = [(clean / f"shard-{k:06d}.h5").stat().st_size for k in (0, 1)]
    assert sizes[0] < sizes[1]
    limit = (sizes[0] + sizes[1]) // 2
    full = tmp_path / "full"
    run = subprocess.run([sys.executable, "-c", CHILD, ",".join(ids), ",".join(paths), str(full), str(limit)],
                         env=_child_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "disk full" in lines[0] and "shard-000001.h5" in lines[0], run.stderr
    store = ShardedStore(full)
    assert sorted(store.entries()) == [0]
    _same_local(store, ShardedStore(clean), ["small"])  # the finished shard is whole and readable
    # space again: the rerun computes only the missing shard and equals the clean run
    run = subprocess.run([sys.executable, "-c", CHILD, ",".join(ids), ",".join(paths), str(full), "0"],
                         env=_child_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    _same_local(ShardedStore(full), ShardedStore(clean), ids)
    assert not list(full.glob(".shard-*.tmp"))


def _folder_dataset(tmp_path, coil20_dir, n=8):
    root = tmp_path / "coil"
    (root / "images").mkdir(parents=True)
    rows = ["filename,object_id"]
    for obj in (1, 2):
        for view in range(n // 2):
            name = f"obj{obj}__{view}.png"
            os.symlink(coil20_dir / "images" / name, root / "images" / name)
            rows.append(f"{name},{obj}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def _cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "retrieval.cli", "--quiet", *map(str, args)], env=_child_env(),
                          capture_output=True, text=True, timeout=300, **kwargs)


def test_ctrl_c_keeps_finished_shards_and_rerun_completes(oxford_dir, tmp_path):
    root = tmp_path / "ox"
    (root / "images").mkdir(parents=True)
    rows = ["filename,object_id"]
    for k, src in enumerate(sorted((oxford_dir / "images").glob("*.jpg"))[:10]):
        os.symlink(src, root / "images" / src.name)
        rows.append(f"{src.name},{k}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "sift.h5"
    args = ["extract", "local", "--dataset", "folder", "--data", root, "--config", "rootsift-1k", "--out", out,
            "--shard-size", "1", "--n-jobs", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "retrieval.cli", "--quiet", *map(str, args)], env=_child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    shards = Path(f"{out}.shards")
    deadline = time.time() + 120
    while time.time() < deadline and len(list(shards.glob("shard-*.json"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    store = ShardedStore(shards)
    done = store.entries()
    assert 2 <= len(done) < 10 and not out.exists()
    for shard in done:
        store.verify(shard)  # every finished shard is intact
    run = _cli(*args)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["shards_skipped"] == len(done) and summary["shards_computed"] == 10 - len(done)
    with LocalFeatureStore(out) as merged:
        assert len(merged) == 10


def test_cli_extract_global_feeds_index_build(coil20_dir, tmp_path):
    data = _folder_dataset(tmp_path, coil20_dir, n=6)
    out = tmp_path / "g.h5"
    run = _cli("extract", "global", "--dataset", "folder", "--data", data, "--config", "lite0-gem-224", "--out", out,
               "--shard-size", "4", "--set", "n_jobs=1")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["images"] == 6 and summary["shards_computed"] == 2
    assert summary["seconds_per_image"] > 0 and summary["bytes_per_image"] > 0
    ids, vectors, config = load_global(out)
    assert len(ids) == 6 and vectors.shape == (6, 1280) and config["name"] == "lite0-gem-224"
    from retrieval.scale.sources import h5_shards  # the large-scale index builder reads the shards

    chunks = list(h5_shards(ShardedStore(f"{out}.shards").shard_files()).iter_chunks())
    assert [str(i) for c in chunks for i in c[0]] == ids
    assert np.array_equal(np.concatenate([c[1] for c in chunks]), vectors)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    index = tmp_path / "g.npz"
    run = _cli("index", "build", out, "--out", index)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["count"] == 6
    # a different configuration into the same output is refused with one line
    sift = tmp_path / "sift.h5"
    for name, code in (("rootsift-small", 0), ("rootsift-1k", 2)):
        run = _cli("extract", "local", "--dataset", "folder", "--data", data, "--config", name, "--out", sift)
        assert run.returncode == code, run.stderr
    assert "another configuration" in run.stderr and len(run.stderr.splitlines()) == 1
    run = _cli("extract", "global", "--dataset", "folder", "--data", data, "--config", "lite0-gem-224",
               "--out", tmp_path / "x.h5", "--set", "no_such_key=1")
    assert run.returncode == 2 and "no_such_key" in run.stderr


def test_patch_tokens_in_shards_equal_the_single_file_store(coil20_dir, tmp_path):
    from retrieval.features.deep_extract import extract_patches
    from retrieval.features.efficientnet import EfficientNetExtractor
    from retrieval.features.sharded_extract import extract_patches_sharded

    paths = [str(coil20_dir / "images" / f"obj{o}__0.png") for o in (4, 9, 12)]
    ids = ["a", "b", "c"]
    extractor = EfficientNetExtractor("lite0-patch-224", threads=1)
    run = extract_patches_sharded(lambda: extractor, ids, paths, tmp_path / "p.shards", shard_size=2,
                                  progress=False)
    assert (run.computed, run.images) == (2, 3)
    extract_patches(extractor, ids, paths, tmp_path / "single.h5", n_jobs=1, progress=False)
    store = ShardedStore(tmp_path / "p.shards")
    store.merge(tmp_path / "merged.h5", ids)
    with LocalFeatureStore(tmp_path / "single.h5") as single, LocalFeatureStore(tmp_path / "merged.h5") as merged:
        assert merged.config == single.config
        _same_local(store, single, ids)
        _same_local(merged, single, ids)
        assert single.get("a").descriptors.shape == (49, 1280)


def test_cropped_queries_through_the_extract_step(oxford_dir, tmp_path):
    from dataclasses import replace

    from retrieval.datasets import read_oxford
    from retrieval.features.extract import extract_local_features
    from retrieval.steps.extract import ExtractConfig, dataset_images, main

    ds = read_oxford(oxford_dir)
    ds = replace(ds, query_ids=ds.query_ids[:3], query_paths=ds.query_paths[:3], query_boxes=ds.query_boxes[:3],
                 query_labels=None, query_metadata={})
    ids, paths, boxes = dataset_images(ds, "queries")
    assert ids == ds.query_ids and boxes == list(ds.query_boxes)
    conf = ExtractConfig(kind="local", config="rootsift-1k", images="queries", shard_size=2, n_jobs=1)
    summary = {}
    out = main(conf, ds, tmp_path / "q.h5", progress=False, summary=summary)
    assert out == tmp_path / "q.h5" and summary["images"] == 3
    extract_local_features(ids, paths, SiftExtractor("rootsift-1k"), tmp_path / "single.h5", n_jobs=1, boxes=boxes,
                           progress=False)
    with LocalFeatureStore(out) as merged, LocalFeatureStore(tmp_path / "single.h5") as single:
        _same_local(merged, single, ids)
        whole = SiftExtractor("rootsift-1k").extract_path(paths[0])
        assert merged.get(ids[0]).image_size != whole.image_size  # the box was applied


def test_unreadable_image_raise_or_skip(oxford_images, tmp_path):
    from retrieval.features.extract import ExtractionError

    ids, paths = oxford_images
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    ids, paths = ids[:2] + ["broken"], paths[:2] + [str(bad)]
    ex = SiftExtractor("rootsift-1k")
    with pytest.raises(ExtractionError, match="broken.jpg"):
        extract_local_sharded(ex, ids, paths, tmp_path / "raise", n_jobs=1, shard_size=2, progress=False)
    assert sorted(ShardedStore(tmp_path / "raise").entries()) == [0]  # the finished shard is kept
    run = extract_local_sharded(ex, ids, paths, tmp_path / "skip", n_jobs=1, shard_size=2, on_error="skip",
                                progress=False)
    assert [f[0] for f in run.failed] == ["broken"] and "broken.jpg" in run.failed[0][1]
    store = ShardedStore(tmp_path / "skip")
    assert store.ids() == ids[:2] and "broken" not in store
    with LocalFeatureStore(store.merge(tmp_path / "m.h5", ids[:2])) as merged:
        assert sorted(merged.ids()) == sorted(ids[:2])
    again = extract_local_sharded(ex, ids, paths, tmp_path / "skip", n_jobs=1, shard_size=2, on_error="skip",
                                  progress=False)
    assert again.computed == 0


def test_cli_unreadable_image_is_one_line(oxford_images, tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "images" / "broken.jpg").write_bytes(b"not a jpeg")
    os.symlink(oxford_images[1][0], root / "images" / "good.jpg")
    (root / "labels.csv").write_text("filename,object_id\nbroken.jpg,1\ngood.jpg,1\n")
    run = _cli("extract", "local", "--dataset", "folder", "--data", root, "--config", "rootsift-1k",
               "--out", tmp_path / "s.h5", "--shard-size", "1", "--n-jobs", "1")
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert run.stderr.startswith("retrieval: error:") and "broken.jpg" in run.stderr
