"""The binary ranking file: round trips, the format told by content, blockwise writing, faults refused
naming the file, and the streaming evaluation equal to the in-memory one on real ground truth (Oxford
subset with the revisited lists, COIL-20) and on synthetic GLDv2 / Holidays / UKBench-like truth."""
import json
from pathlib import Path

import numpy as np
import pytest

from retrieval import Index
from retrieval.cli import main as cli_main
from retrieval.datasets import QueryTruth, RetrievalDataset
from retrieval.datasets.open import DatasetConfig, open_dataset
from retrieval.evaluation.evaluate import evaluate
from retrieval.evaluation.streaming import StreamingEvaluation
from retrieval.features.store import save_global
from retrieval.indexing import ranking_file
from retrieval.indexing.ranking import IndexFileError, Ranking, open_ranking
from retrieval.steps import evaluate as evaluate_step


def _unit(rng, n, d):
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _ranking(rng, ids, queries=7, k=None, query_ids=True):
    db = _unit(rng, len(ids), 16)
    k = k or len(ids)
    names = [f"q{i}" for i in range(queries)] if query_ids else None
    return Index(db, ids=ids).search(_unit(rng, queries, 16), k=k, query_ids=names)


def _same(a: Ranking, b: Ranking) -> bool:
    return (a.ids.dtype.kind == b.ids.dtype.kind and np.array_equal(a.ids, b.ids)
            and np.array_equal(a.scores, b.scores) and np.array_equal(a.indices, b.indices)
            and a.query_ids == b.query_ids)


@pytest.mark.parametrize("ids", ["str", "int"])
@pytest.mark.parametrize("query_ids", [True, False])
def test_round_trip_both_formats_and_content_sniffing(tmp_path, rng, ids, query_ids):
    db_ids = [f"img{i}" for i in range(50)] if ids == "str" else list(range(100, 150))
    ranking = _ranking(rng, db_ids, k=20, query_ids=query_ids)
    for name, fmt in (("r.rank", "auto"), ("r.json", "auto"), ("binary.json", "binary"), ("json.rank", "json")):
        ranking.save(tmp_path / name, format=fmt)
        assert _same(Ranking.load(tmp_path / name), ranking), name
    assert ranking_file.is_binary_ranking(tmp_path / "binary.json")
    assert (tmp_path / "json.rank").read_bytes().startswith(b"{")
    # 8 bytes a result + one id table + header and checksums (under 1 KB), where JSON repeats the ids
    tables = len(json.dumps(db_ids)) + len(json.dumps(ranking.query_ids))
    assert (tmp_path / "r.rank").stat().st_size <= 7 * 20 * 8 + tables + 1024


def test_missing_results_round_trip(tmp_path, rng):
    ranking = _ranking(rng, [f"d{i}" for i in range(30)], queries=3, k=10)
    ranking.indices[1, 7:] = -1
    ranking.ids[1, 7:] = ""
    ranking.scores[1, 7:] = -np.inf
    ranking.save(tmp_path / "r.rank")
    loaded = Ranking.load(tmp_path / "r.rank")
    assert _same(loaded, ranking)
    assert len(loaded.to_predictions()["q1"]) == 7
    blocks = list(open_ranking(tmp_path / "r.rank").prediction_blocks(entries=10))
    assert len(blocks) == 3 and blocks[1] == {"q1": ranking.ids[1, :7].tolist()}


def test_writer_cuts_uneven_batches_into_checksum_blocks(tmp_path, rng, monkeypatch):
    monkeypatch.setattr(ranking_file, "BLOCK_ENTRIES", 3 * 20)  # 3 rows a checksum block
    ranking = _ranking(rng, [f"d{i}" for i in range(40)], queries=11, k=20)
    with ranking_file.RankingWriter(tmp_path / "r.rank", ranking.query_ids, ranking.db_table(), 20) as writer:
        for lo, hi in ((0, 4), (4, 5), (5, 5), (5, 11)):
            writer.write(ranking.indices[lo:hi], ranking.scores[lo:hi])
    reader = ranking_file.RankingFileReader(tmp_path / "r.rank")
    assert reader.block_rows == 3 and len(reader._block_digests) == 4
    for rows in (1, 2, 5, 11, 100):
        parts = list(reader.blocks(rows))
        assert np.array_equal(np.concatenate([p[1] for p in parts]), ranking.indices)
        assert np.array_equal(np.concatenate([p[2] for p in parts]), ranking.scores)
    assert _same(Ranking.load(tmp_path / "r.rank"), ranking)


def test_an_incomplete_write_leaves_no_file(tmp_path, rng):
    ranking = _ranking(rng, [f"d{i}" for i in range(20)], queries=4, k=5)
    (tmp_path / "r.rank").write_bytes(b"old")
    with pytest.raises(ValueError, match="2 of 4 ranking rows written"):
        with ranking_file.RankingWriter(tmp_path / "r.rank", ranking.query_ids, ranking.db_table(), 5) as writer:
            writer.write(ranking.indices[:2], ranking.scores[:2])
    with pytest.raises(RuntimeError):
        with ranking_file.RankingWriter(tmp_path / "r.rank", ranking.query_ids, ranking.db_table(), 5) as writer:
            writer.write(ranking.indices[:2], ranking.scores[:2])
            raise RuntimeError("search failed")
    assert (tmp_path / "r.rank").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.rank"]


def test_truncated_or_bit_flipped_files_are_refused_naming_them(tmp_path, rng, monkeypatch):
    monkeypatch.setattr(ranking_file, "BLOCK_ENTRIES", 2 * 25)
    ranking = _ranking(rng, [f"d{i}" for i in range(25)], queries=6)
    path = ranking.save(tmp_path / "r.rank")
    good = path.read_bytes()
    damaged = {f"truncated to {cut}": good[:cut] for cut in (0, 5, 12, 200, len(good) // 2, len(good) - 1)}
    damaged["one byte more"] = good + b"\0"
    for pos in rng.choice(len(good) * 8, size=64, replace=False):
        flipped = bytearray(good)
        flipped[pos // 8] ^= 1 << (pos % 8)
        damaged[f"bit {pos} of {len(good) * 8}"] = bytes(flipped)
    for label, data in damaged.items():
        path.write_bytes(data)
        for read in (Ranking.load, lambda p: [b for b in open_ranking(p).prediction_blocks(entries=25)]):
            with pytest.raises(IndexFileError) as err:
                read(path)
            assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value), (label, str(err.value))


def test_a_newer_version_and_a_foreign_file_are_refused(tmp_path, rng, monkeypatch):
    ranking = _ranking(rng, [f"d{i}" for i in range(10)], queries=2)
    monkeypatch.setattr(ranking_file, "BINARY_VERSION", 2)
    ranking.save(tmp_path / "v2.rank")
    monkeypatch.setattr(ranking_file, "BINARY_VERSION", 1)
    with pytest.raises(IndexFileError, match=r"v2.rank: format version 2 is newer than this code reads"):
        Ranking.load(tmp_path / "v2.rank")
    (tmp_path / "other.rank").write_bytes(ranking_file.MAGIC[:4] + b"not a ranking")
    with pytest.raises(IndexFileError, match="other.rank"):
        Ranking.load(tmp_path / "other.rank")


# ------------------------------------------------------------------- streaming evaluation = in-memory


def _labelled_ranking(dataset, rng, dim=24):
    """A full ranking of ``dataset`` from label centroids + noise (so the metrics are not trivial)."""
    def label(image_id, labels):
        return labels.get(image_id) or image_id.rsplit("_", 1)[0].split("/")[0]
    labels = dict(zip(dataset.db_ids, dataset.db_labels or [None] * len(dataset.db_ids)))
    labels.update(zip(dataset.query_ids, dataset.query_labels or [None] * len(dataset.query_ids)))
    names = sorted({label(i, labels) for i in [*dataset.db_ids, *dataset.query_ids]})
    centres = dict(zip(names, _unit(rng, len(names), dim)))

    def vectors(ids):
        return np.stack([centres[label(i, labels)] for i in ids]) + 0.9 * _unit(rng, len(ids), dim)
    return Index(vectors(dataset.db_ids), ids=dataset.db_ids).search(
        vectors(dataset.query_ids), k=len(dataset.db_ids), query_ids=dataset.query_ids)


def _compare(tmp_path, dataset, ranking, protocols, monkeypatch):
    ranking.save(tmp_path / "r.json")
    ranking.save(tmp_path / "r.rank")
    # a handful of queries a block: the streaming path really runs block by block
    monkeypatch.setattr(evaluate_step, "BLOCK_ENTRIES", 7 * ranking.k)
    for protocol in protocols:
        conf = evaluate_step.EvaluateConfig(protocol=protocol)
        whole = evaluate_step.score(conf, Ranking.load(tmp_path / "r.json").to_predictions(), dataset,
                                    source="r.json")
        for name in ("r.rank", "r.json"):
            info: dict = {}
            evaluate_step.main(conf, tmp_path / name, dataset, tmp_path / "m.json", info=info)
            streamed = {k: v for k, v in info.items() if k not in ("ranking", "dataset", "data")}
            assert streamed == {k: v for k, v in whole.items()}, (protocol, name)
        assert whole["num_queries"] > 0


def test_streaming_equals_in_memory_on_the_oxford_subset(data_root, tmp_path, rng, monkeypatch):
    gnd = data_root / "revisitop" / "gnd_roxford5k.pkl"
    if not gnd.is_file() or not (data_root / "oxford5k_subset").is_dir():
        pytest.skip("needs oxford5k_subset and revisitop")
    dataset = open_dataset(DatasetConfig(kind="oxford", path=str(data_root / "oxford5k_subset"), gnd=str(gnd)))
    _compare(tmp_path, dataset, _labelled_ranking(dataset, rng), ["oxford", "landmark", "revisited", "all"],
             monkeypatch)


def test_streaming_equals_in_memory_on_coil20(coil20_dir, tmp_path, rng, monkeypatch):
    dataset = open_dataset(DatasetConfig(kind="folder", path=str(coil20_dir)))
    _compare(tmp_path, dataset, _labelled_ranking(dataset, rng), ["general", "landmark"], monkeypatch)


def _synthetic(usage=False, groups=False):
    db = [f"c{i // 4}_{i}" for i in range(40)]
    truth, queries = {}, [f"c{c}_q" for c in range(10)]
    for c, q in enumerate(queries):
        members = {d for d in db if d.startswith(f"c{c}_")}
        truth[q] = QueryTruth(positives=members, junk=set() if groups else {db[(4 * c + 7) % 40]},
                              usage=(("Public", "Private", "Ignored")[c % 3]) if usage else None)
    return RetrievalDataset(name="synthetic", root=Path("."), db_ids=db, db_paths=[Path(d) for d in db],
                            query_ids=queries, query_paths=[Path(q) for q in queries], ground_truth=truth)


@pytest.mark.parametrize("protocol, usage", [("gldv2", True), ("holidays", False), ("ukbench", False),
                                             ("general", False), ("all", True)])
def test_streaming_equals_in_memory_for_every_protocol(rng, protocol, usage):
    dataset = _synthetic(usage=usage, groups=protocol == "ukbench")
    order = np.argsort(rng.random((10, 40)), axis=1)
    predictions = {q: [dataset.db_ids[i] for i in row] for q, row in zip(dataset.query_ids, order)}
    del predictions["c4_q"]  # a query without a prediction scores as an empty ranking
    streaming = StreamingEvaluation(dataset, protocol)
    items = list(predictions.items())[::-1]  # blocks in another order than the dataset's queries
    for lo in range(0, len(items), 3):
        streaming.add(dict(items[lo:lo + 3]))
    assert streaming.result() == evaluate(dataset, predictions, protocol=protocol)


def test_streaming_refuses_unknown_database_ids(rng):
    dataset = _synthetic()
    streaming = StreamingEvaluation(dataset, "general")
    with pytest.raises(ValueError, match="not database ids"):
        streaming.add({"c0_q": ["nope", "c0_0"]})


# ------------------------------------------------------------------------------ the commands


@pytest.fixture
def searched(tmp_path, rng):
    ids = [f"c{i % 5}/img{i:03d}" for i in range(60)]
    vectors = _unit(rng, 60, 16)
    save_global(tmp_path / "db.h5", ids, vectors)
    save_global(tmp_path / "q.h5", ids[:12], vectors[:12])
    assert cli_main(["--quiet", "index", "build", str(tmp_path / "db.h5"), "--out", str(tmp_path / "i.npz")]) == 0
    return tmp_path


def test_search_writes_binary_unless_json_is_asked(searched, capsys):
    t = searched
    for out, extra in (("r.rank", []), ("r.json", []), ("forced.rank", ["--format", "json"])):
        assert cli_main(["--quiet", "search", str(t / "i.npz"), str(t / "q.h5"), "--out", str(t / out), *extra]) == 0
    assert ranking_file.is_binary_ranking(t / "r.rank")
    assert (t / "r.json").read_bytes()[:1] == b"{" and (t / "forced.rank").read_bytes()[:1] == b"{"
    assert _same(Ranking.load(t / "r.rank"), Ranking.load(t / "r.json"))
    assert Ranking.load(t / "r.rank").k == 60


def test_search_batches_bound_long_rankings(searched, monkeypatch):
    from retrieval.steps import search

    monkeypatch.setattr(search, "BATCH_ENTRIES", 2 * 60)  # two queries a search call
    search.main(search.SearchConfig(), searched / "i.npz", searched / "q.h5", searched / "b.rank", progress=False)
    cli_main(["--quiet", "search", str(searched / "i.npz"), str(searched / "q.h5"), "--out", str(searched / "a.json")])
    small_batches, one_batch = Ranking.load(searched / "b.rank"), Ranking.load(searched / "a.json")
    # the same order; the scores may differ in the last bit (BLAS sums a 2-row block in another order)
    assert np.array_equal(small_batches.indices, one_batch.indices) and small_batches.query_ids == one_batch.query_ids
    np.testing.assert_allclose(small_batches.scores, one_batch.scores, atol=1e-6)


def test_cli_refuses_a_damaged_binary_ranking_in_one_line(searched, coil20_dir, capsys):
    t = searched
    assert cli_main(["--quiet", "search", str(t / "i.npz"), str(t / "q.h5"), "--out", str(t / "r.rank")]) == 0
    raw = bytearray((t / "r.rank").read_bytes())
    raw[len(raw) // 2] ^= 0x10
    (t / "r.rank").write_bytes(bytes(raw))
    capsys.readouterr()
    for command in (["evaluate", str(t / "r.rank"), "--dataset", "folder", "--data", str(coil20_dir)],
                    ["search", str(t / "r.rank"), str(t / "q.h5"), "--out", str(t / "x.rank")]):
        code = cli_main(["--quiet", *command])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("retrieval: error: "), err
        assert "r.rank" in err[0]
    assert "checksum mismatch" in err[0] or "binary ranking file, not an index" in err[0], err[0]


def test_a_short_binary_ranking_is_refused_before_scoring(tmp_path, rng):
    dataset = _synthetic()
    ranking = Index(_unit(rng, 40, 8), ids=dataset.db_ids).search(_unit(rng, 10, 8), k=5,
                                                                    query_ids=dataset.query_ids)
    ranking.save(tmp_path / "short.rank")
    conf = evaluate_step.EvaluateConfig(protocol="general")
    with pytest.raises(evaluate_step.ShortRankingError, match="short.rank: ranks 5 of 40"):
        evaluate_step.main(conf, tmp_path / "short.rank", dataset)
    info: dict = {}
    evaluate_step.main(evaluate_step.EvaluateConfig(protocol="general", allow_short=True), tmp_path / "short.rank",
                       dataset, info=info)
    assert info["short_ranking"] == {"depth": 5, "needed": 40}
