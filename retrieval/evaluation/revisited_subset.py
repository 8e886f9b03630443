"""Revisited Oxford / Paris figures of a subset (``oxford5k_subset``) scored with the official
ground truth restricted to the images present: :func:`revisited_scores` (mAP and mP@1, 5, 10 per level,
in percent, with the restriction spelled out). The dataset side (the revisited queries the subset lacks,
the restricted ground truth) is :mod:`retrieval.datasets.revisited_subset`."""
from __future__ import annotations

from typing import Dict, Hashable, List

from retrieval.evaluation import metrics
from retrieval.datasets.revisited_subset import RESTRICTED_NOTE, revisited_view, with_revisited_queries
from retrieval.datasets.revisitop import RevisitedGnd, read_gnd

__all__ = ["revisited_scores", "with_revisited_queries", "revisited_view", "RESTRICTED_NOTE"]


def _gnd(gnd) -> RevisitedGnd:
    return gnd if isinstance(gnd, RevisitedGnd) else read_gnd(gnd)


def revisited_scores(dataset: RetrievalDataset, gnd, predictions, levels=("medium", "hard"),
                     precision_at=(1, 5, 10)) -> Dict[str, object]:
    """mAP and mP@k (percent, as papers print them) of ``predictions`` (``{query id: [db ids]}``,
    full rankings) under each revisited level, with the restriction spelled out beside them."""
    g = _gnd(gnd)
    out: Dict[str, object] = {}
    for level in levels:
        view = revisited_view(dataset, g, level)
        aps: Dict[Hashable, float] = {}
        pks: Dict[int, List[float]] = {k: [] for k in precision_at}
        for q, t in view.ground_truth.items():
            ranked = list(predictions.get(q, []))
            ap = metrics.oxford_ap(ranked, t.positives, t.junk)
            if ap == ap:  # not NaN: the level leaves the query positives
                aps[q] = ap
                for k in precision_at:
                    pks[k].append(metrics.oxford_precision_at_k(ranked, t.positives, t.junk, k))
        out[f"{level}_map"] = 100.0 * sum(aps.values()) / len(aps) if aps else float("nan")
        for k in precision_at:
            out[f"{level}_mp@{k}"] = 100.0 * sum(pks[k]) / len(pks[k]) if pks[k] else float("nan")
        out[f"{level}_queries"] = len(aps)
        out["images_present"] = view.metadata["gnd_images_present"]
    out["note"] = f"{RESTRICTED_NOTE} ({out.get('images_present')} of {len(g.imlist)} images)"
    return out
