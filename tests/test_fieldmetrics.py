"""The field's metrics (retrieval.evaluation.fieldmetrics, re-exported by retrieval.evaluation.metrics) on hand-computed cases."""
import numpy as np
import pytest

from retrieval.evaluation import metrics

# two queries, five targets; cosine rankings worked out by hand (module docstring of the test cases):
# q0 = [1, 0] (A): t0 A, t1 B, t4 B, t2 A, t3 B  -> hits at ranks 1, 4
# q1 = [0, 1] (B): t3 B, t2 A, t4 B, t1 B, t0 A  -> hits at ranks 1, 3, 4
QUERIES = np.array([[1.0, 0.0], [0.0, 2.0]])  # the second is not unit length: cosine ignores norms
TARGETS = np.array([[1.0, 0.0], [0.9, 0.1], [0.5, 0.5], [0.0, 1.0], [0.8, 0.6]])
Q_LABELS = ["A", "B"]
T_LABELS = ["A", "B", "A", "B", "B"]


def test_cosine_ranking_by_hand():
    order = metrics.cosine_ranking(QUERIES, TARGETS)
    assert order.tolist() == [[0, 1, 4, 2, 3], [3, 2, 4, 1, 0]]


def test_os3dor_scores_by_hand():
    s = metrics.os3dor_scores(QUERIES, Q_LABELS, TARGETS, T_LABELS)
    # interpolated AP: q0 (1 + 0.5) / 2; q1 precisions 1, 2/3, 3/4 -> interpolated 1, 3/4, 3/4
    assert s["map"] == pytest.approx((0.75 + (1 + 0.75 + 0.75) / 3) / 2)
    # the standard (non-interpolated) AP of q1 is lower: (1 + 2/3 + 3/4) / 3
    assert metrics.average_precision(["t3", "t2", "t4", "t1", "t0"], {"t3", "t4", "t1"}) == pytest.approx(
        (1 + 2 / 3 + 0.75) / 3)
    ideal = sum(1 / np.log2(i + 1) for i in range(1, 101))  # relevant at every one of 100 positions
    dcg0 = 1 + 1 / np.log2(5)
    dcg1 = 1 + 1 / np.log2(4) + 1 / np.log2(5)
    assert s["ndcg@100"] == pytest.approx((dcg0 + dcg1) / 2 / ideal)
    # ANMRR: GTM = 3; q0 NG 2, K 6: cost 1 + 7 -> (4 - 0.5 - 1) / (6.5 - 1); q1 NG 3, K 6: 1 + 3 + 7
    nmrr0 = (8 / 2 - 0.5 - 1) / (6 + 0.5 - 1)
    nmrr1 = (11 / 3 - 0.5 - 1.5) / (6 + 0.5 - 1.5)
    assert s["anmrr"] == pytest.approx((nmrr0 + nmrr1) / 2)
    assert set(s) == {"map", "ndcg@100", "anmrr"}


def test_os3dor_perfect_and_errors():
    v = np.eye(3)
    s = metrics.os3dor_scores(v, [0, 1, 2], np.repeat(v, 2, axis=0), [0, 0, 1, 1, 2, 2])
    assert s["map"] == pytest.approx(1.0) and s["anmrr"] == pytest.approx(0.0)
    assert s["ndcg@100"] < 0.1  # two relevant items can never fill an all-relevant list of 100
    with pytest.raises(ValueError, match="no query"):
        metrics.os3dor_scores(v, [5, 6, 7], v, [0, 1, 2])
    with pytest.raises(ValueError, match="one D"):
        metrics.os3dor_scores(v, [0, 1, 2], v[:, :2], [0, 1, 2])


def test_mean_precision_at_k_drops_junk():
    preds = {"q": ["a", "j", "b", "c"], "r": ["x"]}
    assert metrics.mean_precision_at_k(preds, {"q": ["a", "c"], "r": ["y"]}, {"q": ["j"]}, k=2) == pytest.approx(
        (0.5 + 0.0) / 2)
    # without the junk list j is a miss at rank 2; a and c at ranks 1 and 4
    assert metrics.mean_precision_at_k(preds, {"q": ["a", "c"]}, k=4) == pytest.approx(0.5)
    # revisitop cuts at the last positive: both positives in the first 2 ranks score 1 at k = 10
    assert metrics.mean_precision_at_k({"q": ["a", "b", "x", "y"]}, {"q": ["a", "b"]}, k=10) == pytest.approx(1.0)
    assert metrics.precision_at_k({"q": ["a", "b", "x", "y"]}, {"q": {"a", "b"}}, 10) == pytest.approx(0.2)


def test_gap_by_hand():
    predicted = {"q1": "X", "q2": "Y", "q3": "X", "q4": "W"}
    conf = {"q1": 0.9, "q2": 0.8, "q3": 0.5, "q4": 0.7}
    truth = {"q1": "X", "q2": "Z", "q3": None, "q4": "W", "q5": "V"}
    # order q1 (hit), q2, q4 (hit), q3: (1/1 + 2/3) / M, M = 4 queries with a landmark
    assert metrics.gap(predicted, conf, truth) == pytest.approx((1 + 2 / 3) / 4)
    with pytest.raises(ValueError, match="undefined"):
        metrics.gap(predicted, conf, {"q1": None})


def test_map_at_r_and_shape_tiers_by_hand():
    assert metrics.map_at_r({"q": ["a", "x", "b"]}, {"q": {"a", "b"}}) == pytest.approx(0.5)
    t = metrics.shape_tiers({"q": ["x", "a", "y", "b", "z"]}, {"q": {"a", "b"}}, f_depth=4)
    assert t["first_tier"] == pytest.approx(0.5) and t["second_tier"] == pytest.approx(1.0)
    assert t["f_measure"] == pytest.approx(2 * 0.5 * 1.0 / 1.5)


def test_precision_recall_curve_by_hand(tmp_path):
    c = metrics.precision_recall_curve({"q": ["a", "x", "b"]}, {"q": {"a", "b"}}, recall_levels=[0, 0.5, 1])
    assert c["precision"] == pytest.approx([1.0, 1.0, 2 / 3])
    c = metrics.precision_recall_curve({"q": ["x", "a"]}, {"q": {"a", "b"}}, recall_levels=[0.5, 1])
    assert c["precision"] == pytest.approx([0.5, 0.0])  # recall 1 never reached
    from retrieval.bench.pr_plot import plot_pr_curves

    path = plot_pr_curves({"model": c}, tmp_path / "pr.png")
    assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"
