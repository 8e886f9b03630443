"""Scoring and reporting of the multi-view protocol (:mod:`retrieval.experiments.multiview`): view-set
benchmarks per split, ``test_views`` and database views, the distillation summary, the figures.

Metric convention of these tables: the standard ones of :mod:`retrieval.evaluation.metrics` on the ranking of
the other view sets (GLDv2 Kaggle mAP@100, nDCG@100 with an ideal list of min(m, 100) relevant items,
MPEG-7 ANMRR with GTM = the largest relevant set); the open-set 3D retrieval conventions
(:func:`retrieval.evaluation.metrics.os3dor_scores`) are used for feature files (:mod:`retrieval.experiments.mv_features`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from retrieval.evaluation import metrics
from retrieval.datasets.viewsets import ViewSet, make_benchmark

__all__ = ["evaluate_sets", "distillation_summary", "plot_sweep", "CONVENTION"]

CONVENTION = ("standard (retrieval.evaluation.metrics): GLDv2 Kaggle mAP@100, nDCG@100 over min(m, 100) ideal hits, "
              "MPEG-7 ANMRR (GTM = largest relevant set); ranking by inner product of unit descriptors")


def evaluate_sets(name: str, describe: Callable[[List[np.ndarray]], np.ndarray],
                  sets_by_split: Dict[str, Sequence[ViewSet]], test_views: Sequence[int], seed: int,
                  db_views: Sequence[Optional[int]] = (None,), curves: Optional[Dict[str, dict]] = None
                  ) -> List[dict]:
    """Rows of scores of one model: every split x database views per set (None: all) x test_views.
    ``curves`` (optional) collects ``"model, split, k=K"`` -> precision-recall curve (all database views)."""
    rows = []
    for split, sets in sets_by_split.items():
        for m in db_views:
            db_desc = None
            for k in test_views:
                bench = make_benchmark(sets, k, seed=seed, db_views=m, name=f"{split} k={k}")
                if db_desc is None:
                    db_desc = describe(bench.db_views)  # the database does not depend on k
                predictions = bench.rank(describe(bench.query_views), db_desc, k=100)
                sol = bench.solution
                if curves is not None and m is None:
                    curves[f"{name}, {split}, k={k}"] = metrics.precision_recall_curve(predictions, sol)
                rows.append({"model": name, "split": split, "test_views": k,
                             "db_views": "all" if m is None else m, "queries": len(sol),
                             "db_sets": len(bench.db_ids),
                             "top1": metrics.top_k_accuracy(predictions, sol, 1),
                             "top10": metrics.top_k_accuracy(predictions, sol, 10),
                             "mAP@100": metrics.map_at_k(predictions, sol, 100),
                             "nDCG@100": metrics.ndcg_at_k(predictions, sol, 100),
                             "ANMRR": metrics.anmrr(predictions, sol)})
    return rows


def _pick(rows: List[dict], model: str, split: str, k: int) -> Optional[dict]:
    return next((r for r in rows if r["model"] == model and r["split"] == split and r["test_views"] == k
                 and r["db_views"] == "all"), None)


def gap_closed(teacher: float, undistilled: float, delivered: float):
    """Share of the teacher-to-student gap the delivered student closed, ``(d - s) / (t - s)``; only
    where the teacher is above the undistilled student ("not applicable" otherwise: with t <= s the
    ratio's sign says nothing, e.g. a 20-point loss over a negative gap reads as a positive share)."""
    if not teacher > undistilled:
        return "not applicable"
    return (delivered - undistilled) / (teacher - undistilled)


def distillation_summary(rows: List[dict], splits: Sequence[str], test_views: Sequence[int],
                         delivered: str, tolerance: float = 0.005) -> Dict[str, dict]:
    """Per split and k (mAP@100, all database views): teacher, undistilled and delivered student, the
    delivered minus the undistilled (target: >= -``tolerance``) and the gap closed."""
    out: Dict[str, dict] = {}
    for split in splits:
        for k in test_views:
            t, s, d = (_pick(rows, m, split, k) for m in ("teacher", "mv-alexnet", delivered))
            if s is None or d is None:
                continue
            entry = {"undistilled": s["mAP@100"], "delivered": d["mAP@100"],
                     "delivered_minus_undistilled": d["mAP@100"] - s["mAP@100"],
                     "target_met": d["mAP@100"] >= s["mAP@100"] - tolerance}
            if t is not None:
                entry["teacher"] = t["mAP@100"]
                entry["gap_closed"] = gap_closed(t["mAP@100"], s["mAP@100"], d["mAP@100"])
            out[f"{split} k={k}"] = entry
    return out


def plot_sweep(rows: List[dict], path: Path, title: str, skip: Sequence[str] = ()) -> Path:
    """mAP@100 against test_views, one panel per split, one line per model (all database views);
    ``skip``: models left out (e.g. a candidate whose rows the delivered student repeats)."""
    from retrieval.core.report import save_figure, subplots

    rows = [r for r in rows if r["db_views"] == "all" and r["model"] not in set(skip)]
    splits = list(dict.fromkeys(r["split"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = subplots(1, len(splits), figsize=(5.5 * len(splits), 4), squeeze=False)
    ticks = sorted({r["test_views"] for r in rows})
    for ax, split in zip(axes[0], splits):
        for model, marker in zip(models, "os^Dvx"):
            pts = sorted((r["test_views"], r["mAP@100"]) for r in rows if r["model"] == model and r["split"] == split)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=model)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
        ax.set_xlabel("test views per query set")
        ax.set_ylabel("mAP@100 (GLDv2 convention)")
        ax.set_title(f"{title}: {split}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path, dpi=100)
