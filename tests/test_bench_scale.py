"""benchmarks/scale.py's parts at toy sizes: every key of results.json is written, Ray figures are
recorded as absent (never invented) when they cannot be measured, the projection is consistent."""
import json

import pytest

pytest.importorskip("faiss")
pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

from retrieval.bench import scale, scale_cost  # noqa: E402


@pytest.mark.slow
def test_scale_run_writes_the_keys(tmp_path, data_root, monkeypatch):
    monkeypatch.setitem(scale.QUICK, "n", 6000)
    monkeypatch.setitem(scale.QUICK, "dim", 16)
    monkeypatch.setitem(scale.QUICK, "queries", 30)
    monkeypatch.setitem(scale.QUICK, "nlist", 16)
    monkeypatch.setitem(scale.QUICK, "m", 4)
    monkeypatch.setitem(scale.QUICK, "gldv2_scale", 0.0005)
    monkeypatch.setattr(scale, "engine_figures", lambda *a, **k: {key: None for key in scale.ENGINE_KEYS}
                        | {"engine_note": "absent: test"})
    results = scale.run(tmp_path / "out", tmp_path / "work", data_root, quick=True, skip=["cost"])
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    for key in ("index_build_peak_rss_mb", "vectors_mb", "ivfpq_recall_at_100", "gldv2_csv_read_s",
                "gldv2_csv_peak_rss_mb", *scale.ENGINE_KEYS):
        assert key in saved
    assert saved["sift_scaling_2_vs_1"] is None and "absent" in saved["engine_note"]
    assert results["vectors_mb"] == pytest.approx(6000 * 16 * 4 / 2 ** 20)
    assert 0.9 <= results["ivfpq_recall_at_100"] <= 1.0
    assert results["ivfpq_recall_at_100"] >= results["ivfpq_recall_at_100_raw"]
    assert results["on_disk_identical_to_in_memory"] is True and results["on_disk_build_peak_rss_mb"] > 0
    assert results["gldv2_rows"]["train"] == round(4_132_914 * 0.0005)
    assert "ivfpq_recall_at_100" in (tmp_path / "out" / "results.md").read_text()


def test_projection_scales_with_workers_and_gpus():
    stages = {name: {"s_per_item": 0.1, "bytes_per_item": 1.0, "per": "image"}
              for name in ("sift", "global", "patches", "encoding", "rerank", "rerank_vlad", "rerank_patches",
                           "index_build", "search")}
    one = {r["experiment"]: r for r in scale_cost.project(stages, cpu_workers=1, gpus=1)}
    many = {r["experiment"]: r for r in scale_cost.project(stages, cpu_workers=10, gpus=1)}
    e1 = 0.1 * (scale_cost.EXTRACT + scale_cost.GLDV2["index"] + scale_cost.GLDV2["test"]) / 3600
    assert one["E1"]["hours_1_cpu"] == pytest.approx(e1)
    # extraction spreads over workers; index build and search stay on one machine
    assert many["E1"]["hours_10_cpu"] == pytest.approx(
        (0.1 * scale_cost.EXTRACT / 9 + 0.1 * (scale_cost.GLDV2["index"] + scale_cost.GLDV2["test"])) / 3600)
    assert one["E2"]["hours_1_cpu"] > one["E1"]["hours_1_cpu"]
