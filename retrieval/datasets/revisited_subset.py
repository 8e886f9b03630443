"""Score a subset of Oxford / Paris (``oxford5k_subset``) under the revisited protocols, with the
official ``gnd_roxford5k.pkl`` restricted to the images the subset has.

The subset, read with :func:`retrieval.datasets.read_oxford`, has the 55 original queries; the
revisited benchmark has 70: the same 55 (same image, same box) and 15 more. :func:`with_revisited_queries`
adds the 15 whose image the subset holds (ids = their image stems, boxes scaled as the subset's own,
no standard ground truth, so the standard protocols score exactly what they scored before), and
:func:`revisited_view` gives a dataset with the same database whose ground truth is one revisited
level (easy / medium / hard), every list cut to the images present, and every database image that is
not in ``imlist`` ignored (the revisited database leaves out its 70 query images, which the subset
holds; kept, each query's own photo would rank first as a false positive). Its ``positives`` / ``junk`` are
the level's, so ``evaluate(view, predictions, "oxford")`` is the level's mAP as the benchmark
computes it (:func:`retrieval.evaluation.metrics.oxford_ap`) and ``protocol="revisited"`` gives every level.

Figures from this are NOT the benchmark's: the database is the subset (no distractors, no absent
positives), so they run higher than full-set figures; :func:`retrieval.evaluation.revisited_subset.revisited_scores`
says so in its result. ``--dataset oxford --gnd PKL`` (``DatasetConfig.gnd``) opens a subset this way
(:func:`revisited_subset`: all revisited queries, Medium ground truth with easy / hard kept).
"""
from __future__ import annotations

import os
from dataclasses import replace
from typing import Dict, Hashable, List, Optional, Union

from retrieval.core.imageio import image_size
from retrieval.datasets.dataset import RetrievalDataset
from retrieval.datasets.files import DatasetError
from retrieval.datasets.oxford import ORIGINAL_LONGEST_SIDE, _scale_for, _scaled_box, revisited_truth
from retrieval.datasets.revisitop import RevisitedGnd, read_gnd

__all__ = ["with_revisited_queries", "revisited_view", "revisited_subset", "RESTRICTED_NOTE"]

PathLike = Union[str, os.PathLike]
RESTRICTED_NOTE = "official revisited ground truth restricted to the images present; no distractors"


def _gnd(gnd) -> RevisitedGnd:
    return gnd if isinstance(gnd, RevisitedGnd) else read_gnd(gnd)


def _factor(dataset: RetrievalDataset, pos: int) -> Optional[float]:
    scales = dataset.query_metadata.get("box_scale")
    return scales[pos] if scales else None


def _matches(dataset: RetrievalDataset, g: RevisitedGnd) -> Dict[int, str]:
    """``{gnd query index: dataset query id}``: same image stem and, when both have boxes, the same
    box (to within a pixel in original coordinates)."""
    by_stem: Dict[str, List[int]] = {}
    for pos, path in enumerate(dataset.query_paths):
        by_stem.setdefault(os.path.splitext(os.path.basename(str(path)))[0], []).append(pos)
    out: Dict[int, str] = {}
    taken = set()
    for i, stem in enumerate(g.qimlist):
        for pos in by_stem.get(stem, []):
            if pos in taken:
                continue
            box = dataset.query_boxes[pos] if dataset.query_boxes else None
            factor = _factor(dataset, pos)
            if box is not None and g.boxes[i] is not None and factor:
                if max(abs(a / factor - b) for a, b in zip(box, g.boxes[i])) > 1.0 + 1.0 / factor:
                    continue
            out[i] = str(dataset.query_ids[pos])
            taken.add(pos)
            break
    return out


def with_revisited_queries(dataset: RetrievalDataset, gnd) -> RetrievalDataset:
    """``dataset`` with the revisited queries it lacks and whose image it holds added (module
    docstring); their ids are their image stems with ``-query`` (the image itself stays a database image
    under its own id: a feature store holding both keeps the crop and the whole image apart) and they get
    no ground truth of their own. Labels
    are the label of the dataset queries whose positives overlap theirs most."""
    g = _gnd(gnd)
    matched = _matches(dataset, g)
    db_path = dict(zip(map(str, dataset.db_ids), dataset.db_paths))
    labels = list(dataset.query_labels) if dataset.query_labels is not None else [str(q) for q in dataset.query_ids]
    pool: Dict[str, set] = {}
    for q, lab in zip(dataset.query_ids, labels):
        t = dataset.ground_truth.get(q)
        if t is not None:
            pool.setdefault(lab, set()).update(t.positives)
    ids, paths, boxes, new_labels, scales = [], [], [], [], []
    known = set(map(str, dataset.query_ids))
    for i, stem in enumerate(g.qimlist):
        if i in matched or stem not in db_path or stem in known or f"{stem}-query" in known:
            continue
        path = db_path[stem]
        box = None
        if g.boxes[i] is not None:
            factor = _scale_for(path, dataset.metadata.get("scale", "auto"),
                                dataset.metadata.get("original_longest_side", ORIGINAL_LONGEST_SIDE))
            box = _scaled_box(g.boxes[i], factor, image_size(path))
            if box is None:
                continue
        else:
            factor = None
        positives = set(g.easy[i]) | set(g.hard[i])
        label = max(pool, key=lambda lab: (len(pool[lab] & positives), lab)) if pool else stem
        ids.append(f"{stem}-query")
        paths.append(path)
        boxes.append(box)
        new_labels.append(label)
        scales.append(factor)
        known.add(f"{stem}-query")
    if not ids:
        return dataset
    n = len(dataset.query_ids)
    old_boxes = dataset.query_boxes if dataset.query_boxes is not None else [None] * n
    query_metadata = {k: list(v) + ([None] * len(ids) if k != "box_scale" else scales)
                      for k, v in dataset.query_metadata.items()}
    if "box_scale" not in query_metadata:
        query_metadata["box_scale"] = [None] * n + scales
    return replace(dataset, query_ids=list(dataset.query_ids) + ids,
                   query_paths=list(dataset.query_paths) + paths, query_labels=labels + new_labels,
                   query_boxes=list(old_boxes) + boxes, query_metadata=query_metadata,
                   metadata=dict(dataset.metadata, revisited_queries_added=len(ids)))


def revisited_view(dataset: RetrievalDataset, gnd, level: str = "medium") -> RetrievalDataset:
    """``dataset`` with the revisited ``level``'s ground truth, restricted to its database images,
    for the revisited queries it has (matched by image and box, or added by
    :func:`with_revisited_queries`); its other queries are left out."""
    g = _gnd(gnd)
    matched = _matches(dataset, g)
    present = set(map(str, dataset.db_ids))
    # images that are not in imlist (the revisited database leaves out its 70 query images; a subset
    # may hold other extras) are not in the benchmark's database: ignored, like junk
    outside = present - set(g.imlist)
    truth = {}
    counts = {"easy": 0, "hard": 0, "easy_present": 0, "hard_present": 0}
    for i, qid in matched.items():
        easy, hard, junk = set(g.easy[i]), set(g.hard[i]), set(g.junk[i])
        counts["easy"] += len(easy)
        counts["hard"] += len(hard)
        counts["easy_present"] += len(easy & present)
        counts["hard_present"] += len(hard & present)
        truth[qid] = revisited_truth(easy & present, hard & present, (junk & present) | outside, level)
    order = [q for q in dataset.query_ids if str(q) in truth]
    pos = {q: n for n, q in enumerate(dataset.query_ids)}
    take = lambda xs: None if xs is None else [xs[pos[q]] for q in order]  # noqa: E731
    return replace(dataset, name=f"{dataset.name} (revisited {level}: {RESTRICTED_NOTE})", query_ids=order,
                   query_paths=take(dataset.query_paths), query_labels=take(dataset.query_labels),
                   query_boxes=take(dataset.query_boxes), ground_truth={q: truth[str(q)] for q in order},
                   query_metadata={k: take(v) for k, v in dataset.query_metadata.items()},
                   metadata=dict(dataset.metadata, protocol=f"revisited-{level}", gnd=str(g.path),
                                 restricted=RESTRICTED_NOTE, revisited_queries=len(order),
                                 gnd_queries=len(g.qimlist), gnd_images=len(g.imlist),
                                 gnd_images_present=len(present & set(g.imlist)), ignored_not_in_imlist=len(outside),
                                 **counts))


def revisited_subset(dataset: RetrievalDataset, gnd) -> RetrievalDataset:
    """``dataset`` (an Oxford / Paris subset) as a revisited dataset: every revisited query whose image
    it holds, the Medium ground truth restricted to its images (easy / hard kept, so
    ``protocol="revisited"`` scores every level)."""
    g = _gnd(gnd)
    view = revisited_view(with_revisited_queries(dataset, g), g, "medium")
    if not view.query_ids:
        raise DatasetError(f"{g.path}: no query of {dataset.root} is a query of this revisited ground truth")
    return view
