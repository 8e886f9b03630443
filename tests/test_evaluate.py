"""evaluate(): protocols on synthetic ground truth with hand-computed values, and on the real
Oxford subset / COIL-100 (an exact Index over colour histograms)."""
import math
from pathlib import Path

import numpy as np
import pytest

from retrieval import Index
from retrieval.datasets import QueryTruth, RetrievalDataset, every_nth_query, read_labelled_folder, read_oxford
from retrieval.evaluation.evaluate import evaluate, evaluate_per_query, ranking_to_predictions
from retrieval.core.imageio import load_image
from retrieval.evaluation.metrics import map_at_k, oxford_ap


def make_dataset(truth, db_ids=("a", "b", "c", "d", "e", "j"), name="synthetic"):
    queries = list(truth)
    return RetrievalDataset(name=name, root=Path("."), db_ids=list(db_ids),
                            db_paths=[Path(f"{d}.jpg") for d in db_ids], query_ids=queries,
                            query_paths=[Path(f"{q}.jpg") for q in queries], ground_truth=truth)


def test_gldv2_overall_and_usage_splits():
    ds = make_dataset({
        "q1": QueryTruth({"a"}, usage="Public"),
        "q2": QueryTruth({"b", "c"}, usage="Private"),
        "q3": QueryTruth({"d"}, usage="Ignored"),
    })
    predictions = {"q1": ["a"], "q2": ["b", "e", "c"], "q3": ["e"]}
    result = evaluate(ds, predictions, protocol="gldv2")
    private = (1 + 2 / 3) / 2
    assert result["map@100_public"] == 1.0
    assert result["map@100_private"] == pytest.approx(private)
    assert result["map@100"] == pytest.approx((1 + private) / 2)     # Ignored left out
    assert result["num_queries"] == 2
    assert result["map@100"] == pytest.approx(map_at_k(predictions, ds.solution()))


def test_oxford_protocol_uses_junk_and_positives():
    ds = make_dataset({"q1": QueryTruth({"a", "b"}, junk={"j"}), "q2": QueryTruth({"c"})})
    predictions = {"q1": ["j", "a", "d", "b"], "q2": ["d", "c"]}
    result = evaluate(ds, predictions, protocol="oxford")
    expected = (oxford_ap(["a", "d", "b"], {"a", "b"}) + 0.25) / 2
    assert result["oxford_map"] == pytest.approx(expected)
    assert set(result) == {"oxford_map", "num_queries"}


def test_revisited_protocol():
    ds = make_dataset({"q1": QueryTruth({"a", "b"}, junk={"j"}, easy={"a"}, hard={"b"})})
    result = evaluate(ds, {"q1": ["d", "b", "j", "a"]}, protocol="revisited")
    assert result["revisited_map_easy"] == pytest.approx(0.25)           # kept [d, a]
    assert result["revisited_map_medium"] == pytest.approx(0.125 + 7 / 24)
    assert result["revisited_map_hard"] == pytest.approx(0.25)           # kept [d, b]
    with pytest.raises(ValueError, match="no revisited"):
        evaluate(make_dataset({"q1": QueryTruth({"a"})}), {"q1": ["a"]}, protocol="revisited")


def test_general_protocol_junk_neither_helps_nor_hurts():
    # every_nth_query style: the query is a database image and its own junk
    ds = make_dataset({"a": QueryTruth({"b", "c"}, junk={"a"}), "d": QueryTruth({"e"}, junk={"d"})})
    with_self = evaluate(ds, {"a": ["a", "b", "c", "e"], "d": ["d", "e"]}, protocol="general")
    without = evaluate(ds, {"a": ["b", "c", "e"], "d": ["e"]}, protocol="general")
    assert with_self == without
    assert with_self["map@100"] == 1.0 and with_self["anmrr"] == 0.0 and with_self["top1"] == 1.0
    assert set(with_self) == {"map@100", "mean_ap", "ndcg@100", "anmrr", "top1", "top10",
                              "precision@10", "recall@100", "num_queries"}


def test_all_protocol_and_per_query():
    ds = make_dataset({"q1": QueryTruth({"a"}, usage="Public"), "q2": QueryTruth({"b"}, usage="Private")})
    predictions = {"q1": ["a"], "q2": ["c", "b"]}
    result = evaluate(ds, predictions, protocol="all", k=10)
    assert {"map@10", "map@10_public", "map@10_private", "oxford_map", "anmrr"} <= set(result)
    assert "revisited_map_easy" not in result
    per_query = evaluate_per_query(ds, predictions, protocol="general", k=10)
    assert per_query["map@10"] == {"q1": 1.0, "q2": 0.5}
    assert per_query["top1"] == {"q1": 1.0, "q2": 0.0}


def test_ranking_input_and_id_checks(rng):
    ds = make_dataset({"q1": QueryTruth({"a"}), "q2": QueryTruth({"b"})}, db_ids=("a", "b", "c"))
    vectors = np.eye(3, dtype=np.float32)
    ranking = Index(vectors, ids=ds.db_ids).search(vectors[:2], k=3)     # rows = dataset queries
    assert evaluate(ds, ranking, protocol="general")["map@100"] == 1.0
    assert ranking_to_predictions(ranking, ["q1", "q2"])["q2"][0] == "b"
    # row numbers instead of ids would silently score 0: refused
    with pytest.raises(ValueError, match="not database ids"):
        evaluate(ds, {"q1": [0, 1]}, protocol="general")
    with pytest.raises(ValueError, match="no prediction is for a query"):
        evaluate(ds, {0: ["a"]}, protocol="general")
    with pytest.raises(ValueError, match="unknown protocol"):
        evaluate(ds, {"q1": ["a"]}, protocol="trec")
    # missing prediction: scored 0, not skipped
    assert evaluate(ds, {"q1": ["a"]}, protocol="general")["map@100"] == 0.5


# ---------------------------------------------------------------- real data

def test_oxford_subset_perfect_and_reversed_rankings(oxford_dir):
    ds = read_oxford(oxford_dir)
    perfect, worst = {}, {}
    for qid in ds.query_ids:
        truth = ds.ground_truth[qid]
        rest = [d for d in ds.db_ids if d not in truth.positives]
        # junk interleaved at the top does not matter: it is removed before scoring
        perfect[qid] = sorted(truth.junk) + sorted(truth.positives) + [d for d in rest if d not in truth.junk]
        worst[qid] = rest + sorted(truth.positives)
    assert evaluate(ds, perfect, protocol="oxford")["oxford_map"] == pytest.approx(1.0)
    low = evaluate(ds, worst, protocol="oxford")
    assert low["oxford_map"] < 0.2 and low["num_queries"] == len(ds.query_ids)


def colour_histograms(paths):
    """Hellinger-mapped 8x8x8 RGB histograms: a simple real descriptor for COIL objects."""
    out = np.empty((len(paths), 512), np.float32)
    for i, path in enumerate(paths):
        img = load_image(path) // 32
        bins = (img[..., 0].astype(np.int64) * 64 + img[..., 1] * 8 + img[..., 2]).ravel()
        out[i] = np.sqrt(np.bincount(bins, minlength=512) / bins.size)
    return out


def test_coil100_colour_histogram_retrieval(coil100_dir):
    full = read_labelled_folder(coil100_dir)
    keep = [i for i, label in enumerate(full.db_labels) if label in {str(o) for o in range(1, 9)}]
    subset = RetrievalDataset(name="coil100-8", root=full.root, db_ids=[full.db_ids[i] for i in keep],
                              db_paths=[full.db_paths[i] for i in keep], query_ids=[], query_paths=[],
                              ground_truth={}, db_labels=[full.db_labels[i] for i in keep],
                              db_metadata={k: [v[i] for i in keep] for k, v in full.db_metadata.items()})
    ds = every_nth_query(subset, n=4)
    assert len(ds.db_ids) == 8 * 72 and len(ds.query_ids) == 8 * 18
    vectors = colour_histograms(ds.db_paths)
    row = {d: i for i, d in enumerate(ds.db_ids)}
    queries = vectors[[row[q] for q in ds.query_ids]]
    ranking = Index(vectors, ids=ds.db_ids).search(queries, k=len(ds.db_ids), query_ids=ds.query_ids)
    # each query finds itself first (score 1), which the protocol treats as junk
    assert ranking.ids[:, 0].tolist() == ds.query_ids
    result = evaluate(ds, ranking, protocol="all")
    # neighbouring views (5 degrees apart) share colours: near-perfect first hits, far above chance
    assert result["top1"] > 0.9
    assert 0.3 < result["map@100"] <= 1.0 and result["anmrr"] < 0.5
    assert result["oxford_map"] == pytest.approx(result["mean_ap"], abs=0.05)
    per_query = evaluate_per_query(ds, ranking, protocol="general")
    assert len(per_query["mean_ap"]) == 8 * 18
    assert not any(math.isnan(v) for v in per_query["mean_ap"].values())
