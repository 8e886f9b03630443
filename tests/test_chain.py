"""The ``retrieval`` experiment chain chooses its fusion weight v on held-out queries by default
(``v = "cross-fit"``): on a small COIL-100 subset, each fold's v is the best candidate on the OTHER
fold, the re-ranked row is the held-out figure, and results.json says what was chosen."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval.cli import main as cli_main
from retrieval.config import ConfigError
from retrieval.steps.chain import CROSS_FIT, ChainRerank

EXPERIMENT = """
kind = "retrieval"

[dataset]
kind = "folder"
path = "{data}"

[extract]
kind = "local"
config = "rootsift-1k"
n_jobs = 1

[encode]
train_images = 32
[encode.encoder]
kind = "bow"
k = 4          # few words: a weak global ranking that the local evidence improves
idf = false

[rerank]
scorer = "ratio"
shortlist = 16
vs = [0.0, 0.5]
"""


def _coil_subset(coil100_dir: Path, root: Path, objects=(1, 2, 3, 4, 5, 6), views=8) -> Path:
    """``objects`` x ``views`` COIL-100 images (5 degrees apart) as images/ + labels.csv."""
    (root / "images").mkdir(parents=True)
    lines = ["filename,object_id,azimuth_deg"]
    for obj in objects:
        for azimuth in range(0, 5 * views, 5):
            name = f"obj{obj}__{azimuth}.png"
            (root / "images" / name).symlink_to(coil100_dir / "images" / name)
            lines.append(f"{name},{obj},{azimuth}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def test_v_is_cross_fitted_by_default(coil100_dir, tmp_path, capsys):
    data = _coil_subset(coil100_dir, tmp_path / "coil")
    experiment = tmp_path / "crossfit.toml"
    experiment.write_text(EXPERIMENT.format(data=data))
    code = cli_main(["--quiet", "run", str(experiment), "--out", str(tmp_path / "res"),
                     "--cache", str(tmp_path / "cache")])
    out, err = capsys.readouterr()
    assert code == 0, err
    results = json.loads((tmp_path / "res" / "results.json").read_text())
    fit = results["v_cross_fit"]
    assert fit["folds_by"] == "query labels" and fit["metric"] == "mean_ap"
    assert fit["candidates"] == [1.0, 0.0, 0.5]          # v = 1 (the global order) first: it wins ties
    assert set(fit["chosen"]) == {"fold 0", "fold 1"} and set(fit["held_out"]) == {"fold 0", "fold 1", "all"}
    assert len(set(fit["curves"]["all"].values())) > 1    # the candidates differ: there is a choice to make
    for fold, other in (("fold 0", "fold 1"), ("fold 1", "fold 0")):
        curve = fit["curves"][other]                      # each fold's v: the best on the other fold
        best = max(curve.values())
        assert fit["chosen"][fold] == next(v for v in fit["candidates"] if curve[f"{v:g}"] >= best - 1e-12)
    global_row, reranked = results["rows"]
    assert reranked["method"].endswith("+ ratio (v cross-fit)")
    assert reranked["mean_ap"] == pytest.approx(fit["held_out"]["all"])
    assert results["summary"]["v_chosen"] == fit["chosen"]
    assert json.loads(out)["summary"]["queries"] == 12
    # a fixed v is still a fixed v, from the same cached local scores
    code = cli_main(["--quiet", "run", str(experiment), "--set", "rerank.v=0.5", "--out", str(tmp_path / "fixed"),
                     "--cache", str(tmp_path / "cache")])
    assert code == 0, capsys.readouterr().err
    fixed = json.loads((tmp_path / "fixed" / "results.json").read_text())
    assert "v_cross_fit" not in fixed and fixed["rows"][1]["method"].endswith("+ ratio (v=0.5)")
    assert fixed["rows"][1]["mean_ap"] == pytest.approx(fit["curves"]["all"]["0.5"])


def test_the_rerank_section_takes_a_number_or_cross_fit():
    assert ChainRerank().v == CROSS_FIT and ChainRerank(v="0.3").v == 0.3
    assert ChainRerank.from_dict({"v": 1}).v == 1.0
    with pytest.raises(ConfigError, match="'cross-fit'"):
        ChainRerank(v="best")
    with pytest.raises(ConfigError, match=r"v must be in \[0, 1\]"):
        ChainRerank(v=1.5)
    with pytest.raises(ConfigError, match="vs must be"):
        ChainRerank(vs=(0.5, 2.0))
