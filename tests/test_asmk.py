"""ASMK* over RootSIFT on real Oxford photos: query-side multiple assignment (the ASMK paper's ma=5) gives
what the reference ``asmk`` package gives, through the first-stage inverted file and the pairwise
re-ranking scorer; the ASMK benchmark's revisited figures are the toolkit's revisited scores."""
from __future__ import annotations

import numpy as np
import pytest

from retrieval.core.imageio import load_image
from retrieval.datasets.open import DatasetConfig, open_dataset
from retrieval.features.sift import SiftExtractor

asmk_method = pytest.importorskip("asmk.asmk_method")


@pytest.fixture(scope="module")
def oxford(oxford_dir):
    return open_dataset(DatasetConfig(kind="oxford", path=str(oxford_dir)))


def _photos(ds):
    """The first query (cropped to its box), three of its positives and three photos of other landmarks."""
    q = ds.query_ids[0]
    truth = ds.ground_truth[q]
    paths = dict(zip(map(str, ds.db_ids), ds.db_paths))
    query_stem = str(ds.query_paths[0]).rsplit("/", 1)[-1].rsplit(".", 1)[0]
    same = sorted(str(i) for i in truth.positives if str(i) != query_stem)[:3]
    other_truth = next(ds.ground_truth[o] for o in ds.query_ids
                       if not set(map(str, ds.ground_truth[o].positives)) & set(map(str, truth.positives)))
    other = sorted(map(str, other_truth.positives))[:3]
    ids = same + other
    return (load_image(ds.query_paths[0]), ds.query_boxes[0]), ids, [load_image(paths[i]) for i in ids], len(same)


def test_asmk_with_query_multiple_assignment_matches_the_reference_package(oxford):
    from retrieval.features.encoders.asmk import AsmkEncoder, AsmkIndex
    from retrieval.rerank.asmk import AsmkScorer

    (qimg, box), db_ids, db_imgs, n_same = _photos(oxford)
    sift = SiftExtractor("rootsift-1k")
    query = sift.extract(qimg, box)
    db = [sift.extract(img) for img in db_imgs]
    encoder = AsmkEncoder(k=128, query_assignment=5).fit(db, niter=5)
    assert encoder.config["query_assignment"] == 5
    ids, scores = AsmkIndex(encoder, db_ids, db).search([query], k=len(db_ids))
    # the landmark's own photos come first
    assert set(ids[0][:n_same]) == set(db_ids[:n_same]) and scores[0, n_same - 1] > scores[0, n_same]
    pairwise = AsmkScorer(encoder).score(query, db)
    np.testing.assert_allclose(sorted(pairwise, reverse=True), scores[0], rtol=1e-6)
    # the package's own pipeline, given our centroids, with its multiple assignment of query descriptors
    params = {"index": {"gpu_id": None}, "train_codebook": {"codebook": {"size": 128}},
              "build_ivf": {"kernel": {"binary": True}, "ivf": {"use_idf": False},
                            "quantize": {"multiple_assignment": 1}, "aggregate": {}},
              "query_ivf": {"quantize": {"multiple_assignment": 5}, "aggregate": {},
                            "search": {"topk": len(db_ids)},
                            "similarity": {"alpha": 3.0, "similarity_threshold": 0.0}}}
    method = asmk_method.ASMKMethod.initialize_untrained(params)
    cdb_method = method.train_codebook(np.zeros((128, 128), np.float32))  # replaced by our centroids
    cdb_method.codebook.index(encoder.codebook.centroids)
    built = cdb_method.build_ivf(np.concatenate([f.descriptors for f in db]),
                                 np.concatenate([np.full(len(f), i) for i, f in enumerate(db)]))
    _, _, ranks, ref_scores = built.query_ivf(query.descriptors, np.zeros(len(query), int))
    assert [db_ids[i] for i in ranks[0]] == ids[0]
    np.testing.assert_allclose(ref_scores[0], scores[0], rtol=1e-5)
    # one word per query descriptor is another kernel: the query's aggregated words differ
    single = AsmkEncoder(encoder.codebook, query_assignment=1)
    assert len(single.aggregate(query, query=True)) < len(encoder.aggregate(query, query=True))
    assert not np.allclose(AsmkScorer(single).score(query, db), pairwise)


def test_asmk_bench_revisited_figures_are_the_revisited_scores(oxford, data_root):
    """The bench's per-protocol figures (per query, then per fold) agree with the toolkit's revisited
    scores and the official protocol's mAP for one fixed ranking (every query: database in name order)."""
    from retrieval.bench.asmk_eval import _relevances
    from retrieval.datasets.revisited_subset import with_revisited_queries
    from retrieval.datasets.revisitop import read_gnd
    from retrieval.evaluation.evaluate import evaluate
    from retrieval.evaluation.revisited_subset import revisited_scores

    gnd_path = data_root / "revisitop" / "gnd_roxford5k.pkl"
    if not gnd_path.is_file():
        pytest.skip(f"{gnd_path} not found")
    gnd = read_gnd(gnd_path)
    ds = with_revisited_queries(oxford, gnd)
    assert len(ds.query_ids) == 70
    order = sorted(map(str, ds.db_ids))
    predictions = {str(q): order for q in ds.query_ids}
    figures = {}
    for protocol, relevance in _relevances(ds, gnd):
        per_query = relevance.per_query(predictions)
        figures[protocol] = (100 * sum(per_query.values()) / len(per_query), len(per_query))
    assert list(figures) == ["official", "landmark", "revisited easy", "revisited medium", "revisited hard"]
    reference = revisited_scores(ds, gnd, predictions, levels=("easy", "medium", "hard"))
    for level in ("easy", "medium", "hard"):
        assert figures[f"revisited {level}"] == pytest.approx((reference[f"{level}_map"], reference[f"{level}_queries"]))
    assert figures["official"][1] == 55
    official = {str(q): order for q in oxford.query_ids}
    assert figures["official"][0] == pytest.approx(100 * evaluate(oxford, official, protocol="oxford")["oxford_map"])
    assert 0 < figures["revisited hard"][0] < figures["revisited medium"][0] < 50


def test_asmk_bench_reads_and_completes_one_shared_store(tiny_oxford, tmp_path, monkeypatch, capsys):
    """``--store``: the database images and the cropped queries in one store (as a ladder cache keeps them):
    a first run fills it, a second one extracts nothing and gives the same figures as two separate stores."""
    import json

    from retrieval.cli import main as cli_main
    from retrieval.features.store import LocalFeatureStore

    monkeypatch.setenv("RETRIEVAL_DATA", str(tmp_path / "no-data"))  # no revisited ground truth here
    common = ["--quiet", "bench", "asmk-eval", "--data", str(tiny_oxford), "--features", "rootsift-1k",
              "--words", "16", "--niter", "3", "--query-assignment", "1,5"]
    shared = tmp_path / "shared.h5"

    def figures(out, *extra):
        assert cli_main([*common, "--out", str(out), "--cache", str(out / "cache"), *extra]) == 0
        capsys.readouterr()
        return [(r["method"], r["protocol"], r["mAP"]) for r in json.loads((out / "results.json").read_text())["rows"]]

    first = figures(tmp_path / "a", "--store", str(shared))
    with LocalFeatureStore(shared, mode="r") as store:
        assert "all_souls_1" in store and len(store) == 13  # 12 database images and the cropped query
    assert figures(tmp_path / "c") == first
    assert {p for _, p, _ in first} == {"official", "landmark"} and all(0 < m <= 100 for *_, m in first)
    # extraction broken now: a run on the full store reads features only
    def broken(*_args, **_kwargs):
        raise AssertionError("extracted again")

    monkeypatch.setattr(SiftExtractor, "extract", broken)
    assert figures(tmp_path / "b", "--store", str(shared)) == first
