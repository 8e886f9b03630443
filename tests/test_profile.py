"""retrieval.datasets.profile on small generated sets: a GLDv2-layout folder (streamed from its CSVs) and a
labelled folder through the CLI."""
import json

import numpy as np
import pytest
from PIL import Image

from retrieval.datasets.profile import ProfileConfig, gldv2_records, main


def _gldv2_path(root, split, image_id):
    p = root / split / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


@pytest.fixture()
def gldv2_set(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "gldv2"
    train = [("aaa01", "7"), ("aab02", "7"), ("aac03", "7"), ("abb04", "9"), ("acc05", "11"), ("add06", "7")]
    for image_id, _ in train[:3]:  # colour photos, 80 x 60 (landscape)
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(_gldv2_path(root, "train", image_id))
    gray = rng.integers(0, 255, (90, 30), dtype=np.uint8)
    Image.fromarray(gray).save(_gldv2_path(root, "train", "abb04"))  # mode L, portrait
    exif = Image.Exif()
    exif[272] = "TestCam 1"
    exif[306] = "2019:05:04 10:00:00"
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(_gldv2_path(root, "train", "acc05"), exif=exif)  # gray as RGB
    _gldv2_path(root, "train", "add06").write_bytes(b"not an image")  # unreadable
    (root / "train.csv").write_text("id,url,landmark_id\n" + "".join(f"{i},u,{lab}\n" for i, lab in train))
    # index: one exact copy of a train image and one missing file
    dup = _gldv2_path(root, "index", "bcd10")
    dup.write_bytes(_gldv2_path(root, "train", "aaa01").read_bytes())
    (root / "index.csv").write_text("id\nbcd10\nbce11\n")
    (root / "test.csv").write_text("id\n")
    return root


def test_profile_streams_a_gldv2_set(gldv2_set, tmp_path):
    path = main(ProfileConfig(sample_size=4), gldv2_records(gldv2_set), tmp_path / "out", progress=False)
    p = json.loads(path.read_text())
    assert p["images"] == 8 and p["splits"] == {"train": 6, "index": 2}
    assert p["readable"] == 6
    assert p["missing"]["count"] == 1 and p["missing"]["examples"][0].endswith("bce11.jpg")
    assert p["unreadable"]["count"] == 1 and "add06" in p["unreadable"]["examples"][0]["path"]
    c = p["classes"]
    assert c["classes"] == 3 and c["max"] == 4 and c["min"] == 1 and c["unlabelled_images"] == 2
    assert c["classes_with_at_most"]["1"] == 2
    # the L image and the RGB image with equal channels; the colour ones and their copy are not gray
    assert p["grayscale"]["count"] == 2 and p["grayscale"]["share"] == pytest.approx(2 / 6)
    assert p["sizes"]["sampled"] == 4  # reservoir of 4 of the 6 readable images
    assert p["exif"]["capture_time"] == 1 and p["exif"]["years"] == {"2019": 1}
    assert p["exif"]["top_models"] == {"TestCam 1": 1}
    dup = p["exact_duplicates"]
    assert dup["groups"] == 1 and dup["redundant_images"] == 1 and dup["examples"] == [["aaa01", "bcd10"]]
    assert (tmp_path / "out" / "profile.png").read_bytes()[:4] == b"\x89PNG"
    # without the pixel check only the header's mode counts
    p2 = json.loads(main(ProfileConfig(check_pixels=False, hash_files=False), gldv2_records(gldv2_set),
                         tmp_path / "out2", progress=False).read_text())
    assert p2["grayscale"]["count"] == 1 and p2["exact_duplicates"] is None


def test_near_duplicates_from_a_feature_file(gldv2_set, tmp_path):
    from retrieval.features.store import save_global

    v = np.array([[1, 0, 0], [0.99, 0.05, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    feats = tmp_path / "g.h5"
    save_global(feats, ["a", "b", "c", "d"], v, {"name": "test"})
    p = json.loads(main(ProfileConfig(near_features=str(feats), near_threshold=0.95, hash_files=False),
                        gldv2_records(gldv2_set), tmp_path / "o", progress=False).read_text())
    near = p["near_duplicates"]
    assert near["pairs"] == 1 and {near["examples"][0]["a"], near["examples"][0]["b"]} == {"a", "b"}


def test_cli_profile_on_a_folder(tmp_path, capsys):
    from retrieval.cli import main as cli

    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(6):
        Image.fromarray(np.full((20, 40, 3), 40 * i, dtype=np.uint8)).save(root / "images" / f"{i}.png")
        rows.append(f"{i}.png,{i % 2}")
    (root / "labels.csv").write_text("filename,label\n" + "\n".join(rows) + "\n")
    assert cli(["--quiet", "dataset", "profile", "--dataset", "folder", "--data", str(root),
                "--out", str(tmp_path / "p"), "--set", "check_pixels=false"]) == 0
    p = json.loads((tmp_path / "p" / "profile.json").read_text())
    assert p["images"] == 6 and p["classes"]["classes"] == 2 and p["sizes"]["aspect_w_over_h"]["median"] == 2.0
    assert cli(["dataset", "profile", "--dataset", "folder", "--data", str(root), "--out", str(tmp_path / "q"),
                "--set", "near_threshold=3"]) == 2
    assert "near_threshold" in capsys.readouterr().err
