"""The ``retrieval`` experiment chain is the ladder's pipeline on the user's data: on a small COIL-100
subset (a class-per-folder dataset whose queries are database images) the re-ranker's fusion (method,
T and v) is chosen on held-out queries with "no re-ranking" first, the re-ranked row is the held-out
figure, E8 (query expansion) runs through the same chooser, the queries are extracted once, and a
fixed fusion is one setting away."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval.cli import main as cli_main
from retrieval.core.config import ConfigError
from retrieval.rerank.fusion import FusionSettings

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
[rerank.fusion]
vs = [0.0, 0.5]
saturations = [10.0]
delg_thresholds = [8.0]

[expand]
modes = ["alpha-QE"]
n = [1, 2]
alpha = [1.0]
"""


def _coil_subset(coil100_dir: Path, root: Path, objects=(1, 2, 3, 4, 5, 6), views=8) -> Path:
    """``objects`` x ``views`` COIL-100 images (5 degrees apart), one folder per object."""
    for obj in objects:
        (root / str(obj)).mkdir(parents=True)
        for azimuth in range(0, 5 * views, 5):
            name = f"obj{obj}__{azimuth}.png"
            (root / str(obj) / name).symlink_to(coil100_dir / "images" / name)
    return root


def test_fusion_is_chosen_on_held_out_queries_by_default(coil100_dir, tmp_path, capsys):
    data = _coil_subset(coil100_dir, tmp_path / "coil")
    experiment = tmp_path / "chain.toml"
    experiment.write_text(EXPERIMENT.format(data=data))
    code = cli_main(["--quiet", "run", str(experiment), "--out", str(tmp_path / "res"),
                     "--cache", str(tmp_path / "cache")])
    out, err = capsys.readouterr()
    assert code == 0, err
    results = json.loads((tmp_path / "res" / "results.json").read_text())
    base, reranked, expanded = results["rows"]
    rerank_choice, expand_choice = results["choices"]
    assert reranked["method"] == f"{base['method']} + ratio (rootsift-small) (chosen on general)"
    assert set(rerank_choice["chosen"]) == {"fold 0", "fold 1"}        # whole objects per fold
    assert rerank_choice["candidates"] == len(FusionSettings(vs=(0.0, 0.5), saturations=(10.0,),
                                                             delg_thresholds=(8.0,)).candidates("count"))
    # the row reports the held-out figure: each fold at the choice made on the other fold
    assert reranked["mean_ap"] == pytest.approx(rerank_choice["held_out"]["all"])    # percent, both
    assert 0 < base["mean_ap"] <= 100 and base["num_queries"] == 12
    assert rerank_choice["deployed_fusion"]["method"] in ("none", "linear", "delg")
    assert expanded["method"].endswith("+ alpha-QE (chosen on general)")
    assert expanded["mean_ap"] == pytest.approx(expand_choice["held_out"]["all"])
    # the queries are database images: extracted once, with the database
    assert results["summary"]["queries_extracted_with_database"] is True
    assert results["stages"]["extract"]["images"] == 48
    assert not list((tmp_path / "cache").rglob("queries.h5"))
    assert json.loads(out)["summary"]["queries"] == 12
    # a fixed fusion, from the same cached local scores: one row, named by its fusion
    code = cli_main(["--quiet", "run", str(experiment), "--set", "rerank.fusion.method=linear",
                     "--set", "rerank.fusion.v=0.5", "--set", "expand=null", "--out", str(tmp_path / "fixed"),
                     "--cache", str(tmp_path / "cache")])
    assert code == 0, capsys.readouterr().err
    fixed = json.loads((tmp_path / "fixed" / "results.json").read_text())["rows"]
    assert [r["method"].rsplit("[", 1)[-1] for r in fixed[1:]] == ["linear saturate T=40 v=0.5]"]   # T: the default's


def test_fusion_settings_are_checked():
    with pytest.raises(ConfigError, match="method is 'auto'"):
        FusionSettings(v=0.5)                 # a weight without a fixed method is a mistake, not ignored
    with pytest.raises(ConfigError, match=r"v must be in \[0, 1\]"):
        FusionSettings(method="linear", v=1.5)
    with pytest.raises(ConfigError, match="needs ground truth"):
        FusionSettings(method="cross-fit").chooses(has_ground_truth=False)
    assert FusionSettings().chooses(True) and not FusionSettings().chooses(False)
    assert FusionSettings(method="linear", v=0.3).resolve("similarity").norm == "none"
    assert FusionSettings(method="linear", v=0.3).resolve("count").norm == "saturate"
