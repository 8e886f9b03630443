"""``retrieval add --images``: new photos described with the collection's own recorded extractor, with their
folder, file, path, EXIF date and labels-CSV columns as metadata, searchable by filter at once."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "coil20" / "images"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data/coil20 is not present")


def _photo_with_date(src: Path, out: Path, date: str) -> Path:
    from PIL import Image

    image = Image.open(src).convert("RGB")
    exif = Image.Exif()
    exif.get_ifd(0x8769)[36867] = date  # DateTimeOriginal
    image.save(out, "JPEG", exif=exif, quality=95)
    return out


def test_add_images_describes_them_as_the_collection_was(tmp_path):
    from retrieval.features.efficientnet import EfficientNetExtractor
    from retrieval.indexing.collection import Collection
    from retrieval.steps.add import add_images

    extractor = EfficientNetExtractor("lite0-coil-128")
    base = sorted(DATA.glob("obj1__*.png"))[:6] + sorted(DATA.glob("obj2__*.png"))[:6]
    from retrieval.features.deep_extract import extract_global
    from retrieval.features.store import load_global

    extract_global(extractor, [p.stem for p in base], [str(p) for p in base], tmp_path / "base.h5", progress=False)
    ids, vectors, config = load_global(tmp_path / "base.h5")
    coll = Collection.create(tmp_path / "coll", ids, vectors, config=config)
    trip = tmp_path / "photos" / "trip"
    trip.mkdir(parents=True)
    new = [_photo_with_date(DATA / "obj1__40.png", trip / "a.jpg", "2024:05:01 10:00:00"),
           _photo_with_date(DATA / "obj2__40.png", trip / "b.jpg", "2023:01:02 08:00:00")]
    (tmp_path / "labels.csv").write_text("id,label\ntrip/a,one\ntrip/b,two\n")
    info = add_images(tmp_path / "coll", new, root=tmp_path / "photos", labels=tmp_path / "labels.csv",
                      extractor=extractor)
    assert info["added"] == 2 and info["generation"] == 2
    snap = coll.snapshot()
    record = snap.metadata.record(snap.index.rows - 2)
    assert record == {"folder": "trip", "file": "a.jpg", "path": str(new[0].resolve()), "date": "2024-05-01 10:00:00",
                      "label": "one"}
    # the added photo of object 1 finds the object-1 images first; a date filter keeps only 2024 photos
    query = snap.index.vectors[snap.index.rows - 2:snap.index.rows - 1]
    top = snap.search(query, k=4).ids[0].tolist()
    assert top[0] == "trip/a" and all(i.startswith("obj1") for i in top[1:]), top
    assert snap.search(query, k=3, where=["date>=2024-01-01"]).ids[0].tolist() == ["trip/a", "", ""]
    assert not list((tmp_path / "coll").glob(".staging-*")), "the staging folder goes once the add is in"


def test_cli_refuses_a_collection_whose_extractor_cannot_be_rebuilt(tmp_path):
    from retrieval.features.store import save_global

    save_global(tmp_path / "db.h5", ["a", "b"], np.eye(2, 8, dtype=np.float32), config={"extractor": "vlad"})
    run = [sys.executable, "-m", "retrieval.cli", "--quiet"]
    subprocess.run(run + ["index", "build", str(tmp_path / "db.h5"), "--out", str(tmp_path / "c"), "--collection"],
                   check=True, capture_output=True)
    proc = subprocess.run(run + ["add", str(tmp_path / "c"), "--images", str(DATA / "obj1__0.png")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--features FILE" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
