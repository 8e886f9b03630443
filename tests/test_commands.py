"""Every step command (encode, index build, search, rerank, evaluate, run) on a small dataset in each
layout the readers take: images/ + labels.csv, a class-per-folder tree, Oxford (a slice of the real
subset), GLDv2 (written by the GLDv2 writer) and a multi-view DS/DU tree whose views vary in elevation
and azimuth. The chain is the command line from images to a scored ranking (``retrieval extract`` of the
database and of the queries, then every step); one test makes its local features with the Python
extraction API instead."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from retrieval.cli import main as cli_main
from retrieval.datasets import export_gldv2, labelled_gldv2_split, read_labelled_folder
from retrieval.datasets.open import DatasetConfig, open_dataset
from retrieval.features.extract import extract_local_features
from retrieval.features.sift import SiftExtractor

CLASSES = 4
VIEWS = 6
SIFT = {"max_keypoints": 300, "max_side": 192, "upscale": True}


def _run(capsys, *argv):
    code = cli_main(["--quiet", *[str(a) for a in argv]])
    out, err = capsys.readouterr()
    return code, out, err


def _texture(seed: int, size: int = 160) -> np.ndarray:
    """A class's object: random rectangles and discs on a textured ground (many SIFT corners)."""
    rng = np.random.default_rng(seed)
    img = (rng.random((size // 8, size // 8, 3)) * 255).astype(np.uint8)
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_NEAREST)
    for _ in range(14):
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = (int(v) for v in rng.integers(0, size - 20, 2))
        if rng.random() < 0.5:
            cv2.rectangle(img, (x, y), (x + int(rng.integers(8, 40)), y + int(rng.integers(8, 40))), color, -1)
        else:
            cv2.circle(img, (x + 10, y + 10), int(rng.integers(4, 16)), color, -1)
    return img


def _view(img: np.ndarray, azimuth: float, elevation: float = 0.0) -> np.ndarray:
    """The object seen from another azimuth (an in-plane rotation) and elevation (a vertical squash)."""
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), azimuth, 1.0)
    m[1] *= np.cos(np.radians(elevation))
    m[1, 2] += h * (1 - np.cos(np.radians(elevation))) / 2
    return cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT)


def _write(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)


def make_labelled(root: Path) -> Path:
    rows = []
    for c in range(CLASSES):
        base = _texture(c)
        for v in range(VIEWS):
            name = f"obj{c + 1}__{v}.png"
            _write(root / "images" / name, _view(base, 12.0 * v))
            rows.append((name, c + 1, 5 * v))
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "object_id", "azimuth_deg"])
        writer.writerows(rows)
    return root


def make_tree(root: Path) -> Path:
    for c, name in enumerate(["cat", "dog", "house", "tree"]):
        base = _texture(100 + c)
        for v in range(VIEWS):
            _write(root / name / f"{name}_{v:03d}.jpg", _view(base, -10.0 * v))
    return root


def make_multiview(root: Path) -> Path:
    """DS/retrieval/<class>/<instance>/<instance>.<k>.png: k enumerates (elevation, azimuth) pairs."""
    grid = [(e, a) for e in (0.0, 30.0) for a in (0.0, 15.0, 30.0)]
    for c, cls in enumerate(["chair", "lamp"]):
        for i in range(2):
            inst = f"{cls}_{i:04d}"
            base = _texture(200 + 10 * c + i)
            for k, (elevation, azimuth) in enumerate(grid):
                _write(root / "DS" / "retrieval" / cls / inst / f"{inst}.{k}.png", _view(base, azimuth, elevation))
    return root


def make_gldv2(root: Path, tmp: Path) -> Path:
    labelled = read_labelled_folder(make_labelled(tmp / "labelled-for-gldv2"))
    split = labelled_gldv2_split(labelled, train_labels=["1"], test_labels=["2", "3", "4"], query_step=3)
    export_gldv2(split, root, link="copy", progress=False)
    return root


def extract_local(ds, folder: Path):
    """The local stores of the database and of the queries, with the Python extraction API."""
    extractor = SiftExtractor("rootsift-1k", **SIFT)
    db = folder / "db-local.h5"
    q = folder / "q-local.h5"
    extract_local_features(ds.db_ids, ds.db_paths, extractor, db, n_jobs=1, progress=False)
    extract_local_features(ds.query_ids, ds.query_paths, extractor, q, n_jobs=1, boxes=ds.query_boxes,
                           progress=False)
    return db, q


def chain(capsys, tmp: Path, kind: str, data: Path, extra=()):
    """extract -> encode -> index build -> search -> rerank -> evaluate through the CLI; returns the
    metrics of the global ranking and of the re-ranked one."""
    ds = open_dataset(DatasetConfig(kind=kind, path=str(data)))
    db_local, q_local = tmp / "db-local.h5", tmp / "q-local.h5"
    sift = [f"--set={key}={str(value).lower()}" for key, value in SIFT.items()]
    for images, out in (("db", db_local), ("queries", q_local)):
        code, _, err = _run(capsys, "extract", "local", "--dataset", kind, "--data", data, "--config", "rootsift-1k",
                            *sift, f"--set=images={images}", "--out", out)
        assert code == 0, err
    for src, dst in ((db_local, "db.h5"), (q_local, "q.h5")):
        code, out, err = _run(capsys, "encode", src, "--out", tmp / dst, "--encoder", "vlad-64", "--set", "k=8",
                              "--model", tmp / "vlad.npz", "--train", db_local)
        assert code == 0, err
    assert json.loads(out)["learned"] is False  # the queries reuse the database's codebook
    code, out, err = _run(capsys, "index", "build", tmp / "db.h5", "--out", tmp / "index.npz")
    assert code == 0, err
    assert json.loads(out)["count"] == len(ds.db_ids)
    # the index records how its vectors were made (encoder + local features), for serve to re-extract queries
    from retrieval.features.store import load_global
    from retrieval.indexing.index import Index

    recorded = Index.load(tmp / "index.npz").config
    assert recorded == load_global(tmp / "db.h5")[2]
    assert recorded["encoder"]["k"] == 8 and recorded["local"]["max_keypoints"] == 300
    code, out, err = _run(capsys, "search", tmp / "index.npz", tmp / "q.h5", "--out", tmp / "ranking.json")
    assert code == 0, err
    assert json.loads(out)["k"] == len(ds.db_ids)  # the default ranks the whole (small) database
    code, out, err = _run(capsys, "rerank", tmp / "ranking.json", "--query-local", q_local, "--db-local", db_local,
                          "--scorer", "spatial", "--option", "threshold=8", "--shortlist", "5",
                          "--out", tmp / "reranked.json")
    assert code == 0, err
    before = json.loads((tmp / "ranking.json").read_text())
    after = json.loads((tmp / "reranked.json").read_text())
    for row_before, row_after in zip(before["ids"], after["ids"]):
        assert sorted(row_before[:5]) == sorted(row_after[:5]) and row_before[5:] == row_after[5:]
    results = []
    for ranking in ("ranking.json", "reranked.json"):
        code, out, err = _run(capsys, "evaluate", tmp / ranking, "--dataset", kind, "--data", data, *extra)
        assert code == 0, err
        results.append(json.loads(out))
    return results


def test_labelled_folder_every_command(tmp_path, capsys):
    data = make_labelled(tmp_path / "coil")
    plain, reranked = chain(capsys, tmp_path, "folder", data)
    assert plain["protocol"] == "general" and plain["num_queries"] == CLASSES * VIEWS // 4
    # distinct textures, views of one object: the global ranking finds its class-mates first
    assert plain["mean_ap"] > 0.8 and reranked["mean_ap"] > 0.8


def test_class_tree_every_command(tmp_path, capsys):
    data = make_tree(tmp_path / "tree")
    plain, reranked = chain(capsys, tmp_path, "folder", data)
    assert plain["num_queries"] == CLASSES * VIEWS // 4 and plain["mean_ap"] > 0.8
    # VLAD similarity as the local evidence (the encoder file of 'retrieval encode'); v=0: local order alone
    code, out, err = _run(capsys, "rerank", tmp_path / "ranking.json", "--query-local", tmp_path / "q-local.h5",
                          "--db-local", tmp_path / "db-local.h5", "--scorer", "vlad", "--model", tmp_path / "vlad.npz",
                          "--fusion", "linear", "--v", "0", "--shortlist", "6", "--out", tmp_path / "vlad.json")
    assert code == 0, err
    code, out, err = _run(capsys, "evaluate", tmp_path / "vlad.json", "--dataset", "folder", "--data", data)
    assert code == 0, err
    # the index holds the same VLAD vectors, so re-sorting the top 6 by them changes no figure
    assert json.loads(out)["mean_ap"] == pytest.approx(plain["mean_ap"])
    code, _, err = _run(capsys, "rerank", tmp_path / "ranking.json", "--query-local", tmp_path / "q-local.h5",
                        "--db-local", tmp_path / "db-local.h5", "--scorer", "vlad", "--out", tmp_path / "x.json")
    assert code == 2 and "encoder file" in err


def test_oxford_slice_every_command(tiny_oxford, tmp_path, capsys):
    data = tiny_oxford
    plain, reranked = chain(capsys, tmp_path, "oxford", data)
    # the official and the landmark-level protocols side by side; the landmark one counts junk as relevant
    for metrics in (plain, reranked):
        assert metrics["protocol"] == "oxford,landmark" and metrics["num_queries"] == 1
        assert 0.0 < metrics["oxford_map"] <= 1.0 and 0.0 < metrics["landmark_map"] <= 1.0
    # paris is the same layout
    code, out, err = _run(capsys, "evaluate", tmp_path / "ranking.json", "--dataset", "paris", "--data", data)
    assert code == 0, err
    assert json.loads(out)["oxford_map"] == plain["oxford_map"]


def test_gldv2_every_command(tmp_path, capsys):
    data = make_gldv2(tmp_path / "gld", tmp_path)
    plain, _ = chain(capsys, tmp_path, "gldv2", data)
    assert plain["protocol"] == "gldv2" and plain["map@100"] > 0.5


def test_multiview_elevation_and_azimuth_every_command(tmp_path, capsys):
    data = make_multiview(tmp_path / "mv")
    plain, _ = chain(capsys, tmp_path, "multiview", data)
    assert plain["protocol"] == "general" and plain["num_queries"] == 24 // 4 and plain["mean_ap"] > 0.5


# ------------------------------------------------------------------------------ evaluate depth

def test_evaluate_refuses_a_ranking_too_short_for_its_protocol(tmp_path, capsys):
    data = make_labelled(tmp_path / "coil")
    ds = open_dataset(DatasetConfig(kind="folder", path=str(data)))
    db_local, q_local = extract_local(ds, tmp_path)
    for src, dst in ((db_local, "db.h5"), (q_local, "q.h5")):
        assert _run(capsys, "encode", src, "--out", tmp_path / dst, "--encoder", "bow-1k", "--set", "k=16",
                    "--set", "idf=false",
                    "--model", tmp_path / "bow.npz", "--train", db_local)[0] == 0
    code, _, err = _run(capsys, "index", "build", tmp_path / "db.h5", "--out", tmp_path / "index.npz")
    assert code == 0, err
    assert _run(capsys, "search", tmp_path / "index.npz", tmp_path / "q.h5", "--k", "3",
                "--out", tmp_path / "short.json")[0] == 0
    code, out, err = _run(capsys, "evaluate", tmp_path / "short.json", "--dataset", "folder", "--data", data)
    assert code == 2 and "short.json: ranks 3 of 24" in err and "--allow-short" in err and out == ""
    code, out, err = _run(capsys, "evaluate", tmp_path / "short.json", "--dataset", "folder", "--data", data,
                          "--allow-short")
    assert code == 0 and "WARNING" in err
    short = json.loads(out)
    assert short["short_ranking"] == {"depth": 3, "needed": 24}
    # the cut-off protocol needs only its k
    code, out, err = _run(capsys, "evaluate", tmp_path / "short.json", "--dataset", "folder", "--data", data,
                          "--protocol", "gldv2", "--k", "3")
    assert code == 0, err
    # the full ranking scores at least as high as the truncated one (positives beyond 3 are found)
    assert _run(capsys, "search", tmp_path / "index.npz", tmp_path / "q.h5", "--out", tmp_path / "full.json")[0] == 0
    code, out, _ = _run(capsys, "evaluate", tmp_path / "full.json", "--dataset", "folder", "--data", data)
    assert code == 0 and json.loads(out)["mean_ap"] > short["mean_ap"]


# ------------------------------------------------------------------------------------- run

EXPERIMENT = """
kind = "retrieval"
description = "SIFT + BoW on a small folder"

[dataset]
kind = "folder"
path = "{data}"

[extract]
kind = "local"
config = "rootsift-1k"
overrides = {{ max_keypoints = 300, max_side = 192, upscale = true }}
n_jobs = 1

[encode]
train_images = 50
[encode.encoder]
kind = "bow"
k = 16
idf = false   # 16 words all occur in every image: idf would zero them

[rerank]
scorer = "ratio"
shortlist = 4
[rerank.fusion]
method = "linear"
v = 0.5
"""


def test_run_experiment_file(tmp_path, capsys):
    labelled = make_labelled(tmp_path / "coil")
    tree = make_tree(tmp_path / "tree")
    experiment = tmp_path / "small.toml"
    experiment.write_text(EXPERIMENT.format(data=labelled))
    code, out, err = _run(capsys, "run", experiment, "--out", tmp_path / "res", "--cache", tmp_path / "cache",
                          "--set", "rerank.features=rootsift-1k")
    assert code == 0, err
    summary = json.loads(out)["summary"]
    assert summary["main_metric"] == "mean_ap" and summary["queries"] == 6
    results = json.loads((tmp_path / "res" / "results.json").read_text())
    methods = [row["method"] for row in results["rows"]]
    assert methods == ["rootsift-1k+max_keypoints=300+max_side=192+upscale=True+bow16",
                       "rootsift-1k+max_keypoints=300+max_side=192+upscale=True+bow16 + ratio (rootsift-1k) "
                       "[linear saturate T=40 v=0.5]"]
    assert results["rows"][0]["mean_ap"] > 80      # results tables: percent
    assert (tmp_path / "res" / "results.md").is_file() and (tmp_path / "res" / "main_metric.png").is_file()
    # the same file on other data (a class-per-folder tree) via --dataset/--data; a rerun resumes from the cache
    code, out, err = _run(capsys, "run", experiment, "--dataset", "folder", "--data", tree,
                          "--out", tmp_path / "res-tree", "--cache", tmp_path / "cache")
    assert code == 0, err
    assert json.loads(out)["summary"]["dataset"].startswith("tree")


def test_run_global_descriptor_experiment(tmp_path, capsys):
    """The shipped experiment, EfficientNet global descriptors (random weights at 64 px: no download)."""
    tree = make_tree(tmp_path / "tree")
    code, out, err = _run(capsys, "run", "global-descriptor", "--data", tree, "--out", tmp_path / "res",
                          "--cache", tmp_path / "cache", "--set", 'extract.overrides={"size": 64, "weights": "random"}',
                          "--set", "extract.n_jobs=1")
    assert code == 0, err
    summary = json.loads(out)["summary"]
    assert summary["queries"] == 6 and summary["database"] == 24
    assert 0.0 < summary["lite0-gem-512+size=64+weights=random"] <= 100.0     # percent


def test_experiment_file_unknown_key_names_key_and_file(tmp_path, capsys):
    experiment = tmp_path / "typo.toml"
    experiment.write_text('kind = "retrieval"\n[search]\nkk = 5\n')
    code, _, err = _run(capsys, "run", experiment)
    assert code == 2 and "typo.toml" in err and "kk" in err
    experiment.write_text('kind = "nonsense"\n')
    code, _, err = _run(capsys, "run", experiment)
    assert code == 2 and "unknown experiment kind 'nonsense'" in err
    code, _, err = _run(capsys, "run", "no-such-experiment")
    assert code == 2 and "global-descriptor" in err  # lists the shipped experiments


def test_shipped_experiments_load_by_name():
    from retrieval.experiments.files import load_experiment, shipped_experiments

    assert "global-descriptor" in shipped_experiments()
    for name in shipped_experiments():
        if load_experiment(name).kind != "retrieval":   # other protocols (the ladder ...) have their own sections
            continue
        exp = load_experiment(name, ["search.k=10"], dataset="oxford", data="/data/ox")
        assert exp.conf.dataset.kind == "oxford" and exp.conf.dataset.path == "/data/ox"
        assert exp.conf.search.k == 10


# ------------------------------------------------------------------------------ folder layouts

def test_class_tree_reads_as_folder_and_queries_txt_chooses_queries(tmp_path):
    data = make_tree(tmp_path / "tree")
    ds = open_dataset(DatasetConfig(kind="folder", path=str(data)))
    assert ds.db_labels[:VIEWS] == ["cat"] * VIEWS and len(ds.db_ids) == CLASSES * VIEWS
    assert len(ds.query_ids) == CLASSES * VIEWS // 4  # the default: every 4th image of each class
    (data / "queries.txt").write_text("# my queries\ncat/cat_002.jpg\ndog/dog_004\n")
    ds = open_dataset(DatasetConfig(kind="folder", path=str(data)))
    assert ds.query_ids == ["cat/cat_002", "dog/dog_004"]
    assert ds.ground_truth["cat/cat_002"].positives == {f"cat/cat_{v:03d}" for v in range(VIEWS) if v != 2}
    flat = tmp_path / "flat"
    _write(flat / "a.png", _texture(1))
    with pytest.raises(ValueError, match=r"a\.png: an image directly under"):
        open_dataset(DatasetConfig(kind="folder", path=str(flat)))
    (data / "queries.txt").write_text("cat/nope\n")
    with pytest.raises(ValueError, match="queries.txt.*'cat/nope'"):
        open_dataset(DatasetConfig(kind="folder", path=str(data)))


def test_yaml_experiment_reads_like_toml(tmp_path):
    from retrieval.experiments.files import load_experiment

    (tmp_path / "e.yaml").write_text("kind: retrieval\ndataset:\n  kind: paris\n  path: /x\nsearch:\n  k: 7\n")
    exp = load_experiment(tmp_path / "e.yaml")
    assert exp.conf.dataset.kind == "paris" and exp.conf.search.k == 7
    with pytest.raises(ValueError, match=r"e\.yaml.*unknown key 'kk'"):
        load_experiment(tmp_path / "e.yaml", ["search.kk=3"])


def test_readme_experiment_file_is_valid(tmp_path):
    from retrieval.experiments.files import load_experiment

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Your own data"):]
    block = section[section.index("```toml") + len("```toml"):]
    (tmp_path / "mine.toml").write_text(block[:block.index("```")])
    exp = load_experiment(tmp_path / "mine.toml")
    assert exp.kind == "retrieval" and exp.conf.dataset.kind == "folder" and exp.conf.rerank.scorer == "spatial"


def test_landmark_protocol_counts_every_image_of_the_landmark():
    from retrieval.datasets.dataset import QueryTruth, RetrievalDataset
    from retrieval.evaluation.evaluate import evaluate, landmark_solution

    db = ["a1", "a2", "a3", "a4", "b1", "b2"]
    ds = RetrievalDataset(
        name="toy", root=Path("."), db_ids=db, db_paths=[Path(f"{i}.jpg") for i in db],
        query_ids=["a_q1", "a_q2"], query_paths=[Path("a1.jpg"), Path("a2.jpg")],
        query_labels=["a", "a"],
        ground_truth={"a_q1": QueryTruth(positives={"a1", "a2"}, junk={"a3"}),
                      "a_q2": QueryTruth(positives={"a2"}, junk={"a4"})})
    # every image of landmark a: the good/ok and junk of both of its queries
    assert landmark_solution(ds) == {"a_q1": {"a1", "a2", "a3", "a4"}, "a_q2": {"a1", "a2", "a3", "a4"}}
    ranking = {"a_q1": ["a1", "b1", "a3", "a2", "a4", "b2"], "a_q2": ["a2", "a4", "a1", "a3", "b1", "b2"]}
    official = evaluate(ds, ranking, protocol="oxford")["oxford_map"]
    landmark = evaluate(ds, ranking, protocol="landmark")["landmark_map"]
    # q1: the official AP drops a3 (junk): a1@1, a2@3 of {a1, a2}, Oxford's trapezoidal AP;
    # the landmark AP (plain AP, junk relevant): a1@1, a3@3, a2@4, a4@5 of {a1, a2, a3, a4}
    ap_q1_official = 0.5 * (1 + 1) / 2 + 0.5 * (1 / 2 + 2 / 3) / 2
    ap_q1_landmark = (1 / 1 + 2 / 3 + 3 / 4 + 4 / 5) / 4
    assert official == pytest.approx((ap_q1_official + 1.0) / 2)
    assert landmark == pytest.approx((ap_q1_landmark + 1.0) / 2)


def test_export_gldv2_of_a_class_tree_splits_its_labels_in_halves(tmp_path, capsys):
    from retrieval.datasets import read_gldv2

    tree = make_tree(tmp_path / "tree")
    code, out, err = _run(capsys, "dataset", "export-gldv2", "--data", tree, "--out", tmp_path / "gld",
                          "--query-step", "3", "--link", "copy")
    assert code == 0, err
    ds = read_gldv2(tmp_path / "gld")
    assert set(ds.train_labels) == {"cat", "dog"}  # the first half of the labels trains
    assert len(ds.query_ids) == 2 * VIEWS // 3 and len(ds.db_ids) == 2 * VIEWS - len(ds.query_ids)


def test_cli_dataset_kinds_are_the_readers_kinds_and_help_loads_no_numpy():
    # one table of kinds (retrieval.core.dataset_kinds, no numpy) for the readers and the command line
    import subprocess
    import sys

    from retrieval.core import dataset_kinds
    from retrieval.cli.arguments import DATASET_KINDS as cli_kinds
    from retrieval.datasets.open import DATASET_KINDS

    assert DATASET_KINDS is dataset_kinds.DATASET_KINDS and cli_kinds is DATASET_KINDS
    code = ("import sys, contextlib, io\nfrom retrieval.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    main(['--help']); main(['run', '--help'])\n"
            "print(sorted(m for m in ('numpy', 'torch', 'scipy', 'cv2') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "[]", done.stderr
