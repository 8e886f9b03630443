"""IVF indexes with their inverted lists on disk (retrieval.scale.ondisk): per-shard indexes merged
into one ``.ivfdata`` file search exactly like one in-memory index over all the vectors; the merge
resumes; moved, truncated, altered and stale files are handled; nothing lands on stdout."""
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("faiss")

from retrieval.indexing.index import IndexFileError  # noqa: E402
from retrieval.scale.ivf_build import build_index, build_sharded_index  # noqa: E402
from retrieval.scale.ondisk import ON_DISK_FILES, load_on_disk, merge_on_disk  # noqa: E402
from retrieval.scale.sources import h5_shards, write_synthetic_shards  # noqa: E402


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("ondisk")
    # uneven shards (834 / 833 / 833), so a wrong id offset of any shard shows
    paths, queries = write_synthetic_shards(root / "shards", n=2500, dim=32, shards=3, clusters=10,
                                            queries=30, seed=2)
    return h5_shards(paths, chunk_rows=400), queries


@pytest.mark.parametrize("backend, options", [("faiss-ivf", {}), ("faiss-ivfpq", {"m": 8, "nbits": 6})])
def test_on_disk_index_equals_one_in_memory_index(shards, tmp_path, capfd, backend, options):
    source, queries = shards
    one = build_index(source, backend=backend, nlist=12, progress=False, **options)
    out = build_sharded_index(source, tmp_path / "idx", backend=backend, nlist=12, progress=False,
                              on_disk=True, **options)
    index = load_on_disk(out)
    assert len(index) == source.n and index.dim == source.dim
    for nprobe in (1, 3, 12):
        got, want = index.search(queries, k=15, nprobe=nprobe), one.search(queries, k=15, nprobe=nprobe)
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)
    assert capfd.readouterr().out == ""  # faiss' notices go to stderr, never into a command's JSON
    with pytest.raises(ValueError, match="on disk"):
        index.save(tmp_path / "one.npz")


def test_merge_resumes_and_a_moved_folder_still_loads(shards, tmp_path):
    source, queries = shards
    out = build_sharded_index(source, tmp_path / "idx", backend="faiss-ivf", nlist=12, progress=False, on_disk=True)
    lists = out / ON_DISK_FILES["lists"]
    stamp = lists.stat().st_mtime_ns
    build_sharded_index(source, out, backend="faiss-ivf", nlist=12, progress=False, on_disk=True)
    assert lists.stat().st_mtime_ns == stamp  # nothing redone
    want = load_on_disk(out).search(queries, k=10, nprobe=4)
    moved = shutil.move(str(out), str(tmp_path / "elsewhere"))
    got = load_on_disk(moved).search(queries, k=10, nprobe=4)  # the lists are found beside the index
    np.testing.assert_array_equal(got.ids, want.ids)


def test_damaged_stale_and_missing_files_are_refused(shards, tmp_path):
    source, _ = shards
    out = build_sharded_index(source, tmp_path / "idx", backend="faiss-ivf", nlist=12, progress=False)
    with pytest.raises(IndexFileError, match="no on-disk index"):
        load_on_disk(out)
    merge_on_disk(out, progress=False)
    lists = out / ON_DISK_FILES["lists"]
    good = lists.read_bytes()
    altered = bytearray(good)
    altered[len(altered) // 2] ^= 0xFF
    lists.write_bytes(bytes(altered))
    with pytest.raises(IndexFileError, match="checksum"):
        load_on_disk(out)
    load_on_disk(out, verify=False)  # sizes still match: only the checksum can tell
    lists.write_bytes(good[:-100])
    with pytest.raises(IndexFileError, match="truncated"):
        load_on_disk(out)
    lists.unlink()
    with pytest.raises(IndexFileError, match="missing"):
        load_on_disk(out)
    # a shard rebuilt with other vectors makes the merged lists stale: merged again, not reused
    manifest = json.loads((out / "manifest.json").read_text())
    merge_on_disk(out, progress=False)
    assert lists.is_file()
    first = manifest["shards"][0]["file"]
    (out / first).unlink()
    other = h5_shards(write_synthetic_shards(tmp_path / "other", n=2500, dim=32, shards=3, clusters=10,
                                             seed=9)[0], chunk_rows=400)
    build_sharded_index(other, out, backend="faiss-ivf", nlist=12, progress=False)
    before = json.loads((out / "manifest.json").read_text())["on_disk"]["sources"]
    merge_on_disk(out, progress=False)
    after = json.loads((out / "manifest.json").read_text())["on_disk"]["sources"]
    assert before != after
    load_on_disk(out)


def test_only_ivf_folders_merge(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something-else", "version": 1}))
    with pytest.raises(IndexFileError, match="manifest"):
        merge_on_disk(tmp_path, progress=False)


def test_a_new_shard_is_searched_at_once_without_a_rebuild(shards, tmp_path):
    from retrieval.scale.add_shard import add_shard
    from retrieval.scale.ivf_build import ShardedIndex

    source, queries = shards
    out = build_sharded_index(source, tmp_path / "idx", backend="faiss-ivf", nlist=12, progress=False, on_disk=True)
    lists = out / ON_DISK_FILES["lists"]
    stamp = lists.stat().st_mtime_ns
    rng = np.random.default_rng(5)
    extra = rng.standard_normal((40, source.dim)).astype(np.float32)
    extra_ids = np.array([f"added-{i}" for i in range(40)])
    info = add_shard(out, extra_ids, extra)
    assert info["added"] == 40 and info["count"] == source.n + 40 and lists.stat().st_mtime_ns == stamp
    # the same trained quantiser: the merged lists + the new shard rank as one index over everything
    one = build_index(source, backend="faiss-ivf", nlist=12, progress=False)
    one.add(extra, extra_ids)
    on_disk, sharded = load_on_disk(out), ShardedIndex.load(out)
    probe = np.concatenate([queries, extra[:5]])
    for nprobe in (2, 12):
        want = one.search(probe, k=15, nprobe=nprobe)
        for index in (on_disk, sharded):
            got = index.search(probe, k=15, nprobe=nprobe)
            np.testing.assert_array_equal(got.ids, want.ids)
    assert on_disk.search(extra[:1], k=1).ids[0, 0] == "added-0"
    with pytest.raises(ValueError, match="already in the index"):
        add_shard(out, extra_ids[:3], extra[:3])
    merge_on_disk(out, progress=False)  # folded into the lists when convenient
    assert not len(load_on_disk(out).since_merge)
