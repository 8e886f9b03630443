"""Evaluate pre-extracted multi-view features from a file: how users compare with published tables
(OS-MN40-core, OS-ESB-core, OS-NTU-core, OS-ABO-core, ...). The multi-view protocol runs this when
its ``features`` setting names a file.

File (``.npz``, read without pickle, or HDF5 ``.h5`` / ``.hdf5``), one row per object or per view:

* ``vectors`` (N, D) float: the features;
* ``labels`` (N,) int or text: relevant = same label (category-level for the OS-* sets);
* ``query``, ``target``, ``train`` (N,) bool masks: which rows are queries, which the database, which
  were used for training (never evaluated; reported, with whether its labels are disjoint from the
  evaluated ones, i.e. whether the set is open);
* ``object_ids`` (N,) int, optional: per-view rows; rows of one object are its views. Each object is
  then described by the L2-normalised mean of its views: queries from ``test_views`` seeded views, the
  database from each count in ``db_views`` (a count above the objects' view number is left out) and
  from all views.

Both metric conventions are reported for every row: the open-set 3D retrieval one
(:func:`retrieval.evaluation.metrics.os3dor_scores`: interpolated mAP over the full ranking, NDCG@100 over an
all-relevant list, ANMRR over the first NG ranks) and the standard one (full-ranking mAP, nDCG@100
over min(m, 100) ideal hits, MPEG-7 ANMRR); ranking by cosine distance.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from retrieval.evaluation import metrics

__all__ = ["read_feature_file", "evaluate_arrays", "evaluate_file", "FEATURE_KEYS"]

FEATURE_KEYS = ("vectors", "labels", "query", "target", "train")


def read_feature_file(path: Path) -> Dict[str, np.ndarray]:
    """The arrays of a feature file, checked (module docstring); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"{path}: no such feature file")
    if path.suffix in (".h5", ".hdf5"):
        import h5py

        try:
            with h5py.File(path, "r") as f:
                data = {k: f[k][()] for k in (*FEATURE_KEYS, "object_ids") if k in f}
        except OSError as exc:
            raise SystemExit(f"{path}: not a readable HDF5 file ({exc})")
        if data.get("labels") is not None and data["labels"].dtype.kind in "SO":
            data["labels"] = data["labels"].astype(str)
    else:
        from retrieval.core.fileio import FileFormatError, read_npz

        try:
            data = read_npz(path, what="feature")
        except FileFormatError as exc:
            raise SystemExit(str(exc))
    missing = [k for k in FEATURE_KEYS if k not in data]
    if missing:
        raise SystemExit(f"{path}: no array {missing} (a feature file holds {list(FEATURE_KEYS)}"
                         f" and optionally object_ids)")
    n = len(data["vectors"])
    if data["vectors"].ndim != 2 or not np.isfinite(data["vectors"]).all():
        raise SystemExit(f"{path}: vectors must be finite (N, D), got shape {data['vectors'].shape}")
    for k in ("labels", "query", "target", "train") + (("object_ids",) if "object_ids" in data else ()):
        if len(data[k]) != n:
            raise SystemExit(f"{path}: {k} has {len(data[k])} rows, vectors {n}")
    for k in ("query", "target", "train"):
        data[k] = data[k].astype(bool)
    if (data["query"] & data["target"]).any():
        raise SystemExit(f"{path}: {int((data['query'] & data['target']).sum())} rows are both query and target")
    if not data["query"].any() or not data["target"].any():
        raise SystemExit(f"{path}: no query or no target rows")
    return data


def _object_descriptors(vectors: np.ndarray, groups: List[np.ndarray], views: Optional[int],
                        seed: int) -> np.ndarray:
    """L2(mean of ``views`` seeded views) per object (all views when None or more than it has)."""
    out = np.empty((len(groups), vectors.shape[1]), dtype=np.float64)
    for i, rows in enumerate(groups):
        if views is not None and views < len(rows):
            rows = np.sort(np.random.default_rng([seed, i]).choice(rows, size=views, replace=False))
        v = vectors[rows].astype(np.float64)
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        out[i] = v.mean(axis=0)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def _scores(q: np.ndarray, q_labels: np.ndarray, t: np.ndarray, t_labels: np.ndarray) -> Dict[str, float]:
    os3 = metrics.os3dor_scores(q, q_labels, t, t_labels)
    order = metrics.cosine_ranking(q, t)
    predictions = {i: order[i].tolist() for i in range(len(q))}
    solution = {i: set(np.flatnonzero(t_labels == q_labels[i]).tolist()) for i in range(len(q))}
    return {"map (os3dor)": os3["map"], "ndcg@100 (os3dor)": os3["ndcg@100"], "anmrr (os3dor)": os3["anmrr"],
            "map (standard)": metrics.mean_ap(predictions, solution),
            "ndcg@100 (standard)": metrics.ndcg_at_k(predictions, solution, 100),
            "anmrr (standard)": metrics.anmrr(predictions, solution),
            **{f"{k} (shape)": v for k, v in metrics.shape_tiers(predictions, solution).items()}}


def evaluate_arrays(data: Dict[str, np.ndarray], test_views: Sequence[int] = (1,),
                    db_views: Sequence[int] = (), seed: int = 0) -> List[dict]:
    """Rows of scores (module docstring) for every test_views x database views (per-view files), or
    one row (per-object files)."""
    vectors, labels = data["vectors"], np.asarray(data["labels"])
    if "object_ids" not in data:
        q, t = data["query"], data["target"]
        return [{"test_views": "-", "db_views": "-", "queries": int(q.sum()), "targets": int(t.sum()),
                 **_scores(vectors[q], labels[q], vectors[t], labels[t])}]
    objects = np.asarray(data["object_ids"])
    ids, first, inverse = np.unique(objects, return_index=True, return_inverse=True)
    groups = [np.flatnonzero(inverse == i) for i in range(len(ids))]
    for name in ("query", "target", "labels"):
        col = np.asarray(data[name])
        if any(len(set(col[g].tolist())) > 1 for g in groups):
            raise SystemExit(f"feature file: the views of one object disagree in {name}")
    obj_labels = labels[first]
    q_obj = np.flatnonzero(data["query"][first])
    t_obj = np.flatnonzero(data["target"][first])
    most = min(len(g) for g in groups)
    rows = []
    for m in [None] + [m for m in db_views if m <= most]:
        t_desc = _object_descriptors(vectors, [groups[i] for i in t_obj], m, seed + 1_000_003)
        for k in [k for k in test_views if k <= most]:
            q_desc = _object_descriptors(vectors, [groups[i] for i in q_obj], k, seed)
            rows.append({"test_views": k, "db_views": "all" if m is None else m, "queries": len(q_obj),
                         "targets": len(t_obj),
                         **_scores(q_desc, obj_labels[q_obj], t_desc, obj_labels[t_obj])})
    return rows


def evaluate_file(path: Path, out_dir: Path, test_views: Sequence[int] = (1,), db_views: Sequence[int] = (),
                  seed: int = 0) -> Path:
    """Score the feature file ``path``; writes results.json, results.md and pr_curve.png to ``out_dir``."""
    from retrieval.bench.pr_plot import plot_pr_curves
    from retrieval.core.fileio import atomic_write_text
    from retrieval.core.report import markdown_table, write_results

    data = read_feature_file(path)
    rows = evaluate_arrays(data, test_views, db_views, seed)
    labels = np.asarray(data["labels"])
    evaluated = set(labels[data["query"] | data["target"]].tolist())
    trained = set(labels[data["train"]].tolist())
    info = {"file": str(path), "train_rows": int(data["train"].sum()),
            "open_set": not (evaluated & trained), "per_view": "object_ids" in data,
            "conventions": {"os3dor": "open-set 3D retrieval (retrieval.evaluation.metrics.os3dor_scores)",
                            "standard": "retrieval.evaluation.metrics mean_ap / ndcg_at_k / anmrr",
                            "shape": "first / second tier, F-measure at 32 (retrieval.evaluation.metrics.shape_tiers)"}}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = write_results(rows, out_dir, title=f"{path.name}: multi-view features", extra={"info": info})
    q, t = data["query"], data["target"]
    order = metrics.cosine_ranking(data["vectors"][q], data["vectors"][t])
    tl, ql = labels[t], labels[q]
    curve = metrics.precision_recall_curve({i: order[i].tolist() for i in range(len(order))},
                                           {i: set(np.flatnonzero(tl == ql[i]).tolist()) for i in range(len(order))})
    plot_pr_curves({path.stem + " (rows as given)": curve}, out_dir / "pr_curve.png", f"{path.name}")
    atomic_write_text(out_dir / "results.md", "\n".join([
        f"# {path.name}: multi-view features", "",
        "Every metric is given in two conventions: `(os3dor)` = the open-set 3D retrieval code's "
        "(interpolated mAP over the full ranking, NDCG@100 over an all-relevant list, ANMRR over the first NG "
        "ranks), `(standard)` = retrieval.evaluation.metrics; ranking by cosine distance.", "",
        f"Open set (no evaluated label among the training rows' labels): {info['open_set']}.", "",
        markdown_table(rows), "", table, ""]))
    return out_dir
