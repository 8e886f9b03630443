"""Fault injection on what a user hands the pipeline (issue 22): dataset folders with things that are
not images, label and GLDv2 files with empty or short fields, rankings that repeat an id, query files
with a NaN row, bad settings, images without keypoints, and a class-per-folder tree with an empty and
a truncated image under ``retrieval run``.

The promise (README "What happens when things go wrong"): nothing is silently dropped or scored
wrong; bad input is one line naming the file (and key, line, row or id) and saying what to do.
"""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from retrieval.cli import main
from retrieval.datasets import DatasetError
from test_commands import make_tree
from test_faults_io import _gldv2, _png, _write

SIFT = ["--set=max_keypoints=300", "--set=max_side=192", "--set=upscale=true"]


def _cli(capsys, *argv):
    code = main(["--quiet", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error(err: str) -> str:
    """The one line of a user error: no traceback, nothing else."""
    lines = [x for x in err.strip().splitlines() if not x.startswith("retrieval: warning:")]
    assert len(lines) == 1 and lines[0].startswith("retrieval: error: "), err
    assert "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------- item 2: skipped entries

def _tree_with_odd_entries(root: Path) -> Path:
    for c in ("cat", "dog"):
        for v in range(2):
            _png(root / c / f"{c}_{v}.png", value=60 * v + 10)
    (root / "cat" / "loop.jpg").symlink_to(root / "cat" / "loop.jpg")       # a symbolic link loop
    (root / "cat" / "gone.jpg").symlink_to(root / "nowhere" / "gone.jpg")   # a dangling link
    (root / "dog" / "x.jpg").mkdir()                                        # a folder named like an image
    _write(root / "dog" / "notes.txt", "not an image")
    return root


def test_dataset_check_and_readers_report_every_skipped_entry(tmp_path, capsys):
    """Old code: the lister dropped anything that is not a regular file without a word (checked=4,
    nothing reported)."""
    from retrieval.datasets.files import DatasetWarning
    from retrieval.datasets.folders import read_class_tree

    tree = _tree_with_odd_entries(tmp_path / "tree")
    code, out, _ = _cli(capsys, "dataset", "check", tree)
    report = json.loads(out)
    assert code == 1 and report["checked"] == 7 and report["unreadable"] == 3
    reasons = {Path(b["path"]).name: b["reason"] for b in report["bad_files"]}
    assert reasons == {"loop.jpg": "symbolic link loop", "gone.jpg": "dangling symbolic link",
                       "x.jpg": "folder named like an image"}
    assert report["skipped"] == 1 and Path(report["skipped_files"][0]["path"]).name == "notes.txt"
    # every reader that lists a folder says how many entries it left out and why, naming the folder
    with pytest.warns(DatasetWarning, match=r"tree: skipped 4 entries") as caught:
        ds = read_class_tree(tree)
    message = str(caught[0].message)
    for part in ("symbolic link loop: 1", "dangling symbolic link: 1", "folder named like an image: 1",
                 "non-image file (by its extension): 1", "fix or remove them"):
        assert part in message
    assert len(ds.db_ids) == 4


# ------------------------------------------------------------------------------ item 4: empty label

def test_labels_csv_with_an_empty_label_is_refused_naming_file_and_line(tmp_path):
    """Old code: the row was read as class ''."""
    from retrieval.datasets import read_labelled_folder

    for name in ("a.png", "b.png", "c.png"):
        _png(tmp_path / "coil" / "images" / name)
    _write(tmp_path / "coil" / "labels.csv", "filename,object_id\na.png,1\nb.png,  \nc.png,2\n")
    with pytest.raises(DatasetError, match=r"coil/labels\.csv:3: empty label \(column 'object_id'\).*give every"):
        read_labelled_folder(tmp_path / "coil")


# ------------------------------------------------------------------------------ item 15: GLDv2 ids

def test_gldv2_id_shorter_than_three_characters_names_the_csv_and_row(tmp_path):
    """Old code: 'GLDv2 id 'ab' is shorter than 3 characters', naming neither file nor line."""
    from retrieval.datasets import read_gldv2

    root = _gldv2(tmp_path / "g")
    _write(root / "index.csv", "id\naaa001\nab\nbcd003\n")
    with pytest.raises(DatasetError, match=r"g/index\.csv: row 2: id 'ab' is shorter than 3 characters"):
        read_gldv2(root)


# ------------------------------------------------------------------- item 5: a ranking repeats an id

def test_ranking_row_repeating_a_database_id_is_refused_naming_query_and_id(tmp_path, capsys):
    """Old code: scored (a repeated id counts as another hit), exit 0."""
    from retrieval.datasets.open import DatasetConfig, open_dataset
    from retrieval.indexing.index import Ranking
    from retrieval.indexing.ranking import _ranking_digest

    tree = make_tree(tmp_path / "tree")
    ds = open_dataset(DatasetConfig(kind="folder", path=str(tree)))
    rng = np.random.default_rng(0)
    ids = np.array([[ds.db_ids[j] for j in rng.permutation(len(ds.db_ids))] for _ in ds.query_ids])
    scores = -np.sort(-rng.random(ids.shape).astype(np.float32), axis=1)
    Ranking(ids=ids, scores=scores, indices=np.zeros(ids.shape, np.int64), query_ids=ds.query_ids).save(
        tmp_path / "r.json")
    assert _cli(capsys, "evaluate", tmp_path / "r.json", "--dataset", "folder", "--data", tree)[0] == 0
    payload = json.loads((tmp_path / "r.json").read_text())
    payload["ids"][2][5] = payload["ids"][2][0]  # the third query lists its first image twice, re-signed
    del payload["sha256"]
    payload["sha256"] = _ranking_digest(payload)
    (tmp_path / "r.json").write_text(json.dumps(payload))
    code, _, err = _cli(capsys, "evaluate", tmp_path / "r.json", "--dataset", "folder", "--data", tree)
    line = _one_error(err)
    assert code == 2 and str(tmp_path / "r.json") in line
    assert f"query {ds.query_ids[2]!r} lists database id {payload['ids'][2][0]!r} more than once" in line
    assert "search again" in line


# ---------------------------------------------------------------------- item 16: a NaN query row

def test_query_file_with_a_nan_row_names_the_file_and_the_query(tmp_path, capsys):
    """Old code: 'query vectors contain NaN or infinite values (rows [3])': neither file nor id."""
    from retrieval.features.store import save_global

    rng = np.random.default_rng(1)
    save_global(tmp_path / "db.h5", [f"d{i}" for i in range(20)], rng.standard_normal((20, 8)).astype(np.float32))
    queries = rng.standard_normal((5, 8)).astype(np.float32)
    queries[3, 2] = np.nan
    save_global(tmp_path / "q.h5", [f"q{i}" for i in range(5)], queries)
    assert _cli(capsys, "index", "build", tmp_path / "db.h5", "--out", tmp_path / "i.npz")[0] == 0
    code, _, err = _cli(capsys, "search", tmp_path / "i.npz", tmp_path / "q.h5", "--out", tmp_path / "r.json")
    line = _one_error(err)
    assert code == 2 and str(tmp_path / "q.h5") in line and "query 'q3' (row 3) has NaN" in line
    assert "extract it again" in line and not (tmp_path / "r.json").exists()


# ------------------------------------------------------------------- items 17, 18: bad settings

EXPERIMENT = """kind = "retrieval"
[dataset]
kind = "folder"
path = "{data}"
"""


@pytest.mark.parametrize("setting, expected", [
    ("extract.n_jobs=0", "extract (ExtractConfig): n_jobs must be >= 1, got 0"),
    ("extract.n_jobs=-3", "n_jobs must be >= 1, got -3"),
    ("rerank.v=1.5", "override 'rerank.v': there is no [rerank] section, so that step is off"),
])
def test_bad_settings_name_the_key_before_any_work(tmp_path, capsys, setting, expected):
    """Old code: joblib's 'n_jobs == 0 in Parallel has no meaning' after the data was read; for
    rerank.v, "'rerank' is not a section" (the wrong reason)."""
    experiment = tmp_path / "mine.toml"
    experiment.write_text(EXPERIMENT.format(data=tmp_path / "photos"))
    code, _, err = _cli(capsys, "run", experiment, "--set", setting, "--out", tmp_path / "res")
    line = _one_error(err)
    assert code == 2 and str(experiment) in line and expected in line
    assert not (tmp_path / "res").exists()


def test_rerank_weight_out_of_range_is_refused_naming_v(tmp_path, capsys):
    experiment = tmp_path / "mine.toml"
    experiment.write_text(EXPERIMENT.format(data=tmp_path / "photos") + '[rerank]\nscorer = "spatial"\n')
    code, _, err = _cli(capsys, "run", experiment, "--set", "rerank.fusion.method=linear",
                        "--set", "rerank.fusion.v=1.5", "--out", tmp_path / "res")
    assert code == 2 and "v must be in [0, 1], got 1.5" in _one_error(err)


# -------------------------------------------------- item 9: retrieval run on a tree with bad files

RUN = ["--set", 'extract.overrides={"size": 64, "weights": "random"}', "--set", "extract.n_jobs=1"]


def test_run_on_a_tree_with_an_empty_image_and_other_files(tmp_path, capsys):
    """Old code: the empty image stopped the run with a Python traceback (exit 1), notes.txt and
    .DS_Store were dropped without a word."""
    tree = make_tree(tmp_path / "tree")
    (tree / "cat" / "empty.png").write_bytes(b"")
    _write(tree / "cat" / "notes.txt", "a note")
    _write(tree / "dog" / ".DS_Store", b"\0\0\0\1Bud1", binary=True)
    argv = ["run", "global-descriptor", "--data", tree, "--cache", tmp_path / "cache", *RUN]
    code, _, err = _cli(capsys, *argv, "--out", tmp_path / "res")
    line = _one_error(err)
    assert code == 2 and str(tree / "cat" / "empty.png") in line and "file is empty (0 bytes)" in line
    assert "--set dataset.on_error=collect" in line
    assert "skipped 2 entries" in err and "non-image file (by its extension): 2" in err
    # skipped with a count when asked to
    code, out, err = _cli(capsys, *argv, "--out", tmp_path / "res", "--set", "dataset.on_error=collect")
    assert code == 0, err
    assert "skipped 1 unreadable image file(s) (first: " in err and "empty.png" in err
    assert json.loads(out)["summary"]["database"] == 24


def test_run_stops_on_an_image_that_fails_to_decode_with_one_line_keeping_what_was_computed(tmp_path, capsys):
    """A truncated image passes the reader's cheap checks and fails in extraction. Old code:
    ExtractionError as a traceback (the CLI did not treat it as bad input)."""
    tree = make_tree(tmp_path / "tree")
    broken = tree / "tree" / "tree_005.jpg"  # the last image extracted
    broken.write_bytes(broken.read_bytes()[:200])
    code, _, err = _cli(capsys, "run", "global-descriptor", "--data", tree, "--cache", tmp_path / "cache",
                        "--out", tmp_path / "res", *RUN)
    line = _one_error(err)
    assert code == 2 and str(broken) in line and "image id 'tree/tree_005'" in line
    assert "computed so far are kept" in line
    stores = [p for p in (tmp_path / "cache").rglob("*.h5")]
    assert stores, "the features computed before the bad image were not kept"
    # skipped with a count when asked to: the reader decodes every image first
    code, out, err = _cli(capsys, "run", "global-descriptor", "--data", tree, "--cache", tmp_path / "cache",
                          "--out", tmp_path / "res", *RUN, "--set", "dataset.on_error=collect")
    assert code == 0, err
    assert "skipped 1 unreadable image file(s) (first: " in err and str(broken) in err
    assert json.loads(out)["summary"]["database"] == 23


# ----------------------------------------------------- item 12: the README chain, images without keypoints

def test_readme_chain_runs_through_images_without_keypoints(tmp_path, capsys):
    """Old code: 'retrieval index build' stopped on 'rows [..] are all zero and cannot be
    L2-normalised', naming rows rather than images, and encode did not say why."""
    tree = make_tree(tmp_path / "tree")
    blank = ("cat/cat_001", "dog/dog_003", "house/house_000")  # house_000 is a query (every 4th image)
    for image_id in blank:
        cv2.imwrite(str(tree / f"{image_id}.jpg"), np.full((160, 160, 3), 128, np.uint8))
    data = ["--dataset", "folder", "--data", tree]
    for images, out in (("db", "db-sift.h5"), ("queries", "q-sift.h5")):
        code, _, err = _cli(capsys, "extract", "local", *data, "--config", "rootsift-1k", *SIFT,
                            f"--set=images={images}", "--out", tmp_path / out)
        assert code == 0, err
    code, out, err = _cli(capsys, "encode", tmp_path / "db-sift.h5", "--out", tmp_path / "db.h5", "--encoder",
                          "vlad-64", "--set", "k=8", "--model", tmp_path / "vlad.npz")
    assert code == 0, err
    assert json.loads(out)["no_keypoints"] == ["cat/cat_001", "dog/dog_003", "house/house_000"]
    assert "3 image(s) have no keypoints" in err and "'cat/cat_001'" in err
    code, _, err = _cli(capsys, "encode", tmp_path / "q-sift.h5", "--out", tmp_path / "q.h5", "--encoder",
                        "vlad-64", "--set", "k=8", "--model", tmp_path / "vlad.npz")
    assert code == 0 and "'house/house_000'" in err
    code, out, err = _cli(capsys, "index", "build", tmp_path / "db.h5", "--out", tmp_path / "index.npz")
    assert code == 0, err
    assert json.loads(out)["count"] == 24 and json.loads(out)["zero_rows"] == 3 and "kept" in err
    code, _, err = _cli(capsys, "search", tmp_path / "index.npz", tmp_path / "q.h5", "--out", tmp_path / "r.json")
    assert code == 0 and "'house/house_000'" in err
    ranking = json.loads((tmp_path / "r.json").read_text())
    row = ranking["query_ids"].index("cat/cat_000")
    scores = dict(zip(ranking["ids"][row], ranking["scores"][row]))
    assert scores["cat/cat_001"] == 0.0 and scores["dog/dog_003"] == 0.0  # zero vectors score 0
    code, out, err = _cli(capsys, "evaluate", tmp_path / "r.json", *data)
    assert code == 0, err
    assert json.loads(out)["num_queries"] == 6 and json.loads(out)["mean_ap"] > 0.5
    # or drop them, with a count
    code, out, err = _cli(capsys, "index", "build", tmp_path / "db.h5", "--out", tmp_path / "dropped.npz",
                          "--zero-rows", "drop")
    assert code == 0 and json.loads(out)["count"] == 21 and "left out of the index" in err


# ------------------------------------------- item 22: every message names the file and what to do

@pytest.fixture
def faulty(tmp_path):
    """One input per fault of issue 22 that reaches the command line, and the file each must name."""
    from retrieval.features.efficientnet import resolve_config
    from retrieval.features.store import save_global
    from retrieval.indexing.index import Index
    from test_faults_indexes import _resign

    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((12, 8)).astype(np.float32)
    save_global(tmp_path / "db.h5", [f"d{i}" for i in range(12)], vectors, config=resolve_config("lite0-gem-224"))
    save_global(tmp_path / "q-avg.h5", ["q0"], vectors[:1], config=resolve_config("lite0-avg-224"))
    nan = vectors[:2].copy()
    nan[1, 0] = np.inf
    save_global(tmp_path / "q-nan.h5", ["q0", "q1"], nan, config=resolve_config("lite0-gem-224"))
    Index(vectors, ids=[f"d{i}" for i in range(12)], config=resolve_config("lite0-gem-224")).save(tmp_path / "i.npz")
    Index(vectors).save(tmp_path / "edited.npz")
    _resign(tmp_path / "edited.npz", header_edit=lambda h: h.update(dim=4))
    coil = tmp_path / "coil"
    for name in ("a.png", "b.png"):
        _png(coil / "images" / name)
    _write(coil / "labels.csv", "filename,object_id\na.png,1\nb.png,\n")
    gldv2 = _gldv2(tmp_path / "g")
    _write(gldv2 / "test.csv", "id\nfff100\nfe\n")
    tree = make_tree(tmp_path / "tree")
    (tree / "dog" / "empty.jpg").write_bytes(b"")
    return tmp_path


CASES = {
    "empty label": (["dataset", "info", "--dataset", "folder", "--data", "{t}/coil"], "{t}/coil/labels.csv:3",
                    "give every image a file name and a label"),
    "short GLDv2 id": (["dataset", "info", "--dataset", "gldv2", "--data", "{t}/g"], "{t}/g/test.csv: row 2",
                       "use longer ids"),
    "NaN query": (["search", "{t}/i.npz", "{t}/q-nan.h5", "--out", "{t}/r.json"], "{t}/q-nan.h5",
                  "extract it again or leave it out"),
    "mixed pooling": (["search", "{t}/i.npz", "{t}/q-avg.h5", "--out", "{t}/r.json"], "{t}/q-avg.h5",
                      "extract the queries as the database was, or pass --allow-mixed"),
    "edited header": (["search", "{t}/edited.npz", "{t}/q-avg.h5", "--out", "{t}/r.json"], "{t}/edited.npz",
                      "rebuild the index"),
    "empty image": (["dataset", "info", "--dataset", "folder", "--data", "{t}/tree"], "{t}/tree/dog/empty.jpg",
                    "fix or remove them, or skip them"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_message_names_the_file_and_says_what_to_do(faulty, capsys, case):
    argv, named, todo = CASES[case]
    code, _, err = _cli(capsys, *[a.format(t=faulty) for a in argv])
    line = _one_error(err)
    assert code == 2 and named.format(t=faulty) in line and todo in line, line
