"""The one held-out chooser: no query is scored at a setting chosen on itself."""
import pytest

from retrieval.core.crossfit import choose, cross_fit, fold_groups


def test_each_group_gets_the_choice_of_the_other_group():
    # v=1 is best on group A, v=0.5 on group B: each group is reported at the OTHER group's best
    per_query = {1.0: {"a1": 0.9, "a2": 0.9, "b1": 0.1, "b2": 0.1},
                 0.5: {"a1": 0.2, "a2": 0.2, "b1": 0.8, "b2": 0.8}}
    groups = {"a1": "A", "a2": "A", "b1": "B", "b2": "B"}
    out = cross_fit(per_query, groups)
    assert out["chosen"] == {"A": 0.5, "B": 1.0}
    assert out["per_query"] == {"a1": 0.2, "a2": 0.2, "b1": 0.1, "b2": 0.1}
    assert out["score"]["all"] == pytest.approx(0.15)
    assert out["curves"]["all"][1.0] == pytest.approx(0.5)


def test_ties_go_to_the_preferred_candidate():
    per_query = {"rerank": {"q": 0.5, "r": 0.5}, "none": {"q": 0.5, "r": 0.5}}
    assert choose(per_query) == "rerank"
    assert choose(per_query, prefer=["none"]) == "none"


def test_errors_are_clear():
    with pytest.raises(ValueError, match="at least two groups"):
        cross_fit({1.0: {"q": 1.0}}, {"q": "A"})
    with pytest.raises(ValueError, match="no score for queries"):
        choose({1.0: {"q": 1.0}, 0.5: {}}, ["q"])


def test_fold_groups_keep_a_label_in_one_fold():
    folds = fold_groups(["q1", "q2", "q3", "q4"], ["x", "y", "x", "y"])
    assert folds["q1"] == folds["q3"] != folds["q2"] == folds["q4"]
