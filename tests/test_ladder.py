"""The E1-E8 ladder (retrieval.experiments.ladder): the cross-fitted choice with the base ranking winning ties,
rows and tables, the persistent stage timer, training families, the relevance protocols, the quick
subset, user errors, and tiny end-to-end runs of both halves (object: 2 + 2 COIL objects, one
training step per model; landmark: a small Oxford subset, no training)."""
from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest

from retrieval.experiments.ladder import data, tables, training
from retrieval.steps.choose import Relevance, choose, query_groups
from retrieval.experiments.ladder.settings import LadderConfig
from retrieval.core.report import StageTimer


def _relevance(scores):
    """A fake relevance protocol whose per-query score is looked up from the candidate's 'ranking'."""
    class R(Relevance):
        def per_query(self, predictions):
            return dict(predictions)
    return R("toy", None, "oxford", "AP")


def test_choice_is_cross_fitted_and_the_base_wins_ties():
    groups = {"a1": "A", "a2": "A", "b1": "B", "b2": "B"}
    # candidate "help-A" helps only A's queries, "help-B" only B's: each group must get the other's choice
    cands = {"base": {q: 0.5 for q in groups},
             "help-A": {"a1": 0.9, "a2": 0.9, "b1": 0.5, "b2": 0.5},
             "help-B": {"a1": 0.5, "a2": 0.5, "b1": 0.8, "b2": 0.8}}
    out = choose("E5", cands, lambda c: c, [_relevance(None)], groups)["toy"]
    assert out.fit["chosen"] == {"A": "help-B", "B": "help-A"}
    assert out.per_query == {"a1": 0.5, "a2": 0.5, "b1": 0.5, "b2": 0.5}   # not the oracle's 0.9 / 0.8
    assert out.deployed == "help-A"     # for new queries: the best mean over every labelled query (0.7)
    flat = {"base": {q: 0.5 for q in groups}, "other": {q: 0.5 for q in groups}}
    tie = choose("E5", flat, lambda c: c, [_relevance(None)], groups)["toy"]
    assert tie.fit["chosen"] == {"A": "base", "B": "base"}


def test_rows_tables_and_sweep_curves():
    from retrieval.rerank.fusion import fusion_candidates

    rows = tables.result_rows("E4", "coil", {"Public": 0.9, "Private": 0.8, "all": 0.85}, "map@100", seconds=12.34)
    rows += tables.result_rows("E5", "coil", {"Public": 0.95, "Private": 0.81, "all": 0.88}, "map@100",
                               chosen={"Public": "linear saturate T=20 v=0.6", "Private": "none (global order)"},
                               seconds=5.0, note="E4 + SIFT")
    assert rows[0] == {"experiment": "E4", "dataset": "coil", "split": "Public", "metrics": {"map@100": 90.0},
                       "chosen": None, "seconds": 12.3, "note": ""}
    assert rows[5]["chosen"] == "Private: none (global order); Public: linear saturate T=20 v=0.6"
    table = tables.summary_table(rows, {"coil": "E4"})
    e5 = next(line for line in table.splitlines() if line.startswith("| E5 "))
    assert "95.00" in e5 and "+3.00" in e5 and "Public: linear saturate T=20 v=0.6" in e5

    cands = {c.label: c for c in fusion_candidates("similarity", vs=(0.0, 0.5))}
    scores = {"none (global order)": 0.5, "linear none v=0": 0.2, "linear none v=0.5": 0.7}

    class C:
        candidates = cands
        fit = {"chosen": {"A": "linear none v=0.5"}, "curves": {"all": scores, "A": scores}}
    curves = tables.sweep_curves(C)
    assert curves["all"] == {0.0: 0.2, 0.5: 0.7, 1.0: 0.5}
    assert "| E5 | all | 20.00 | 70.00 | 50.00 |" in tables.sweep_table({"d": {"E5": curves}})


def test_stage_timer_persists_and_merges(tmp_path):
    path = tmp_path / "timings.json"
    a = StageTimer(path)
    a.add("train E2", 10.0)
    a.add("train E2", 5.0)            # the same stage twice in one run adds up
    with a("cached") as st:
        st.computed = False           # found in the cache: nothing stored
    b = StageTimer(path)              # a second run (or a concurrent one) sees it and keeps it
    assert b["train E2"] == 15.0 and b["cached"] == 0.0
    b.add("extract E1", 2.0)
    a.add("score E5", 1.0)            # a's write must not drop b's entry
    assert json.loads(path.read_text()) == {"train E2": 15.0, "extract E1": 2.0, "score E5": 1.0}
    c = StageTimer(path)
    c.add("train E2", 7.0)            # recomputed in a later run: replaces, does not add
    assert c["train E2"] == 7.0 and c.total("train E2", "extract E1") == 9.0
    with StageTimer()("plain"):       # no path: in memory only
        pass


def test_train_config_family_resolution():
    cfg = training.resolve_train_config("coil", "e3", "cpu", {"loop.epochs": "2"}, quick=False)
    assert cfg.name == "coil-e3" and cfg.loop.epochs == 2 and cfg.loop.device == "cpu"
    assert training.resolve_train_config("gldv2-gpu", "e4", "cuda", {}, quick=False).name == "gldv2-e4-gpu"
    quick = training.resolve_train_config("coil", "e2", "cpu", {}, quick=True)
    assert quick.loop.max_steps_per_epoch == 3 and quick.image_size == 64
    with pytest.raises(ValueError, match="no training configuration"):
        training.resolve_train_config("nope", "e2", "cpu", {}, quick=False)
    assert training.rung_overrides(("e3.loop.epochs=2", "E2.P=4")) == {"e3": {"loop.epochs": "2"}, "e2": {"P": "4"}}
    from retrieval.core.config import ConfigError

    with pytest.raises(ConfigError, match="RUNG.KEY=VALUE"):
        LadderConfig().override(['object.train_set=["e9.loop.epochs=1"]'])


def test_landmark_level_relevance_and_quick_subset(oxford_dir):
    from retrieval.datasets import read_oxford
    from retrieval.evaluation.evaluate import evaluate_per_query, landmark_solution

    ds = read_oxford(oxford_dir)
    q = ds.query_ids[0]
    same = [x for x, lab in zip(ds.query_ids, ds.query_labels) if lab == ds.query_labels[0]]
    expected = set().union(*(ds.ground_truth[x].positives | ds.ground_truth[x].junk for x in same))
    assert landmark_solution(ds)[q] == expected
    # positives, an image of another landmark, then the junk: perfect officially (junk ignored), not
    # landmark-level (junk is relevant there); the landmark's images first: perfect landmark-level
    other = next(d for d in ds.db_ids if d not in expected)
    own = {x: sorted(ds.ground_truth[x].positives) + [other] + sorted(ds.ground_truth[x].junk) for x in same}
    whole = {x: sorted(expected) for x in same}
    official = evaluate_per_query(ds, own, "oxford")["oxford_map"]
    assert all(official[x] == pytest.approx(1.0) for x in same)
    assert min(evaluate_per_query(ds, own, "landmark")["landmark_map"][x] for x in same) < 1.0
    assert all(evaluate_per_query(ds, whole, "landmark")["landmark_map"][x] == pytest.approx(1.0) for x in same)
    small = data.quick_subset(ds)
    assert len(small.query_ids) == 4 and len(small.db_ids) < len(ds.db_ids)
    assert all(small.ground_truth[x].positives <= set(small.db_ids) for x in small.query_ids)
    groups = query_groups(small)
    assert sorted(set(groups.values())) == ["fold 0", "fold 1"]
    for a, b in zip(small.query_ids, small.query_labels):       # a landmark never spans two folds
        assert {groups[x] for x, lab in zip(small.query_ids, small.query_labels) if lab == b} == {groups[a]}


def test_experiment_file_and_user_errors(tmp_path, capsys):
    from retrieval.cli import main as cli_main
    from retrieval.core.config import ConfigError
    from retrieval.experiments.kinds import load_protocol
    from retrieval.experiments.files import load_experiment

    conf = load_experiment("e1-e7").conf
    assert conf.object.dataset == "coil100"
    assert conf.landmark.protocols == ("official", "landmark", "revisited-medium", "revisited-hard")
    assert load_protocol("ladder").CONFIG is LadderConfig
    bad = tmp_path / "bad.toml"
    bad.write_text('kind = "ladder"\n[object]\nsfit = "x"\n')
    with pytest.raises(ConfigError, match="sfit"):
        load_experiment(bad)
    code = cli_main(["run", "e1-e7", "--dataset", "gldv2", "--data", str(tmp_path / "missing"),
                     "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no such GLDv2 folder" in err[0]
    code = cli_main(["run", "e1-e7", "--set", "landmark.protocols=[\"nope\"]", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "protocols" in err[0]


def _tiny(tmp_path, **sets):
    tiny = ["e2.loop.max_steps_per_epoch=1", "e2.P=2", "e2.K=4", "e2.batch_size=8", "e2.image_size=48"]
    tiny += [t.replace("e2.", r) for r in ("e3.", "e4.") for t in tiny[:5]]
    conf = LadderConfig(quick=True, backend="eager", progress=False, n_query_figures=1)
    return conf.override({"object.train_set": tiny, **sets})


def test_tiny_object_half_end_to_end(coil100_dir, tmp_path, monkeypatch, capsys):
    """The object half on COIL objects 1-2 (train) and 51-52 (test: one Public, one Private); a second
    call reuses every cached stage and reports the same figures."""
    from retrieval.experiments.ladder.run import main

    monkeypatch.setattr(data, "QUICK_COIL", dict(train_objects=range(1, 3), test_objects=range(51, 53)))
    conf = _tiny(tmp_path, **{"data_root": str(coil100_dir.parent), "landmark.enabled": False,
                              "rerankers": ["E5", "E7", "SV", "E8"]})
    out = main(conf, tmp_path / "out", tmp_path / "cache")
    # the run announced its estimate from the typical table (an empty cache), then ETAs as stages ran
    printed = capsys.readouterr().out
    assert "estimate for a cold run: about" in printed and "from typical seconds" in printed
    result = json.loads((out / "results.json").read_text())
    rows = result["rows"]
    assert [r["experiment"] for r in rows if r["split"] == "all"] == [
        "E1", "E2", "E3", "E4", "E5", "E7", "SV", "E8 alpha-QE", "E8 DBA", "E8 DBA+alpha-QE"]
    assert {r["dataset"] for r in rows} == {"coil100-gldv2-quick"}
    for r in rows:
        assert 0.0 <= r["metrics"]["map@100"] <= 100.0 and not math.isnan(r["metrics"]["map@100"])
    # the base candidate of every fused re-ranker is E4's ranking (v = 1)
    e4_all = next(r for r in rows if r["experiment"] == "E4" and r["split"] == "all")["metrics"]["map@100"]
    assert 100 * result["v_sweeps"]["coil100-gldv2-quick"]["E5"]["all"]["1.0"] == pytest.approx(e4_all, abs=0.01)
    for name in ("map_bars.png", "v_sweep.png", "queries_coil100-gldv2-quick_gldv2.png", "results.md"):
        assert (out / name).stat().st_size > 0
    key = lambda rs: [(r["experiment"], r["split"], r["metrics"], r["chosen"]) for r in rs]  # noqa: E731
    main(conf, tmp_path / "out", tmp_path / "cache")
    again = json.loads((out / "results.json").read_text())
    assert key(again["rows"]) == key(rows)
    assert not any(k.startswith(("train", "extract", "sift", "patches")) and v > 5
                   for k, v in again["stage_seconds_this_run"].items())


def test_tiny_landmark_half_needs_no_training(oxford_dir, tmp_path):
    """The landmark half alone (no COIL, no training) on a small Oxford subset, every protocol (the
    revisited ones with the official gnd_roxford5k.pkl when the data folder has it), with the opt-in
    ASMK rung (a 64-word codebook learned on the database's RootSIFT)."""
    pytest.importorskip("asmk")
    from retrieval.experiments.ladder.run import main

    protocols = ["official", "landmark"]
    revisited = (oxford_dir.parent / "revisitop" / "gnd_roxford5k.pkl").is_file()
    if revisited:
        protocols += ["revisited-easy", "revisited-medium", "revisited-hard"]
    conf = _tiny(tmp_path, **{"object.enabled": False, "landmark.data": str(oxford_dir),
                              "landmark.global_config": "lite0-gem-224", "landmark.patch_size": 224,
                              "landmark.spatial_sift": "rootsift-1k", "rerankers": ["E5", "SV", "ASMK", "E8"],
                              "landmark.asmk_words": 64, "landmark.protocols": protocols,
                              "data_root": str(oxford_dir.parent)})
    out = main(conf, tmp_path / "out", tmp_path / "cache")
    rows = json.loads((out / "results.json").read_text())["rows"]
    datasets = sorted({r["dataset"] for r in rows})
    assert len(datasets) == len(protocols) and all(d.startswith("oxford5k_subset-quick") for d in datasets)
    assert any("landmark-level" in d for d in datasets) and not any("COIL" in d.upper() for d in datasets)
    if revisited:
        hard = [r for r in rows if "revisited-hard" in r["dataset"]]
        assert hard and "restricted to the images present" in hard[0]["dataset"]
        assert all(0.0 <= r["metrics"]["Hard mAP"] <= 100.0 for r in hard)
    assert not (tmp_path / "cache" / "quick" / "train").exists()
    text = (out / "results.md").read_text()
    assert "| SV |" in text and "oxford mAP" in text
    asmk = [r for r in rows if r["experiment"] == "ASMK" and r["split"] == "all"]
    assert len(asmk) == len(protocols) and all("ASMK*" in r["note"] for r in asmk)
    assert any(tmp_path.joinpath("cache").rglob("encoder_rootsift-1k_64_100000.npz"))
    if revisited:
        assert any("Easy mAP" in r["metrics"] for r in rows if "revisited-easy" in r["dataset"])


def test_rerank_notes_name_the_local_features_that_are_not_rootsift():
    from types import SimpleNamespace

    from retrieval.experiments.ladder.rungs import RERANK_NOTES, features_label, rerank_note

    default = SimpleNamespace(sift="rootsift-1k", spatial_sift="rootsift-upright-c02-4k+max_keypoints=500")
    assert all(rerank_note(exp, default) == RERANK_NOTES[exp] for exp in ("E5", "E6", "E7", "SV", "ASMK"))
    learned = SimpleNamespace(sift="sift-2k", spatial_sift="xfeat-4k+precision=float32")
    assert rerank_note("SV", learned) == "spatial verification (xfeat-4k+precision=float32, affine RANSAC inliers)"
    assert "xfeat-4k" in rerank_note("ASMK", learned) and "RootSIFT" not in rerank_note("ASMK", learned)
    assert rerank_note("E5", learned) == "sift-2k ratio test" and rerank_note("E7", learned) == RERANK_NOTES["E7"]
    # progress bars name them the same way
    assert features_label("rootsift-1k") == "RootSIFT rootsift-1k"
    assert features_label("disk-2k") == "disk-2k"
    assert features_label("sift-2k", "codebook images") == "sift-2k (codebook images)"


def test_spatial_scores_follow_the_spatial_features(oxford_dir, tmp_path):
    """SV rerun on one cache with other spatial_sift features scores again with those features instead of
    reusing the inlier counts cached for the previous ones."""
    from retrieval.experiments.ladder.run import main
    from retrieval.rerank.shortlist import Shortlist

    def run(spatial_sift):
        conf = _tiny(tmp_path, **{"object.enabled": False, "landmark.data": str(oxford_dir),
                                  "landmark.global_config": "lite0-gem-224", "landmark.patch_size": 224,
                                  "landmark.sift": "rootsift-1k", "landmark.spatial_sift": spatial_sift,
                                  "rerankers": ["SV"], "landmark.protocols": ["official"],
                                  "data_root": str(oxford_dir.parent)})
        main(conf, tmp_path / "out", tmp_path / "cache")

    run("rootsift-1k")
    run("rootsift-1k+max_keypoints=40")
    (path,) = list((tmp_path / "cache").rglob("shortlist_e1.json"))
    local = Shortlist.load(path).local
    many, few = local["inliers:affine-ransac-mutual@rootsift-1k"], local["inliers:affine-ransac-mutual@rootsift-1k+max_keypoints=40"]
    assert not np.isnan(many).any() and not np.isnan(few).any()
    assert few.sum() < many.sum()  # 40 keypoints an image find fewer inliers than up to 1,000


def test_tiny_object_half_on_a_labelled_folder(coil100_dir, tmp_path):
    """``--dataset folder``: any labelled folder (here 4 COIL objects copied, 8 views each) is split by
    label (2 training, 2 test labels: one Public, one Private), exported as GLDv2 and laddered; the
    titles name that folder, not COIL-100."""
    import shutil

    from retrieval.experiments.ladder.settings import with_dataset
    from retrieval.experiments.ladder.run import main

    folder = tmp_path / "my_objects"
    (folder / "images").mkdir(parents=True)
    lines = ["filename,label"]
    for obj in (1, 2, 51, 52):
        for az in range(0, 360, 45):
            name = f"obj{obj}__{az}.png"
            shutil.copy(coil100_dir / "images" / name, folder / "images" / name)
            lines.append(f"{name},toy{obj}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    rerankers = ["E5", "ASMK"] if importlib.util.find_spec("asmk") else ["E5"]   # ASMK: codebook on the training images
    conf = with_dataset(_tiny(tmp_path, rerankers=rerankers, **{"object.asmk_words": 16}), "folder", str(folder))
    out = main(conf, tmp_path / "out", tmp_path / "cache")
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {r["dataset"] for r in rows} == {"my_objects-gldv2-quick"}
    assert [r["experiment"] for r in rows if r["split"] == "all"] == ["E1", "E2", "E3", "E4", *rerankers]
    assert {r["split"] for r in rows} == {"Public", "Private", "all"}


def test_a_reranker_must_win_by_the_margin():
    """With min_gain, a candidate 0.3 points better on the choosing queries does not replace the base
    ranking; one 2 points better does, and the reported scores are the true (uncharged) ones."""
    groups = {"a1": "A", "b1": "B"}
    small = {"base": {"a1": 0.50, "b1": 0.50}, "small": {"a1": 0.503, "b1": 0.503}}
    fit = choose("E5", small, lambda c: c, [_relevance(None)], groups, min_gain=0.005)["toy"].fit
    assert fit["chosen"] == {"A": "base", "B": "base"}
    big = {"base": {"a1": 0.50, "b1": 0.50}, "big": {"a1": 0.52, "b1": 0.52}}
    fit = choose("E5", big, lambda c: c, [_relevance(None)], groups, min_gain=0.005)["toy"].fit
    assert fit["chosen"] == {"A": "big", "B": "big"} and fit["score"]["all"] == pytest.approx(0.52)


def test_every_shipped_experiment_loads_with_its_protocol():
    from retrieval.experiments.files import EXPERIMENT_DIR, load_experiment

    files = sorted(EXPERIMENT_DIR.glob("*.toml"))
    assert {f.stem for f in files} >= {"e1-e7", "spatial", "train-split", "oxford-descriptors"}
    for f in files:
        experiment = load_experiment(f)
        module, conf = experiment.module, experiment.conf
        assert isinstance(conf, module.CONFIG) and callable(module.main)
