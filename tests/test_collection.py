"""Collections that grow: add / remove equal a rebuild, filters inside the search, one writer, all-or-nothing
changes (a process killed at every write point), damaged files named."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from retrieval.indexing.collection import Collection, CollectionError, open_index
from retrieval.indexing.index import Index
from retrieval.indexing.metadata import Metadata, parse_where

pytest.importorskip("faiss")


def clustered(rng, n, d=32, centres=20):
    c = rng.standard_normal((centres, d)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def labels(n, start=0):
    return Metadata.from_records([{"label": f"c{(start + i) % 7}", "n": str(start + i)} for i in range(n)])


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    x = clustered(rng, 2600)
    return x, np.array([f"im{i:05d}" for i in range(len(x))]), clustered(rng, 40)


def test_exact_add_and_remove_rank_as_a_rebuild(tmp_path, data):
    x, ids, q = data
    coll = Collection.create(tmp_path / "c", ids[:2000], x[:2000], metadata=labels(2000))
    coll.add(ids[2000:2300], x[2000:2300], metadata=labels(300, 2000))
    coll.add(ids[2300:], x[2300:], metadata=labels(300, 2300))
    coll.remove(ids[100:150])
    keep = np.ones(len(x), bool)
    keep[100:150] = False
    snap = coll.snapshot(verify=True)
    got, want = snap.search(q, k=50), Index(x[keep], ids=ids[keep]).search(q, k=50)
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(got.scores, want.scores)
    assert snap.generation == 4 and len(snap.index) == keep.sum()
    # compaction changes the files, not the answers
    coll.compact()
    np.testing.assert_array_equal(coll.snapshot().search(q, k=50).ids, want.ids)
    assert coll.info()["segments"] == 1 and coll.info()["removed"] == 0


@pytest.mark.parametrize("backend", ["faiss-ivf", "faiss-flat", "faiss-hnsw"])
def test_faiss_add_without_retraining_matches_a_rebuild(tmp_path, data, backend):
    x, ids, q = data
    coll = Collection.create(tmp_path / "c", ids[:2000], x[:2000], backend=backend, options={"nlist": 20}
                             if backend == "faiss-ivf" else {})
    coll.add(ids[2000:], x[2000:])
    coll.remove(ids[:30])
    exact = Index(x[30:], ids=ids[30:]).search(q, k=100)
    rebuilt = Index(x[30:], ids=ids[30:], backend=backend, **({"nlist": 20} if backend == "faiss-ivf" else {}))

    def recall(r):
        return np.mean([len(set(a) & set(b)) / 100 for a, b in zip(r.ids.tolist(), exact.ids.tolist())])
    got = coll.snapshot().search(q, k=100)
    assert not set(got.ids.ravel().tolist()) & set(ids[:30].tolist())      # removed rows never come back
    assert recall(got) >= recall(rebuilt.search(q, k=100)) - 0.01


@pytest.mark.parametrize("backend", ["exact", "faiss-ivf", "faiss-ivfpq", "faiss-hnsw", "faiss-flat"])
def test_filter_applies_inside_the_search_and_fills_k(tmp_path, data, backend):
    x, ids, q = data
    options = {"nlist": 40, "nprobe": 1} if backend.startswith("faiss-ivf") else {}
    coll = Collection.create(tmp_path / "c", ids, x, backend=backend, options=options, metadata=labels(len(x)))
    snap = coll.snapshot()
    # 1 row in 100 passes: a post-filtered top 100 would hold almost none
    where = ["n>=1000", "n<1026"]
    ranking = snap.search(q, k=20, where=where)
    allowed = {f"im{i:05d}" for i in range(1000, 1026)}
    assert (ranking.indices >= 0).all(), "k results whenever k pass"
    assert set(ranking.ids.ravel().tolist()) <= allowed
    if backend in ("exact", "faiss-flat"):  # exact backends: the exact top 20 of the allowed rows
        sub = np.array(sorted(allowed))
        want = Index(x[1000:1026], ids=sub).search(q, k=20)
        np.testing.assert_array_equal(ranking.ids, want.ids)
    few = snap.search(q, k=20, where=["label=c3", "n<30"])  # 4 rows pass: 4 results, the rest missing
    assert ((few.indices >= 0).sum(axis=1) == 4).all()


def test_metadata_filters_parse_compare_and_refuse_typos():
    meta = Metadata.from_records([{"date": "2024-03-01 10:00:00", "n": "9", "folder": "trips/2024"},
                                  {"date": "2023-12-31 23:59:59", "n": "10", "folder": "trips/2023/x"},
                                  {"n": "100"}])
    assert meta.mask(["date>=2024-01-01"]).tolist() == [True, False, False]      # unknown date meets nothing
    assert meta.mask("n<20").tolist() == [True, True, False]                     # numbers compare as numbers
    assert meta.mask("folder~trips/2023").tolist() == [False, True, False]
    assert meta.mask("date!=2024-03-01 10:00:00").tolist() == [False, True, True]
    with pytest.raises(ValueError, match="no metadata column 'lable'"):
        meta.mask("lable=cat")
    with pytest.raises(ValueError, match="COLUMN OP VALUE"):
        parse_where("just-a-word")


def test_ids_stay_unique_and_replace_replaces(tmp_path, data):
    x, ids, q = data
    coll = Collection.create(tmp_path / "c", ids[:100], x[:100])
    with pytest.raises(ValueError, match="already in the collection"):
        coll.add(ids[50:60], x[500:510])
    coll.add(ids[50:60], x[500:510], replace=True)
    snap = coll.snapshot()
    assert len(snap.index) == 100
    assert snap.search(x[500:501], k=1).ids[0, 0] == ids[50]
    with pytest.raises(KeyError, match="nosuch"):
        coll.remove(["nosuch"])
    with pytest.raises(ValueError, match="dimension"):
        coll.add(["new"], np.ones((1, 5), np.float32))


def test_one_writer_at_a_time(tmp_path, data):
    from retrieval.core.fileio import exclusive_lock

    x, ids, _ = data
    coll = Collection.create(tmp_path / "c", ids[:100], x[:100])
    with exclusive_lock(tmp_path / "c" / ".writer.lock", tmp_path / "c"):   # another writer holds it
        with pytest.raises(CollectionError, match="in use by another process"):
            coll.add(["new"], x[200:201])
    coll.add(["new"], x[200:201])
    assert coll.info()["live"] == 101


CHILD = textwrap.dedent("""
    import os, sys, numpy as np
    import retrieval.indexing.collection as c
    step, action = sys.argv[2], sys.argv[3]
    def stop(name):
        if name == step:
            os._exit(9)  # a kill: no cleanup, no exception handlers
    c._fault_point = stop
    x = np.load(sys.argv[4])
    coll = c.Collection(sys.argv[1])
    if action == "add":
        coll.add(["im00000", "extra"], x[:2], local_store=sys.argv[5], replace=True)
    elif action == "remove":
        coll.remove(["im00001"])
    else:
        coll.compact()
""")


@pytest.mark.parametrize("action,steps", [
    ("add", ["removed-written", "segment-written", "local-written", "before-commit", "after-commit"]),
    ("remove", ["before-commit", "after-commit"]),
    ("compact", ["segment-written", "before-commit", "after-commit"])])
def test_a_kill_at_every_write_point_leaves_before_or_after(tmp_path, data, action, steps):
    from retrieval.features.local import LocalFeatures
    from retrieval.features.store import LocalFeatureStore

    x, ids, q = data
    np.save(tmp_path / "x.npy", x[2500:2502])
    store = tmp_path / "local.h5"
    with LocalFeatureStore(store, mode="a", config={"type": "sift"}) as s:
        for i in ("im00000", "extra"):
            s.put(i, LocalFeatures(np.zeros((3, 4), np.float32), np.ones((3, 128), np.float32), (10, 10)))
    for step in steps:
        folder = tmp_path / f"c-{action}-{step}"
        coll = Collection.create(folder, ids[:200], x[:200])
        coll.remove(ids[5:6])
        before = coll.snapshot().search(q, k=30)
        proc = subprocess.run([sys.executable, "-c", CHILD, str(folder), step, action, str(tmp_path / "x.npy"),
                               str(store)], capture_output=True, text=True)
        assert proc.returncode == 9, proc.stderr
        snap = Collection(folder).snapshot(verify=True)      # opens, checksums hold
        after = snap.search(q, k=30)
        committed = step == "after-commit"
        assert snap.generation == (3 if committed else 2), step
        if not committed:
            np.testing.assert_array_equal(after.ids, before.ids)
        # the next writer cleans up what the killed one left, and works
        Collection(folder).add(["later"], x[2599:2600])
        left = {p.name for p in folder.iterdir()}
        assert not [n for n in left if n.endswith(".tmp")], left
        assert len(Collection(folder).snapshot(verify=True).index) == len(snap.index) + 1


def test_damaged_files_are_named(tmp_path, data):
    x, ids, _ = data
    coll = Collection.create(tmp_path / "c", ids[:100], x[:100])
    coll.add(ids[100:110], x[100:110])
    seg = sorted((tmp_path / "c").glob("seg-*.npz"))[-1]
    raw = bytearray(seg.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    seg.write_bytes(bytes(raw))
    with pytest.raises(CollectionError, match=seg.name):
        Collection(tmp_path / "c").snapshot(verify=True)
    manifest = tmp_path / "c" / "collection.json"
    manifest.write_text(manifest.read_text().replace('"generation": 2', '"generation": 7'))
    with pytest.raises(CollectionError, match="checksum mismatch"):
        Collection(tmp_path / "c")
    with pytest.raises(ValueError, match="holds no metadata"):
        Index(x[:10]).save(tmp_path / "i.npz") and open_index(tmp_path / "i.npz", where=["a=b"])


def test_refresh_reads_only_what_was_appended(tmp_path, data):
    x, ids, q = data
    coll = Collection.create(tmp_path / "c", ids[:1000], x[:1000], backend="faiss-ivf", options={"nlist": 16})
    first = coll.snapshot()
    coll.add(ids[1000:1010], x[1000:1010])
    second = coll.snapshot(previous=first)
    assert second._all["vectors"][:1000] is not None and len(second.index) == 1010
    assert len(first.index) == 1000                       # the old snapshot is untouched (a server may use it)
    assert second.search(x[1005:1006], k=1).ids[0, 0] == ids[1005]
    assert coll.drift()["added_rows"] == 10


def test_cli_add_remove_and_one_line_errors(tmp_path, data):
    from retrieval.features.store import save_global

    x, ids, _ = data
    save_global(tmp_path / "db.h5", ids[:100].tolist(), x[:100], config={"extractor": "test"})
    save_global(tmp_path / "more.h5", ids[100:120].tolist(), x[100:120], config={"extractor": "test"})
    save_global(tmp_path / "other.h5", ids[200:210].tolist(), x[200:210], config={"extractor": "other"})
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "retrieval.cli", "--quiet", *args], capture_output=True, text=True,
                              env=env)
    folder = tmp_path / "coll"
    (tmp_path / "labels.csv").write_text("id,label\n" + "".join(f"{i},c{n % 7}\n" for n, i in enumerate(ids[:100])))
    assert cli("index", "build", str(tmp_path / "db.h5"), "--out", str(folder), "--collection", "--labels",
               str(tmp_path / "labels.csv")).returncode == 0
    proc = cli("search", str(folder), str(tmp_path / "more.h5"), "--k", "5", "--where", "label=c3", "--out",
               str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stderr
    import json
    found = {i for row in json.loads((tmp_path / "r.json").read_text())["ids"] for i in row}
    assert found and found <= {i for n, i in enumerate(ids[:100]) if n % 7 == 3}
    assert cli("add", str(folder), "--features", str(tmp_path / "more.h5")).returncode == 0
    for args, message in [(("add", str(folder), "--features", str(tmp_path / "other.h5")), "not comparable"),
                          (("remove", str(folder), "--ids", "nosuch"), "nosuch"),
                          (("add", str(tmp_path), "--features", str(tmp_path / "more.h5")), "not a collection")]:
        proc = cli(*args)
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    proc = cli("collection", "info", str(folder))
    assert '"live": 120' in proc.stdout
