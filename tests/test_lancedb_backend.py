"""The LanceDB backend (retrieval.indexing.lancedb_backend) on small seeded clustered vectors: exact at
full-recall settings, filters applied inside the search (only allowed rows, k of them when k pass),
add / remove with stable row numbers, reopening from disk. Skipped without the vectordb extra."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lancedb")

from retrieval.core.fileio import FileFormatError  # noqa: E402
from retrieval.indexing import lancedb_backend as ldb  # noqa: E402
from retrieval.indexing.lancedb_options import LanceDBOptions  # noqa: E402
from retrieval.core.config import ConfigError  # noqa: E402

N, D, K = 3000, 32, 10
ROOT = Path(__file__).resolve().parent.parent


def clustered(rng, n, centres):
    x = centres[rng.integers(0, len(centres), n)] + rng.standard_normal((n, D), dtype=np.float32) * 0.1
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((20, D), dtype=np.float32)
    return clustered(rng, N, centres), clustered(rng, 40, centres), rng.integers(0, 100, N).astype(np.int32)


def exact(x, q, k, allowed=None):
    s = q @ x.T
    if allowed is not None:
        s = np.where(allowed[None, :], s, -np.inf)
    rows = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, rows, axis=1), rows


# every list probed, candidates re-scored with the full vectors, no exact shortcut for filters
FULL = dict(index_type="IVF_PQ", num_partitions=8, num_sub_vectors=8, nprobes=8, refine_factor=50, exact_below=0,
            max_iterations=10)


@pytest.fixture(scope="module")
def store(data, tmp_path_factory):
    x, _, bucket = data
    return ldb.build(x, tmp_path_factory.mktemp("lance"), LanceDBOptions(**FULL), columns={"bucket": bucket})


def test_search_equals_exact_at_full_recall(store, data):
    x, q, _ = data
    scores, rows = ldb.search(store, q, K)
    ref_scores, ref_rows = exact(x, q, K)
    assert rows.dtype == np.int64 and scores.dtype == np.float32 and rows.shape == (len(q), K)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    assert (rows == ref_rows).mean() > 0.99  # ties within float error may swap
    one_scores, one_rows = ldb.search(store, q[:1], K)  # a single query goes the same way
    np.testing.assert_array_equal(one_rows, rows[:1])


@pytest.mark.parametrize("exact_below", [0, 10_000])
@pytest.mark.parametrize("fraction", [0.004, 0.1, 0.6])
def test_mask_filter_inside_search(store, data, fraction, exact_below):
    x, q, _ = data
    allowed = np.random.default_rng(1).random(N) < fraction
    opt = store.options.with_search(exact_below=exact_below)
    scores, rows = ldb.search(store, q, K, opt, allowed=allowed)
    passing = int(allowed.sum())
    got = (rows >= 0).sum(axis=1)
    assert (got == min(K, passing)).all()  # k results whenever k pass; all of them when fewer pass
    assert allowed[rows[rows >= 0]].all()
    assert np.isneginf(scores[rows < 0]).all()
    ref_scores, _ = exact(x, q, K, allowed)
    np.testing.assert_allclose(scores[rows >= 0], ref_scores[rows >= 0], atol=1e-5)


def test_column_predicate_and_mask_combined(store, data):
    x, q, bucket = data
    allowed = np.arange(N) % 2 == 0
    scores, rows = ldb.search(store, q, K, allowed=allowed, where="bucket < 30")
    assert (rows >= 0).all() and allowed[rows].all() and (bucket[rows] < 30).all()
    ref_scores, _ = exact(x, q, K, allowed & (bucket < 30))
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_add_remove_reopen(data, tmp_path):
    x, q, _ = data
    opt = LanceDBOptions(**{**FULL, "num_partitions": 4})
    st = ldb.build(x[:2000], tmp_path / "db", opt)
    new_rows = ldb.add(st, x[2000:])
    np.testing.assert_array_equal(new_rows, np.arange(2000, N))
    _, rows = ldb.search(st, x[2500:2501], K)
    assert 2500 in rows[0]  # an added vector is found before the index is updated
    ldb.reindex(st)
    gone = np.arange(0, N, 3)
    assert ldb.remove(st, gone) == N - len(gone)
    reopened = ldb.open_store(tmp_path / "db")
    assert ldb.num_rows_total(reopened) == N  # removed rows keep their numbers
    alive = np.ones(N, bool)
    alive[gone] = False
    scores, rows = ldb.search(reopened, q, K)
    assert not np.isin(rows, gone).any()
    np.testing.assert_allclose(scores, exact(x, q, K, alive)[0], atol=1e-5)
    _, rows = ldb.search(reopened, x[[1, 2]], K)  # rows are not renumbered after the removal
    assert 1 in rows[0] and 2 in rows[1]


def test_damaged_header_and_bad_options(store, tmp_path):
    header = json.loads((store.path / ldb.HEADER).read_text())
    header["next_row"] += 1
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / ldb.HEADER).write_text(json.dumps(header))
    with pytest.raises(FileFormatError, match="checksum"):
        ldb.open_store(bad)
    with pytest.raises(ConfigError, match="index_type"):
        LanceDBOptions(index_type="HNSW")
    with pytest.raises(ConfigError, match="not a search option"):
        store.options.with_search(num_partitions=3)
    with pytest.raises(ValueError, match="bool mask"):
        ldb.search(store, np.zeros((1, D), np.float32), K, allowed=np.ones(5, bool))


def _bench(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "vector_db.py"), *map(str, argv)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


@pytest.mark.slow
def test_bench_vector_db_on_small_vectors(tmp_path):
    done = _bench("--n", 3000, "--dim", 16, "--queries", 30, "--single", 5, "--clusters", 20, "--k", 10,
                  "--work", tmp_path / "work", "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["recall@k"] for r in results["rows"] if r["setting"] == "exact"] == [1.0]
    assert {r["backend"].split()[0] for r in results["rows"]} == {"faiss", "LanceDB"}
    for r in results["filtered"]:   # every filter passes >= 30 rows here: k results, all allowed
        assert r["all_k"] and r["only_allowed"], r
    assert "Filtered search" in (tmp_path / "out" / "results.md").read_text()


def test_bench_vector_db_refuses_an_unknown_backend(tmp_path):
    done = _bench("--backends", "qdrant", "--out", tmp_path / "out")
    assert done.returncode == 2
    assert done.stderr.strip().startswith("retrieval: error: --backends: unknown backend(s) ['qdrant']")


def test_large_mask_is_scored_exactly_by_a_scan(store, data, monkeypatch):
    x, q, bucket = data
    monkeypatch.setattr(ldb, "MASK_IN_LIMIT", 0)  # every mask takes the streamed scan
    allowed = np.random.default_rng(3).random(N) < 0.3
    scores, rows = ldb.search(store, q, K, store.options.with_search(exact_below=0), allowed=allowed,
                              where="bucket >= 20")
    ref_scores, ref_rows = exact(x, q, K, allowed & (bucket >= 20))
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    assert (rows == ref_rows).mean() > 0.99


def test_lancedb_is_an_index_backend_of_the_step_chain(tmp_path, data):
    """retrieval index build --backend lancedb, then retrieval search: the same ranking as the exact Index
    (ids and scores), added vectors found at once, a damaged id table named."""
    from retrieval.features.store import save_global
    from retrieval.indexing.index import Index
    from retrieval.indexing.lancedb_index import LanceDBIndex
    from retrieval.indexing.ranking import IndexFileError, Ranking

    x, q, _ = data
    ids = [f"im{i}" for i in range(len(x))]
    save_global(tmp_path / "db.h5", ids, x, config={"extractor": "test"})
    save_global(tmp_path / "q.h5", [f"q{i}" for i in range(len(q))], q, config={"extractor": "test"})
    run = [sys.executable, "-m", "retrieval.cli", "--quiet"]
    subprocess.run(run + ["index", "build", str(tmp_path / "db.h5"), "--backend", "lancedb", "--out",
                          str(tmp_path / "ldb"), "--option", "index_type=IVF_FLAT", "--option", "num_partitions=4", "--option", "nprobes=4"],
                   check=True, capture_output=True)
    proc = subprocess.run(run + ["search", str(tmp_path / "ldb"), str(tmp_path / "q.h5"), "--k", "10", "--out",
                                 str(tmp_path / "r.rank")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    got, want = Ranking.load(tmp_path / "r.rank"), Index(x, ids=ids).search(q, k=10)
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
    index = LanceDBIndex.open(tmp_path / "ldb")
    index.add(q[:2] * 3, ["new0", "new1"])
    assert LanceDBIndex.open(tmp_path / "ldb").search(q[:2], k=1).ids[:, 0].tolist() == ["new0", "new1"]
    (tmp_path / "ldb" / "ids.npy").write_bytes(b"\x80\x04 not an array")
    with pytest.raises(IndexFileError, match="ids.npy"):
        LanceDBIndex.open(tmp_path / "ldb")
