"""The exact backend's bfloat16 pre-selection (retrieval.indexing.exact_bf16) returns the float32 top k:
same rows, scores within float32 rounding, ties ordered by lower row, on clustered, isotropic and
duplicated vectors; the error bound holds for the GEMM actually used."""
import numpy as np
import pytest
import torch

from retrieval.indexing.exact_bf16 import bf16_available, error_bound, topk_bf16
from retrieval.indexing.exact import exact_search
from retrieval.indexing.index import Index
from retrieval.scale.sources import unit_vectors


def _cases():
    rng = np.random.default_rng(3)
    centres = unit_vectors(rng, 40, 256)
    clustered = unit_vectors(rng, 6000, 256, centres, 0.5), unit_vectors(rng, 50, 256, centres, 0.5)
    isotropic = unit_vectors(rng, 6000, 256), unit_vectors(rng, 50, 256)
    # exact duplicates: every score appears several times, so the tie order decides the rows
    base = unit_vectors(rng, 1500, 256, centres, 0.3)
    duplicated = np.repeat(base, 4, axis=0), base[:50].copy()
    return {"clustered": clustered, "isotropic": isotropic, "duplicated": duplicated}


CASES = _cases()


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("k", [1, 10, 100])
def test_bf16_preselection_gives_the_float32_top_k(case, k):
    database, queries = CASES[case]
    want_scores, want_rows, _ = exact_search(database, queries, k)
    scores, rows, candidates = topk_bf16(database, torch.from_numpy(database).bfloat16(), queries, k, query_block=16)
    np.testing.assert_allclose(scores, want_scores, atol=2e-6)
    # rows equal wherever the float32 scores are not tied within rounding
    gap = np.abs(np.diff(want_scores, axis=1))
    separated = np.ones_like(want_rows, dtype=bool)
    separated[:, 1:] &= gap > 2e-6
    separated[:, :-1] &= gap > 2e-6
    assert np.array_equal(rows[separated], want_rows[separated])
    assert k <= candidates < len(database)
    if case == "duplicated":  # the four copies of a vector come lowest row first
        assert np.all(np.diff(rows[:, :4], axis=1) > 0)


def test_error_bound_covers_the_gemm():
    rng = np.random.default_rng(0)
    a, b = unit_vectors(rng, 64, 1280), unit_vectors(rng, 3000, 1280)
    b[:64] = a + 1e-3 * unit_vectors(rng, 64, 1280)  # nearly parallel pairs: the largest products
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    exact = a.astype(np.float64) @ b.T.astype(np.float64)
    approx = torch.mm(torch.from_numpy(a).bfloat16(), torch.from_numpy(b).bfloat16().T).float().numpy()
    assert np.abs(approx - exact).max() <= error_bound(1280, np.ones(1), 1.0)[0]


@pytest.mark.skipif(not bf16_available(), reason="no native bfloat16 on this CPU: the index keeps float32")
def test_index_uses_bf16_where_available_and_float32_on_request():
    database, queries = CASES["clustered"]
    index = Index(database, normalize=False)
    index.search(queries, k=20)
    assert index.last_precision == "float32"  # "auto": 6,000 rows are too few to gain
    index = Index(database, normalize=False, precision="bfloat16")
    auto = index.search(queries, k=20)
    assert index.last_precision == "bfloat16" and index.last_candidates >= 20
    plain = index.search(queries, k=20, precision="float32")
    assert index.last_precision == "float32"
    np.testing.assert_array_equal(auto.indices, plain.indices)
    np.testing.assert_allclose(auto.scores, plain.scores, atol=2e-6)
    index.add(database[:10] * -1.0, ids=list(range(6000, 6010)))  # a new database state
    again = index.search(-queries[:1], k=5)
    assert index.last_precision == "bfloat16"
    assert set(again.ids[0].tolist()) & set(range(6000, 6010))


def test_bad_precision_is_a_clear_error():
    with pytest.raises(ValueError, match="precision"):
        Index(np.eye(4, dtype=np.float32), precision="half")


@pytest.mark.skipif(not bf16_available(), reason="no native bfloat16 on this CPU: the index keeps float32")
def test_auto_keeps_float32_where_candidates_crowd():
    rng = np.random.default_rng(5)
    # isotropic vectors: scores crowd near the k-th, re-scoring would cost more than it saves
    database, queries = unit_vectors(rng, 9000, 256), unit_vectors(rng, 40, 256)
    index = Index(database, normalize=False)
    crowded = index.search(queries, k=10)
    assert index.last_precision == "float32"
    forced = index.search(queries, k=10, precision="bfloat16")
    assert index.last_precision == "bfloat16" and index.last_candidates > 9000 / 256
    np.testing.assert_array_equal(crowded.indices, forced.indices)
