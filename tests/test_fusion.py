"""Normalisation, fusion, the DELG rule and sweeps over the cached shortlist."""
import json

import numpy as np
import pytest

from retrieval.features.store import FeatureFileError
from retrieval.rerank.fusion import FusionConfig, delg_order, fuse, fusion_order, normalise_scores, rerank
from retrieval.rerank.shortlist import Shortlist


def test_normalisations_by_hand():
    s = np.array([[0.0, 5.0, 10.0, 40.0], [3.0, 3.0, 3.0, 3.0]])
    np.testing.assert_allclose(normalise_scores(s, "minmax"), [[0, 0.125, 0.25, 1], [0, 0, 0, 0]])
    np.testing.assert_allclose(normalise_scores(s, "saturate", T=20), [[0, 0.25, 0.5, 1], [0.15] * 4])
    np.testing.assert_allclose(normalise_scores(s, "exp", T=10),
                               [[0, 1 - np.exp(-0.5), 1 - np.exp(-1), 1 - np.exp(-4)], [1 - np.exp(-0.3)] * 4])
    z = normalise_scores(s, "zscore")
    m, sd = 13.75, np.std([0, 5, 10, 40])
    np.testing.assert_allclose(z[0], (s[0] - m) / sd)
    np.testing.assert_array_equal(z[1], 0)
    np.testing.assert_array_equal(normalise_scores(s, "none"), s)
    np.testing.assert_allclose(normalise_scores([2.0, 4.0], "minmax"), [0, 1])  # 1-D = one row
    with pytest.raises(ValueError, match="scale T"):
        normalise_scores(s, "saturate")
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalise_scores(s, "softmax")


def test_fuse_and_order_by_hand():
    g = np.array([[0.9, 0.8, 0.7, 0.6]])
    l = np.array([[0.0, 10.0, 40.0, 20.0]])  # minmax -> 0, .25, 1, .5
    fused = fuse(g, l, 0.4, "minmax")
    np.testing.assert_allclose(fused, [[0.36, 0.32 + 0.15, 0.28 + 0.6, 0.24 + 0.3]])
    np.testing.assert_array_equal(fusion_order(fused), [[2, 3, 1, 0]])
    # v = 1: global order; v = 0: local order
    np.testing.assert_array_equal(fusion_order(fuse(g, l, 1.0)), [[0, 1, 2, 3]])
    np.testing.assert_array_equal(fusion_order(fuse(g, l, 0.0)), [[2, 3, 1, 0]])
    # ties keep the global order
    np.testing.assert_array_equal(fusion_order(fuse(g, np.array([[5.0, 9.0, 9.0, 5.0]]), 0.0)), [[1, 2, 0, 3]])
    # global min-max
    np.testing.assert_allclose(fuse(g, l, 1.0, global_norm="minmax"), [[1, 2 / 3, 1 / 3, 0]])
    with pytest.raises(ValueError, match="NaN"):
        fuse(g, np.array([[1, np.nan, 2, 3]]), 0.5)
    with pytest.raises(ValueError, match="v must be"):
        fuse(g, l, 1.5)


def test_delg_rule_by_hand():
    inliers = np.array([[3, 30, 12, 0, 12, 8], [1, 2, 3, 4, 5, 6]])
    # threshold 10: [30, 12, 12] first by inliers (tie 2 before 4: global order), then 0, 3, 5 in global order
    np.testing.assert_array_equal(delg_order(inliers, 10), [[1, 2, 4, 0, 3, 5], [0, 1, 2, 3, 4, 5]])
    np.testing.assert_array_equal(delg_order(inliers, 0)[1], [5, 4, 3, 2, 1, 0])


def _shortlist():
    # 3 queries, k = 4, database of 6 ids: shortlist in global order + tail of 2
    db = np.array([["a", "b", "c", "d"], ["c", "a", "e", "f"], ["f", "e", "d", "c"]])
    tail = np.array([["e", "f"], ["b", "d"], ["a", "b"]])
    g = np.array([[0.9, 0.8, 0.7, 0.6], [0.5, 0.4, 0.3, 0.2], [0.99, 0.98, 0.97, 0.96]])
    sl = Shortlist(["q1", "q2", "q3"], db, g, tail, config={"k": 4, "global": "test"})
    sl.set_local_scores("inliers", [[0, 10, 40, 20], [7, 7, 7, 7], [0, 0, 50, 0]])
    return sl


def test_rerank_keeps_tail_and_handles_constant_scores():
    sl = _shortlist()
    preds = rerank(sl, FusionConfig("linear", v=0.4, norm="minmax"), "inliers")
    assert preds["q1"] == ["c", "d", "b", "a", "e", "f"]
    assert preds["q2"] == ["c", "a", "e", "f", "b", "d"]  # all equal local scores: global order
    assert preds["q3"] == ["d", "f", "e", "c", "a", "b"]
    assert rerank(sl, FusionConfig("linear", v=1.0)) == sl.predictions()
    d = rerank(sl, FusionConfig("delg", threshold=15))
    assert d["q1"] == ["c", "d", "a", "b", "e", "f"] and d["q2"] == sl.predictions()["q2"]


def test_fusions_resort_from_cache(tmp_path):
    sl = _shortlist()
    path = sl.save(tmp_path / "sl")
    assert path.name == "sl.npz" and (tmp_path / "sl.json").is_file()
    loaded = Shortlist.load(tmp_path / "sl", expect_config={"k": 4, "global": "test"})
    np.testing.assert_array_equal(loaded.db_ids, sl.db_ids)
    np.testing.assert_array_equal(loaded.local_scores("inliers"), sl.local_scores("inliers"))
    results = {v: rerank(loaded, FusionConfig("linear", v=v, norm="saturate", T=20)) for v in (0.0, 0.4, 1.0)}
    assert results[1.0] == sl.predictions()
    assert results[0.0]["q1"][:4] == ["c", "d", "b", "a"]
    for v, preds in results.items():
        assert preds == rerank(sl, FusionConfig("linear", v=v, norm="saturate", T=20))
        for q in sl.query_ids:
            assert sorted(preds[q]) == sorted(sl.predictions()[q])  # a permutation, nothing lost


def test_shortlist_cache_refuses_stale_and_tampered(tmp_path):
    sl = _shortlist()
    sl.save(tmp_path / "sl")
    with pytest.raises(FeatureFileError, match="configuration"):
        Shortlist.load(tmp_path / "sl", expect_config={"k": 100})
    # edited arrays: the digest in the JSON no longer matches
    other = _shortlist()
    other.global_scores[0, 0] = 0.1
    np.savez(tmp_path / "sl.npz", **other._arrays())
    with pytest.raises(FeatureFileError, match="do not match"):
        Shortlist.load(tmp_path / "sl")
    (tmp_path / "sl.json").write_text("{not json")
    with pytest.raises(FeatureFileError, match="JSON"):
        Shortlist.load(tmp_path / "sl")
    (tmp_path / "sl.json").unlink()
    with pytest.raises(FeatureFileError, match="missing"):
        Shortlist.load(tmp_path / "sl")
    (tmp_path / "x.json").write_text(json.dumps({"format": "something else"}))
    (tmp_path / "x.npz").write_bytes(b"")
    with pytest.raises(FeatureFileError, match="not a"):
        Shortlist.load(tmp_path / "x")


def test_pending_rows_resume(tmp_path):
    sl = _shortlist()
    sl.add_local("ratio")
    assert sl.pending("ratio") == [0, 1, 2]
    sl.set_local("ratio", 1, [0.1, 0.2, 0.3, 0.4])
    sl.save(tmp_path / "sl")
    again = Shortlist.load(tmp_path / "sl")
    assert again.pending("ratio") == [0, 2]
    with pytest.raises(ValueError, match="not computed for 2 queries"):
        rerank(again, FusionConfig("linear", v=0.5), "ratio")
    with pytest.raises(ValueError, match="expected 4 local scores"):
        again.set_local("ratio", 0, [1, 2])


def test_from_ranking():
    from retrieval.indexing.index import Index

    rng = np.random.default_rng(0)
    db = rng.standard_normal((30, 8)).astype(np.float32)
    q = rng.standard_normal((3, 8)).astype(np.float32)
    ids = [f"img{i}" for i in range(30)]
    ranking = Index(db, ids=ids).search(q, k=30, query_ids=["a", "b", "c"])
    sl = Shortlist.from_ranking(ranking, k=10)
    assert sl.k == 10 and sl.tail_ids.shape == (3, 20) and sl.config["k"] == 10
    assert sl.predictions() == {k: [str(x) for x in v] for k, v in ranking.to_predictions().items()}
    sl.set_local_scores("zero", np.zeros((3, 10)))
    assert rerank(sl, FusionConfig("linear", v=0.0), "zero") == sl.predictions()  # all-equal local scores: global order


# ---- the one fusion API: absolute scales, the gate, the base ranking first ---------------------------

def test_weak_evidence_is_not_stretched_to_full_weight():
    """A strong global match sharing no local feature with the query, behind it images with 2-3
    inliers (noise): min-max stretches 3 inliers to full weight and overturns the global order,
    saturating at T = 20 gives them 3/20 and keeps it."""
    from retrieval.rerank.fusion import FusionConfig, fused_order

    g = np.array([[0.95, 0.60, 0.58, 0.55]])
    inliers = np.array([[0.0, 3.0, 2.0, 0.0]])
    stretched = fused_order(g, inliers, FusionConfig("linear", v=0.5, norm="minmax"))
    absolute = fused_order(g, inliers, FusionConfig("linear", v=0.5, norm="saturate", T=20.0))
    assert stretched[0, 0] == 1 and absolute[0, 0] == 0
    # real evidence (60 inliers) still wins under saturation
    strong = fused_order(g, np.array([[0.0, 60.0, 2.0, 0.0]]), FusionConfig("linear", v=0.5, norm="saturate", T=20.0))
    assert strong[0, 0] == 1


def test_gate_none_and_delg_orders():
    from retrieval.core.config import ConfigError
    from retrieval.rerank.fusion import NO_RERANKING, FusionConfig, fusion_candidates, fused_order

    g = np.array([[0.9, 0.8, 0.7], [0.9, 0.8, 0.7]])
    local = np.array([[0.0, 1.0, 4.0], [0.0, 30.0, 40.0]])
    assert fused_order(g, local, NO_RERANKING).tolist() == [[0, 1, 2], [0, 1, 2]]
    gated = fused_order(g, local, FusionConfig("linear", v=0.0, norm="saturate", T=10.0, gate=10.0))
    assert gated.tolist() == [[0, 1, 2], [1, 2, 0]]      # only the query with real evidence is re-ranked
    assert fused_order(g, local, FusionConfig("delg", threshold=5.0)).tolist() == [[0, 1, 2], [2, 1, 0]]
    cands = fusion_candidates("count", vs=(0.0, 0.5), saturations=(10,), delg_thresholds=(8,))
    assert cands[0] == NO_RERANKING and [c.label for c in cands[1:]] == [
        "linear saturate T=10 v=0", "linear saturate T=10 v=0.5", "delg >= 8"]
    with pytest.raises(ConfigError):
        FusionConfig("linear", norm="saturate")           # no T
    with pytest.raises(ConfigError):
        FusionConfig("delg")                              # no threshold
