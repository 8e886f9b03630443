"""The ranking stage: exact search against a brute-force reference (ties included), the faiss
backends, input checks and index / ranking files."""
import json
import sys

import numpy as np
import pytest

from retrieval import Index, Ranking
from retrieval.indexing.index import BACKENDS, IndexFileError, exact_block_shape, exact_search

faiss = pytest.importorskip("faiss")


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference_topk(db, queries, k):
    """Full stable sort of every score row: best first, equal scores by lower row."""
    scores = queries.astype(np.float32) @ db.astype(np.float32).T
    rows = np.stack([np.lexsort((np.arange(len(db)), -s))[:k] for s in scores])
    return np.take_along_axis(scores, rows, 1), rows


def assert_same_up_to_ties(ranking, ref_scores, ref_rows, tol=1e-5):
    np.testing.assert_allclose(ranking.scores, ref_scores, atol=tol)
    # ids may only differ where the scores are (nearly) tied
    differ = ranking.indices != ref_rows
    if differ.any():
        q, j = np.nonzero(differ)
        neighbours = np.minimum(np.abs(ref_scores[q, j] - np.roll(ref_scores, 1, axis=1)[q, j]),
                                np.abs(ref_scores[q, j] - np.roll(ref_scores, -1, axis=1)[q, j]))
        assert (neighbours < tol).all()


# ---------------------------------------------------------------- exact search

def test_exact_matches_brute_force_and_faiss_flat(rng):
    db, q = unit(rng, 2000, 48), unit(rng, 37, 48)
    exact = Index(db).search(q, k=25)
    ref_scores, ref_rows = reference_topk(db, q, 25)
    assert_same_up_to_ties(exact, ref_scores, ref_rows)
    assert exact.ids.shape == exact.scores.shape == exact.indices.shape == (37, 25)
    assert (np.diff(exact.scores, axis=1) <= 0).all()           # best first
    flat = Index(db, backend="faiss-flat").search(q, k=25)
    assert_same_up_to_ties(flat, exact.scores, exact.indices)


def test_exact_ties_lower_row_first_also_at_the_cut(rng):
    # one-hot database rows: every query scores rows j, j+8, j+16, ... exactly equally, so the
    # k-th place falls inside a run of ties
    d, n = 8, 100
    db = np.eye(d, dtype=np.float32)[np.arange(n) % d]
    q = unit(rng, 5, d)
    for k in (1, 7, 30, 99, 100):
        ranking = Index(db, normalize=False).search(q, k=k)
        ref_scores, ref_rows = reference_topk(db, q, k)
        np.testing.assert_array_equal(ranking.indices, ref_rows)
        np.testing.assert_array_equal(ranking.scores, ref_scores)


@pytest.mark.parametrize("memory_mb", [0.01, 0.05, 1.0])
def test_blocked_search_equals_unblocked(rng, memory_mb):
    # entries on a 1/16 grid: every product and partial sum is exact in float32, so a duplicated row
    # ties with its copy whatever order the BLAS kernel of a block shape accumulates in
    db = np.round(unit(rng, 3000, 16) * 16) / 16
    db[1500:1600] = db[:100]                                 # duplicates -> exact ties across blocks
    q = np.concatenate([np.round(unit(rng, 150, 16) * 16) / 16, db[:10]]).astype(np.float32)
    whole_scores, whole_rows, whole_shape = exact_search(db, q, 20, memory_mb=1024)
    assert whole_shape == (160, 3000)
    scores, rows, shape = exact_search(db, q, 20, memory_mb=memory_mb)
    # the score block held at once stays within the budget (or the minimum useful block)
    assert shape[0] * shape[1] * 4 <= max(memory_mb * 2 ** 20, 64 * 20 * 4)
    if memory_mb < 1:
        assert shape[1] < 3000                              # the database really was cut
    np.testing.assert_array_equal(rows, whole_rows)
    np.testing.assert_array_equal(scores, whole_scores)
    # a duplicated database row ties with its copy: the lower row comes first
    first = rows[150:, 0]
    np.testing.assert_array_equal(first, np.arange(10))
    np.testing.assert_array_equal(rows[150:, 1], np.arange(1500, 1510))


def test_block_shape_from_memory_budget():
    assert exact_block_shape(1000, 100_000, 100, memory_mb=512) == (1000, 100_000)
    qb, dbb = exact_block_shape(1000, 100_000, 100, memory_mb=64)
    assert dbb == 100_000 and qb * dbb * 4 <= 64 * 2 ** 20
    qb, dbb = exact_block_shape(1000, 10_000_000, 100, memory_mb=64)
    assert qb == 64 and qb * dbb * 4 <= 64 * 2 ** 20


def test_normalize_option(rng):
    raw = rng.standard_normal((50, 6)).astype(np.float32) * 3
    q = rng.standard_normal((4, 6)).astype(np.float32) * 5
    ranking = Index(raw).search(q, k=50)           # normalize=True: cosine similarity
    cos = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (raw / np.linalg.norm(raw, axis=1, keepdims=True)).T
    np.testing.assert_allclose(ranking.scores, -np.sort(-cos, axis=1), atol=1e-5)
    with pytest.raises(ValueError, match="not L2-normalised"):
        Index(raw, normalize=False)
    index = Index(raw / np.linalg.norm(raw, axis=1, keepdims=True), normalize=False)
    with pytest.raises(ValueError, match="query vectors are not L2-normalised"):
        index.search(q, k=3)
    with pytest.raises(ValueError, match="all zero"):
        Index(np.zeros((3, 4), np.float32))


def test_input_validation(rng):
    db = unit(rng, 20, 8)
    index = Index(db)
    with pytest.raises(ValueError, match="dimension 5 but the index has dimension 8"):
        index.search(unit(rng, 2, 5))
    with pytest.raises(ValueError, match="NaN or infinite"):
        bad = db.copy(); bad[3, 1] = np.nan
        Index(bad)
    with pytest.raises(ValueError, match="2-D"):
        index.search(db[0])
    with pytest.raises(ValueError, match="floating-point"):
        Index(np.ones((3, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="k must be"):
        index.search(db, k=0)
    with pytest.raises(ValueError, match="unknown backend"):
        Index(db, backend="annoy")
    with pytest.raises(ValueError, match="no option 'nprobe'"):
        Index(db, backend="exact", nprobe=4)
    with pytest.raises(ValueError, match="unique"):
        Index(db[:3], ids=["a", "b", "a"])
    with pytest.raises(ValueError, match="all strings or all integers"):
        Index(db[:2], ids=["a", 1])
    with pytest.raises(ValueError, match="3 ids given for 20 vectors"):
        Index(db, ids=["a", "b", "c"])
    # float64 and torch input are accepted and stored as float32
    import torch
    assert Index(db.astype(np.float64)).vectors.dtype == np.float32
    assert Index(torch.from_numpy(db)).search(torch.from_numpy(db[:2]), 1).indices[:, 0].tolist() == [0, 1]


def test_k_clamped_and_empty_inputs(rng):
    db = unit(rng, 5, 4)
    ranking = Index(db, ids=list("abcde")).search(db, k=100)
    assert ranking.ids.shape == (5, 5)
    assert ranking.ids[:, 0].tolist() == list("abcde")
    empty_queries = Index(db).search(np.zeros((0, 4), np.float32), k=3)
    assert empty_queries.ids.shape == (0, 3)
    empty_db = Index(np.zeros((0, 4), np.float32))
    assert len(empty_db) == 0
    ranking = empty_db.search(db, k=3)
    assert ranking.ids.shape == (5, 0) and ranking.to_predictions() == {i: [] for i in range(5)}
    with pytest.raises(ValueError, match="cannot be built"):
        Index(np.zeros((0, 4), np.float32), backend="faiss-ivf")


@pytest.mark.parametrize("backend", ["exact", "faiss-flat", "faiss-hnsw"])
def test_add_incrementally_equals_building_at_once(rng, backend):
    db, q = unit(rng, 300, 16), unit(rng, 6, 16)
    ids = [f"img{i}" for i in range(300)]
    whole = Index(db, ids=ids, backend=backend).search(q, k=10)
    index = Index(np.zeros((0, 16), np.float32), backend=backend)
    index.add(db[:100], ids[:100])
    index.add(db[100:], ids[100:])
    part = index.search(q, k=10)
    np.testing.assert_array_equal(part.ids, whole.ids)
    with pytest.raises(ValueError, match="already in the index"):
        index.add(db[:1], ["img5"])
    with pytest.raises(ValueError, match="string ids"):
        index.add(db[:1])
    ints = Index(db[:10])
    ints.add(db[10:12])
    assert ints.ids.tolist() == list(range(12))


# ---------------------------------------------------------------- faiss backends

def clustered(rng, n, d, centres=20):
    c = unit(rng, centres, d)
    x = c[rng.integers(0, centres, n)] + 0.15 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("backend,options,min_recall", [
    ("faiss-ivf", {"nlist": 16, "nprobe": 16}, 0.999),   # all lists probed: exact
    ("faiss-ivf", {"nlist": 16, "nprobe": 4}, 0.7),
    ("faiss-ivfpq", {"nlist": 8, "m": 4, "nbits": 8, "nprobe": 8}, 0.25),  # chance: 0.003
    ("faiss-hnsw", {"hnsw_m": 16, "ef_search": 64}, 0.9),
])
def test_approximate_backends_recall(rng, backend, options, min_recall):
    db, q = clustered(rng, 3000, 32), clustered(rng, 40, 32)
    exact = Index(db).search(q, k=10)
    approx = Index(db, backend=backend, **options).search(q, k=10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx.indices.tolist(), exact.indices.tolist())])
    assert recall >= min_recall
    assert (np.diff(approx.scores, axis=1) <= 1e-6).all()


def test_ivfpq_seeded_training_is_reproducible(rng):
    db, q = clustered(rng, 2000, 16), clustered(rng, 10, 16)
    a = Index(db, backend="faiss-ivfpq", nlist=8, m=2, nbits=6, seed=3).search(q, k=5)
    b = Index(db, backend="faiss-ivfpq", nlist=8, m=2, nbits=6, seed=3).search(q, k=5)
    np.testing.assert_array_equal(a.indices, b.indices)
    with pytest.raises(ValueError, match="must divide the dimension"):
        Index(db, backend="faiss-ivfpq", m=5)


def test_search_options_override_per_call(rng):
    db, q = clustered(rng, 2000, 16), clustered(rng, 10, 16)
    index = Index(db, backend="faiss-ivf", nlist=16, nprobe=1)
    full = index.search(q, k=10, nprobe=16)
    np.testing.assert_array_equal(full.indices, Index(db).search(q, k=10).indices)
    with pytest.raises(ValueError, match="not a search option"):
        index.search(q, k=10, nlist=4)


def test_missing_faiss_names_the_extra(rng, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(ImportError, match=r"hybrid-retrieval\[faiss\]"):
        Index(unit(rng, 10, 4), backend="faiss-flat")
    Index(unit(rng, 10, 4)).search(unit(rng, 1, 4), 3)    # exact needs no faiss


# ---------------------------------------------------------------- files

@pytest.mark.parametrize("backend", BACKENDS)
def test_save_load_round_trip(tmp_path, rng, backend):
    db, q = clustered(rng, 1200, 16), clustered(rng, 8, 16)
    options = {"nbits": 6, "m": 4, "nlist": 8} if backend == "faiss-ivfpq" else {}
    config = {"extractor": "efficientnet-lite0", "pool": "gem", "p": 3.0}
    index = Index(db, ids=[f"x{i}" for i in range(1200)], backend=backend, config=config, **options)
    path = index.save(tmp_path / "db.index")
    assert path.exists() and not (tmp_path / "db.index.tmp").exists()
    loaded = Index.load(path, expect_config=config)
    assert (loaded.backend, loaded.dim, len(loaded), loaded.config) == (backend, 16, 1200, config)
    a, b = index.search(q, k=7), loaded.search(q, k=7)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)
    with np.load(path, allow_pickle=False) as npz:     # readable without pickle
        header = json.loads(str(npz["header"]))
    assert header["format_version"] == 1 and header["metric"] == "inner_product"
    assert header["count"] == 1200 and header["dim"] == 16 and len(header["sha256"]) == 64
    with pytest.raises(IndexFileError, match="extractor configuration"):
        Index.load(path, expect_config={"extractor": "sift"})


def test_load_refuses_truncated_altered_and_other_version(tmp_path, rng):
    db = unit(rng, 200, 8)
    path = Index(db, ids=list(range(100, 300))).save(tmp_path / "i.npz")
    raw = path.read_bytes()

    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(IndexFileError, match="truncated or corrupt"):
        Index.load(truncated)

    with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    altered = dict(arrays, vectors=arrays["vectors"].copy())
    altered["vectors"][5, 2] += 0.01
    np.savez(tmp_path / "altered.npz", **altered)
    with pytest.raises(IndexFileError, match="checksum mismatch"):
        Index.load(tmp_path / "altered.npz")

    header = json.loads(str(arrays["header"]))
    header["count"] = 199
    np.savez(tmp_path / "header.npz", **dict(arrays, header=np.array(json.dumps(header))))
    with pytest.raises(IndexFileError, match="checksum mismatch"):
        Index.load(tmp_path / "header.npz")

    header = json.loads(str(arrays["header"]))
    header["format_version"] = 2
    np.savez(tmp_path / "v2.npz", **dict(arrays, header=np.array(json.dumps(header))))
    with pytest.raises(IndexFileError, match="format version 2"):
        Index.load(tmp_path / "v2.npz")

    with pytest.raises(IndexFileError, match="not found"):
        Index.load(tmp_path / "missing.npz")

    loaded = Index.load(path)
    assert loaded.ids.tolist() == list(range(100, 300))
    with pytest.raises(ValueError, match=r"dimension 9 but the index loaded from .*i\.npz has dimension 8"):
        loaded.search(unit(rng, 1, 9))


# ---------------------------------------------------------------- Ranking

def test_ranking_predictions_and_json_round_trip(tmp_path, rng):
    db, q = unit(rng, 30, 8), unit(rng, 3, 8)
    ranking = Index(db, ids=[f"d{i}" for i in range(30)]).search(q, k=4, query_ids=["q0", "q1", "q2"])
    predictions = ranking.to_predictions()
    assert list(predictions) == ["q0", "q1", "q2"]
    assert predictions["q1"] == ranking.ids[1].tolist() and isinstance(predictions["q1"][0], str)
    assert list(ranking.to_predictions(["a", "b", "c"])) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="2 query ids given for a ranking of 3"):
        ranking.to_predictions(["a", "b"])
    path = ranking.save(tmp_path / "ranking.json")
    loaded = Ranking.load(path)
    np.testing.assert_array_equal(loaded.ids, ranking.ids)
    np.testing.assert_array_equal(loaded.scores, ranking.scores)
    np.testing.assert_array_equal(loaded.indices, ranking.indices)
    assert loaded.query_ids == ["q0", "q1", "q2"]
    path.write_text(path.read_text()[:40])
    with pytest.raises(IndexFileError, match="truncated or corrupt"):
        Ranking.load(path)


def test_ranking_missing_entries_dropped(tmp_path):
    ranking = Ranking(ids=np.array([[5, -1]]), scores=np.array([[0.9, -np.inf]]),
                      indices=np.array([[2, -1]]))
    assert ranking.to_predictions(["q"]) == {"q": [5]}
    loaded = Ranking.load(ranking.save(tmp_path / "r.json"))
    assert loaded.scores[0, 1] == -np.inf and loaded.ids.dtype == np.int64
    with pytest.raises(ValueError, match=r"\(Q, k\)"):
        Ranking(ids=np.zeros((2, 3)), scores=np.zeros((2, 2)), indices=np.zeros((2, 3)))
