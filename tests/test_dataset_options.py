"""``--dataset KIND --data PATH`` mean the dataset everywhere, through ``retrieval run EXPERIMENT`` and
through the benchmark script that aliases it (one rule,
:func:`retrieval.experiments.files.apply_dataset_options`): every protocol of one dataset reads it from a
``[dataset]`` table (kind, path); the ladder's own hook picks the half that runs, and the folder holding
coil100/ and oxford5k_subset/ is ``--data-root``. The run flags (``--quick``, ``--recompute``,
``--quiet``) are checked the same way. Checked on the settings each protocol's ``main`` receives
(replaced by a stand-in: nothing runs)."""
from __future__ import annotations

import dataclasses
import runpy
import sys
from pathlib import Path

import pytest

from retrieval.cli import main as cli_main
from retrieval.core.config import Config, ConfigError
from retrieval.datasets.open import DatasetConfig
from retrieval.experiments.files import apply_dataset_options

ROOT = Path(__file__).resolve().parent.parent


def _received(monkeypatch, module_name: str) -> list:
    """Replace the protocol's ``main`` by one that records the settings it is given."""
    import importlib

    module = importlib.import_module(module_name)
    seen = []

    def record(conf, out_dir, cache_dir=None):
        seen.append(conf)
        return out_dir

    monkeypatch.setattr(module, "main", record)
    return seen


def _script(monkeypatch, name: str, *argv) -> int:
    """``python benchmarks/NAME ARGV...``, in this process (so that the stand-in ``main`` is seen)."""
    monkeypatch.setattr(sys, "argv", [name, *argv])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(ROOT / "benchmarks" / name), run_name="__main__")
    return info.value.code


def _both_spellings(monkeypatch, tmp_path, capsys, module_name, experiment, script, *options):
    seen = _received(monkeypatch, module_name)
    assert cli_main(["--quiet", "run", experiment, *options, "--out", str(tmp_path / "a")]) == 0, \
        capsys.readouterr().err
    assert _script(monkeypatch, script, "--quiet", *options, "--out", str(tmp_path / "b")) == 0, \
        capsys.readouterr().err
    assert len(seen) == 2 and seen[0] == seen[1]
    return seen[0]


def _one_line_error(capsys, argv) -> str:
    code = cli_main(["--quiet", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("retrieval: error: "), err
    return err[0]


def test_descriptors_read_their_landmark_set_from_a_dataset_table(monkeypatch, tmp_path, capsys):
    conf = _both_spellings(monkeypatch, tmp_path, capsys, "retrieval.experiments.descriptors", "oxford-descriptors",
                           "deep_oxford.py", "--dataset", "paris", "--data", "/data/paris6k")
    assert conf.dataset == DatasetConfig(kind="paris", path="/data/paris6k")
    conf = _both_spellings(monkeypatch, tmp_path, capsys, "retrieval.experiments.descriptors", "oxford-descriptors",
                           "deep_oxford.py", "--data", "/data/ox")
    assert (conf.dataset.kind, conf.dataset.path) == ("oxford", "/data/ox")
    # a kind without landmark ground truth is refused in one line naming the experiment
    line = _one_line_error(capsys, ["run", "oxford-descriptors", "--dataset", "folder", "--data", "/x"])
    assert "experiment oxford-descriptors" in line and "dataset.kind must be a landmark set" in line


def test_a_dataset_section_takes_dataset_and_data_the_same_way(monkeypatch, tmp_path, capsys):
    conf = _both_spellings(monkeypatch, tmp_path, capsys, "retrieval.experiments.classical", "classical", "classical.py",
                           "--dataset", "folder", "--data", "/data/tree")
    assert (conf.dataset.kind, conf.dataset.path) == ("folder", "/data/tree")
    conf = _both_spellings(monkeypatch, tmp_path, capsys, "retrieval.experiments.classical", "classical", "classical.py",
                           "--data", "/ox")
    assert (conf.dataset.kind, conf.dataset.path) == ("oxford", "/ox")


def test_ladder_takes_a_dataset_and_the_data_root_apart(monkeypatch, tmp_path, capsys):
    conf = _both_spellings(monkeypatch, tmp_path, capsys, "retrieval.experiments.ladder.run", "e1-e7", "e1_e7.py",
                           "--dataset", "paris", "--data", "/data/paris6k")
    assert (conf.landmark.dataset, conf.landmark.data) == ("paris", "/data/paris6k")
    assert conf.landmark.enabled and not conf.object.enabled
    # the folder holding coil100/ and oxford5k_subset/ is --data-root: both halves run
    conf = _both_spellings(monkeypatch, tmp_path, capsys, "retrieval.experiments.ladder.run", "e1-e7", "e1_e7.py",
                           "--data-root", str(tmp_path))
    assert conf.data_root == str(tmp_path) and conf.landmark.enabled and conf.object.enabled
    # --data is a dataset: without its kind it is refused (it used to mean the data root)
    line = _one_line_error(capsys, ["run", "e1-e7", "--data", str(tmp_path), "--out", str(tmp_path / "o")])
    assert "needs --dataset KIND" in line and "--data-root" in line
    line = _one_line_error(capsys, ["run", "e1-e7", "--data-root", str(tmp_path / "nowhere")])
    assert "nowhere: no such data folder (--data-root)" in line


def test_multiview_reads_a_dataset_table_and_refuses_other_kinds_in_one_line(monkeypatch, tmp_path, capsys):
    seen = _received(monkeypatch, "retrieval.experiments.multiview")
    assert cli_main(["--quiet", "run", "multiview", "--dataset", "multiview", "--data", "/x",
                     "--out", str(tmp_path / "a")]) == 0
    assert _script(monkeypatch, "multiview.py", "--dataset", "multiview", "--data", "/x",
                   "--out", str(tmp_path / "b")) == 0
    assert len(seen) == 2 and seen[0] == seen[1] and seen[0].dataset == DatasetConfig(kind="multiview", path="/x")
    line = _one_line_error(capsys, ["run", "multiview", "--dataset", "gldv2", "--data", "/x", "--out", str(tmp_path)])
    assert "experiment multiview" in line and "dataset.kind must be folder" in line
    code = _script(monkeypatch, "multiview.py", "--dataset", "gldv2", "--data", "/x", "--out", str(tmp_path))
    assert code == 2 and "dataset.kind must be folder" in capsys.readouterr().err


def test_multiview_layout_follows_the_folder(tmp_path):
    from retrieval.experiments.multiview import view_layout

    views, tree = tmp_path / "views", tmp_path / "tree"
    views.mkdir()
    tree.mkdir()
    (views / "labels.csv").write_text("filename,object_id,azimuth_deg\na.png,1,0\n")
    assert view_layout(DatasetConfig(kind="folder", path=str(views)), views) == "views"
    assert view_layout(DatasetConfig(kind="folder", path=str(tree)), tree) == "folder"
    assert view_layout(DatasetConfig(kind="multiview", path=str(tree)), tree) == "multiview"


def test_quick_recompute_and_quiet_are_settings_of_the_protocol(monkeypatch, tmp_path, capsys):
    seen = _received(monkeypatch, "retrieval.experiments.ladder.run")
    assert cli_main(["--quiet", "run", "e1-e7", "--quick", "--recompute", "--out", str(tmp_path / "a")]) == 0
    assert cli_main(["run", "e1-e7", "--recompute", "sift", "vlad", "--out", str(tmp_path / "b")]) == 0
    from retrieval.experiments.ladder.settings import STAGES

    assert seen[0].quick and seen[0].recompute == STAGES and not seen[0].progress
    assert not seen[1].quick and seen[1].recompute == ("sift", "vlad") and seen[1].progress
    line = _one_line_error(capsys, ["run", "e1-e7", "--recompute", "siftt", "--out", str(tmp_path / "c")])
    assert "unknown stage(s) ['siftt']" in line
    line = _one_line_error(capsys, ["run", "classical", "--recompute", "--out", str(tmp_path / "c")])
    assert "caches no stages" in line
    mv = _received(monkeypatch, "retrieval.experiments.multiview")
    assert cli_main(["--quiet", "run", "multiview", "--quick", "--out", str(tmp_path / "d")]) == 0
    assert mv[0].max_objects == 10 and mv[0].distill_epochs == (1, 2)      # the protocol's QUICK settings
    line = _one_line_error(capsys, ["run", "global-descriptor", "--quick", "--out", str(tmp_path / "e")])
    assert "has no quick mode" in line


def test_the_rule_on_each_shape_of_settings():
    @dataclasses.dataclass(frozen=True)
    class Nothing(Config):
        k: int = 1

    @dataclasses.dataclass(frozen=True)
    class TextFields(Config):        # the old shape (dataset / data as text): no longer a place for them
        dataset: str = ""
        data: str = ""

    @dataclasses.dataclass(frozen=True)
    class Table(Config):
        dataset: DatasetConfig = dataclasses.field(default_factory=DatasetConfig)

    plain = type("Protocol", (), {})()
    for conf in (Nothing(), TextFields()):
        with pytest.raises(ConfigError,
                           match=r"^experiment toy: its protocol takes no dataset \(--dataset / --data\)$"):
            apply_dataset_options(plain, conf, "folder", "/x", experiment="toy")
    assert apply_dataset_options(plain, Table(), "oxford", "/x").dataset == DatasetConfig(kind="oxford", path="/x")
    assert apply_dataset_options(plain, Nothing(), None, None) == Nothing()
    hook = staticmethod(lambda conf, kind, path: Table(dataset=DatasetConfig(kind=kind, path=f"hooked:{path}")))
    hooked = type("Protocol", (), {"apply_dataset": hook})()
    assert apply_dataset_options(hooked, Nothing(), "oxford", "/x").dataset.path == "hooked:/x"
