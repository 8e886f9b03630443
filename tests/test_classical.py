"""The classical protocol (kind ``classical``, retrieval.experiments.classical) on a tiny class-per-folder tree
made of a few real COIL-100 views: quick mode, result rows, the cache on a rerun, strict experiment
files and the thin entry point benchmarks/classical.py."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from retrieval.core.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
#: tiny vocabularies and whitening: the whole quick run takes seconds
TINY = {"bow_k": [8], "vlad_k": [4], "fisher_k": [2], "whiten_dims": [8], "speed": False, "progress": False,
        "n_jobs": 1}


def _tree(coil100_dir: Path, root: Path, objects, views=range(0, 360, 45)) -> Path:
    """root/obj<k>/obj<k>__<azimuth>.png: a class-per-folder tree of real COIL-100 views."""
    for o in objects:
        (root / f"obj{o}").mkdir(parents=True)
        for a in views:
            shutil.copy(coil100_dir / "images" / f"obj{o}__{a}.png", root / f"obj{o}" / f"obj{o}__{a}.png")
    return root


@pytest.fixture
def trees(coil100_dir, tmp_path):
    return (_tree(coil100_dir, tmp_path / "tree", (1, 2, 3)),
            _tree(coil100_dir, tmp_path / "other", (7, 8), views=range(0, 360, 30)))


def _conf(tree: Path, other: Path, **extra):
    from retrieval.experiments.classical import ClassicalConfig

    return ClassicalConfig.from_dict({"dataset": {"kind": "folder", "path": str(tree)},
                                      "whitening_data": {"kind": "folder", "path": str(other)},
                                      "quick": True, **TINY, **extra})


def test_quick_run_on_a_class_tree_and_rerun_from_the_cache(trees, tmp_path, monkeypatch):
    from retrieval.experiments import classical, classical_methods

    tree, other = trees
    out = classical.main(_conf(tree, other), tmp_path / "res", tmp_path / "cache")
    results = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in results["rows"]}
    for method in ("RootSIFT+BoW k=8", "RootSIFT+BoW+sqrt-tf k=8", "RootSIFT+VLAD k=4", "RootSIFT+VLAD+MA3+rn k=4",
                   "RootSIFT+VLAD k=4 +PCAw8", "RootSIFT+Fisher k=2 (PCA64)"):
        assert method in rows, sorted(rows)
        assert math.isfinite(rows[method]["mAP"]) and 0 <= rows[method]["mAP"] <= 100
        assert rows[method]["dataset"] == "tree-quick"
    assert rows["RootSIFT+VLAD k=4 +PCAw8"]["whitening_trained_on"].startswith("other images")
    # COIL's 128 px views get the small-image SIFT; a folder is scored with map@100 over the whole database
    assert results["sift"]["tree-quick"]["name"] == "rootsift-small"
    assert results["protocol"]["protocol"] == "general" and results["protocol"]["mAP column"] == "map@100"
    assert results["protocol"]["queries"].startswith("database images")
    assert (out / "results.md").read_text().startswith("## Classical retrieval on tree-quick")

    # a rerun learns nothing and extracts nothing: both would fail now
    def refuse(*args, **kwargs):
        raise AssertionError("recomputed instead of reading the cache")

    monkeypatch.setattr(classical_methods, "learn_codebook", refuse)
    monkeypatch.setattr(classical_methods.FisherEncoder, "fit", refuse)
    monkeypatch.setattr("retrieval.features.sift.SiftExtractor.extract_path", refuse)
    again = json.loads((classical.main(_conf(tree, other), tmp_path / "res2", tmp_path / "cache")
                        / "results.json").read_text())
    assert [(r["method"], r["mAP"]) for r in again["rows"]] == [(r["method"], r["mAP"]) for r in results["rows"]]


def test_whitening_is_never_learned_on_the_searched_set(trees, tmp_path):
    from retrieval.experiments import classical

    tree, _ = trees
    with pytest.raises(ConfigError, match="whitening_data"):
        classical.main(_conf(tree, tree), tmp_path / "res", tmp_path / "cache")


def test_config_defaults_and_strictness(tmp_path):
    from retrieval.experiments.classical import ClassicalConfig
    from retrieval.experiments.kinds import load_protocol
    from retrieval.experiments.files import apply_dataset_options, load_experiment

    def read_experiment(path, kind=None):
        experiment = load_experiment(path)
        assert kind is None or experiment.kind == kind
        return experiment.module, experiment.conf

    assert load_protocol("classical").CONFIG is ClassicalConfig
    _, conf = read_experiment(ROOT / "retrieval" / "experiments" / "classical.toml", kind="classical")
    assert conf.dataset.kind == "oxford" and conf.whitening_data.path == "coil100" and conf.bow_k is None
    _, coil = read_experiment(ROOT / "retrieval" / "experiments" / "classical-coil100.toml", kind="classical")
    assert coil.dataset.path == "coil100" and coil.whitening_data.kind == "oxford"
    # --dataset KIND --data PATH: the [dataset] section's kind and path, as for every protocol with one
    moved = apply_dataset_options(load_protocol("classical"), conf, "folder", "/data/tree")
    assert (moved.dataset.kind, moved.dataset.path) == ("folder", "/data/tree")
    assert apply_dataset_options(load_protocol("classical"), conf, None, "/data/ox").dataset.path == "/data/ox"
    typo = tmp_path / "typo.toml"
    typo.write_text('kind = "classical"\nvlad_kk = [64]\n')
    with pytest.raises(ConfigError, match="vlad_kk") as err:
        read_experiment(typo)
    assert "typo.toml" in str(err.value)
    typo.write_text('kind = "classical"\n[whitening_data]\npaht = "x"\n')
    with pytest.raises(ConfigError, match="paht"):
        read_experiment(typo)
    with pytest.raises(ConfigError, match="no-such-sift"):
        ClassicalConfig(sift="no-such-sift")
    with pytest.raises(ConfigError, match="override 'bow_kk'"):
        conf.override(["bow_kk=[8]"])


def test_entry_point_runs_a_folder_tree(trees, tmp_path):
    tree, other = trees
    # with the speed table this time (extraction with 1 and 2 workers, encoding against its GEMM bound)
    sets = [f"{k}={json.dumps(v)}" for k, v in TINY.items()] + [f"whitening_data.path={other}", "speed=true"]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "classical.py"), "--dataset", "folder", "--data", str(tree),
           "--quick", "--out", str(tmp_path / "res"), "--cache", str(tmp_path / "cache")]
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "res" / "results.json").read_text())["rows"]
    assert {r["dataset"] for r in rows} == {"tree-quick"} and len(rows) == 6
    speed = json.loads((tmp_path / "res" / "results.json").read_text())["speed"]
    assert [r["what"] for r in speed] == ["SIFT extraction (rootsift-small)"] * 3 + [
        "VLAD k=4 encoding", "Fisher k=2 (PCA64) encoding"]
    assert "### Speed" in (tmp_path / "res" / "results.md").read_text()
    # a typo in a --set key is an error that names it
    proc = subprocess.run(cmd[:-2] + ["--set", "vlad_kk=[4]"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "vlad_kk" in proc.stderr
