"""The E1-E7 benchmark: cross-fitted fusion weights, result rows and tables, timings, user errors,
and a tiny end-to-end run (2 + 2 COIL objects, one training step per model, no Oxford)."""
from __future__ import annotations

import json
import math

import pytest

from retrieval.bench import e1_e7
from retrieval.bench.e1_e7 import (VS, Options, Timings, cross_fit_v, oxford_halves, result_rows, summary_table,
                                   sweep_table)


def _curves():
    """Public queries peak at v = 0.2, Private queries at v = 0.8."""
    groups = {"p1": "Public", "p2": "Public", "q1": "Private", "q2": "Private"}
    per_query = {}
    for v in VS:
        pub = 1.0 - abs(v - 0.2)
        priv = 1.0 - abs(v - 0.8)
        per_query[v] = {"p1": pub, "p2": pub - 0.1, "q1": priv, "q2": priv - 0.2}
    return per_query, groups


def test_cross_fit_chooses_each_split_on_the_other():
    per_query, groups = _curves()
    fit = cross_fit_v(per_query, groups)
    # v of the Public queries comes from the Private curve and vice versa
    assert fit["v"] == {"Public": 0.8, "Private": 0.2}
    assert fit["per_query"]["p1"] == pytest.approx(1.0 - 0.6)
    assert fit["per_query"]["q2"] == pytest.approx(1.0 - 0.6 - 0.2)
    assert fit["score"]["Public"] == pytest.approx((0.4 + 0.3) / 2)
    assert fit["score"]["all"] == pytest.approx(sum(fit["per_query"].values()) / 4)
    # the sweep curves are the per-split means at every v
    assert fit["curves"]["Public"][0.2] == pytest.approx((1.0 + 0.9) / 2)
    assert set(fit["curves"]) == {"Public", "Private", "all"}
    assert sorted(fit["curves"]["all"]) == list(VS)


def test_cross_fit_is_not_the_oracle():
    """Choosing v on the reported queries themselves would score higher: cross-fitting must not."""
    per_query, groups = _curves()
    fit = cross_fit_v(per_query, groups)
    oracle_public = max(sum(per_query[v][q] for q in ("p1", "p2")) / 2 for v in VS)
    assert fit["score"]["Public"] < oracle_public


def test_cross_fit_ties_take_the_largest_v_and_needs_two_groups():
    flat = {v: {"a": 0.5, "b": 0.7} for v in VS}
    fit = cross_fit_v(flat, {"a": "A", "b": "B"})
    assert fit["v"] == {"A": 1.0, "B": 1.0}
    with pytest.raises(ValueError, match="two groups"):
        cross_fit_v(flat, {"a": "A", "b": "A"})
    with pytest.raises(ValueError, match="no AP"):
        cross_fit_v({0.0: {"a": 1.0, "b": 1.0}, 1.0: {"a": 1.0}}, {"a": "A", "b": "B"})


def test_oxford_halves_split_by_landmark():
    qids = ["all_souls_1", "all_souls_2", "ashmolean_1", "balliol_1", "balliol_2"]
    labels = ["all_souls", "all_souls", "ashmolean", "balliol", "balliol"]
    halves = oxford_halves(qids, labels)
    assert halves == {"all_souls_1": "A", "all_souls_2": "A", "ashmolean_1": "B", "balliol_1": "A",
                      "balliol_2": "A"}


def test_rows_and_tables():
    rows = result_rows("E1", "coil", {"Public": 0.9, "Private": 0.8, "all": 0.85}, seconds=12.34)
    rows += result_rows("E5", "coil", {"Public": 0.95, "Private": 0.81, "all": 0.88},
                        v={"Public": 0.3, "Private": 0.6}, seconds=5.0, note="E4 + SIFT")
    assert rows[0] == {"experiment": "E1", "dataset": "coil", "split": "Public", "metrics": {"map@100": 90.0},
                       "v": None, "seconds": 12.3, "note": ""}
    assert rows[3]["v"] == 0.3 and rows[4]["v"] == 0.6
    assert rows[5]["v"] == "Private:0.6 Public:0.3"
    table = summary_table(rows)
    lines = table.splitlines()
    assert "| experiment | Public | Private | all |" in table
    e5 = next(line for line in lines if line.startswith("| E5 "))
    assert "95.00" in e5 and "81.00" in e5 and "88.00" in e5 and "Public:0.3 Private:0.6" in e5
    sweeps = {"coil": {"E5": {"Public": {v: 0.5 for v in VS}, "all": {v: v / 2 for v in VS}}}}
    st = sweep_table(sweeps)
    assert "| E5 | all | 0.00 | 5.00 |" in st and st.count("| E5 |") == 2


def test_timings_persist_and_merge(tmp_path):
    path = tmp_path / "timings.json"
    a = Timings(path)
    a.add("train E2", 10.0)
    a.add("train E2", 5.0)            # the same stage twice in one run adds up
    a.add("cached", 3.0, computed=False)
    b = Timings(path)                 # a second run (or a concurrent one) sees it and keeps it
    assert b["train E2"] == 15.0 and b["cached"] == 0.0
    b.add("extract E1", 2.0)
    a.add("score E5", 1.0)            # a's write must not drop b's entry
    stored = json.loads(path.read_text())
    assert stored == {"train E2": 15.0, "extract E1": 2.0, "score E5": 1.0}
    c = Timings(path)
    c.add("train E2", 7.0)            # recomputed in a later run: replaces, does not add
    assert c["train E2"] == 7.0 and c.total("train E2", "extract E1") == 9.0


def test_train_config_family_resolution():
    cfg = e1_e7.resolve_train_config("coil", "e3", "cpu", {"loop.epochs": "2"}, quick=False)
    assert cfg.name == "coil-e3" and cfg.loop.epochs == 2 and cfg.loop.device == "cpu"
    assert e1_e7.resolve_train_config("gldv2-gpu", "e4", "cuda", {}, quick=False).name == "gldv2-e4-gpu"
    quick = e1_e7.resolve_train_config("coil", "e2", "cpu", {}, quick=True)
    assert quick.loop.max_steps_per_epoch == 3 and quick.image_size == 64
    with pytest.raises(ValueError, match="no training configuration"):
        e1_e7.resolve_train_config("nope", "e2", "cpu", {}, quick=False)


def test_user_errors_are_one_line(tmp_path, capsys):
    code = e1_e7.main(["--gldv2", str(tmp_path / "missing"), "--out", str(tmp_path / "o"),
                       "--cache", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no such GLDv2 folder" in err[0]
    bad = tmp_path / "gldv2"
    bad.mkdir()
    (bad / "index.csv").write_text("id\nabc123\n")
    (bad / "test.csv").write_text("wrong_header\nq1\n")
    code = e1_e7.main(["--gldv2", str(bad), "--skip-oxford", "--out", str(tmp_path / "o"),
                       "--cache", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "test.csv" in err[0]
    with pytest.raises(ValueError, match="EXPERIMENT"):
        e1_e7._parse_sets(["e9:loop.epochs=1"])


def test_tiny_end_to_end(coil100_dir, tmp_path, monkeypatch):
    """The whole ladder on COIL objects 1-2 (train) and 51-52 (test, one Public, one Private), one
    training step per model; then a second call reuses every cached stage."""
    monkeypatch.setattr(e1_e7, "QUICK_COIL", dict(train_objects=range(1, 3), test_objects=range(51, 53)))
    tiny = {"loop.max_steps_per_epoch": "1", "P": "2", "K": "4", "batch_size": "8", "image_size": "48"}
    opts = Options(data=coil100_dir.parent, out=tmp_path / "out", cache=tmp_path / "cache", quick=True,
                   skip_oxford=True, backend="eager", progress=False, n_query_figures=1,
                   train_overrides={"e2": dict(tiny), "e3": dict(tiny), "e4": dict(tiny)})
    text = e1_e7.run(opts)
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = result["rows"]
    assert [r["experiment"] for r in rows if r["split"] == "all"] == ["E1", "E2", "E3", "E4", "E5", "E6", "E7"]
    for r in rows:
        value = r["metrics"]["map@100"]
        assert 0.0 <= value <= 100.0 and not math.isnan(value)
        assert r["seconds"] is not None and r["seconds"] >= 0
    reranked = [r for r in rows if r["experiment"] in ("E5", "E6", "E7") and r["split"] != "all"]
    assert all(r["v"] in VS for r in reranked)
    assert set(result["v_sweeps"]["coil100-gldv2-quick"]) == {"E5", "E6", "E7"}
    assert result["peak_rss_mb"] > 0
    for name in ("map_bars.png", "v_sweep.png", "queries_coil100-gldv2-quick.png", "results.md"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert "| E7 |" in text
    # E5-E7 at v = 1 is E4's ranking
    sweeps = result["v_sweeps"]["coil100-gldv2-quick"]
    e4_all = next(r for r in rows if r["experiment"] == "E4" and r["split"] == "all")["metrics"]["map@100"]
    assert 100 * sweeps["E5"]["all"]["1.0"] == pytest.approx(e4_all, abs=0.01)
    # a rerun computes nothing again and reports the same figures and the stored seconds
    before = (tmp_path / "cache" / "quick" / "timings.json").read_text()
    e1_e7.run(opts)
    again = json.loads((tmp_path / "out" / "results.json").read_text())
    key = lambda rs: [(r["experiment"], r["split"], r["metrics"], r["v"]) for r in rs]  # noqa: E731
    assert key(again["rows"]) == key(rows)
    assert (tmp_path / "cache" / "quick" / "timings.json").read_text().count("train E2") == before.count("train E2")
    assert not any(k.startswith(("train", "extract", "sift", "patches")) and v > 5
                   for k, v in again["stage_seconds_this_run"].items())


def test_shortlisted_images_are_the_queries_and_what_their_shortlists_hold(tmp_path):
    """Re-ranking extracts local features only of the queries and the shortlisted index images."""
    from retrieval.rerank.shortlist import Shortlist
    from retrieval.datasets import RetrievalDataset

    ds = RetrievalDataset(name="t", root=tmp_path, db_ids=["a", "b", "c", "d"],
                          db_paths=[tmp_path / f"{x}.jpg" for x in "abcd"], query_ids=["q1", "q2"],
                          query_paths=[tmp_path / "q1.jpg", tmp_path / "q2.jpg"], ground_truth={},
                          query_boxes=[(0, 0, 5, 5), None])
    sl = Shortlist(["q1", "q2"], [["c", "a"], ["a", "c"]], [[0.9, 0.8], [0.7, 0.6]])
    ids, paths, boxes = e1_e7.shortlisted_images(ds, sl)
    assert ids == ["a", "c", "q1", "q2"]
    assert paths == [tmp_path / "a.jpg", tmp_path / "c.jpg", tmp_path / "q1.jpg", tmp_path / "q2.jpg"]
    assert boxes == [None, None, (0, 0, 5, 5), None]
