"""Dataset readers, splits and the GLDv2 writer, on tiny synthetic folders and the real data subsets."""
import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.datasets import (DatasetError, RetrievalDataset,
                                coil100_gldv2_split, crop_query, every_nth_query, exclude_self,
                                export_gldv2, gldv2_image_path, group_views, labelled_gldv2_split,
                                read_gldv2, read_labelled_folder, read_multiview_tree, read_os_core,
                                read_oxford, read_revisited, revisited_truth)


def _png(path: Path, size=(8, 6), value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)
    return path


def _write(path: Path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------ Oxford

def test_read_oxford_real_subset(oxford_dir):
    ds = read_oxford(oxford_dir)
    assert len(ds.db_ids) == 845 and len(ds.query_ids) == 55
    assert ds.db_ids == sorted(ds.db_ids)
    assert all(p.stem == i for i, p in zip(ds.db_ids, ds.db_paths))
    # boxes: queries.csv gives original pixels; the stored images are half size
    with open(oxford_dir / "queries.csv", newline="") as f:
        rows = {r["query_name"]: r for r in csv.DictReader(f)}
    for qid, path, box in zip(ds.query_ids, ds.query_paths, ds.query_boxes):
        row = rows[qid]
        assert path.name == row["filename"]
        w, h = Image.open(path).size
        for got, orig, limit in zip(box, (row["x1"], row["y1"], row["x2"], row["y2"]), (w, h, w, h)):
            assert abs(got - min(float(orig) * 0.5, limit)) <= 1.0
        assert 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h
    truth = ds.ground_truth["all_souls_1"]
    good = set((oxford_dir / "gt/all_souls_1_good.txt").read_text().split())
    ok = set((oxford_dir / "gt/all_souls_1_ok.txt").read_text().split())
    junk = set((oxford_dir / "gt/all_souls_1_junk.txt").read_text().split())
    assert truth.positives == good | ok and truth.junk == junk
    # the query image itself is a positive in the official lists (standard protocol keeps it)
    for qid, path in zip(ds.query_ids, ds.query_paths):
        assert path.stem in ds.ground_truth[qid].positives
        assert not ds.ground_truth[qid].positives & ds.ground_truth[qid].junk
    assert set(ds.query_labels) == {"all_souls", "ashmolean", "balliol", "bodleian", "christ_church",
                                    "cornmarket", "hertford", "keble", "magdalen", "pitt_rivers",
                                    "radcliffe_camera"}
    fixed = read_oxford(oxford_dir, scale=0.5)
    for a, b in zip(ds.query_boxes, fixed.query_boxes):
        assert np.allclose(a, b, atol=1.0)


def _oxford_fixture(root: Path, size=(1024, 768), paris=False):
    stems = ["paris_defense_000001", "paris_defense_000002", "paris_eiffel_000003", "paris_eiffel_000004"]
    for i, s in enumerate(stems):
        sub = s.split("_")[1] + "/" if paris else ""
        _png(root / "images" / f"{sub}{s}.jpg".replace(".jpg", ".png"), size=size, value=40 * i)
    prefix = "" if paris else "oxc1_"
    _write(root / "gt/defense_1_query.txt", f"{prefix}paris_defense_000001 100.5 50 600 700\n")
    _write(root / "gt/defense_1_good.txt", "paris_defense_000001\nparis_defense_000002\n")
    _write(root / "gt/defense_1_ok.txt", "")
    _write(root / "gt/defense_1_junk.txt", "paris_eiffel_000004\n")
    _write(root / "gt/eiffel_2_query.txt", f"{prefix}paris_eiffel_000003 0 0 2000 2000\n")
    _write(root / "gt/eiffel_2_good.txt", "paris_eiffel_000003\n")
    _write(root / "gt/eiffel_2_ok.txt", "paris_eiffel_000004\n")
    _write(root / "gt/eiffel_2_junk.txt", "\n")
    return stems


@pytest.mark.parametrize("paris", [False, True])
def test_read_oxford_synthetic_layouts(tmp_path, paris):
    stems = _oxford_fixture(tmp_path, size=(1024, 768), paris=paris)
    ds = read_oxford(tmp_path)
    assert ds.db_ids == stems and ds.query_ids == ["defense_1", "eiffel_2"]
    assert ds.query_labels == ["defense", "eiffel"]
    assert ds.query_boxes[0] == (100.5, 50.0, 600.0, 700.0)      # auto: 1024/1024 = 1.0
    assert ds.query_boxes[1] == (0.0, 0.0, 1024.0, 768.0)        # clipped to the image
    assert ds.ground_truth["eiffel_2"].positives == {"paris_eiffel_000003", "paris_eiffel_000004"}
    assert ds.ground_truth["defense_1"].junk == {"paris_eiffel_000004"}
    assert ds.solution() == {"defense_1": {"paris_defense_000001", "paris_defense_000002"},
                             "eiffel_2": {"paris_eiffel_000003", "paris_eiffel_000004"}}


def test_read_oxford_auto_scale_on_resized_images(tmp_path):
    _oxford_fixture(tmp_path, size=(256, 192))
    ds = read_oxford(tmp_path)
    assert ds.query_boxes[0] == pytest.approx((25.125, 12.5, 150.0, 175.0))
    assert ds.query_metadata["box_scale"] == [0.25, 0.25]


def test_read_oxford_errors(tmp_path):
    with pytest.raises(DatasetError, match="no such dataset folder"):
        read_oxford(tmp_path / "nope")
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError, match=str(tmp_path / "images")):
        read_oxford(tmp_path)  # empty image folder
    _oxford_fixture(tmp_path)
    (tmp_path / "gt/eiffel_2_ok.txt").unlink()
    with pytest.raises(DatasetError, match="eiffel_2_ok.txt"):
        read_oxford(tmp_path)


def test_read_oxford_bad_image_raise_or_collect(tmp_path):
    _oxford_fixture(tmp_path, size=(64, 48))
    bad = tmp_path / "images" / "paris_defense_000002.png"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(DatasetError, match="paris_defense_000002"):
        read_oxford(tmp_path, check=True)
    ds = read_oxford(tmp_path, check=True, on_error="collect")
    assert "paris_defense_000002" not in ds.db_ids and len(ds.db_ids) == 3
    assert [p for p, _ in ds.bad_files] == [str(bad)]
    assert ds.query_ids == ["defense_1", "eiffel_2"]


def test_read_revisited(tmp_path):
    _oxford_fixture(tmp_path)
    _write(tmp_path / "gt/defense_1_easy.txt", "paris_defense_000001\n")
    _write(tmp_path / "gt/defense_1_hard.txt", "paris_defense_000002\n")
    _write(tmp_path / "gt/eiffel_2_easy.txt", "paris_eiffel_000003\n")
    _write(tmp_path / "gt/eiffel_2_hard.txt", "")
    ds = read_revisited(tmp_path)
    t = ds.ground_truth["defense_1"]
    assert t.easy == {"paris_defense_000001"} and t.hard == {"paris_defense_000002"}
    assert t.positives == t.easy | t.hard and t.junk == {"paris_eiffel_000004"}
    hard = revisited_truth(t.easy, t.hard, t.junk, "hard")
    assert hard.positives == {"paris_defense_000002"}
    assert hard.junk == {"paris_eiffel_000004", "paris_defense_000001"}
    easy = revisited_truth(t.easy, t.hard, t.junk, "easy")
    assert easy.positives == {"paris_defense_000001"} and "paris_defense_000002" in easy.junk


def test_crop_query():
    img = np.arange(10 * 20).reshape(10, 20)
    assert crop_query(img, None) is img
    assert crop_query(img, (2.5, 1.2, 7.1, 4)).shape == (3, 6)  # floor start, ceil end
    np.testing.assert_array_equal(crop_query(img, (2, 1, 5, 3)), img[1:3, 2:5])
    assert crop_query(img, (-5, -5, 100, 100)).shape == (10, 20)
    with pytest.raises(ValueError, match="outside the image"):   # no overlap: refused, not 1x1
        crop_query(img, (30, 30, 40, 40))
    assert crop_query(img, (4, 4, 4, 4)).shape == (1, 1)
    assert crop_query(img, (8, 5, 3, 2)).shape == (3, 5)       # swapped corners


# ------------------------------------------------------------------------ labelled folders

def test_read_labelled_folder_coil20(coil20_dir):
    ds = read_labelled_folder(coil20_dir)
    assert len(ds.db_ids) == 1440 and not ds.query_ids
    assert ds.db_ids[:3] == ["obj1__0", "obj1__1", "obj1__2"]
    assert ds.db_labels[:72] == ["1"] * 72 and ds.db_labels[72] == "2"
    assert ds.db_metadata["azimuth_deg"][:3] == [0, 5, 10]
    assert all(p.is_file() for p in ds.db_paths[:5])


def test_every_nth_query_coil100(coil100_dir):
    ds = every_nth_query(read_labelled_folder(coil100_dir), n=4)
    assert len(ds.db_ids) == 7178
    # objects with all 72 views give 18 queries each (azimuth 0, 20, ..., 340)
    obj1 = [q for q, lab in zip(ds.query_ids, ds.query_labels) if lab == "1"]
    assert obj1 == [f"obj1__{a}" for a in range(0, 360, 20)]
    t = ds.ground_truth["obj1__0"]
    assert len(t.positives) == 71 and "obj1__0" not in t.positives and t.junk == {"obj1__0"}
    assert all(p.startswith("obj1__") for p in t.positives)


def test_every_nth_query_options(tmp_path):
    rows = ["filename,object_id,azimuth_deg"]
    for obj in (2, 10):
        for az in range(0, 40, 5):
            name = f"o{obj}_{az}.png"
            _png(tmp_path / "images" / name)
            rows.append(f"{name},{obj},{az}")
    _write(tmp_path / "labels.csv", "\n".join([rows[0]] + rows[1:][::-1]) + "\n")  # reversed rows
    base = read_labelled_folder(tmp_path)
    assert base.db_labels == ["2"] * 8 + ["10"] * 8  # natural order of labels, then azimuth
    ds = every_nth_query(base, n=4, offset=1)
    assert ds.query_ids == ["o2_5", "o2_25", "o10_5", "o10_25"]
    assert ds.query_metadata["azimuth_deg"] == [5, 25, 5, 25]
    rest = every_nth_query(base, n=4, db="rest")
    assert len(rest.db_ids) == 12 and not set(rest.query_ids) & set(rest.db_ids)
    assert rest.ground_truth["o2_0"].positives == {f"o2_{a}" for a in (5, 10, 15, 25, 30, 35)}
    assert rest.ground_truth["o2_0"].junk == set()
    assert exclude_self({"a": ["a", "b"], "b": ["c"]}) == {"a": ["b"], "b": ["c"]}
    with pytest.raises(ValueError):
        every_nth_query(base, n=4, offset=4)


def test_read_labelled_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="image folder"):
        read_labelled_folder(tmp_path)
    _png(tmp_path / "images/a.png")
    _png(tmp_path / "images/b.png")
    with pytest.raises(DatasetError, match="labels.csv"):
        read_labelled_folder(tmp_path)
    _write(tmp_path / "labels.csv", "filename,label\n")
    with pytest.raises(DatasetError, match="no labelled images"):
        read_labelled_folder(tmp_path)
    _write(tmp_path / "labels.csv", "filename,label\na.png,x\nb.png,y\nc.png,y\n")
    with pytest.raises(DatasetError, match="c.png"):
        read_labelled_folder(tmp_path)
    ds = read_labelled_folder(tmp_path, on_error="collect")
    assert ds.db_ids == ["a", "b"] and ds.bad_files == [(str(tmp_path / "images/c.png"), "no such file")]
    (tmp_path / "images/b.png").write_text("not an image")
    ds = read_labelled_folder(tmp_path, check=True, on_error="collect")
    assert ds.db_ids == ["a"] and len(ds.bad_files) == 2


def test_group_views():
    items = [f"v{i}" for i in range(7)] + ["w0", "w1"]
    inst = ["b"] * 7 + ["a"] * 2
    order = [6, 5, 4, 3, 2, 1, 0, 1, 0]
    groups = group_views(items, inst, order_key=order, k=3)
    assert groups == [(("b", 0), ["v6", "v5", "v4"]), (("b", 1), ["v3", "v2", "v1"])]
    assert group_views(items, inst, order_key=order) == [("a", ["w1", "w0"]),
                                                         ("b", ["v6", "v5", "v4", "v3", "v2", "v1", "v0"])]
    sliding = group_views(items, inst, k=3, stride=2, drop_incomplete=False)
    assert [g[1] for g in sliding] == [["w0", "w1"], ["v0", "v1", "v2"], ["v2", "v3", "v4"], ["v4", "v5", "v6"]]
    with pytest.raises(ValueError):
        group_views(items, inst[:-1])


def test_read_multiview_tree(tmp_path):
    for part in ("train", "retrieval"):
        for cls, insts in (("chair", ["chair_0001", "chair_0002"]), ("lamp", ["lamp_0007"])):
            for inst in insts:
                for k in (0, 1, 2, 10):
                    _png(tmp_path / "DS" / part / cls / inst / f"{inst}.{k}.png")
    ds = read_multiview_tree(tmp_path, split="DS", part="retrieval")
    assert len(ds.db_ids) == 12
    assert ds.db_ids[:4] == [f"chair/chair_0001/chair_0001.{k}" for k in (0, 1, 2, 10)]
    assert ds.db_labels[0] == "chair/chair_0001" and ds.db_metadata["class"][-1] == "lamp"
    assert ds.db_metadata["view"][:4] == [0, 1, 2, 10]
    sets = group_views(ds.db_paths, ds.db_labels, ds.db_metadata["view"], k=2)
    assert len(sets) == 6 and sets[0][1][0].name == "chair_0001.0.png"
    with pytest.raises(DatasetError, match="DU"):
        read_multiview_tree(tmp_path, split="DU")
    _png(tmp_path / "DS" / "train" / "chair" / "stray.png")
    with pytest.raises(DatasetError, match="stray.png"):
        read_multiview_tree(tmp_path, part="train")


def test_read_os_core(tmp_path):
    for obj, n in (("q1", 2), ("q2", 2)):
        for k in range(n):
            _png(tmp_path / "query" / obj / "image" / f"h_{k}.png")
    for obj in ("t1", "t2", "t3"):
        for k in range(3):
            _png(tmp_path / "target" / obj / "image" / f"h_{k}.png")
    for k in range(2):
        _png(tmp_path / "train" / "cup" / "c1" / "image" / f"h_{k}.png")
    _write(tmp_path / "query_label.txt", "q1 5\nq2 7\n")
    _write(tmp_path / "target_label.txt", "t1 5\nt2 7\nt3 5\n")
    ds = read_os_core(tmp_path)
    assert len(ds.query_ids) == 4 and len(ds.db_ids) == 9
    assert ds.query_ids[0] == "query/q1/image/h_0"
    assert ds.ground_truth["query/q1/image/h_0"].positives == {f"t{t}/image/h_{k}" for t in (1, 3) for k in range(3)}
    assert ds.query_metadata["instance"] == ["q1", "q1", "q2", "q2"]
    assert ds.train_labels == ["cup", "cup"]
    views = group_views(ds.query_paths, ds.query_metadata["instance"], ds.query_metadata["view"])
    assert [(name, len(v)) for name, v in views] == [("q1", 2), ("q2", 2)]
    _write(tmp_path / "target_label.txt", "t1 5\nt9 7\n")
    with pytest.raises(DatasetError, match="t9"):
        read_os_core(tmp_path)


# ----------------------------------------------------------------------------------- GLDv2

def _tiny_gldv2(root: Path):
    ids = {"index": ["aaa001", "abc002", "bcd003"], "test": ["fff100", "fee101", "ddd102"],
           "train": ["0a0200", "0b0201"]}
    for split, names in ids.items():
        for name in names:
            _png(gldv2_image_path(root / split, name))
    _write(root / "index.csv", "id\n" + "\n".join(ids["index"]) + "\n")
    _write(root / "test.csv", "id\n" + "\n".join(ids["test"]) + "\n")
    _write(root / "train.csv", "id,url,landmark_id\n0a0200,http://x/1.jpg,17\n0b0201,http://x/2.jpg,18\n")
    _write(root / "retrieval_solution_v2.1.csv",
           "id,images,Usage\nfff100,aaa001 abc002,Public\nfee101,None,Ignored\n")
    return ids


def test_read_gldv2_layout(tmp_path):
    ids = _tiny_gldv2(tmp_path)
    ds = read_gldv2(tmp_path)
    assert ds.db_ids == ids["index"] and ds.query_ids == ids["test"]
    assert ds.db_paths[1] == tmp_path / "index/a/b/c/abc002.jpg"
    assert ds.train_labels == ["17", "18"]
    assert ds.ground_truth["fee101"].usage == "Ignored"
    assert ds.ground_truth["ddd102"].usage == "Ignored"  # not in the solution
    assert ds.solution() == {"fff100": {"aaa001", "abc002"}}
    assert ds.solution(usage=["Private"]) == {}
    gldv2_image_path(tmp_path / "index", "bcd003").unlink()
    with pytest.raises(DatasetError, match="bcd003.jpg"):
        read_gldv2(tmp_path)
    ds = read_gldv2(tmp_path, on_error="collect")
    assert ds.db_ids == ["aaa001", "abc002"] and ds.bad_files[0][0].endswith("bcd003.jpg")
    _write(tmp_path / "retrieval_solution_v2.1.csv", "id,images,Usage\nfff100,zzz999,Public\n")
    with pytest.raises(DatasetError, match="zzz999"):
        read_gldv2(tmp_path, on_error="collect")


def _mapping(out: Path):
    manifest = json.loads((out / "export_manifest.json").read_text())["images"]
    return {v["source_id"]: k for k, v in manifest.items()}


@pytest.mark.parametrize("link", ["symlink", "hardlink", "copy"])
def test_coil100_export_round_trip(coil100_dir, tmp_path, link):
    split = coil100_gldv2_split(coil100_dir, train_objects=[1, 2], test_objects=[51, 52, 53, 54], seed=3)
    assert len(split.train_ids) == 144  # objects 1 and 2 have all 72 views
    assert len(split.query_ids) == 4 * 9 and len(split.db_ids) == 4 * 63
    usage = {}
    for qid, lab in zip(split.query_ids, split.query_labels):
        usage.setdefault(lab, set()).add(split.ground_truth[qid].usage)
    assert all(len(u) == 1 for u in usage.values())  # one Usage per object
    assert sorted(u.pop() for u in usage.values()) == ["Private", "Private", "Public", "Public"]
    for qid, lab in zip(split.query_ids, split.query_labels):
        assert len(split.ground_truth[qid].positives) == 63
        assert all(p.startswith(f"obj{lab}__") for p in split.ground_truth[qid].positives)

    out = tmp_path / "gld"
    counts = export_gldv2(split, out, link=link, progress=False)
    assert counts["written"] == 144 + 36 + 252 and counts["skipped"] == 0
    again = export_gldv2(split, out, link=link, progress=False)
    assert again["written"] == 0 and again["skipped"] == counts["written"]

    back = read_gldv2(out, check=True)
    ids = _mapping(out)
    assert back.db_ids == [ids[i] for i in split.db_ids]
    assert back.query_ids == [ids[i] for i in split.query_ids]
    assert back.train_ids == [ids[i] for i in split.train_ids]
    assert back.train_labels == split.train_labels and back.db_labels == split.db_labels
    for qid in split.query_ids:
        t, b = split.ground_truth[qid], back.ground_truth[ids[qid]]
        assert b.usage == t.usage and b.positives == {ids[p] for p in t.positives}
    src = Image.open(split.db_paths[0])
    assert np.array_equal(np.asarray(Image.open(back.db_paths[0])), np.asarray(src))
    if link == "symlink":
        assert os.path.islink(back.db_paths[0])


def test_gldv2_split_ignored_fraction_and_refusals(coil100_dir, tmp_path):
    split = coil100_gldv2_split(coil100_dir, train_objects=[1], test_objects=[51, 52], ignored_fraction=0.5)
    usages = [split.ground_truth[q].usage for q in split.query_ids]
    assert usages.count("Ignored") == 9
    assert len(split.solution()) == 9
    again = coil100_gldv2_split(coil100_dir, train_objects=[1], test_objects=[51, 52], ignored_fraction=0.5)
    assert again.query_ids == split.query_ids and [again.ground_truth[q].usage for q in again.query_ids] == usages
    out = tmp_path / "g"
    export_gldv2(split, out, progress=False)
    back = read_gldv2(out)
    assert len(back.solution()) == 9
    # a dataset whose queries are also database entries cannot be written without junk
    every = every_nth_query(read_labelled_folder(coil100_dir), n=36)
    small = RetrievalDataset(name="s", root=every.root, db_ids=every.db_ids[:80], db_paths=every.db_paths[:80],
                             query_ids=every.query_ids[:2], query_paths=every.query_paths[:2],
                             ground_truth={q: every.ground_truth[q] for q in every.query_ids[:2]})
    with pytest.raises(DatasetError, match="junk"):
        export_gldv2(small, tmp_path / "h", progress=False)
    with pytest.raises(DatasetError, match="no images of label"):
        labelled_gldv2_split(read_labelled_folder(coil100_dir), ["1"], ["999"])
