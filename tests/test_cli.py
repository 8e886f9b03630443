"""The ``retrieval`` command line, run in-process through ``main(argv)``."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.features.store import save_global
from retrieval.cli import main
from retrieval.datasets import read_gldv2, read_labelled_folder, every_nth_query


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _labelled_folder(root: Path, labels=("a", "b", "c"), views=8):
    rows = ["filename,object_id,azimuth_deg"]
    (root / "images").mkdir(parents=True)
    for lab in labels:
        for v in range(views):
            name = f"{lab}_{v}.png"
            Image.fromarray(np.full((6, 6, 3), v * 20, np.uint8)).save(root / "images" / name)
            rows.append(f"{name},{lab},{v * 45}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")


def _label_vectors(labels, rng, dim=16, noise=0.05):
    """One direction per label plus a little noise: nearest neighbours share the label."""
    names = sorted(set(labels))
    centres = rng.standard_normal((len(names), dim))
    return np.stack([centres[names.index(lab)] for lab in labels]) + noise * rng.standard_normal((len(labels), dim))


def test_help_lists_commands(capsys):
    code, out, _ = _run(capsys, "--help")
    assert code == 0
    for command in ("index", "evaluate", "dataset"):
        assert command in out
    code, out, _ = _run(capsys, "dataset", "--help")
    assert code == 0 and "export-gldv2" in out and "check" in out


@pytest.mark.parametrize("backend", ["exact", "faiss-flat"])
def test_build_search_evaluate_folder(tmp_path, capsys, rng, backend):
    data = tmp_path / "coil"
    _labelled_folder(data)
    ds = every_nth_query(read_labelled_folder(data), n=4)
    vectors = _label_vectors(ds.db_labels, rng)
    save_global(tmp_path / "db.h5", ds.db_ids, vectors, config={"name": "toy"})
    rows = [ds.db_ids.index(q) for q in ds.query_ids]
    save_global(tmp_path / "q.h5", ds.query_ids, vectors[rows], config={"name": "toy"})

    code, out, err = _run(capsys, "index", "build", tmp_path / "db.h5", "--out", tmp_path / "idx.npz",
                          "--backend", backend)
    assert code == 0, err
    built = json.loads(out)
    assert built["count"] == 24 and built["dim"] == 16 and built["backend"] == backend

    code, out, err = _run(capsys, "index", "search", tmp_path / "idx.npz", tmp_path / "q.h5",
                          "--out", tmp_path / "rank.json", "--batch", "2", "--quiet")
    assert code == 0, err
    assert json.loads(out)["queries"] == 6
    ranking = json.loads((tmp_path / "rank.json").read_text())
    # the default k ranks the whole database (what the general protocol's mean AP needs)
    assert ranking["query_ids"] == ds.query_ids and len(ranking["ids"][0]) == 24

    code, out, err = _run(capsys, "evaluate", tmp_path / "rank.json", "--dataset", "folder", "--data", data,
                          "--every", "4", "--out", tmp_path / "metrics.json")
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics == json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["protocol"] == "general" and metrics["num_queries"] == 6
    # each query finds its own image first (dropped as junk) and then its 7 label-mates
    assert metrics["map@100"] == pytest.approx(1.0)
    assert metrics["top1"] == pytest.approx(1.0)

    # a shuffled feature file (labels no longer match) must score lower: the figures are real
    save_global(tmp_path / "q_bad.h5", ds.query_ids, rng.standard_normal((6, 16)))
    _run(capsys, "index", "search", tmp_path / "idx.npz", tmp_path / "q_bad.h5", "--out", tmp_path / "bad.json")
    code, out, _ = _run(capsys, "evaluate", tmp_path / "bad.json", "--dataset", "folder", "--data", data)
    assert code == 0 and json.loads(out)["map@100"] < 0.9


def test_export_gldv2_then_evaluate(coil100_dir, tmp_path, capsys, rng):
    out_dir = tmp_path / "gld"
    argv = ["dataset", "export-gldv2", "--data", coil100_dir, "--out", out_dir, "--train-objects", "1",
            "--test-objects", "51-54", "--quiet"]
    code, out, err = _run(capsys, *argv)
    assert code == 0, err
    first = json.loads(out)
    assert first["index"] == 4 * 63 and first["test"] == 36 and first["train"] == 72
    assert first["usage"] == {"Public": 18, "Private": 18}
    code, out, _ = _run(capsys, *argv)
    assert code == 0 and json.loads(out)["written"] == 0  # resumed: nothing rewritten

    code, out, err = _run(capsys, "dataset", "info", "--dataset", "gldv2", "--data", out_dir)
    assert code == 0, err
    info = json.loads(out)
    assert info["database"] == 252 and info["queries"] == 36 and info["positives_per_query"]["min"] == 63

    ds = read_gldv2(out_dir)
    vectors = _label_vectors(ds.db_labels + ds.query_labels, rng)
    save_global(tmp_path / "index.h5", ds.db_ids, vectors[:252])
    save_global(tmp_path / "test.h5", ds.query_ids, vectors[252:])
    assert _run(capsys, "index", "build", tmp_path / "index.h5", "--out", tmp_path / "i.npz")[0] == 0
    assert _run(capsys, "index", "search", tmp_path / "i.npz", tmp_path / "test.h5", "--out",
                tmp_path / "r.json")[0] == 0
    code, out, err = _run(capsys, "evaluate", tmp_path / "r.json", "--dataset", "gldv2", "--data", out_dir)
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["protocol"] == "gldv2"
    assert metrics["map@100"] == pytest.approx(1.0)
    assert metrics["map@100_public"] == pytest.approx(1.0) and metrics["map@100_private"] == pytest.approx(1.0)


def test_user_errors_exit_2_naming_the_file(tmp_path, capsys, rng):
    missing = tmp_path / "nothere.h5"
    code, out, err = _run(capsys, "index", "build", missing, "--out", tmp_path / "i.npz")
    assert code == 2 and str(missing) in err and "Traceback" not in err and err.count("\n") == 1

    save_global(tmp_path / "db.h5", ["a", "b", "c"], rng.standard_normal((3, 8)))
    save_global(tmp_path / "q4.h5", ["q"], rng.standard_normal((1, 4)))
    assert _run(capsys, "index", "build", tmp_path / "db.h5", "--out", tmp_path / "i.npz")[0] == 0
    code, _, err = _run(capsys, "index", "search", tmp_path / "i.npz", tmp_path / "q4.h5", "--out",
                        tmp_path / "r.json")
    assert code == 2 and str(tmp_path / "q4.h5") in err and "dimension" in err

    code, _, err = _run(capsys, "index", "build", tmp_path / "db.h5", "--out", tmp_path / "j.npz",
                        "--backend", "annoy")
    assert code == 2 and "annoy" in err
    code, _, err = _run(capsys, "index", "build", tmp_path / "db.h5", "--out", tmp_path / "j.npz",
                        "--option", "nlist=4")
    assert code == 2 and "nlist" in err

    not_h5 = tmp_path / "text.h5"
    not_h5.write_text("hello")
    code, _, err = _run(capsys, "index", "build", not_h5, "--out", tmp_path / "k.npz")
    assert code == 2 and str(not_h5) in err

    # a ranking whose query ids are not the dataset's
    save_global(tmp_path / "q8.h5", ["zz"], rng.standard_normal((1, 8)))
    _run(capsys, "index", "search", tmp_path / "i.npz", tmp_path / "q8.h5", "--out", tmp_path / "r.json")
    data = tmp_path / "coil"
    _labelled_folder(data)
    code, _, err = _run(capsys, "evaluate", tmp_path / "r.json", "--dataset", "folder", "--data", data)
    assert code == 2 and str(tmp_path / "r.json") in err
    code, _, err = _run(capsys, "evaluate", tmp_path / "r.json", "--dataset", "oxford", "--data",
                        tmp_path / "nodata")
    assert code == 2 and str(tmp_path / "nodata") in err
    assert _run(capsys, "evaluate")[0] == 2  # argparse usage error


def test_dataset_check_reports_bad_files(tmp_path, capsys):
    data = tmp_path / "coil"
    _labelled_folder(data, labels=("a",), views=3)
    broken = data / "images" / "a_1.png"
    broken.write_bytes(broken.read_bytes()[:30])
    (data / "images" / "empty.jpg").write_bytes(b"")
    code, out, _ = _run(capsys, "dataset", "check", data / "images", "--n-jobs", "2", "--quiet",
                        "--out", tmp_path / "report.json")
    report = json.loads(out)
    assert code == 1 and report["checked"] == 4 and report["unreadable"] == 2
    assert {b["path"] for b in report["bad_files"]} == {str(broken), str(data / "images" / "empty.jpg")}
    assert json.loads((tmp_path / "report.json").read_text()) == report
    broken.unlink()
    (data / "images" / "empty.jpg").unlink()
    code, out, _ = _run(capsys, "dataset", "check", data / "images", "--quiet")
    assert code == 0 and json.loads(out)["unreadable"] == 0
