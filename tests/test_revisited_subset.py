"""Revisited scoring: our AP and mP@k against a line-by-line reading of the benchmark's
``compute_map`` loop, and the oxford5k_subset scored with the official gnd_roxford5k.pkl."""
import math

import numpy as np
import pytest

from retrieval.evaluation import metrics
from retrieval.evaluation.evaluate import evaluate


def compute_map_reference(ranks, positives, junk, kappas=(1, 5, 10)):
    """The revisited benchmark's per-query loop, read line by line: positions of positives and junk in
    the ranking (0-based), each positive moved up by the junk before it; AP by the trapezoid of
    compute_ap; P@k with k_q = min(max 1-based position of a positive, k)."""
    ranked = list(ranks)
    pos = [i for i, x in enumerate(ranked) if x in positives]
    jpos = [i for i, x in enumerate(ranked) if x in junk]
    k = ij = 0
    adjusted = []
    for p in pos:
        while ij < len(jpos) and p > jpos[ij]:
            k += 1
            ij += 1
        adjusted.append(p - k)
    ap = 0.0
    step = 1.0 / len(positives)
    for j, rank in enumerate(adjusted):
        precision_0 = 1.0 if rank == 0 else j / rank
        precision_1 = (j + 1) / (rank + 1)
        ap += (precision_0 + precision_1) * step / 2.0
    one_based = np.asarray(adjusted) + 1
    prs = [float((one_based <= min(one_based.max(), kq)).sum() / min(one_based.max(), kq)) for kq in kappas]
    return ap, prs


def test_ap_and_precision_equal_the_benchmark_loop_on_random_rankings(rng):
    ids = [f"im{i}" for i in range(60)]
    for trial in range(200):
        order = list(rng.permutation(ids))
        n_pos = int(rng.integers(1, 12))
        picked = rng.choice(ids, size=n_pos + int(rng.integers(0, 8)), replace=False).tolist()
        positives, junk = set(picked[:n_pos]), set(picked[n_pos:])
        ap, prs = compute_map_reference(order, positives, junk)
        assert metrics.oxford_ap(order, positives, junk) == pytest.approx(ap, abs=1e-12)
        for kq, pr in zip((1, 5, 10), prs):
            assert metrics.oxford_precision_at_k(order, positives, junk, kq) == pytest.approx(pr, abs=1e-12)
    # a query with 3 positives all ranked first scores 1 at P@10 (k_q = 3), as the benchmark prints it
    assert metrics.oxford_precision_at_k(["a", "b", "c", "x"], {"a", "b", "c"}, (), 10) == 1.0
    assert metrics.oxford_precision_at_k(["x"], {"a"}, (), 10) == 0.0
    assert math.isnan(metrics.oxford_precision_at_k(["x"], set(), (), 10))


@pytest.fixture(scope="module")
def subset(data_root):
    from retrieval.datasets import read_oxford

    gnd = data_root / "revisitop" / "gnd_roxford5k.pkl"
    if not gnd.is_file() or not (data_root / "oxford5k_subset").is_dir():
        pytest.skip("needs oxford5k_subset and revisitop")
    return read_oxford(data_root / "oxford5k_subset"), gnd


def test_subset_under_the_official_revisited_ground_truth(subset):
    from retrieval.evaluation.revisited_subset import revisited_scores, revisited_view, with_revisited_queries

    ds, gnd = subset
    ext = with_revisited_queries(ds, gnd)
    assert len(ds.query_ids) == 55 and len(ext.query_ids) == 70
    assert ext.query_ids[55] == "all_souls_000021-query" and "all_souls_000021" in ext.db_ids and ext.query_labels[55] == "all_souls"
    assert ext.query_boxes[:55] == ds.query_boxes and set(ext.ground_truth) == set(ds.ground_truth)
    hard = revisited_view(ext, gnd, "hard")
    # the README's counts: 3,024 of 3,029 easy and 2,212 of 2,497 hard positives are in the subset
    assert (hard.metadata["easy_present"], hard.metadata["easy"]) == (3024, 3029)
    assert (hard.metadata["hard_present"], hard.metadata["hard"]) == (2212, 2497)
    assert len(hard.query_ids) == 70 and hard.ground_truth["all_souls_1"].positives <= set(ds.db_ids)
    # matched by image and box: all_souls_1 is gnd query 0 (all_souls_000013)
    assert hard.query_paths[0].stem == "all_souls_000013"
    # the revisited database leaves out the 70 query images; the subset holds them: ignored, or each
    # query's own photo would rank first as a false positive
    assert hard.metadata["ignored_not_in_imlist"] == 70
    assert "all_souls_000013" in hard.ground_truth["all_souls_1"].junk
    assert "all_souls_000013" in hard.ground_truth["all_souls_000021-query"].junk

    # an ideal Medium ranking is ideal for Hard too (easy images are ignored there)
    rng = np.random.default_rng(0)
    medium = revisited_view(ext, gnd, "medium")
    ideal = {q: sorted(t.positives) + [d for d in ds.db_ids if d not in t.positives]
             for q, t in medium.ground_truth.items()}
    scores = revisited_scores(ext, gnd, ideal)
    assert scores["medium_map"] == pytest.approx(100.0) and scores["hard_map"] == pytest.approx(100.0)
    assert scores["medium_mp@10"] == pytest.approx(100.0)
    # balliol_2 (balliol_000187) has no easy image and neither of its 2 hard ones is in the subset
    assert scores["medium_queries"] == 69 and scores["hard_queries"] == 69
    assert "restricted to the images present" in scores["note"] and "775 of 4993" in scores["note"]
    # a random ranking: the scorer, evaluate(view, "oxford") and evaluate(..., "revisited") agree
    preds = {q: list(rng.permutation(ds.db_ids)) for q in medium.query_ids}
    scores = revisited_scores(ext, gnd, preds)
    assert 5 < scores["hard_map"] < 60
    r = evaluate(hard, preds, protocol="oxford")
    assert 100 * r["oxford_map"] == pytest.approx(scores["hard_map"]) and r["num_queries"] == 69
    r = evaluate(medium, preds, protocol="revisited")
    assert 100 * r["revisited_map_hard"] == pytest.approx(scores["hard_map"])
    assert 100 * r["revisited_map_medium"] == pytest.approx(scores["medium_map"])
    assert 100 * r["revisited_mp@5_hard"] == pytest.approx(scores["hard_mp@5"])
    # the standard protocol does not see the added queries
    assert evaluate(ext, preds, protocol="oxford") == evaluate(ds, preds, protocol="oxford")


def test_gnd_option_opens_a_subset_under_the_revisited_protocol(subset, data_root):
    from retrieval.datasets import DatasetError
    from retrieval.datasets.open import DatasetConfig, open_dataset

    ds, gnd = subset
    view = open_dataset(DatasetConfig(kind="oxford", path=str(ds.root), gnd=str(gnd)))
    assert len(view.query_ids) == 70 and "restricted to the images present" in view.name
    assert view.ground_truth["all_souls_1"].hard is not None
    with pytest.raises(DatasetError, match="gnd_rparis6k.pkl: no query of .* is a query of this revisited"):
        open_dataset(DatasetConfig(kind="oxford", path=str(ds.root), gnd=str(gnd.parent / "gnd_rparis6k.pkl")))


def test_ladder_shortlist_cache_with_other_queries_is_rebuilt(tmp_path, rng):
    """The revisited protocols add queries to the landmark half: a shortlist cached for the old query
    set must not be reused (the new queries would score as empty rankings)."""
    from retrieval import Index
    from retrieval.experiments.ladder.stages import build_shortlist

    db = rng.standard_normal((20, 8)).astype(np.float32)
    q = rng.standard_normal((3, 8)).astype(np.float32)
    index = Index(db, ids=[f"d{i}" for i in range(20)])
    path = tmp_path / "shortlist_e1"
    old = build_shortlist(index.search(q[:2], k=20, query_ids=["a", "b"]), path, {"k": 5}, 5, False)
    assert old.query_ids == ["a", "b"]
    new = build_shortlist(index.search(q, k=20, query_ids=["a", "b", "c"]), path, {"k": 5}, 5, False)
    assert new.query_ids == ["a", "b", "c"]
    again = build_shortlist(index.search(q, k=20, query_ids=["a", "b", "c"]), path, {"k": 5}, 5, False)
    assert again.query_ids == ["a", "b", "c"]


def test_ladder_revisited_protocols_skip_or_refuse(tmp_path, subset):
    """The shipped experiment asks for the revisited protocols: with the default pickle they are
    skipped where they cannot apply; a pickle the user names must apply."""
    from retrieval.datasets import DatasetError, read_oxford
    from retrieval.experiments.ladder.settings import LadderConfig
    from retrieval.experiments.ladder.revisited import add_revisited_queries, revisited_relevances

    ds, gnd = subset
    asked = {"landmark.protocols": ["official", "revisited-hard"]}
    conf = LadderConfig().override(dict(asked, data_root=str(gnd.parent.parent)))
    relevances = revisited_relevances(conf, add_revisited_queries(conf, ds), "oxford5k_subset")
    assert len(relevances) == 1 and len(relevances[0].dataset.query_ids) == 70
    assert "775 of 4993 images" in relevances[0].name
    # no pickle in the data folder: skipped
    nowhere = LadderConfig().override(dict(asked, data_root=str(tmp_path)))
    assert add_revisited_queries(nowhere, ds) is ds and revisited_relevances(nowhere, ds, "x") == []
    # a dataset none of whose queries is a revisited one (here a Holidays miniature): skipped by default
    from PIL import Image

    from retrieval.datasets.numbered import read_holidays

    for n in (100000, 100001):
        (tmp_path / "h" / "jpg").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "h" / "jpg" / f"{n}.jpg")
    other = read_holidays(tmp_path / "h")
    assert add_revisited_queries(conf, other).query_ids == other.query_ids
    assert revisited_relevances(conf, other, "h") == []
    # Paris' pickle on the Oxford subset matches no query: skipped by default, refused when named
    paris = gnd.parent / "gnd_rparis6k.pkl"
    named = LadderConfig().override(dict(asked, **{"landmark.revisited_gnd": str(paris)}))
    with pytest.raises(DatasetError, match="gnd_rparis6k.pkl: no query of"):
        revisited_relevances(named, ds, "x")
    with pytest.raises(DatasetError, match="missing.pkl: no such revisited"):
        revisited_relevances(LadderConfig().override(dict(asked, **{"landmark.revisited_gnd": "missing.pkl"})),
                             ds, "x")
