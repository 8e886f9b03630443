"""``retrieval collection bench``: what adding to a collection costs against a rebuild, whether the result equals
a rebuild, and where an IVF quantiser's drift starts to cost recall (the retrain threshold).

Seeded synthetic data: unit vectors drawn around ``clusters`` Gaussian centres (search cost and recall depend
on the number, dimension and spread of the vectors, not on where they came from).

1. ``cost``: a collection of ``n`` rows; add ``added`` rows (vectors only: the extraction of the added images
   comes on top, at the extractor's own speed) against a rebuild of all ``n + added`` rows from scratch,
   for the exact and the IVF backend; the exact rankings compared entry by entry, IVF recall@100 against
   exact search for the grown and the rebuilt index; opening the new generation (what a server does).
2. ``drift``: an IVF collection trained on data from one set of centres; batches from other centres are
   added; after each, the drift ratio (:meth:`Collection.drift`) and recall@100 at the same ``nprobe`` of the
   grown index against an index retrained on everything.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

__all__ = ["run", "format_table"]


def _clustered(rng, n: int, dim: int, centres: np.ndarray, spread: float = 0.35) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + spread * rng.standard_normal((n, dim)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _recall(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(got.tolist(), want.tolist())]))


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _cost(folder: Path, rng, n: int, added: int, dim: int, clusters: int, queries: int) -> List[Dict]:
    from retrieval.indexing.collection import Collection
    from retrieval.indexing.index import Index

    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = _clustered(rng, n + added, dim, centres)
    q = _clustered(rng, queries, dim, centres)
    ids = np.array([f"img{i:07d}" for i in range(n + added)])
    truth = Index(x, ids=ids, precision="float32").search(q, k=100).ids
    rows = []
    for backend in ("exact", "faiss-ivf"):
        grown = folder / f"{backend}-grown"
        Collection.create(grown, ids[:n], x[:n], backend=backend)
        info, add_s = _timed(lambda: Collection(grown).add(ids[n:], x[n:]))
        snap, open_s = _timed(lambda: Collection(grown).snapshot())
        _, rebuild_s = _timed(lambda: Collection.create(folder / f"{backend}-rebuilt", ids, x, backend=backend))
        rebuilt = Collection(folder / f"{backend}-rebuilt").snapshot()
        got, ref = snap.search(q, k=100), rebuilt.search(q, k=100)
        rows.append({"backend": backend, "rows": n, "added": added, "add_s": round(add_s, 3),
                     "rebuild_s": round(rebuild_s, 3), "add_over_rebuild_pct": round(100 * add_s / rebuild_s, 2),
                     "open_s": round(open_s, 3),
                     "identical_to_rebuild": bool(np.array_equal(got.ids, ref.ids) and
                                                  np.array_equal(got.scores, ref.scores)),
                     "recall100_grown": round(_recall(got.ids, truth), 4),
                     "recall100_rebuilt": round(_recall(ref.ids, truth), 4)})
    return rows


def _drift(folder: Path, rng, n: int, dim: int, clusters: int, queries: int, steps: int) -> List[Dict]:
    from retrieval.indexing.collection import Collection
    from retrieval.indexing.index import Index

    old_centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    new_centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = _clustered(rng, n, dim, old_centres)
    ids = [f"a{i}" for i in range(n)]
    coll = Collection.create(folder / "drift", ids, x, backend="faiss-ivf")
    nlist, nprobe = coll.snapshot().index.options["nlist"], coll.snapshot().index.options["nprobe"]
    batch = n // steps
    rows, held = [], [x]
    for step in range(steps + 1):
        if step:
            new = _clustered(rng, batch, dim, new_centres)
            coll.add([f"b{step}-{i}" for i in range(batch)], new)
            held.append(new)
        everything = np.concatenate(held)
        q = np.concatenate([_clustered(rng, queries // 2, dim, old_centres),
                            _clustered(rng, queries - queries // 2, dim, new_centres)])
        truth = Index(everything, precision="float32").search(q, k=100).indices
        grown = coll.snapshot().index.search(q, k=100).indices
        retrained = Index(everything, backend="faiss-ivf", nlist=nlist, nprobe=nprobe).search(q, k=100).indices
        drift = coll.drift()
        rows.append({"added_fraction": round((len(everything) - n) / len(everything), 3),
                     "drift_ratio": drift["ratio"], "recall100_grown": round(_recall(grown, truth), 4),
                     "recall100_retrained": round(_recall(retrained, truth), 4)})
        rows[-1]["recall_gap"] = round(rows[-1]["recall100_retrained"] - rows[-1]["recall100_grown"], 4)
    return rows


def _filtered(rng, n: int, dim: int, clusters: int, queries: int, k: int = 100) -> List[Dict]:
    """Filtered search on ``n`` rows: every query gets k results whenever k pass, for filters passing from
    0.01% to 50% of the rows, exact and IVF (``nprobe`` 16, doubled where a query is short)."""
    from retrieval.indexing.index import Index

    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = _clustered(rng, n, dim, centres)
    q = _clustered(rng, queries, dim, centres)
    rows = []
    for backend, options in (("exact", {}), ("faiss-ivf", {"nlist": 1024, "nprobe": 16})):
        index, build_s = _timed(lambda: Index(x, backend=backend, **options))
        index.search(q[:1], k=k)  # warm-up: one-off copies (the exact backend's bfloat16 matrix)
        _, plain_s = _timed(lambda: index.search(q, k=k))
        for share in (0.0001, 0.001, 0.01, 0.1, 0.5):
            allowed = rng.random(n) < share
            ranking, seconds = _timed(lambda: index.search(q, k=k, allowed=allowed))
            found = (ranking.indices >= 0).sum(axis=1)
            rows.append({"backend": backend, "rows": n, "filter_share": share, "passing": int(allowed.sum()),
                         "min_results": int(found.min()), "k_whenever_k_pass": bool(
                             (found == min(k, int(allowed.sum()))).all()),
                         "only_allowed": bool(allowed[ranking.indices[ranking.indices >= 0]].all()),
                         "ms_per_query": round(1000 * seconds / len(q), 3),
                         "unfiltered_ms_per_query": round(1000 * plain_s / len(q), 3), "build_s": round(build_s, 1)})
    return rows


def run(n: int = 100_000, added: int = 1_000, dim: int = 256, clusters: int = 1000, queries: int = 500,
        drift_rows: int = 50_000, drift_steps: int = 5, filter_rows: int = 0, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="collection-bench-") as tmp:
        cost = _cost(Path(tmp), rng, n, added, dim, clusters, queries) if n else []
        drift = _drift(Path(tmp), rng, drift_rows, dim, clusters, queries, drift_steps) if drift_rows else []
    filtered = _filtered(rng, filter_rows, dim, clusters, queries) if filter_rows else []
    return {"settings": {"rows": n, "added": added, "dim": dim, "clusters": clusters, "queries": queries,
                         "drift_rows": drift_rows, "drift_steps": drift_steps, "filter_rows": filter_rows,
                         "seed": seed},
            "cost": cost if n else [], "drift": drift, "filtered": filtered}


def format_table(result: dict) -> str:
    lines = ["backend    rows     added  add s   rebuild s  add/rebuild %  open s  identical  recall grown / rebuilt"]
    for r in result["cost"]:
        lines.append(f"{r['backend']:<10} {r['rows']:<8} {r['added']:<6} {r['add_s']:<7} {r['rebuild_s']:<10} "
                     f"{r['add_over_rebuild_pct']:<14} {r['open_s']:<7} {str(r['identical_to_rebuild']):<10} "
                     f"{r['recall100_grown']} / {r['recall100_rebuilt']}")
    if result["drift"]:
        lines += ["", "added fraction  drift ratio  recall grown  recall retrained  gap"]
        for r in result["drift"]:
            lines.append(f"{r['added_fraction']:<15} {r['drift_ratio']:<12} {r['recall100_grown']:<13} "
                         f"{r['recall100_retrained']:<17} {r['recall_gap']}")
    if result.get("filtered"):
        lines += ["", "backend    rows      filter   passing  min results  k whenever k pass  only allowed  ms/query "
                      "(unfiltered)"]
        for r in result["filtered"]:
            lines.append(f"{r['backend']:<10} {r['rows']:<9} {r['filter_share']:<8} {r['passing']:<8} "
                         f"{r['min_results']:<12} {str(r['k_whenever_k_pass']):<18} {str(r['only_allowed']):<13} "
                         f"{r['ms_per_query']} ({r['unfiltered_ms_per_query']})")
    return "\n".join(lines)
