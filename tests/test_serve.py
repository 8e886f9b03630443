"""retrieval serve: the JSON API on a small real index (48 COIL-20 images, EfficientNet-Lite0 at 64 px,
RootSIFT), with FastAPI's TestClient. Skips without the data folder or without the serve extra."""
from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
pytest.importorskip("httpx", reason="TestClient needs httpx")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

OBJECTS = (1, 2, 3, 4)
VIEWS = tuple(range(0, 72, 6))  # 12 views of each object: 48 images


def build_small_index(coil20_dir: Path, out: Path) -> dict:
    """Index, feature file, RootSIFT store and dataset of 48 COIL-20 images in ``out``; the index file
    is made read-only. Returns the paths, the extractor and the dataset."""
    from retrieval import Index
    from retrieval.datasets import RetrievalDataset
    from retrieval.features.efficientnet import EfficientNetExtractor
    from retrieval.features.extract import extract_local_features
    from retrieval.features.sift import SiftExtractor
    from retrieval.features.store import save_global
    from retrieval.core.imageio import load_image

    images = coil20_dir / "images"
    ids = [f"obj{o}__{v}" for o in OBJECTS for v in VIEWS]
    paths = [images / f"{i}.png" for i in ids]
    extractor = EfficientNetExtractor("lite0-gem-224", size=64, backend="eager")
    vectors = extractor.extract_arrays([load_image(p) for p in paths])
    out.mkdir(parents=True, exist_ok=True)
    features = save_global(out / "db.h5", ids, vectors, extractor.config)
    index_path = Index(vectors, ids=ids, config=extractor.config).save(out / "index.npz")
    os.chmod(index_path, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    local = out / "sift.h5"
    extract_local_features(ids, paths, SiftExtractor("rootsift-small"), local, n_jobs=1, progress=False)
    dataset = RetrievalDataset(name="coil20-small", root=coil20_dir, db_ids=ids, db_paths=paths, query_ids=[],
                               query_paths=[], ground_truth={}, db_labels=[i.split("__")[0] for i in ids])
    results = out / "results"
    results.mkdir(exist_ok=True)
    (results / "results.json").write_text(json.dumps({
        "rows": [{"experiment": "E1", "dataset": "coil20-small", "metrics": {"map@100": 97.5}},
                 {"experiment": "E5", "dataset": "coil20-small", "metrics": {"map@100": 98.0}, "v": 0.5}],
        "per_query": {"E5": {"obj1__0": 0.9, "obj2__6": 0.25, "obj3__12": 1.0}}}))
    Image.new("RGB", (40, 30), (200, 20, 20)).save(results / "map_bars.png")
    # results.md as the ladder writes it: a pivoted table per dataset, then the long table of every row
    from retrieval.experiments.ladder.tables import result_rows, summary_table
    from retrieval.core.report import markdown_table

    rows = (result_rows("E1", "coil20-small", {"Private": 0.97, "Public": 0.98, "all": 0.975}, "map@100")
            + result_rows("E5", "coil20-small", {"Private": 0.98, "Public": 0.98, "all": 0.98}, "map@100",
                          chosen={"Private": "linear saturate T=10 v=0.4", "Public": "none (global order)"}))
    (results / "results.md").write_text("## The E1-E8 ladder on coil20-small\n\n" + summary_table(rows, {"coil20-small": "E1"})
                                        + "\n\n### All rows\n\n" + markdown_table(rows) + "\n")
    return {"index": index_path, "features": features, "local": local, "images": images, "ids": ids,
            "extractor": extractor, "dataset": dataset, "results": results}


@pytest.fixture(scope="module")
def small(coil20_dir, tmp_path_factory):
    return build_small_index(coil20_dir, tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def catalog(small):
    from retrieval.serve import Catalog

    cat = Catalog.open(index=small["index"], features=small["features"], images=small["images"],
                       local=small["local"], dataset=small["dataset"], extractor=small["extractor"])
    yield cat
    cat.close()


@pytest.fixture(scope="module")
def client(catalog, small):
    from retrieval.serve import UploadLimits, create_app
    from retrieval.serve.results import ResultsFolder

    app = create_app(catalog, ResultsFolder(small["results"]), UploadLimits(max_bytes=300_000, max_pixels=1_000_000))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def png_bytes(path: Path) -> bytes:
    return Path(path).read_bytes()


def _ok(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def _refused(response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"} and body["error"], body
    assert "Traceback" not in response.text and 'File "' not in response.text
    return body["error"]


# ------------------------------------------------------------------------------------------ search

def test_search_by_id_is_the_python_ranking(client, small):
    from retrieval import Index

    out = _ok(client.get("/api/search", params={"id": "obj2__6", "k": 10}))
    index = Index.load(small["index"])
    ranking = index.search(index.vectors[small["ids"].index("obj2__6")][None], k=10)
    assert [r["id"] for r in out["results"]] == ranking.ids[0].tolist()
    np.testing.assert_allclose([r["score"] for r in out["results"]], ranking.scores[0], rtol=0, atol=1e-6)
    assert [r["row"] for r in out["results"]] == ranking.indices[0].tolist()
    # itself first (junk for itself), the same object's other views right, other objects wrong
    first = out["results"][0]
    assert first["id"] == "obj2__6" and first["label"] == "junk" and first["score"] == pytest.approx(1.0, abs=1e-5)
    for r in out["results"][1:]:
        assert r["label"] == ("positive" if r["id"].startswith("obj2__") else "negative")
    assert out["truth"] == {"positives": 11, "junk": 1}
    # AP@k as GLDv2 scores it: junk removed, precision at each hit, divided by min(positives, k)
    clean = [r for r in out["results"] if r["label"] != "junk"]
    hits = [n for n, r in enumerate(clean, 1) if r["label"] == "positive"]
    assert hits and out["ap"]["global"] == pytest.approx(sum((h + 1) / n for h, n in enumerate(hits)) / 10, abs=1e-6)


def test_upload_is_described_with_the_index_extractor(client, small):
    from retrieval.core.imageio import load_image

    path = small["images"] / "obj3__12.png"
    out = _ok(client.post("/api/search", files={"file": ("x.png", png_bytes(path), "image/png")},
                          data={"k": "5", "v": "1.0"}))
    assert out["query"]["kind"] == "upload" and out["query"]["id"].startswith("upload:")
    assert out["query"]["width"] == 128 and out["query"]["keypoints"] > 0
    expected = small["extractor"].extract(load_image(path))
    from retrieval import Index

    ranking = Index.load(small["index"]).search(expected[None], k=5)
    assert [r["id"] for r in out["results"]] == ranking.ids[0].tolist()
    assert out["results"][0]["id"] == "obj3__12" and out["results"][0]["score"] > 0.999
    assert out["ap"] is None and out["results"][0]["label"] is None  # an upload has no ground truth
    # matches of the uploaded query can be asked for afterwards, by its token
    m = _ok(client.get("/api/matches", params={"query": out["query"]["id"], "db": "obj3__12"}))
    assert m["inliers"] > 10


def test_fusion_order_and_local_evidence(client):
    out = _ok(client.get("/api/search", params={"id": "obj1__18", "k": 12, "v": 0.3}))
    assert out["local"]["method"] == "inliers"
    items = out["results"]
    fused = [0.3 * r["score"] + 0.7 * r["local_norm"] for r in items]
    np.testing.assert_allclose([r["fused"] for r in items], fused, atol=1e-9)
    expected = [items[j]["id"] for j in sorted(range(len(items)), key=lambda j: (-fused[j], j))]
    assert out["fused_order"] == expected
    assert max(r["local"] for r in items) > 0
    at_one = _ok(client.get("/api/search", params={"id": "obj1__18", "k": 12, "v": 1.0}))
    assert at_one["fused_order"] == [r["id"] for r in items]  # v = 1 is the global order
    # the matches of a pair are the local evidence shown for it
    best = max(items[1:], key=lambda r: r["local"])
    m = _ok(client.get("/api/matches", params={"query": "obj1__18", "db": best["id"]}))
    assert m["inliers"] == best["local"] == sum(1 for line in m["lines"] if line[4])
    assert all(0 <= c <= 1 for line in m["lines"] for c in line[:4])
    # without v: the served fusion (no experiment chose one: the documented default, counts saturating at T)
    from retrieval.rerank.fusion import DEFAULT_FUSION

    default = _ok(client.get("/api/search", params={"id": "obj1__18", "k": 12}))
    assert default["fusion"]["label"] == DEFAULT_FUSION["count"].label
    T = DEFAULT_FUSION["count"].T
    np.testing.assert_allclose([r["local_norm"] for r in default["results"]],
                               [min(max(r["local"], 0.0), T) / T for r in default["results"]])


def test_images_served_by_id_only(client, small):
    raw = client.get("/api/image/obj1__0")
    assert raw.status_code == 200 and raw.content == (small["images"] / "obj1__0.png").read_bytes()
    thumb = client.get("/api/image/obj1__0", params={"size": 32})
    assert thumb.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.content)).size) == 32
    listing = _ok(client.get("/api/images", params={"offset": 40, "limit": 20}))
    assert listing["total"] == 48 and [i["id"] for i in listing["items"]] == small["ids"][40:]


@pytest.mark.parametrize("url", [
    "/api/image/obj20__0",                       # a file in the folder that is not indexed
    "/api/image/..%2F..%2F..%2Fetc%2Fpasswd",
    "/api/image/%2e%2e/%2e%2e/etc/passwd",
    "/api/image/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    "/api/image//etc/passwd",
    "/api/image/%2Fetc%2Fpasswd",
    "/api/image/obj1__0/../../../../etc/passwd",
    "/api/image/images%2Fobj1__0.png%00",
    "/api/image/C:%5CWindows%5Cwin.ini",
    "/results/figures/..%2Fresults.json",
    "/results/figures/%2e%2e%2fsift.h5",
    "/static/..%2Fapp.py",
])
def test_path_traversal_is_a_404(client, url):
    response = client.get(url)
    assert response.status_code == 404, (url, response.status_code)
    assert b"root:" not in response.content and b"[fonts]" not in response.content


# ---------------------------------------------------------------------------------------- bad input

def _bomb_png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("1", (width, height)).save(buf, "PNG", optimize=True)  # a huge canvas in a few KB
    return buf.getvalue()


def test_bad_uploads_are_4xx_and_the_server_keeps_serving(client, small):
    good = png_bytes(small["images"] / "obj1__0.png")
    cases = [
        ("text.png", b"this is not an image at all\n" * 10, 415, "not an image"),
        ("truncated.png", good[: len(good) // 2], 422, "truncated"),
        ("empty.png", b"", 422, "empty"),
        ("bomb.png", _bomb_png(3000, 3000), 413, "pixels"),          # over this server's 1e6 pixel cap
        ("big.bin", os.urandom(310_000), 413, "bytes"),              # over the 300 kB cap
    ]
    bomb = _bomb_png(20000, 20000)
    assert len(bomb) < 300_000  # 4e8 pixels in a file small enough to get past the byte cap
    cases.append(("bomb2.png", bomb, 413, "pixels"))
    for name, data, status, word in cases:
        message = _refused(client.post("/api/search", files={"file": (name, data, "image/png")}), status)
        assert word in message, (name, message)
    assert _ok(client.get("/api/info"))["count"] == 48
    assert _ok(client.get("/api/search", params={"id": "obj1__0", "k": 3}))["k"] == 3


def test_a_huge_body_is_refused_before_it_is_read(client):
    response = client.post("/api/search", content=b"x" * 10, headers={"content-length": str(10 ** 9),
                                                                       "content-type": "multipart/form-data; boundary=b"})
    assert "larger than" in _refused(response, 413)


@pytest.mark.parametrize("method,url,kwargs,status", [
    ("get", "/api/search", {}, 422),
    ("get", "/api/search", {"params": {"id": ""}}, 422),
    ("get", "/api/search", {"params": {"id": "obj1__0", "k": "abc"}}, 422),
    ("get", "/api/search", {"params": {"id": "obj1__0", "k": 0}}, 422),
    ("get", "/api/search", {"params": {"id": "obj1__0", "k": 100000}}, 422),
    ("get", "/api/search", {"params": {"id": "obj1__0", "v": "nan"}}, 422),
    ("get", "/api/search", {"params": {"id": "obj1__0", "v": 2}}, 422),
    ("get", "/api/search", {"params": {"id": "no-such-image"}}, 404),
    ("get", "/api/search", {"params": {"id": "upload:0123"}}, 404),
    ("get", "/api/search", {"params": {"id": "x" * 5000}}, 422),
    ("post", "/api/search", {}, 422),
    ("post", "/api/search", {"content": b"\x00\xff garbage", "headers": {"content-type": "multipart/form-data"}}, 400),
    ("post", "/api/search", {"json": {"id": "obj1__0"}}, 422),
    ("post", "/api/search", {"files": {"file": ("a.png", b"\x89PNG", "image/png")}, "data": {"k": "-1"}}, 422),
    ("get", "/api/image/obj1__0", {"params": {"size": 5}}, 422),
    ("get", "/api/image/obj1__0", {"params": {"size": "big"}}, 422),
    ("get", "/api/matches", {"params": {"query": "obj1__0"}}, 422),
    ("get", "/api/matches", {"params": {"query": "obj1__0", "db": "nope"}}, 404),
    ("get", "/api/matches", {"params": {"query": "nope", "db": "obj1__0"}}, 404),
    ("get", "/api/images", {"params": {"which": "../etc"}}, 422),
    ("get", "/api/images", {"params": {"limit": 10 ** 6}}, 422),
    ("delete", "/api/search", {}, 405),
    ("get", "/no/such/route", {}, 404),
])
def test_malformed_requests_get_a_clear_4xx(client, method, url, kwargs, status):
    if method == "post" and kwargs.get("headers"):
        # a body that claims to be multipart but is not
        response = client.post(url, content=kwargs["content"], headers=kwargs["headers"])
        assert 400 <= response.status_code < 500, response.text
        assert "error" in response.json() and "Traceback" not in response.text
        return
    _refused(getattr(client, method)(url, **kwargs), status)


def test_an_unexpected_error_is_logged_not_shown(catalog, small, monkeypatch, caplog):
    from retrieval.serve import create_app

    app = create_app(catalog)
    with TestClient(app, raise_server_exceptions=False) as c:
        monkeypatch.setattr(type(catalog), "describe", lambda self: 1 / 0)
        message = _refused(c.get("/api/info"), 500)
    assert "ZeroDivisionError" in message and "division" not in message
    assert any("unexpected error" in r.message for r in caplog.records)


def test_index_file_is_only_read(client, small):
    before = hashlib.sha256(small["index"].read_bytes()).hexdigest()
    assert not os.access(small["index"], os.W_OK) or os.geteuid() == 0
    _ok(client.get("/api/search", params={"id": "obj4__30"}))
    assert hashlib.sha256(small["index"].read_bytes()).hexdigest() == before


# ------------------------------------------------------------------------------------------ pages

def test_pages_render(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="v-slider"' in page.text and "48 images" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert "/api/search" in _ok(client.get("/openapi.json"))["paths"]
    assert client.get("/docs").status_code == 200


def test_results_folder_page(client):
    page = client.get("/results")
    assert page.status_code == 200
    assert "<td>E5</td>" in page.text and "map_bars.png" in page.text
    # the pivoted table of results.md (a column per split, the gain over the base rung, what was chosen),
    # not a flat table of raw keys: those only in the folded "All rows"
    pivoted = page.text[page.text.index("id='results-tables'"):page.text.index("id='all-rows'")]
    assert "<h4>coil20-small (map@100, %)</h4>" in pivoted
    assert "<th>Private</th><th>Public</th><th>all</th><th>vs E1</th>" in pivoted
    assert "<td>E5</td><td>98.00</td><td>98.00</td><td>98.00</td><td>+0.50</td>" in pivoted
    assert "Private: linear saturate T=10 v=0.4" in pivoted and "metrics.map@100" not in pivoted
    assert "metrics.map@100" in page.text[page.text.index("id='all-rows'"):]
    # failures: lowest AP first, from the results' per-query APs, each a link that searches it
    failures = page.text[page.text.index("id='failures'"):]
    assert failures.index("obj2__6") < failures.index("obj1__0") < failures.index("obj3__12")
    assert "/?id=obj2__6" in failures
    figure = client.get("/results/figures/map_bars.png")
    assert figure.status_code == 200 and figure.headers["content-type"] == "image/png"


def test_served_aps_rank_failures_without_per_query_results(catalog, tmp_path):
    from retrieval.serve.page import worst_queries
    from retrieval.serve.results import ResultsFolder

    (tmp_path / "results.md").write_text("| a |\n|---|\n| 1 |\n")
    source, worst = worst_queries(ResultsFolder(tmp_path), catalog)
    assert worst == [] and "served index" in source  # a database without queries has nothing to rank


# --------------------------------------------------------------------------------------------- CLI

def _cli(capsys, *args):
    from retrieval.cli import main

    capsys.readouterr()
    code = main(["serve", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_check_and_errors(small, tmp_path, capsys):
    code, out, err = _cli(capsys, "--index", str(small["index"]), "--features", str(small["features"]), "--images",
                str(small["images"]), "--local", str(small["local"]), "--check")
    assert code == 0, err
    info = json.loads(out)
    assert info["count"] == 48 and info["host"] == "127.0.0.1" and info["local"]["name"] == "rootsift-small"
    code, out, err = _cli(capsys, "--images", str(small["images"]))
    assert code == 2 and err.startswith("retrieval: error: serve needs")
    # an experiment folder naming its sources in serve.json
    (tmp_path / "serve.json").write_text(json.dumps({"features": str(small["features"]), "images": str(small["images"]),
                                                     "dataset": {"kind": "folder", "data": str(small["images"].parent)}}))
    (tmp_path / "results.md").write_text("| a |\n|---|\n| 1 |\n")
    code, out, err = _cli(capsys, "--experiment", str(tmp_path), "--check")
    assert code == 0, err
    info = json.loads(out)
    assert info["ground_truth"] and info["count"] == 48 and info["results"] == str(tmp_path)


# ------------------------------------------------------------------------------- without the data

def test_concurrent_searches_are_batched_and_equal_single_searches():
    from concurrent.futures import ThreadPoolExecutor

    from retrieval.serve.load import synthetic_catalog

    catalog = synthetic_catalog(5000, 32, seed=3)
    ids = catalog.db_ids[:64]
    with ThreadPoolExecutor(8) as pool:
        rankings = list(pool.map(lambda i: catalog.batcher.search(catalog.vector(i), 5 + len(i) % 7, i), ids))
    for image_id, ranking in zip(ids, rankings):
        alone = catalog.index.search(catalog.vector(image_id)[None], k=ranking.k)
        assert ranking.query_ids == [image_id] and ranking.ids.tolist() == alone.ids.tolist()
        np.testing.assert_allclose(ranking.scores, alone.scores, rtol=0, atol=1e-5)  # GEMM vs GEMV rounding
    assert catalog.batcher.searched == 64 and catalog.batcher.batches < 64


def test_decode_upload_refusals():
    from retrieval.serve import UploadError, UploadLimits, decode_upload

    limits = UploadLimits(max_bytes=100_000, max_pixels=250_000)
    buf = io.BytesIO()
    Image.new("RGBA", (300, 200), (10, 20, 30, 255)).save(buf, "PNG")
    rgb = decode_upload(buf.getvalue(), limits)
    assert rgb.shape == (200, 300, 3) and rgb.dtype == np.uint8 and tuple(rgb[0, 0]) == (10, 20, 30)
    jpeg = io.BytesIO()
    Image.new("RGB", (300, 200), (200, 100, 0)).save(jpeg, "JPEG")
    for data, status in ((jpeg.getvalue()[: len(jpeg.getvalue()) // 2], 422), (b"%PDF-1.4", 415),
                         (_bomb_png(600, 600), 413), (b"\x00" * 100_001, 413), (b"", 422)):
        with pytest.raises(UploadError) as info:
            decode_upload(data, limits, name="q.png")
        assert info.value.status == status and info.value.message.startswith("q.png: ")


def test_load_test_is_bounded(capsys):
    from retrieval.cli import main

    for args in (["--requests", "501"], ["--concurrency", "9"], ["--requests", "0"]):
        assert main(["bench", "serve-load", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("retrieval: error: the load test is bounded"), err


def test_experiment_sources_of_an_e1_e7_results_folder(tmp_path):
    from retrieval.features.store import save_global
    from retrieval.serve.results import ResultsFolder, experiment_sources

    run_cache = tmp_path / "cache" / "quick"
    save_global(run_cache / "global" / "e4_index.h5", ["a", "b"], np.eye(2, dtype=np.float32), {"extractor": "x"})
    save_global(run_cache / "global" / "e4_queries.h5", ["q"], np.ones((1, 2), np.float32), {"extractor": "x"})
    (run_cache / "coil100-gldv2").mkdir()
    out = tmp_path / "results"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"rows": [{"experiment": "E1"}],
                                                  "options": {"cache": str(tmp_path / "cache"), "quick": True}}))
    found = experiment_sources(out)
    assert found["features"] == run_cache / "global" / "e4_index.h5"
    assert found["queries"] == run_cache / "global" / "e4_queries.h5" and found["local"] is None
    assert found["dataset"] == ("gldv2", run_cache / "coil100-gldv2")
    assert ResultsFolder(out).table()[1] == [["E1"]]
    (out / "results.json").write_text(json.dumps({"rows": [], "options": {"cache": str(tmp_path / "gone")}}))
    with pytest.raises(ValueError, match="cache .* is gone"):
        experiment_sources(out)
