"""The multi-view protocol (retrieval.experiments.multiview and its helpers) on generated sets: any geometry, the
distillation decision, the gap-closed sign, feature files in both metric conventions."""
import json

import numpy as np
import pytest
from PIL import Image

from retrieval.experiments import mv_eval
from retrieval.experiments.mv_features import evaluate_arrays, evaluate_file
from retrieval.experiments.multiview import CONFIG
from retrieval.core.config import ConfigError
from retrieval.datasets.open import DatasetConfig
from retrieval.experiments.files import load_experiment


def test_gap_closed_only_where_the_teacher_leads():
    # the old summary: (d - s) / (t - s) = (0.5 - 0.7) / (0.5 - 0.7) = +1.0 for a 20-point loss
    assert mv_eval.gap_closed(0.5, 0.7, 0.5) == "not applicable"
    assert mv_eval.gap_closed(0.7, 0.7, 0.9) == "not applicable"
    assert mv_eval.gap_closed(0.9, 0.7, 0.8) == pytest.approx(0.5)
    rows = [{"model": m, "split": "DU", "test_views": 1, "db_views": "all", "mAP@100": v}
            for m, v in (("teacher", 0.5), ("mv-alexnet", 0.7), ("mv-alexnet-distilled", 0.5))]
    s = mv_eval.distillation_summary(rows, ["DU"], [1], "mv-alexnet-distilled")["DU k=1"]
    assert s["gap_closed"] == "not applicable" and s["target_met"] is False
    assert s["delivered_minus_undistilled"] == pytest.approx(-0.2)


def test_experiment_file_and_config_checks():
    conf = load_experiment("multiview").conf
    assert (conf.dataset.kind, conf.dataset.path) == ("folder", "coil100") and conf.cross_data == ("coil20",) and 3 in conf.validation_views
    from retrieval.experiments.kinds import load_protocol

    assert load_protocol("multiview").CONFIG is CONFIG
    with pytest.raises(ConfigError, match="unknown key"):
        CONFIG.from_dict({"coil_path": "x"})
    with pytest.raises(ConfigError, match="leak"):
        CONFIG(transfer=("coil20",))
    with pytest.raises(ConfigError, match="no distillation is always a candidate"):
        CONFIG(distill_weights=(0.0,))
    with pytest.raises(ConfigError, match="validation_views"):
        CONFIG(test_views=(1,), validation_views=(3,))


def _feature_file(per_view: bool):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16))
    vectors, labels, objects, query, target, train = [], [], [], [], [], []
    for c in range(4):  # class 3 is training-only
        for o in range(4):
            obj = rng.normal(scale=0.3, size=16) + centres[c]
            for v in range(6 if per_view else 1):
                vectors.append(obj + rng.normal(scale=0.3, size=16))
                labels.append(c)
                objects.append(c * 10 + o)
                query.append(c < 3 and o < 2)
                target.append(c < 3 and o >= 2)
                train.append(c == 3)
    data = {"vectors": np.asarray(vectors, np.float32), "labels": np.asarray(labels),
            "query": np.asarray(query), "target": np.asarray(target), "train": np.asarray(train)}
    if per_view:
        data["object_ids"] = np.asarray(objects)
    return data


def test_feature_files_sweep_views_in_both_conventions(tmp_path):
    data = _feature_file(per_view=True)
    rows = evaluate_arrays(data, test_views=(1, 3), db_views=(3, 5, 30))
    # 30 database views is more than the objects have: left out
    assert [(r["test_views"], r["db_views"]) for r in rows] == [
        (1, "all"), (3, "all"), (1, 3), (3, 3), (1, 5), (3, 5)]
    for r in rows:
        assert r["queries"] == 6 and r["targets"] == 6
        assert r["map (os3dor)"] >= r["map (standard)"] - 1e-12  # interpolation never lowers AP
        assert 0 <= r["anmrr (os3dor)"] <= 1 and r["ndcg@100 (os3dor)"] <= r["ndcg@100 (standard)"]
    np.savez(tmp_path / "f.npz", **data)
    out = evaluate_file(tmp_path / "f.npz", tmp_path / "out", (1, 3), (3,))
    res = json.loads((out / "results.json").read_text())
    assert res["info"]["open_set"] is True and res["info"]["per_view"] is True
    assert "(os3dor)" in (out / "results.md").read_text() and (out / "pr_curve.png").is_file()
    import h5py

    obj = _feature_file(per_view=False)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        for k, v in obj.items():
            f[k] = v
    res = json.loads((evaluate_file(tmp_path / "f.h5", tmp_path / "o2") / "results.json").read_text())
    assert len(res["rows"]) == 1 and res["rows"][0]["test_views"] == "-"


def test_feature_file_errors_name_the_file(tmp_path):
    data = _feature_file(per_view=False)
    del data["train"]
    np.savez(tmp_path / "bad.npz", **data)
    with pytest.raises(SystemExit, match="bad.npz: no array"):
        evaluate_file(tmp_path / "bad.npz", tmp_path / "o")
    data = _feature_file(per_view=False)
    data["target"] = data["query"]
    np.savez(tmp_path / "both.npz", **data)
    with pytest.raises(SystemExit, match="both query and target"):
        evaluate_file(tmp_path / "both.npz", tmp_path / "o")


def _multiview_set(root, prefix, objects, elevations=(0, 20)):
    """Objects seen from 8 azimuths x ``elevations``: each object a colour, the view a moving bar."""
    (root / "images").mkdir(parents=True)
    rows = []
    for o in objects:
        colour = np.array([(o * 53) % 255, (o * 97) % 255, (o * 29) % 255], dtype=np.uint8)
        for e in elevations:
            for a in range(0, 360, 45):
                im = np.zeros((40, 40, 3), dtype=np.uint8) + colour // 2
                im[:, (a // 45) * 5:(a // 45) * 5 + 5] = colour
                im[e // 4:e // 4 + 3] = 255
                name = f"{prefix}{o}_e{e}_a{a}.png"
                Image.fromarray(im).save(root / "images" / name)
                rows.append(f"{name},{o},{a},{e}")
    (root / "labels.csv").write_text("filename,object_id,azimuth_deg,elevation_deg\n" + "\n".join(rows) + "\n")
    return [r.split(",")[0] for r in rows]


def test_protocol_end_to_end_on_an_elevation_set(tmp_path):
    """A set that varies elevation and azimuth, a second set as the cross-dataset split, a user's teacher
    embeddings: the whole protocol runs, chooses on VAL, and reports every split."""
    from retrieval.experiments.multiview import main
    from retrieval.features.store import save_global

    names = _multiview_set(tmp_path / "main", "m", range(1, 9))
    names += _multiview_set(tmp_path / "other", "x", range(1, 4), elevations=(0,))
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(len(names), 8)).astype(np.float32)
    save_global(tmp_path / "teacher.h5", names, emb, {"name": "random teacher"})
    conf = CONFIG(dataset=DatasetConfig(kind="folder", path=str(tmp_path / "main")),
                  cross_data=(str(tmp_path / "other"),), validation_every=4,
                  n_sets=4, test_views=(1, 3), validation_views=(1, 3), db_views=(2,), image_size=40,
                  student_epochs=1, distill_epochs=(1, 2), max_steps_per_epoch=1, batch_p=2,
                  teacher_embeddings=str(tmp_path / "teacher.h5"), speed_images=8, student_width="alexnet-half")
    out = main(conf, tmp_path / "out", tmp_path / "cache")
    res = json.loads((out / "results.json").read_text())
    splits = {r["split"] for r in res["rows"]}
    assert splits == {"DS", "DU", "VAL", "other (unseen)"}
    summary = res["summary"]
    assert summary["validation_objects"] == [4]  # every 4th of the seen objects 1-4
    assert summary["delivered"] in ("mv-alexnet", "mv-alexnet-distilled")
    assert ("kept" in summary["decision"]) == (summary["delivered"] == "mv-alexnet-distilled")
    # one distillation run, kept after 1 and 2 epochs: two candidates besides no distillation
    assert set(summary["validation"]["means"]) == {"none", "kl x1, 1 ep", "kl x1, 2 ep"}
    assert {r["db_views"] for r in res["rows"]} == {"all", 2}
    # sets hold both elevations: 8 azimuths x 2 elevations / 4 sets = 4 views
    assert res["protocol"]["geometry"] == "azimuth"
    md = (out / "results.md").read_text()
    assert "Metric convention" in md and ("refused" in md or "kept" in md)
    # a rerun resumes from the cache: same results
    again = json.loads((main(conf, tmp_path / "out2", tmp_path / "cache") / "results.json").read_text())
    assert again["summary"]["validation"] == summary["validation"]


def test_ties_on_validation_keep_the_undistilled_student(tmp_path):
    """A distilled candidate no better than the undistilled student on VAL is refused."""
    import torch

    from retrieval.experiments.mv_models import NO_DISTILLATION, choose_student
    from retrieval.datasets.viewsets import ViewSet
    from retrieval.features.alexnet import ALEXNET_CONFIGS, MVAlexNet
    from retrieval.training.multiview import save_mv_alexnet

    torch.manual_seed(0)
    path = save_mv_alexnet(tmp_path / "m.pt", MVAlexNet(ALEXNET_CONFIGS.get("alexnet-half")).eval(), 40)
    images = np.random.default_rng(0).integers(0, 255, (24, 40, 40, 3), dtype=np.uint8)
    sets = [ViewSet(f"o{o}_s{s}", o, s, np.arange(o * 8 + s * 4, o * 8 + s * 4 + 4)) for o in range(3) for s in range(2)]
    chosen, info = choose_student({"same weights": path}, path, images, 40, sets, (1, 3), seed=0)
    assert chosen == NO_DISTILLATION
    assert info["means"]["same weights"] == pytest.approx(info["means"][NO_DISTILLATION])
    assert info["queries"] == 12  # 6 sets x 2 test_views


def _tree(root, split, instances, views=8):
    """DS|DU/retrieval/<class>/<instance>/<instance>.<k>.png, each instance a colour, the view a bar."""
    names = []
    for i, inst in enumerate(instances):
        cls = "mug" if i % 2 else "chair"
        colour = np.array([(i * 53 + 40) % 255, (i * 97) % 255, (len(split) * 70 + i * 29) % 255], dtype=np.uint8)
        folder = root / split / "retrieval" / cls / inst
        folder.mkdir(parents=True)
        for k in range(views):
            im = np.zeros((40, 40, 3), dtype=np.uint8) + colour // 2
            im[:, k * 5:k * 5 + 5] = colour
            Image.fromarray(im).save(folder / f"{inst}.{k}.png")
            names.append(f"{inst}.{k}.png")
    return names


def test_read_views_in_every_layout(tmp_path):
    from retrieval.datasets.view_layouts import read_views

    _tree(tmp_path / "tree", "DS", [f"s{i}" for i in range(4)])
    _tree(tmp_path / "tree", "DU", ["u0", "u1"])
    catalog, (seen, unseen) = read_views("multiview", tmp_path / "tree")
    assert len(catalog) == 6 * 8 and catalog.geometry == "index"
    assert len(seen) == 4 and len(unseen) == 2 and not set(seen) & set(unseen)
    # views ordered by <k> within each instance, whatever the file system's order
    rows = catalog.rows_of([seen[0]])
    assert [int(catalog.paths[r].name.split(".")[1]) for r in rows] == list(range(8))
    # a class-per-folder tree: one object per class, file-name order
    for cls in ("a", "b"):
        (tmp_path / "classes" / cls).mkdir(parents=True)
        for k in range(3):
            Image.fromarray(np.full((8, 8, 3), k * 40, np.uint8)).save(tmp_path / "classes" / cls / f"{k}.png")
    catalog, split = read_views("folder", tmp_path / "classes")
    assert split is None and catalog.objects() == [1, 2] and len(catalog) == 6
    with pytest.raises(ValueError, match="unknown multi-view layout"):
        read_views("gldv2", tmp_path)
    with pytest.raises(FileNotFoundError, match="no DS/ or DU/"):
        read_views("multiview", tmp_path / "classes")


def test_protocol_end_to_end_on_a_ds_du_tree(tmp_path):
    """The DS|DU multi-view tree as the protocol's data: DS objects seen, DU unseen, views by index."""
    from retrieval.experiments.multiview import main
    from retrieval.features.store import save_global

    names = _tree(tmp_path / "tree", "DS", [f"s{i}" for i in range(8)])
    names += _tree(tmp_path / "tree", "DU", ["u0", "u1", "u2"])
    emb = np.random.default_rng(2).normal(size=(len(names), 8)).astype(np.float32)
    save_global(tmp_path / "teacher.h5", names, emb, {"name": "random teacher"})
    conf = CONFIG(dataset=DatasetConfig(kind="multiview", path=str(tmp_path / "tree")), cross_data=(),
                  validation_every=4, n_sets=4,
                  test_views=(1, 2), validation_views=(1,), image_size=40, student_epochs=1, distill_epochs=(1,),
                  max_steps_per_epoch=1, batch_p=2, teacher_embeddings=str(tmp_path / "teacher.h5"),
                  speed_images=8, student_width="alexnet-half")
    res = json.loads((main(conf, tmp_path / "out", tmp_path / "cache") / "results.json").read_text())
    assert {r["split"] for r in res["rows"]} == {"DS", "DU", "VAL"}
    assert res["protocol"]["geometry"] == "index"
    assert len(res["summary"]["validation_objects"]) == 2  # every 4th of the 8 DS objects
