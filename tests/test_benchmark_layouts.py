"""Datasets in the layouts researchers keep them (issue 21): revisited Oxford / Paris pickles (read
without running anything), Oxford5k / Paris6k official folders, INRIA Holidays, UKBench and
distractors; each on a miniature written here with the benchmark's real file names and
ground-truth formats."""
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.cli import main as cli_main
from retrieval.datasets import DatasetError
from retrieval.datasets.distractors import add_distractors
from retrieval.datasets.numbered import read_holidays, read_ukbench
from retrieval.datasets.open import DatasetConfig, open_dataset
from retrieval.datasets.plainpickle import load_plain_pickle
from retrieval.datasets.revisitop import read_gnd, read_revisitop
from retrieval.evaluation.evaluate import evaluate


def _jpg(path: Path, size=(64, 48), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)


def _cli(capsys, *argv):
    code = cli_main(["--quiet", *[str(a) for a in argv]])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------ plain pickles

class _Payload:
    """Unpickling this creates ``marker`` (a folder): proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("proto", [0, 2, 4])
def test_plain_pickle_refuses_a_payload_which_never_runs(tmp_path, proto):
    marker = tmp_path / f"ran{proto}"
    path = tmp_path / "gnd_roxford5k.pkl"
    path.write_bytes(pickle.dumps({"gnd": [_Payload(marker)], "imlist": [], "qimlist": []}, protocol=proto))
    with pytest.raises(DatasetError) as err:
        load_plain_pickle(path)
    message = str(err.value)
    assert str(path) in message and "refused" in message and "mkdir" in message and "\n" not in message
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # the payload is live: a plain pickle.load would run it
    assert marker.exists()


def test_plain_pickle_unpickler_refuses_even_without_the_opcode_walk(tmp_path):
    from retrieval.datasets.plainpickle import _NoGlobals

    marker = tmp_path / "ran"
    data = pickle.dumps(_Payload(marker), protocol=4)
    with pytest.raises(DatasetError, match="refused: the pickle names"):
        _NoGlobals(data, tmp_path / "x.pkl").load()
    assert not marker.exists()


def test_plain_pickle_reads_plain_data_and_names_a_broken_file(tmp_path):
    value = {"a": [1, 2.5, None, True, -(2 ** 70)], "b": ("x", "é"), "c": {"d": []}}
    for proto in range(0, pickle.HIGHEST_PROTOCOL + 1):
        (tmp_path / "ok.pkl").write_bytes(pickle.dumps(value, protocol=proto))
        assert load_plain_pickle(tmp_path / "ok.pkl") == value
    rich = {"b": b"y", "c": {3}, "d": frozenset({4})}  # protocol 4 has opcodes for these
    (tmp_path / "ok.pkl").write_bytes(pickle.dumps(rich, protocol=4))
    assert load_plain_pickle(tmp_path / "ok.pkl") == rich
    (tmp_path / "cut.pkl").write_bytes(pickle.dumps(value, protocol=4)[:20])
    with pytest.raises(DatasetError, match="cut.pkl: not a readable pickle"):
        load_plain_pickle(tmp_path / "cut.pkl")


# ------------------------------------------------------------------------------ revisited pickles

def _revisitop(root: Path, proto=3, **change):
    """A miniature in the benchmark's layout: jpg/ + gnd_roxford5k.pkl (indices into imlist)."""
    imlist = ["all_souls_000001", "all_souls_000002", "oxford_000010", "ashmolean_000001",
              "ashmolean_000002", "balliol_000001"]
    for i, stem in enumerate(imlist):
        _jpg(root / "jpg" / f"{stem}.jpg", size=(1024, 768), seed=i)
    gnd = {"imlist": imlist, "qimlist": ["all_souls_000001", "ashmolean_000001"],
           "gnd": [{"bbx": [10.5, 11.5, 300.4, 400.6], "easy": [0, 1], "hard": [2], "junk": [5]},
                   {"bbx": [0, 0, 1023.7, 767], "easy": [3], "hard": [4], "junk": []}]}
    gnd.update(change)
    (root / "gnd_roxford5k.pkl").write_bytes(pickle.dumps(gnd, protocol=proto))
    return gnd


def test_read_revisitop_miniature_and_its_protocols(tmp_path):
    _revisitop(tmp_path)
    ds = read_revisitop(tmp_path)
    assert ds.name == "roxford5k" and ds.db_ids[0] == "all_souls_000001" and len(ds.db_ids) == 6
    assert ds.query_ids == ["all_souls_000001", "ashmolean_000001"]
    assert ds.query_labels == ["all_souls", "ashmolean"]
    # PIL's crop rounds to the nearest integer (half to even): 10.5 -> 10, 11.5 -> 12, 400.6 -> 401
    assert ds.query_boxes[0] == (10.0, 12.0, 300.0, 401.0) and ds.query_boxes[1] == (0.0, 0.0, 1024.0, 767.0)
    t = ds.ground_truth["all_souls_000001"]
    assert t.positives == {"all_souls_000001", "all_souls_000002", "oxford_000010"} and t.junk == {"balliol_000001"}
    ranking = {"all_souls_000001": ["balliol_000001", "ashmolean_000001", "oxford_000010", "all_souls_000001",
                                    "all_souls_000002", "ashmolean_000002"],
               "ashmolean_000001": ["ashmolean_000002", "ashmolean_000001", "all_souls_000001",
                                    "all_souls_000002", "oxford_000010", "balliol_000001"]}
    r = evaluate(ds, ranking, protocol="revisited")
    # hard of query 1: oxford_000010 at rank 2 once junk (balliol) and easy are removed
    # (query 2: ashmolean_000002 first once its easy image is ignored): (0 + 1/2) / 2 and 1
    assert r["revisited_map_hard"] == pytest.approx((0.25 + 1.0) / 2)
    assert r["revisited_mp@1_hard"] == pytest.approx((0 + 1) / 2)
    assert 0 < r["revisited_map_medium"] < 1 and "revisited_mp@10_easy" in r
    # the same miniature opened as a kind, with info on the command line
    assert len(open_dataset(DatasetConfig(kind="revisited", path=str(tmp_path))).query_ids) == 2


def test_read_revisitop_bad_inputs_name_the_file(tmp_path):
    root = tmp_path / "a"
    _revisitop(root, gnd=[{"bbx": [1, 1, 5, 5], "easy": [0, 9], "hard": [], "junk": []},
                          {"bbx": [1, 1, 5, 5], "easy": [1], "hard": [], "junk": []}])
    with pytest.raises(DatasetError, match=r"gnd_roxford5k.pkl: query 0 \(all_souls_000001\): 'easy' index 9 "
                                           r"points outside imlist \(6 images\)"):
        read_revisitop(root)
    root = tmp_path / "b"
    _revisitop(root)
    (root / "jpg" / "oxford_000010.jpg").unlink()
    with pytest.raises(DatasetError, match="oxford_000010.jpg: no such file"):
        read_revisitop(root)
    ds = read_revisitop(root, on_error="collect")
    assert "oxford_000010" not in ds.db_ids and len(ds.bad_files) == 1
    assert "oxford_000010" in ds.ground_truth["all_souls_000001"].hard  # missed, as on the full set
    root = tmp_path / "c"
    _revisitop(root)
    (root / "gnd_roxford5k.pkl").write_bytes(pickle.dumps({"gnd": [], "imlist": [], "qimlist": [],
                                                           "x": _Payload(tmp_path / "ran")}))
    with pytest.raises(DatasetError, match="gnd_roxford5k.pkl: refused"):
        open_dataset(DatasetConfig(kind="revisited", path=str(root)))
    assert not (tmp_path / "ran").exists()


def test_revisited_kind_keeps_the_text_layout(tmp_path):
    _jpg(tmp_path / "images" / "a_000001.jpg", size=(1024, 768))
    _jpg(tmp_path / "images" / "a_000002.jpg", size=(1024, 768), seed=1)
    gt = tmp_path / "gt"
    gt.mkdir()
    (gt / "a_1_query.txt").write_text("oxc1_a_000001 1 2 300 400\n")
    (gt / "a_1_easy.txt").write_text("a_000002\n")
    (gt / "a_1_hard.txt").write_text("\n")
    (gt / "a_1_junk.txt").write_text("\n")
    ds = open_dataset(DatasetConfig(kind="revisited", path=str(tmp_path)))
    assert ds.query_ids == ["a_1"] and ds.ground_truth["a_1"].easy == {"a_000002"}


def test_real_gnd_files_read_as_plain_data(data_root):
    folder = data_root / "revisitop"
    if not (folder / "gnd_roxford5k.pkl").is_file():
        pytest.skip("no revisitop folder")
    for name, n_db in (("gnd_roxford5k.pkl", 4993), ("gnd_rparis6k.pkl", 6322)):
        g = read_gnd(folder / name)
        raw = pickle.loads((folder / name).read_bytes())  # trusted copy, to compare against
        assert len(g.imlist) == n_db and len(g.qimlist) == 70 and g.qimlist == raw["qimlist"]
        assert g.hard[5] == [raw["imlist"][j] for j in raw["gnd"][5]["hard"]]
        assert g.boxes[0] == tuple(float(c) for c in raw["gnd"][0]["bbx"])


# ------------------------------------------------------------------------------ official Oxford / Paris

def test_official_oxford_and_paris_layouts(tmp_path):
    ox = tmp_path / "oxford5k"
    for i, stem in enumerate(["all_souls_000013", "all_souls_000026", "magdalen_000001"]):
        _jpg(ox / "oxbuild_images" / f"{stem}.jpg", size=(1024, 768), seed=i)
    gt = ox / "gt_files_170407"
    gt.mkdir()
    (gt / "all_souls_1_query.txt").write_text("oxc1_all_souls_000013 136.5 34.1 648.5 755.7\n")
    (gt / "all_souls_1_good.txt").write_text("all_souls_000013\nall_souls_000026\n")
    (gt / "all_souls_1_ok.txt").write_text("")
    (gt / "all_souls_1_junk.txt").write_text("magdalen_000001\n")
    ds = open_dataset(DatasetConfig(kind="oxford", path=str(ox)))
    assert ds.query_ids == ["all_souls_1"] and len(ds.db_ids) == 3
    assert ds.ground_truth["all_souls_1"].junk == {"magdalen_000001"}

    pa = tmp_path / "paris6k"
    for i, (lm, stem) in enumerate([("defense", "paris_defense_000605"), ("defense", "paris_defense_000001"),
                                    ("eiffel", "paris_eiffel_000010")]):
        _jpg(pa / "paris" / lm / f"{stem}.jpg", size=(1024, 768), seed=i)
    gt = pa / "gt_files_120310"
    gt.mkdir()
    (gt / "defense_1_query.txt").write_text("paris_defense_000605 10 20 500 600\n")
    (gt / "defense_1_good.txt").write_text("paris_defense_000001\n")
    (gt / "defense_1_ok.txt").write_text("paris_defense_000605\n")
    (gt / "defense_1_junk.txt").write_text("")
    ds = open_dataset(DatasetConfig(kind="paris", path=str(pa)))
    assert ds.query_paths[0] == pa / "paris" / "defense" / "paris_defense_000605.jpg"
    assert ds.ground_truth["defense_1"].positives == {"paris_defense_000001", "paris_defense_000605"}
    (pa / "gt_files_120310" / "defense_1_good.txt").write_text("paris_defense_000001\n")
    os.remove(pa / "paris" / "eiffel" / "paris_eiffel_000010.jpg")
    os.rmdir(pa / "paris" / "eiffel")
    os.rename(pa / "paris", pa / "pictures")
    (pa / "more").mkdir()
    _jpg(pa / "more" / "x.jpg")
    with pytest.raises(DatasetError, match="paris6k: cannot tell the image folder"):
        open_dataset(DatasetConfig(kind="paris", path=str(pa)))


# ------------------------------------------------------------------------------ Holidays, UKBench

def _holidays(root: Path, extra=()):
    for i, n in enumerate([100000, 100001, 100002, 100100, 100101, 100200, *extra]):
        _jpg(root / "jpg" / f"{n}.jpg", size=(64, 48), seed=i)


def test_read_holidays_groups_and_rotations(tmp_path):
    _holidays(tmp_path)
    ds = read_holidays(tmp_path)
    assert ds.query_ids == ["100000", "100100", "100200"] and len(ds.db_ids) == 6
    assert ds.ground_truth["100000"].positives == {"100001", "100002"}
    assert ds.ground_truth["100000"].junk == {"100000"}
    assert ds.metadata["upright"] == "as stored" and ds.metadata["queries_without_positives"] == 1
    ranking = {"100000": ["100000", "100101", "100001", "100002"], "100100": ["100101", "100000"]}
    r = evaluate(ds, ranking, protocol="holidays")
    # query 100000: own image dropped; hits at ranks 2, 3 of 2 positives: ((0+.5)/2 + (.5+2/3)/2) / 2
    assert r["holidays_map"] == pytest.approx((((0 + 0.5) / 2 + (0.5 + 2 / 3) / 2) / 2 + 1.0) / 2)
    assert r["num_queries"] == 2
    rot = tmp_path / "rotated.txt"
    rot.write_text("# clockwise degrees\n100001.jpg 90\n")
    up = open_dataset(DatasetConfig(kind="holidays", path=str(tmp_path), rotations=str(rot)))
    turned = np.asarray(Image.open(up.db_paths[1]))
    assert turned.shape[:2] == (64, 48) and "1 image(s) read upright" in up.metadata["upright"]
    assert np.array_equal(turned, np.rot90(np.asarray(Image.open(tmp_path / "jpg" / "100001.jpg")), k=-1))
    rot.write_text("100001.jpg 45\n")
    with pytest.raises(DatasetError, match=r"rotated.txt:1: expected"):
        read_holidays(tmp_path, rotations=rot)


def test_holidays_stray_file_is_named(tmp_path):
    _holidays(tmp_path)
    (tmp_path / "jpg" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"jpg/notes.txt: not a Holidays image"):
        open_dataset(DatasetConfig(kind="holidays", path=str(tmp_path)))


def test_read_ukbench_and_ns_score(tmp_path):
    for n in range(8):
        _jpg(tmp_path / "full" / f"ukbench{n:05d}.jpg", seed=n)
    ds = open_dataset(DatasetConfig(kind="ukbench", path=str(tmp_path)))
    assert len(ds.query_ids) == 8 and ds.ground_truth["ukbench00005"].positives == {
        "ukbench00004", "ukbench00005", "ukbench00006", "ukbench00007"}
    group = lambda n: [f"ukbench{i:05d}" for i in range(4 * (n // 4), 4 * (n // 4) + 4)]  # noqa: E731
    other = lambda n: [f"ukbench{i:05d}" for i in range(8) if i // 4 != n // 4]  # noqa: E731
    perfect = {f"ukbench{n:05d}": group(n) + other(n) for n in range(8)}
    assert evaluate(ds, perfect, protocol="ukbench")["ns_score"] == 4.0
    half = dict(perfect, ukbench00000=["ukbench00000", "ukbench00004", "ukbench00001", "ukbench00005",
                                       "ukbench00002", "ukbench00003"])
    r = evaluate(ds, half, protocol="ukbench")
    assert r["ns_score"] == pytest.approx((2 + 4 * 7) / 8) and r["mean_ap"] < 1
    os.remove(tmp_path / "full" / "ukbench00006.jpg")
    with pytest.raises(DatasetError, match=r"group 1 \(ukbench00004-ukbench00007\) has 3 image"):
        read_ukbench(tmp_path)


# ------------------------------------------------------------------------------ distractors, CLI

def test_distractors_join_the_database_and_are_counted(tmp_path):
    _holidays(tmp_path / "h")
    for i in range(3):
        _jpg(tmp_path / "d" / "sub" / f"flickr_{i}.jpg", seed=10 + i)
    ds = open_dataset(DatasetConfig(kind="holidays", path=str(tmp_path / "h"), distractors=str(tmp_path / "d")))
    assert len(ds.db_ids) == 9 and ds.db_ids[-1] == "flickr_2" and ds.metadata["distractors"] == 3
    assert "9 database images (of which 3 distractors)" in ds.summary()
    ranking = {"100000": ["flickr_0", "100001", "100002"], "100100": ["100101"]}
    r = evaluate(ds, ranking, protocol="holidays")
    assert r["distractors"] == 3 and r["holidays_map"] < 1
    _jpg(tmp_path / "d" / "100001.jpg")
    with pytest.raises(DatasetError, match=r"d/100001.jpg: distractor id '100001' is already taken"):
        add_distractors(read_holidays(tmp_path / "h"), tmp_path / "d")


@pytest.mark.parametrize("kind", ["revisited", "holidays", "ukbench"])
def test_dataset_info_and_profile_on_each_kind(tmp_path, capsys, kind):
    root = tmp_path / kind
    if kind == "revisited":
        _revisitop(root)
    elif kind == "holidays":
        _holidays(root)
    else:
        for n in range(4):
            _jpg(root / "full" / f"ukbench{n:05d}.jpg", seed=n)
    for i in range(2):
        _jpg(tmp_path / "distract" / f"z{i}.jpg", seed=50 + i)
    code, out, err = _cli(capsys, "dataset", "info", "--dataset", kind, "--data", root,
                          "--distractors", tmp_path / "distract")
    assert code == 0, err
    info = json.loads(out)
    assert info["metadata"]["distractors"] == 2 and info["queries"] >= 1
    code, out, err = _cli(capsys, "dataset", "check", root)
    assert code == 0, err
    code, out, err = _cli(capsys, "dataset", "profile", "--dataset", kind, "--data", root, "--out", tmp_path / "p",
                          "--set", "check_pixels=false")
    assert code == 0, err
    assert json.loads((tmp_path / "p" / "profile.json").read_text())["images"] >= 4


def test_cli_names_the_bad_file_in_one_line(tmp_path, capsys):
    _holidays(tmp_path)
    (tmp_path / "jpg" / "IMG_1.JPG").write_text("x")
    code, out, err = _cli(capsys, "dataset", "info", "--dataset", "holidays", "--data", tmp_path)
    assert code == 2 and err.strip().count("\n") == 0 and "IMG_1.JPG: not a Holidays image" in err


def test_ladder_landmark_half_reads_the_new_layouts(tmp_path):
    from retrieval.experiments.ladder.settings import LadderConfig, with_dataset
    from retrieval.experiments.ladder.data import read_landmarks

    _holidays(tmp_path / "h")
    _revisitop(tmp_path / "r")
    assert read_landmarks("holidays", tmp_path / "h").query_ids == ["100000", "100100", "100200"]
    assert read_landmarks("revisited", tmp_path / "r").metadata["protocol"] == "revisited-medium"
    conf = with_dataset(LadderConfig(), "ukbench", str(tmp_path / "u"))
    assert conf.landmark.enabled and not conf.object.enabled and conf.landmark.dataset == "ukbench"
    with pytest.raises(DatasetError, match="no such holidays folder"):
        read_landmarks("holidays", tmp_path / "missing")
