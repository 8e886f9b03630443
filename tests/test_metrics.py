"""Metrics against hand-computed values and against scikit-learn where the definitions coincide."""
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, ndcg_score

from retrieval.evaluation.metrics import (anmrr, average_precision_at_k, first_hit_ranks, map_at_k, mean_ap,
                               ndcg_at_k, nmrr, oxford_ap, oxford_map, per_query_scores,
                               precision_at_k, recall_at_k, revisited_ap, revisited_map,
                               top_k_accuracy)


def compute_ap_reference(positives, ranked, junk):
    """Line-by-line reading of the official Oxford compute_ap.cpp loop."""
    old_recall, old_precision, ap, intersect, j = 0.0, 1.0, 0.0, 0, 0
    for item in ranked:
        if item in junk:
            continue
        if item in positives:
            intersect += 1
        recall = intersect / len(positives)
        precision = intersect / (j + 1.0)
        ap += (recall - old_recall) * ((old_precision + precision) / 2.0)
        old_recall, old_precision = recall, precision
        j += 1
    return ap


# ---------------------------------------------------------------- map@k (GLDv2 / Kaggle)

def test_map_at_k_perfect_and_hand_computed():
    assert map_at_k({"q": ["a", "b"]}, {"q": {"a", "b"}}) == 1.0
    # hits at ranks 1 and 3: (1/1 + 2/3) / min(2, 100)
    assert map_at_k({"q": ["a", "x", "b"]}, {"q": {"a", "b"}}) == pytest.approx((1 + 2 / 3) / 2)
    # first hit at rank 2, one of three relevant found: (1/2) / 3
    assert map_at_k({"q": ["x", "a"]}, {"q": {"a", "b", "c"}}) == pytest.approx(0.5 / 3)


def test_map_at_k_repeated_prediction_takes_rank_but_scores_once():
    # 'a' repeated at rank 2 is not a second hit; 'b' at rank 3 has precision 2/3
    assert map_at_k({"q": ["a", "a", "b"]}, {"q": {"a", "b"}}) == pytest.approx((1 + 2 / 3) / 2)
    # a repeated correct answer cannot reach AP 1 for two relevant items
    assert map_at_k({"q": ["a", "a"]}, {"q": {"a", "b"}}) == pytest.approx(0.5)


def test_map_at_k_missing_prediction_scores_zero():
    solution = {"q1": {"a"}, "q2": {"b"}}
    assert map_at_k({"q1": ["a"]}, solution) == pytest.approx(0.5)
    assert map_at_k({}, solution) == 0.0


def test_map_at_k_ignored_and_unknown_queries_left_out():
    solution = {"q1": {"a"}, "q2": set()}          # q2: Usage Ignored (no relevant items)
    predictions = {"q1": ["a"], "q2": ["x"], "q3": ["y"]}   # q3 not in the solution
    assert map_at_k(predictions, solution) == 1.0
    assert math.isnan(map_at_k({"q": ["a"]}, {"q": set()}))


def test_map_at_k_k_smaller_than_relevant_count():
    # m_q = 4 > k = 2: normalised by min(m_q, k) = 2; only ranks 1..2 count
    solution = {"q": {"a", "b", "c", "d"}}
    assert map_at_k({"q": ["a", "x", "b", "c"]}, solution, k=2) == pytest.approx(1 / 2)
    assert map_at_k({"q": ["a", "b", "c", "d"]}, solution, k=2) == 1.0
    # k = 3: hits at 1 and 3 -> (1 + 2/3) / 3
    assert map_at_k({"q": ["a", "x", "b", "c"]}, solution, k=3) == pytest.approx((1 + 2 / 3) / 3)


def test_map_at_k_mean_over_queries_and_int_ids():
    solution = {1: {10}, 2: {20, 21}}
    predictions = {1: [11, 10], 2: [20, 21]}
    assert map_at_k(predictions, solution) == pytest.approx((0.5 + 1.0) / 2)
    # numpy arrays as rankings
    assert map_at_k({1: np.array([10]), 2: np.array([21, 20])}, solution) == 1.0


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="k must be"):
        map_at_k({"q": ["a"]}, {"q": {"a"}}, k=0)
    with pytest.raises(TypeError, match="predictions must be a dict"):
        map_at_k([["a"]], {"q": {"a"}})
    with pytest.raises(TypeError, match="string"):
        map_at_k({"q": "abc"}, {"q": {"a"}})
    with pytest.raises(ValueError, match="unknown metric"):
        per_query_scores("auc", {}, {"q": {"a"}})


# ---------------------------------------------------------------- Oxford AP

def test_oxford_ap_hand_computed_cases():
    assert oxford_ap(["a", "b"], {"a", "b"}) == 1.0
    # first rank a miss: trapezoid (0 + 1/2)/2 over the whole recall step
    assert oxford_ap(["x", "a"], {"a"}) == pytest.approx(0.25)
    # positive 'b' never retrieved counts as missed: only half the recall is covered
    assert oxford_ap(["a"], {"a", "b"}) == pytest.approx(0.5)
    assert oxford_ap([], {"a"}) == 0.0
    assert math.isnan(oxford_ap(["a"], set()))


@pytest.mark.parametrize("junk_position", [0, 1, 2, 4])
def test_oxford_ap_junk_removed_before_scoring(junk_position):
    base = ["a", "x", "b", "y"]
    ranked = base[:junk_position] + ["j"] + base[junk_position:]
    expected = (1.0 * 1 / 2) + ((1 / 2 + 2 / 3) / 2) * (1 / 2)   # a at 1, b at 3 after removal
    assert oxford_ap(ranked, {"a", "b"}, {"j"}) == pytest.approx(expected)
    # junk counted as a miss would change the value (unless it comes after the last positive)
    if junk_position <= 2:
        assert oxford_ap(ranked, {"a", "b"}, set()) != pytest.approx(expected)


def test_oxford_ap_matches_compute_ap_loop_on_random_rankings():
    rng = np.random.default_rng(1)
    for _ in range(200):
        n = int(rng.integers(1, 40))
        ranked = [f"d{i}" for i in rng.permutation(60)[:n]]
        positives = {f"d{i}" for i in rng.choice(60, size=int(rng.integers(1, 10)), replace=False)}
        junk = {f"d{i}" for i in rng.choice(60, size=int(rng.integers(0, 8)), replace=False)} - positives
        assert oxford_ap(ranked, positives, junk) == pytest.approx(
            compute_ap_reference(positives, ranked, junk), abs=1e-12)


def test_revisited_protocols():
    easy, hard, junk = {"a"}, {"b"}, {"j"}
    ranked = ["x", "b", "j", "a"]
    # easy: b is junk -> kept [x, a] -> a at rank 2
    assert revisited_ap(ranked, easy, hard, junk, "easy") == pytest.approx(0.25)
    # medium: positives {a, b} -> kept [x, b, a]: b at 2 (0 + 1/2)/2 * 1/2, a at 3 (1/2 + 2/3)/2 * 1/2
    assert revisited_ap(ranked, easy, hard, junk, "medium") == pytest.approx(0.125 + 7 / 24)
    # hard: a is junk -> kept [x, b]
    assert revisited_ap(ranked, easy, hard, junk, "hard") == pytest.approx(0.25)
    with pytest.raises(ValueError, match="unknown revisited protocol"):
        revisited_ap(ranked, easy, hard, junk, "extreme")


def test_revisited_map_skips_queries_without_positives():
    predictions = {"q1": ["b", "a"], "q2": ["c"]}
    easy = {"q1": {"a"}, "q2": {"c"}}
    hard = {"q1": {"b"}, "q2": set()}      # q2 has no hard positive: left out of the hard mAP
    assert revisited_map(predictions, easy, hard, {}, "hard") == 1.0
    assert revisited_map(predictions, easy, hard, {}, "easy") == 1.0
    per_query = revisited_map(predictions, easy, hard, {}, "hard", per_query=True)
    assert list(per_query) == ["q1"]


def test_oxford_map_over_queries():
    predictions = {"q1": ["a"], "q2": ["x", "b"]}
    positives = {"q1": {"a"}, "q2": {"b"}, "q3": {"c"}}      # q3: no prediction -> 0
    assert oxford_map(predictions, positives) == pytest.approx((1 + 0.25 + 0) / 3)


# ---------------------------------------------------------------- full-ranking AP, nDCG

def _random_full_ranking(rng, n=60, n_relevant=7):
    scores = rng.random(n)
    relevant = rng.choice(n, size=n_relevant, replace=False)
    y_true = np.zeros(n, dtype=int)
    y_true[relevant] = 1
    ranked = np.argsort(-scores).tolist()
    return scores, y_true, ranked, set(relevant.tolist())


def test_mean_ap_equals_sklearn_average_precision():
    rng = np.random.default_rng(2)
    for _ in range(20):
        scores, y_true, ranked, relevant = _random_full_ranking(rng)
        assert mean_ap({"q": ranked}, {"q": relevant}) == pytest.approx(
            average_precision_score(y_true, scores), abs=1e-12)


def test_mean_ap_hand_computed_and_unretrieved_relevant():
    # hits at 2 and 4, a third relevant never ranked: (1/2 + 2/4) / 3
    assert mean_ap({"q": ["x", "a", "y", "b"]}, {"q": {"a", "b", "c"}}) == pytest.approx(1 / 3)


@pytest.mark.parametrize("k", [1, 5, 10, 60])
def test_ndcg_equals_sklearn(k):
    rng = np.random.default_rng(3)
    for _ in range(10):
        scores, y_true, ranked, relevant = _random_full_ranking(rng)
        assert ndcg_at_k({"q": ranked}, {"q": relevant}, k=k) == pytest.approx(
            ndcg_score(y_true[None], scores[None], k=k), abs=1e-12)


def test_ndcg_hand_computed():
    # hit at rank 2 only, m_q = 2 -> (1/log2 3) / (1 + 1/log2 3)
    ideal = 1 + 1 / math.log2(3)
    assert ndcg_at_k({"q": ["x", "a"]}, {"q": {"a", "b"}}, k=10) == pytest.approx((1 / math.log2(3)) / ideal)
    # ideal from min(m_q, k) = 1 item when k = 1
    assert ndcg_at_k({"q": ["a", "x"]}, {"q": {"a", "b"}}, k=1) == 1.0


# ---------------------------------------------------------------- ANMRR

def test_anmrr_perfect_is_zero_and_worst_is_one():
    solution = {"q1": {"a", "b"}, "q2": {"c"}}
    assert anmrr({"q1": ["b", "a"], "q2": ["c"]}, solution) == 0.0
    assert anmrr({"q1": ["x"], "q2": []}, solution) == 1.0
    # relevant items ranked just after K(q) count as not found: still exactly 1
    filler = [f"f{i}" for i in range(10)]
    assert anmrr({"q1": filler + ["a", "b"], "q2": filler + ["c"]}, solution) == 1.0


def test_nmrr_hand_computed():
    # NG = 2, GTM = 2 -> K = min(8, 4) = 4; ranks 1 and 5 -> Rank = 1 and 1.25*4 = 5
    # AVR = 3, MRR = 3 - 1.5 = 1.5, NMRR = 1.5 / (5 - 1.5)
    assert nmrr(["a", "x", "y", "z", "b"], {"a", "b"}, max_ground_truth=2) == pytest.approx(1.5 / 3.5)
    # GTM = 3 (another query has 3 relevant): query with NG = 1 -> K = min(4, 6) = 4; hit at 3
    # AVR = 3, MRR = 3 - 1 = 2, NMRR = 2 / (5 - 1)
    solution = {"q1": {"a"}, "q2": {"b", "c", "d"}}
    scores = per_query_scores("nmrr", {"q1": ["x", "y", "a"], "q2": ["b", "c", "d"]}, solution)
    assert scores == {"q1": pytest.approx(0.5), "q2": 0.0}
    assert anmrr({"q1": ["x", "y", "a"], "q2": ["b", "c", "d"]}, solution) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="GTM"):
        nmrr(["a"], {"a", "b"}, max_ground_truth=1)


# ---------------------------------------------------------------- top-k, precision, recall

def test_top_k_precision_recall():
    predictions = {"q1": ["x", "a", "b"], "q2": ["c", "y", "z"]}
    solution = {"q1": {"a", "b"}, "q2": {"c", "d"}}
    assert top_k_accuracy(predictions, solution, k=1) == 0.5
    assert top_k_accuracy(predictions, solution, k=2) == 1.0
    assert precision_at_k(predictions, solution, k=2) == pytest.approx((1 / 2 + 1 / 2) / 2)
    # a ranking shorter than k is padded with misses
    assert precision_at_k(predictions, solution, k=10) == pytest.approx((2 / 10 + 1 / 10) / 2)
    assert recall_at_k(predictions, solution, k=3) == pytest.approx((1 + 0.5) / 2)
    # duplicates do not count twice
    assert recall_at_k({"q": ["a", "a"]}, {"q": {"a", "b"}}, k=2) == 0.5


def test_first_hit_ranks():
    assert first_hit_ranks(["x", "a", "a", "b"], {"a", "b"}).tolist() == [2, 4]
    assert first_hit_ranks(["x", "a", "a", "b"], {"a", "b"}, k=3).tolist() == [2]
    assert average_precision_at_k(["a"], set()) != average_precision_at_k(["a"], set())  # NaN
