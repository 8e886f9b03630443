"""retrieval serve over a collection folder: a new generation is swapped in without a restart, metadata
filters inside /api/search, and adding uploaded images (--allow-add). Synthesised vectors and images
(seconds); skips without the serve extra."""
from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
pytest.importorskip("httpx", reason="TestClient needs httpx")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

DIM = 16
CONFIG = {"extractor": "block-means", "dim": DIM}
LABELS = ("cat", "dog", "owl")


class BlockMeans:
    """A stand-in global extractor: the means of a 4 x 4 grid of the image's red channel."""

    config = CONFIG

    def extract(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        red = image[: h - h % 4, : w - w % 4, 0].astype(np.float32)
        return red.reshape(4, red.shape[0] // 4, 4, red.shape[1] // 4).mean(axis=(1, 3)).ravel() + 1.0

    def extract_arrays(self, images):
        return np.stack([self.extract(i) for i in images])


def png(seed: int, size=(24, 20)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def records(start: int, n: int, images: Path = None):
    out = []
    for i in range(start, start + n):
        rec = {"label": LABELS[i % 3], "date": f"2024-{1 + i % 12:02d}-01 12:00:00", "folder": f"set{i % 2}"}
        if images is not None:
            path = images / f"img{i:03d}.png"
            path.write_bytes(png(i))
            rec["path"] = str(path)
        out.append(rec)
    return out


@pytest.fixture()
def served(tmp_path):
    from retrieval.indexing.collection import Collection
    from retrieval.indexing.metadata import Metadata
    from retrieval.serve.live import LiveCatalog

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    folder = tmp_path / "coll"
    Collection.create(folder, [f"img{i:03d}" for i in range(60)], rng.standard_normal((60, DIM), dtype=np.float32),
                      config=CONFIG, metadata=Metadata.from_records(records(0, 60, images)))
    live = LiveCatalog(folder, poll=0.05).start()
    yield {"live": live, "folder": folder, "images": images, "rng": rng}
    live.close()


def _client(live, **kwargs):
    from retrieval.serve.app import create_app

    return TestClient(create_app(live, **kwargs))


def _wait_count(client, count: int, seconds: float = 5.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if client.get("/api/info").json()["count"] == count:
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"the server did not show {count} images within {seconds} s")


def test_an_add_is_served_without_a_restart(served):
    from retrieval.indexing.collection import Collection
    from retrieval.indexing.metadata import Metadata
    from retrieval.serve.search import search

    live = served["live"]
    client = _client(live)
    info = client.get("/api/info").json()
    assert (info["count"], info["generation"], info["metadata"]) == (60, 1, ["date", "folder", "label", "path"])
    before = live.current
    query = before.query("img000")
    old_ids = search(before, query, k=60).ids
    added = served["rng"].standard_normal((10, DIM), dtype=np.float32)
    ids = [f"img{i:03d}" for i in range(60, 70)]
    Collection.open(served["folder"]).add(ids, added, metadata=Metadata.from_records(records(60, 10, served["images"])))
    _wait_count(client, 70)
    assert client.get("/api/info").json()["generation"] == 2
    # an added image is searchable, shown from its recorded path, and finds itself first
    hit = client.get("/api/search", params={"id": "img065", "k": 5}).json()
    assert hit["results"][0]["id"] == "img065" and hit["results"][0]["metadata"]["label"] == LABELS[65 % 3]
    assert "path" not in hit["results"][0]["metadata"]  # the server's file paths are not shown
    image = client.get("/api/image/img065")
    assert image.status_code == 200 and image.content == (served["images"] / "img065.png").read_bytes()
    # a request that took the old generation still gets all of it and only it
    assert before is not live.current and len(before.index) == 60
    assert search(before, query, k=60).ids == old_ids and not set(old_ids) & set(ids)
    assert set(search(live.current, query, k=70).ids) == set(old_ids) | set(ids)
    # a removal is followed too
    Collection.open(served["folder"]).remove(["img001"])
    _wait_count(client, 69)
    assert client.get("/api/search", params={"id": "img001"}).status_code == 404


@pytest.mark.parametrize("backend", ["exact", "faiss-flat"])
def test_a_replaced_id_is_served_from_its_new_row(tmp_path, backend):
    if backend != "exact":
        pytest.importorskip("faiss")
    from retrieval.indexing.collection import Collection
    from retrieval.indexing.metadata import Metadata
    from retrieval.serve.live import LiveCatalog

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(3)
    Collection.create(tmp_path / "coll", [f"img{i:03d}" for i in range(20)], rng.standard_normal((20, DIM), dtype=np.float32),
                      backend=backend, config=CONFIG, metadata=Metadata.from_records(records(0, 20, images)))
    live = LiveCatalog(tmp_path / "coll", poll=0.05).start()
    try:
        client = _client(live)
        replacement = images / "replacement.png"
        replacement.write_bytes(png(999))
        vector = rng.standard_normal((1, DIM), dtype=np.float32)
        Collection.open(tmp_path / "coll").add(["img005"], vector, replace=True, metadata=Metadata.from_records(
            [{"label": "new", "path": str(replacement)}]))
        deadline = time.monotonic() + 5
        while client.get("/api/info").json()["generation"] != 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.get("/api/info").json()["count"] == 20
        answer = client.get("/api/search", params={"id": "img005", "k": 20}).json()
        ids = [r["id"] for r in answer["results"]]
        assert len(ids) == 20 == len(set(ids)) and ids[0] == "img005"
        assert answer["results"][0]["metadata"] == {"label": "new"} and answer["results"][0]["score"] > 0.999
        assert client.get("/api/image/img005").content == replacement.read_bytes()
        assert [r["id"] for r in client.get("/api/search", params={"id": "img000", "k": 20,
                                                                   "where": "label=new"}).json()["results"]] == ["img005"]
    finally:
        live.close()


def test_filtered_search_returns_only_matching_rows(served):
    live = served["live"]
    client = _client(live)
    where = ["label=cat", "date>=2024-06-01"]
    answer = client.get("/api/search", params={"id": "img004", "k": 50, "where": where}).json()
    got = [r["id"] for r in answer["results"]]
    expected = [i for i in range(60) if i % 3 == 0 and 1 + i % 12 >= 6]
    assert sorted(got) == sorted(f"img{i:03d}" for i in expected) and answer["where"] == where
    assert all(r["metadata"]["label"] == "cat" and r["metadata"]["date"] >= "2024-06-01" for r in answer["results"])
    # the same ranking as the Python API's filtered search of the snapshot
    snap = live.collection.snapshot()
    ranking = snap.search(snap.index.vectors[4][None], k=50, where=where)
    assert got == [str(i) for i in ranking.ids[0][ranking.indices[0] >= 0]]
    # a prefix condition and an unfiltered search for comparison
    folder = client.get("/api/search", params={"id": "img004", "k": 60, "where": "folder~set1"}).json()
    assert len(folder["results"]) == 30
    assert len(client.get("/api/search", params={"id": "img004", "k": 60}).json()["results"]) == 60


@pytest.mark.parametrize("where, words", [("colour=red", "no metadata column 'colour'"),
                                           ("label", "is not COLUMN OP VALUE")])
def test_a_bad_filter_is_a_400(served, where, words):
    client = _client(served["live"])
    response = client.get("/api/search", params={"id": "img000", "where": where})
    assert response.status_code == 400 and words in response.json()["error"]
    assert "\n" not in response.json()["error"]
    upload = client.post("/api/search", files={"file": ("q.png", png(1))}, data={"where": where})
    assert upload.status_code == 400


def test_a_filter_on_an_index_without_metadata_is_a_400():
    from retrieval.serve.load import synthetic_catalog

    client = _client(synthetic_catalog(50, 8))
    response = client.get("/api/search", params={"id": "img000000", "where": "label=cat"})
    assert response.status_code == 400 and "no metadata" in response.json()["error"]


def test_adding_is_off_unless_allowed(served):
    client = _client(served["live"])
    response = client.post("/api/add", files=[("files", ("a.png", png(3)))])
    assert response.status_code == 403 and "--allow-add" in response.json()["error"]
    assert not (served["folder"] / "uploads").exists()
    assert 'id="add"' not in client.get("/").text


def _fake_step(collection, images, root=None, ids=None, extractor=None):
    """What the add step does, with :class:`BlockMeans`: vectors and a path column, then Collection.add."""
    from retrieval.core.imageio import load_image
    from retrieval.indexing.collection import Collection
    from retrieval.indexing.metadata import Metadata

    vectors = np.stack([extractor.extract(load_image(p)) for p in images])
    meta = Metadata.from_records([{"path": str(Path(p).resolve()), "label": "uploaded"} for p in images])
    return Collection.open(collection).add(ids, vectors, metadata=meta)


def test_an_uploaded_image_is_added_and_searchable(served, monkeypatch):
    import hashlib

    from retrieval.serve import adding

    monkeypatch.setattr(adding, "_add_images", _fake_step)
    client = _client(served["live"], allow_add=True, add_extractor=BlockMeans())
    assert 'id="add"' in client.get("/").text
    data = png(100, (32, 28))
    bad = client.post("/api/add", files=[("files", ("ok.png", data)), ("files", ("bad.png", b"not an image"))])
    assert bad.status_code == 415 and "bad.png" in bad.json()["error"]
    assert not (served["folder"] / "uploads").exists()  # all checked before anything is written
    answer = client.post("/api/add", files=[("files", ("../../evil name.png", data))]).json()
    digest = hashlib.sha256(data).hexdigest()
    assert answer["added"] == [{"id": f"uploads/{digest[:16]}", "name": "../../evil name.png", "width": 32,
                                "height": 28}]
    assert answer["count"] == 61 and answer["generation"] == 2
    assert sorted(p.name for p in (served["folder"] / "uploads").iterdir()) == [f"{digest}.png"]
    found = client.get("/api/search", params={"id": f"uploads/{digest[:16]}", "k": 3,
                                              "where": "label=uploaded"}).json()
    assert [r["id"] for r in found["results"]] == [f"uploads/{digest[:16]}"]
    assert client.get(f"/api/image/uploads%2F{digest[:16]}").content == data
    again = client.post("/api/add", files=[("files", ("same.png", data))]).json()
    assert again["added"] == [] and again["present"][0]["id"] == f"uploads/{digest[:16]}" and again["count"] == 61


def test_an_upload_add_with_the_add_step(tmp_path):
    """End to end with retrieval.steps.add.add_images and a small EfficientNet: the added image is
    described as the collection was (an upload search with the same file finds it first)."""
    pytest.importorskip("retrieval.steps.add", reason="the add step (retrieval.steps.add) is not on this branch yet")
    pytest.importorskip("torch")
    from retrieval.core.imageio import load_image
    from retrieval.features.efficientnet import EfficientNetExtractor
    from retrieval.indexing.collection import Collection
    from retrieval.serve.live import LiveCatalog

    extractor = EfficientNetExtractor("lite0-gem-224", size=64, backend="eager")
    images = tmp_path / "images"
    images.mkdir()
    paths = []
    for i in range(6):
        paths.append(images / f"base{i}.png")
        paths[-1].write_bytes(png(200 + i, (48, 40)))
    Collection.create(tmp_path / "coll", [p.stem for p in paths],
                      extractor.extract_arrays([load_image(p) for p in paths]), config=extractor.config)
    live = LiveCatalog(tmp_path / "coll", poll=0.05).start()
    try:
        client = _client(live, allow_add=True, add_extractor=extractor)
        data = png(7, (56, 44))
        answer = client.post("/api/add", files=[("files", ("new.png", data))])
        assert answer.status_code == 200, answer.text
        new_id = answer.json()["added"][0]["id"]
        assert answer.json()["count"] == 7 and answer.json()["generation"] == 2
        hit = client.get("/api/search", params={"id": new_id, "k": 1}).json()["results"][0]
        assert hit["id"] == new_id and hit["metadata"]["folder"] == "uploads"
        assert client.get(hit["image"]).content == data
        same = client.post("/api/search", files={"file": ("again.png", data)}, data={"k": 2}).json()
        assert same["results"][0]["id"] == new_id and same["results"][0]["score"] > 0.999
    finally:
        live.close()


def test_filtered_and_unfiltered_requests_are_batched_apart():
    from retrieval import Index
    from retrieval.serve.batching import SearchBatcher

    rng = np.random.default_rng(1)
    index = Index(rng.standard_normal((500, 12), dtype=np.float32), ids=[f"d{i}" for i in range(500)])
    mask = np.arange(500) % 4 == 0
    queries = rng.standard_normal((24, 12), dtype=np.float32)
    batcher = SearchBatcher(index, idle=0.2)
    got = {}

    def one(i):
        allowed = mask if i % 2 else None
        got[i] = batcher.search(queries[i], 10, f"q{i}", allowed=allowed, key="quarter")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(24):
        alone = index.search(queries[i][None], k=10, allowed=mask if i % 2 else None)
        assert got[i].ids[0].tolist() == alone.ids[0].tolist()
        if i % 2:
            assert all(int(x[1:]) % 4 == 0 for x in got[i].ids[0])
    time.sleep(0.5)  # idle: the worker ends, and the next request starts another
    assert batcher._worker is None
    assert batcher.search(queries[0], 3, "again").ids[0].tolist() == index.search(queries[0][None], k=3).ids[0].tolist()


def test_cli_refuses_remote_adds_and_adds_without_a_collection(served, tmp_path, capsys):
    from retrieval.cli import main

    folder = str(served["folder"])
    assert main(["serve", "--index", folder, "--allow-add", "--host", "0.0.0.0", "--check"]) != 0
    assert "--allow-add-remote" in capsys.readouterr().err
    assert main(["serve", "--index", folder, "--check"]) == 0
    out = capsys.readouterr().out
    assert '"generation": 1' in out and '"count": 60' in out
    assert main(["serve", "--index", folder, "--features", folder, "--check"]) != 0
    assert "not used with a collection" in capsys.readouterr().err


def test_load_during_an_add_sees_the_added_vectors():
    """A small run of ``retrieval bench serve-load --collection`` (the figures are the benchmark's)."""
    pytest.importorskip("uvicorn")
    from retrieval.serve.load_add import run_load_during_add

    report = run_load_during_add(n=2000, dim=16, add=50, requests=60, concurrency=4, k=5, time_limit=60)
    assert report["statuses"] == {"200": report["requests"]} and report["requests"] >= 60
    assert report["add_report"]["added"] == 50 and report["visible_after_add_ms"] is not None
    phases = report["latency_ms"]
    assert phases["before_add"]["requests"] + phases["during_add"]["requests"] + phases["after_add"]["requests"] \
        == report["requests"]
    assert report["server_swap_seconds"]["generation"] == 2
    assert report["server_swap_without_requests"]["generation"] == 3


def test_cli_refuses_a_bad_add_size(capsys):
    from retrieval.cli import main

    assert main(["bench", "serve-load", "--collection", "--add", "0"]) == 2
    assert "--add must be" in capsys.readouterr().err
