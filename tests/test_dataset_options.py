"""``--dataset KIND --data PATH`` mean the same through ``retrieval run EXPERIMENT`` and through a
benchmark script (:func:`retrieval.bench.entry.run_experiment`): one rule,
:func:`retrieval.steps.experiment.apply_dataset_options`. Checked on the settings each protocol's
``main`` receives (replaced by a stand-in: nothing runs)."""
from __future__ import annotations

import dataclasses

import pytest

from retrieval.bench.entry import run_experiment
from retrieval.cli import main as cli_main
from retrieval.config import Config, ConfigError
from retrieval.steps.experiment import apply_dataset_options


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


def _both_spellings(monkeypatch, tmp_path, capsys, module_name, experiment, *options):
    seen = _received(monkeypatch, module_name)
    assert cli_main(["--quiet", "run", experiment, *options, "--out", str(tmp_path / "a")]) == 0, \
        capsys.readouterr().err
    assert run_experiment(experiment, [*options, "--out", str(tmp_path / "b")]) == 0, capsys.readouterr().err
    assert len(seen) == 2 and seen[0] == seen[1]
    return seen[0]


def test_descriptors_take_dataset_and_data_the_same_way(monkeypatch, tmp_path, capsys):
    conf = _both_spellings(monkeypatch, tmp_path, capsys, "retrieval.bench.descriptors", "oxford-descriptors",
                           "--dataset", "paris", "--data", "/data/paris6k")
    assert (conf.dataset, conf.data) == ("paris", "/data/paris6k")
    conf = _both_spellings(monkeypatch, tmp_path, capsys, "retrieval.bench.descriptors", "oxford-descriptors",
                           "--data", "/data/ox")
    assert (conf.dataset, conf.data) == ("oxford", "/data/ox")


def test_a_dataset_section_takes_dataset_and_data_the_same_way(monkeypatch, tmp_path, capsys):
    conf = _both_spellings(monkeypatch, tmp_path, capsys, "retrieval.bench.classical", "classical",
                           "--dataset", "folder", "--data", "/data/tree")
    assert (conf.dataset.kind, conf.dataset.path) == ("folder", "/data/tree")
    conf = _both_spellings(monkeypatch, tmp_path, capsys, "retrieval.bench.classical", "classical", "--data", "/ox")
    assert (conf.dataset.kind, conf.dataset.path) == ("oxford", "/ox")


def test_ladder_takes_dataset_and_data_the_same_way(monkeypatch, tmp_path, capsys):
    conf = _both_spellings(monkeypatch, tmp_path, capsys, "retrieval.ladder.run", "e1-e7",
                           "--dataset", "paris", "--data", "/data/paris6k")
    assert (conf.landmark.dataset, conf.landmark.data) == ("paris", "/data/paris6k")
    assert conf.landmark.enabled and not conf.object.enabled
    # without a kind, --data is the folder holding coil100/ and oxford5k_subset/: both halves run
    conf = _both_spellings(monkeypatch, tmp_path, capsys, "retrieval.ladder.run", "e1-e7", "--data", "/data")
    assert conf.data == "/data" and conf.landmark.enabled and conf.object.enabled


def test_multiview_takes_its_layout_both_ways_and_refuses_an_unknown_one_in_one_line(monkeypatch, tmp_path, capsys):
    from retrieval.bench.multiview import cli_main as multiview_main

    seen = _received(monkeypatch, "retrieval.bench.multiview")
    assert cli_main(["--quiet", "run", "multiview", "--dataset", "multiview", "--data", "/x",
                     "--out", str(tmp_path / "a")]) == 0
    assert multiview_main(["--dataset", "multiview", "--data", "/x", "--out", str(tmp_path / "b"),
                           "--cache", str(tmp_path / "c")]) == 0
    assert len(seen) == 2 and seen[0] == seen[1] and (seen[0].dataset, seen[0].data) == ("multiview", "/x")
    code = cli_main(["--quiet", "run", "multiview", "--dataset", "gldv2", "--data", "/x", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "experiment multiview" in err and "dataset must be one of views, folder, multiview" in err
    with pytest.raises(SystemExit) as exit_:        # benchmarks/multiview.py: the same choices, in its parser
        multiview_main(["--dataset", "gldv2", "--data", "/x", "--out", str(tmp_path)], prog="multiview.py")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "invalid choice: 'gldv2'" in err and "'views', 'folder', 'multiview'" in err


def test_the_rule_on_each_shape_of_settings():
    @dataclasses.dataclass(frozen=True)
    class Nothing(Config):
        k: int = 1

    @dataclasses.dataclass(frozen=True)
    class Folder(Config):
        data: str = ""

    plain = type("Protocol", (), {})()
    with pytest.raises(ConfigError, match=r"^experiment toy: its protocol takes no dataset kind \(--dataset\) "
                                          r"and no dataset folder \(--data\)$"):
        apply_dataset_options(plain, Nothing(), "folder", "/x", experiment="toy")
    assert apply_dataset_options(plain, Folder(), None, "/x").data == "/x"
    assert apply_dataset_options(plain, Nothing(), None, None) == Nothing()
    hook = staticmethod(lambda conf, kind, path: Folder(data=f"{kind}:{path}"))
    hooked = type("Protocol", (), {"apply_dataset": hook})()
    assert apply_dataset_options(hooked, Nothing(), "oxford", "/x").data == "oxford:/x"
