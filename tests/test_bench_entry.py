"""The benchmark scripts are one-line aliases of ``retrieval bench ...`` / ``retrieval run ...`` and run as
scripts from the repository root, on a few images: benchmarks/deep_speed.py on any dataset
(``--dataset KIND --data PATH``) and benchmarks/store_integrity.py, each writing its results.json; a
user error is one line and exit status 2; no script puts the repository root on ``sys.path``."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _script(name: str, *argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *[str(a) for a in argv]],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


def _coil_folder(coil100_dir: Path, root: Path) -> Path:
    """Two COIL-100 objects, two views each, as images/ + labels.csv."""
    (root / "images").mkdir(parents=True)
    lines = ["filename,object_id,azimuth_deg"]
    for obj in (1, 2):
        for azimuth in (0, 5):
            name = f"obj{obj}__{azimuth}.png"
            (root / "images" / name).symlink_to(coil100_dir / "images" / name)
            lines.append(f"{name},{obj},{azimuth}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def test_deep_speed_on_a_few_images(coil100_dir, tmp_path):
    data = _coil_folder(coil100_dir, tmp_path / "coil")
    # random weights at 64 px: nothing to download, a second of work
    done = _script("deep_speed.py", "--dataset", "folder", "--data", data, "--config", "lite0-gem-224",
                   "--set", "weights=random", "--set", "size=64", "--backend", "eager", "--backends", "eager",
                   "--precisions", "--bare-images", 2, "--rounds", 1, "--compare-batch", 1, "--n-jobs", 1,
                   "--full", "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {"rows", "torch_threads", "n_jobs", "quick", "torch", "auto_precision"} <= set(results)
    # a backend named explicitly: the default path is float32 on it
    assert results["auto_precision"] == "float32"
    for row in results["rows"]:
        assert set(row) == {"dataset", "config", "variant", "batch", "img_per_s", "vs_eager", "vs_old_default",
                            "e2e_vs_bare", "min_cos", "default"}
        assert row["dataset"] == "coil" and row["config"] == "lite0-gem-224" and row["img_per_s"] > 0
    variants = [row["variant"] for row in results["rows"]]
    assert "bare forward: eager" in variants and "end to end: eager" in variants
    # the old default decodes beside the network, the other paths take turns with it
    old = [row for row in results["rows"] if row["default"] == "old" and row["variant"].startswith("end to end:")]
    assert [row["variant"] for row in old] == ["end to end: eager, decoding beside the network"]
    assert old[0]["vs_old_default"] == 1.0
    assert variants[-2:] == ["end to end, all 4 images: eager, decoding beside the network",
                             "end to end, all 4 images: eager"]
    assert [row["min_cos"] > 0.9999 for row in results["rows"][-2:]] == [True, True]
    e2e = [row for row in results["rows"] if row["variant"] == "end to end: eager"]
    assert [row["min_cos"] > 0.9999 for row in e2e] == [True] * len(e2e)  # float32 at every batch size
    assert (tmp_path / "out" / "results.md").is_file()


def test_deep_speed_needs_the_folder_of_another_dataset(tmp_path):
    done = _script("deep_speed.py", "--dataset", "paris", "--out", tmp_path / "out")
    assert done.returncode == 2
    assert done.stderr.strip() == "retrieval: error: --dataset paris needs its folder (--data PATH)"


def test_store_integrity_writes_its_report(tmp_path):
    done = _script("store_integrity.py", "--entries", 2, "--rows", 300, "--rounds", 1, "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results == json.loads(done.stdout)
    assert set(results) == {"entries", "rows", "rounds", "median_seconds", "put_full_vs_bare",
                            "put_reserve_vs_no_reserve", "get_verify_vs_no_verify", "append_reserve_vs_no_reserve",
                            "load_verify_vs_no_verify"}
    assert set(results["median_seconds"]) == {"put", "put_no_reserve", "put_bare", "get_verify", "get_no_verify",
                                              "append", "append_no_reserve", "load_verify", "load_no_verify"}
    assert (tmp_path / "out" / "results.md").is_file()


def test_every_script_is_an_alias_of_a_command():
    import ast

    from retrieval.cli import build_parser

    parser = build_parser()
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        text = script.read_text()
        assert "sys.path" not in text, f"{script.name} edits sys.path"
        calls = [n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "main"]
        assert len(calls) == 1, script.name
        command = [elt.value for elt in calls[0].args[0].elts if isinstance(elt, ast.Constant)]
        # the command exists: parsing it with --help exits 0 (an unknown command exits 2)
        with pytest.raises(SystemExit) as info:
            parser.parse_args([*command, "--help"])
        assert info.value.code == 0, f"{script.name}: retrieval {' '.join(command)}"


def test_the_ladder_runs_one_way(capsys):
    from retrieval.cli import main

    # retrieval run e1-e7 is the one door; the old second door is closed
    assert main(["bench", "e1-e7", "--help"]) == 2
    assert "invalid choice: 'e1-e7'" in capsys.readouterr().err
    script = (ROOT / "benchmarks" / "e1_e7.py").read_text()
    assert 'main(["run", "e1-e7", *sys.argv[1:]])' in script
    recipes = [line for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith("\t")]
    ladder = [line for line in recipes if "e1" in line]
    assert len(ladder) == 2 and all("/retrieval run e1-e7 " in line for line in ladder), ladder


def test_index_speed_runs_from_the_command_line(tmp_path, capsys):
    from retrieval.cli import main

    assert main(["bench", "index-speed", "--n", "300", "--dim", "8", "--queries", "5", "--k", "3",
                 "--repeats", "1", "--out", str(tmp_path / "out")]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["args"]["n"] == 300 and "func" not in results["args"]
    assert "exact" in {row["backend"] for row in results["rows"]}
