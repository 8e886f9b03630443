"""What a ranking file costs on disk and in memory, the JSON file against the binary one
(``retrieval bench rankings``).

Each step runs in a child process of its own, which reports its peak resident memory
(``getrusage(RUSAGE_SELF).ru_maxrss``), its seconds and the file size:

* (a) ``--images`` seeded random unit vectors of dimension ``--dim`` (default 3,280 x 256), every image a
  query against all of them (the full ranking). ``retrieval search`` with ``--format json`` (the path
  that concatenates the batches in memory and writes JSON, as before the binary file) and with the
  default binary file; then ``retrieval evaluate``'s scoring of each: the JSON file loaded whole
  (``Ranking.load`` + ``to_predictions`` + :func:`retrieval.steps.evaluate.score`, the evaluation
  before streaming) and the binary file streamed (:func:`retrieval.steps.evaluate.main`). The metrics
  of the two must be equal.
* (b) ``--queries`` x ``--database`` (default 10,000 x 100,000, k = the whole database: 1e9 results)
  searched into a binary file and evaluated streaming; the JSON path is not run (it would take
  hundreds of GB). When the disk has less room than the file needs, fewer queries are ranked (said).

Size and memory do not depend on the vectors' content: random unit vectors with synthesised labels
(``--per-class`` images a class; queries of (b) are labelled like the database) stand in for images.
A ``baseline`` child (imports + the synthetic dataset, nothing ranked) gives the fixed part of the RSS.
``--before DIR`` (the source tree of an earlier version, e.g. ``git archive COMMIT | tar -x -C DIR``) adds
that version's search (JSON, its default) and whole-file evaluation to (a), measured the same way.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

__all__ = ["NAME", "run", "synthetic_dataset", "child"]

NAME = "rankings"


def _ids(prefix: str, count: int, per_class: int) -> List[str]:
    return [f"c{i // per_class:05d}/{prefix}{i:07d}" for i in range(count)]


def synthetic_dataset(num_db: int, per_class: int, num_queries: Optional[int] = None):
    """A labelled :class:`RetrievalDataset` without images: database ``c<label>/db<i>`` with ``per_class``
    images a label; queries are the database images themselves (``num_queries`` None: each its own
    junk, as ``every_nth_query`` makes them) or ``num_queries`` separate ``c<label>/q<i>`` (labels
    spread over the database's)."""
    from retrieval.datasets.dataset import QueryTruth, RetrievalDataset

    db_ids = _ids("db", num_db, per_class)
    classes = -(-num_db // per_class)
    members: Dict[str, List[str]] = {}
    for image_id in db_ids:
        members.setdefault(image_id.split("/")[0], []).append(image_id)
    if num_queries is None:
        query_ids = list(db_ids)
        truth = {q: QueryTruth(positives=set(members[q.split("/")[0]]) - {q}, junk={q}) for q in query_ids}
    else:
        per_query_class = max(1, -(-num_queries // classes))
        query_ids = _ids("q", num_queries, per_query_class)
        truth = {q: QueryTruth(positives=set(members.get(q.split("/")[0], ()))) for q in query_ids}
    labels = [q.split("/")[0] for q in query_ids]
    return RetrievalDataset(name="synthetic", root=Path("."), db_ids=db_ids, db_paths=[Path(i) for i in db_ids],
                            query_ids=query_ids, query_paths=[Path(q) for q in query_ids], ground_truth=truth,
                            db_labels=[i.split("/")[0] for i in db_ids], query_labels=labels)


def _unit_vectors(count: int, dim: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def child(task: dict) -> dict:
    """One measured step (run in a fresh process by :func:`run`)."""
    import resource

    from retrieval.steps import evaluate, search

    start = time.perf_counter()
    out: dict = {}
    if task["step"] == "search":
        given = {"format": task["format"]} if task["format"] else {}  # an earlier version has no format
        conf = search.SearchConfig(k=task.get("k"), **given)
        search.main(conf, Path(task["index"]), Path(task["queries"]), Path(task["out"]), progress=False)
        out["bytes"] = Path(task["out"]).stat().st_size
    else:
        dataset = synthetic_dataset(task["num_db"], task["per_class"], task.get("num_queries"))
        conf = evaluate.EvaluateConfig(protocol=task["protocol"])
        if task["step"] == "evaluate-whole":  # the evaluation before streaming: the file loaded whole
            from retrieval.indexing.ranking import Ranking

            loaded = Ranking.load(task["ranking"])
            out["metrics"] = evaluate.score(conf, loaded.to_predictions(), dataset, source=task["ranking"])
        elif task["step"] == "evaluate-stream":
            info: dict = {}
            evaluate.main(conf, Path(task["ranking"]), dataset, Path(task["ranking"] + ".metrics.json"), info=info)
            out["metrics"] = {k: v for k, v in info.items() if k not in ("ranking", "dataset", "data")}
    out["seconds"] = round(time.perf_counter() - start, 2)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def _measure(task: dict, before: Optional[Path] = None) -> dict:
    """Run :func:`child` for ``task`` in a new Python process; its JSON report. With ``before`` (the source
    tree of an earlier version) the child imports that version's ``retrieval`` (this file is loaded by path)."""
    import os

    code = ("import importlib.util, json, sys; spec = importlib.util.spec_from_file_location('_bench', sys.argv[2]); "
            "bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench); "
            "print('@@' + json.dumps(bench.child(json.loads(sys.argv[1]))))")
    env = dict(os.environ)
    if before is not None:
        env["PYTHONPATH"] = os.pathsep.join(x for x in (str(before), env.get("PYTHONPATH")) if x)
    done = subprocess.run([sys.executable, "-c", code, json.dumps(task), __file__], capture_output=True, text=True,
                          env=env)
    if done.returncode != 0:
        raise RuntimeError(f"bench step {task['step']} failed: {done.stderr.strip().splitlines()[-1:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("@@"))
    report = json.loads(line[2:])
    print(f"[rankings] {task['label']}: {report.get('bytes', '-')} bytes, {report['seconds']} s, "
          f"peak RSS {report['peak_rss_mb']} MB", file=sys.stderr, flush=True)
    return {"label": task["label"], **report}


def _features(folder: Path, name: str, ids: List[str], dim: int, seed: int) -> Path:
    from retrieval.features.store import save_global

    return save_global(folder / f"{name}.h5", ids, _unit_vectors(len(ids), dim, seed))


def _index(folder: Path, features: Path) -> Path:
    from retrieval.steps.index import IndexConfig, main

    return main(IndexConfig(), features, folder / "index.npz")


def run_small(folder: Path, images: int, dim: int, per_class: int, protocol: str,
              before: Optional[Path] = None) -> dict:
    """(a): every image a query against all ``images``: JSON vs binary, search and evaluation (and, with
    ``before``, the earlier version's search and evaluation of its JSON file)."""
    folder.mkdir(parents=True, exist_ok=True)
    features = _features(folder, "db", _ids("db", images, per_class), dim, seed=0)
    index = _index(folder, features)
    common = dict(num_db=images, per_class=per_class, protocol=protocol)
    rows = [_measure(dict(label="baseline (imports + dataset)", step="none", **common))]
    for fmt, name in (("json", "ranking.json"), ("binary", "ranking.rank")):
        rows.append(_measure(dict(label=f"search -> {fmt}", step="search", format=fmt, index=str(index),
                                  queries=str(features), out=str(folder / name))))
    rows.append(_measure(dict(label="evaluate json (whole file)", step="evaluate-whole",
                              ranking=str(folder / "ranking.json"), **common)))
    rows.append(_measure(dict(label="evaluate binary (streaming)", step="evaluate-stream",
                              ranking=str(folder / "ranking.rank"), **common)))
    same = rows[-1]["metrics"] == rows[-2]["metrics"]
    if before is not None:
        rows.append(_measure(dict(label=f"before ({before.name}): search -> json", step="search", format=None,
                                  index=str(index), queries=str(features), out=str(folder / "before.json")), before))
        rows.append(_measure(dict(label=f"before ({before.name}): evaluate json", step="evaluate-whole",
                                  ranking=str(folder / "before.json"), **common), before))
        same = same and rows[-1]["metrics"] == rows[-3]["metrics"]
    return {"images": images, "dim": dim, "entries": images * images, "rows": rows, "metrics_equal": same}


def run_large(folder: Path, num_queries: int, num_db: int, dim: int, per_class: int, protocol: str,
              reuse: Optional[Path] = None) -> dict:
    """(b): ``num_queries`` x ``num_db`` full ranking, binary file, evaluated streaming (``reuse``: only
    evaluate that ranking, written by an earlier (b) of the same sizes)."""
    folder.mkdir(parents=True, exist_ok=True)
    common = dict(num_db=num_db, per_class=per_class, num_queries=num_queries, protocol=protocol)
    if reuse is not None:
        rows = [_measure(dict(label="baseline (imports + dataset)", step="none", **common)),
                _measure(dict(label=f"evaluate binary (streaming) of {reuse.name}", step="evaluate-stream",
                              ranking=str(reuse), **common))]
        return {"queries": num_queries, "database": num_db, "dim": dim, "entries": num_queries * num_db,
                "rows": rows, "note": f"search not run: {reuse} evaluated"}
    free = shutil.disk_usage(folder).free
    need = num_queries * num_db * 8  # int32 row + float32 score a result
    note = ""
    if need > 0.8 * free:
        fitting = int(0.8 * free // (num_db * 8))
        note = (f"disk: {free / 1e9:.1f} GB free, {need / 1e9:.1f} GB needed: ranking {fitting} of "
                f"{num_queries} queries")
        print(f"[rankings] {note}", file=sys.stderr)
        num_queries = fitting
    features = _features(folder, "db", _ids("db", num_db, per_class), dim, seed=0)
    per_query_class = max(1, -(-num_queries // -(-num_db // per_class)))
    queries = _features(folder, "queries", _ids("q", num_queries, per_query_class), dim, seed=1)
    index = _index(folder, features)
    common.update(num_queries=num_queries)  # fewer when the disk is short
    rows = [_measure(dict(label="baseline (imports + dataset)", step="none", **common))]
    rows.append(_measure(dict(label="search -> binary", step="search", format="binary", index=str(index),
                              queries=str(queries), out=str(folder / "ranking.rank"), k=num_db)))
    rows.append(_measure(dict(label="evaluate binary (streaming)", step="evaluate-stream",
                              ranking=str(folder / "ranking.rank"), **common)))
    return {"queries": num_queries, "database": num_db, "dim": dim, "entries": num_queries * num_db,
            "rows": rows, "note": note}


def _table(title: str, report: dict) -> List[str]:
    lines = [f"### {title}", "", "| step | file bytes | seconds | peak RSS MB |", "|---|---:|---:|---:|"]
    for row in report["rows"]:
        size = f"{row['bytes']:,}" if "bytes" in row else "-"
        lines.append(f"| {row['label']} | {size} | {row['seconds']} | {row['peak_rss_mb']} |")
    return lines + [""]


def run(images: int = 3280, dim: int = 256, queries: int = 10_000, database: int = 100_000, per_class: int = 20,
        protocol: str = "general", part: str = "both", folder: Optional[Path] = None,
        out: Path = Path("results/rankings"), before: Optional[Path] = None, reuse: Optional[Path] = None) -> Path:
    """Both measurements; writes ``out``/results.json and results.md, prints the JSON; returns ``out``."""
    out = Path(out)
    work = Path(tempfile.mkdtemp(prefix="bench-rankings-", dir=folder))
    try:
        report: dict = {"protocol": protocol}
        if part in ("both", "a"):
            report["small"] = run_small(work / "small", images, dim, per_class, protocol, before)
            shutil.rmtree(work / "small")
        if part in ("both", "b"):
            report["large"] = run_large(work / "large", queries, database, dim, per_class * 5, protocol, reuse)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from retrieval.core.fileio import atomic_write_text

    lines: List[str] = []
    if "small" in report:
        small = report["small"]
        lines += _table(f"(a) {small['images']:,} images, every image a query ({small['entries']:,} results); "
                        f"metrics equal: {small['metrics_equal']}", small)
    if "large" in report:
        large_report = report["large"]
        lines += _table(f"(b) {large_report['queries']:,} x {large_report['database']:,} full ranking "
                        f"({large_report['entries']:,} results) {large_report['note']}", large_report)
    atomic_write_text(out / "results.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "results.md", "\n".join(lines))
    print(json.dumps(report, indent=2))
    print("\n".join(lines), file=sys.stderr)
    return out
