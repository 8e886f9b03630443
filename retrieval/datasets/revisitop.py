"""Revisited Oxford / Paris in the benchmark's own layout (Radenović et al., CVPR 2018)::

    root/jpg/<stem>.jpg            every database and query image, as distributed
    root/gnd_roxford5k.pkl         (or gnd_rparis6k.pkl: the one gnd_*.pkl in root)

A ``gnd_*.pkl`` holds ``imlist`` (database image stems), ``qimlist`` (query image stems) and ``gnd``,
one dict a query: ``bbx`` (query box x1 y1 x2 y2 in original pixels) and ``easy`` / ``hard`` /
``junk`` (indices into ``imlist``). It is read with :func:`~.plainpickle.load_plain_pickle`, which
refuses any pickle that names a class or function.

The dataset: database = ``imlist`` in its order (ids = stems), queries = ``qimlist`` (ids = stems),
ground truth = the Medium protocol with ``easy`` / ``hard`` kept on every QueryTruth, so
:func:`~.oxford.revisited_truth` or ``evaluate(..., protocol="revisited")`` give Easy and Hard.

Query crop. The benchmark crops the query image with PIL, ``Image.crop(bbx)``, which rounds each
coordinate to the nearest integer; the boxes here are rounded the same way (after scaling by the
stored image's longest side / 1024 with ``scale="auto"``, 1.0 on the images as distributed), so
:func:`~.oxford.crop_query` takes exactly the benchmark's pixels. Query labels are the landmark most
of the query's positives are named after (``all_souls``, ``paris_defense``; generic Flickr stems such
as ``oxford_002985`` name none).
"""
from __future__ import annotations

import collections
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from retrieval.core.imageio import ImageLoadError, image_size
from retrieval.datasets.dataset import RetrievalDataset
from retrieval.datasets.files import DatasetError, apply_on_error, check_images, require_dir
from retrieval.datasets.oxford import ORIGINAL_LONGEST_SIDE, _scale_for, _scaled_box, revisited_truth
from retrieval.datasets.plainpickle import load_plain_pickle

PathLike = Union[str, os.PathLike]
Box = Tuple[float, float, float, float]

__all__ = ["RevisitedGnd", "read_gnd", "find_gnd", "read_revisitop", "pil_box", "landmark_of"]

_NUMBER = re.compile(r"_\d+$")
_GENERIC = {"oxford", "paris", "paris_general"}


@dataclass
class RevisitedGnd:
    """A ``gnd_*.pkl`` checked and turned into stems: per query its box and easy / hard / junk stems."""

    path: Path
    imlist: List[str]
    qimlist: List[str]
    boxes: List[Optional[Box]]
    easy: List[List[str]]
    hard: List[List[str]]
    junk: List[List[str]]


def _stems(value, path: Path, key: str) -> List[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(s, str) and s for s in value):
        raise DatasetError(f"{path}: '{key}' must be a list of image names")
    return [str(s) for s in value]


def read_gnd(path: PathLike) -> RevisitedGnd:
    """The checked ground truth of a revisited ``gnd_*.pkl``; :class:`DatasetError` naming the file
    (and the query) on anything malformed: a pickle with a class in it, a missing key, an index
    outside ``imlist``, a box that is not four numbers."""
    path = Path(path)
    raw = load_plain_pickle(path, "revisited ground-truth pickle")
    if not isinstance(raw, dict) or not {"gnd", "imlist", "qimlist"} <= set(raw):
        raise DatasetError(f"{path}: expected a dict with 'gnd', 'imlist' and 'qimlist'")
    imlist, qimlist = _stems(raw["imlist"], path, "imlist"), _stems(raw["qimlist"], path, "qimlist")
    gnd = raw["gnd"]
    if not isinstance(gnd, (list, tuple)) or len(gnd) != len(qimlist):
        raise DatasetError(f"{path}: 'gnd' must be a list with one entry per query "
                           f"({len(qimlist)} in qimlist)")
    n = len(imlist)
    boxes, lists = [], {"easy": [], "hard": [], "junk": []}
    for i, entry in enumerate(gnd):
        where = f"{path}: query {i} ({qimlist[i]})"
        if not isinstance(entry, dict):
            raise DatasetError(f"{where}: ground truth is not a dict")
        for key in lists:
            idx = entry.get(key, [])
            if not isinstance(idx, (list, tuple)) or not all(isinstance(j, int) and not isinstance(j, bool)
                                                             for j in idx):
                raise DatasetError(f"{where}: '{key}' must be a list of indices into imlist")
            outside = [j for j in idx if not 0 <= j < n]
            if outside:
                raise DatasetError(f"{where}: '{key}' index {outside[0]} points outside imlist ({n} images)")
            lists[key].append([imlist[j] for j in idx])
        box = entry.get("bbx")
        if box is None:
            boxes.append(None)
            continue
        if (not isinstance(box, (list, tuple)) or len(box) != 4
                or not all(isinstance(c, (int, float)) and math.isfinite(c) for c in box)):
            raise DatasetError(f"{where}: 'bbx' must be four numbers x1 y1 x2 y2, got {box!r}")
        if not (box[2] > box[0] and box[3] > box[1]):
            raise DatasetError(f"{where}: empty box {list(box)}")
        boxes.append(tuple(float(c) for c in box))
    return RevisitedGnd(path, imlist, qimlist, boxes, lists["easy"], lists["hard"], lists["junk"])


def find_gnd(root: Path) -> Path:
    """The one ``gnd_*.pkl`` in ``root``."""
    found = sorted(root.glob("gnd_*.pkl"))
    if len(found) != 1:
        raise DatasetError(f"{root}: expected one gnd_*.pkl (the revisited ground truth), found "
                           f"{len(found)}{': ' + ', '.join(p.name for p in found) if found else ''}")
    return found[0]


def pil_box(box: Box) -> Box:
    """``box`` rounded as PIL's ``Image.crop`` rounds it (Python's round: nearest, halves to even)."""
    return tuple(float(round(c)) for c in box)


def landmark_of(query_stem: str, positives: Sequence[str]) -> str:
    """The landmark a query shows: the name most of its positives carry (``all_souls_000013`` ->
    ``all_souls``), generic Flickr names (``oxford_002985``) left out; the query's own name when
    nothing else tells."""
    names = [_NUMBER.sub("", s) for s in [query_stem, *positives]]
    counts = collections.Counter(n for n in names if n not in _GENERIC)
    return counts.most_common(1)[0][0] if counts else _NUMBER.sub("", query_stem)


def read_revisitop(root: PathLike, gnd: Optional[PathLike] = None, images_dir: str = "jpg",
                   scale: Union[str, float] = "auto", name: Optional[str] = None, check: bool = False,
                   on_error: str = "raise", n_jobs: int = 1) -> RetrievalDataset:
    """Read revisited Oxford / Paris as distributed (module docstring). ``gnd``: the ground-truth
    pickle (default: the one ``gnd_*.pkl`` in ``root``). A database or query image missing from
    ``jpg/`` (or unreadable, with ``check=True``) raises :class:`DatasetError` naming it, or with
    ``on_error='collect'`` is left out and listed in ``bad_files`` (a missing positive then counts
    as missed, as on the full benchmark)."""
    root = require_dir(root, "dataset folder")
    gnd_path = Path(gnd) if gnd else find_gnd(root)
    g = read_gnd(gnd_path)
    folder = require_dir(root / images_dir, "image folder")
    paths = {s: folder / f"{s}.jpg" for s in dict.fromkeys(g.imlist + g.qimlist)}
    problems = [(str(p), "no such file (named in " + gnd_path.name + ")") for p in paths.values() if not p.is_file()]
    bad = apply_on_error(problems, on_error, folder)
    if check:
        present = [p for p in paths.values() if p.is_file()]
        bad += apply_on_error(check_images(present, n_jobs=n_jobs), on_error, folder)
    bad_set = {p for p, _ in bad}
    db_ids = [s for s in dict.fromkeys(g.imlist) if str(paths[s]) not in bad_set]

    query_ids, query_paths, labels, boxes, scales = [], [], [], [], []
    truth = {}
    for i, stem in enumerate(g.qimlist):
        path = paths[stem]
        if str(path) in bad_set:
            continue
        qid = stem if g.qimlist.count(stem) == 1 else f"{stem}#{i}"
        box = None
        if g.boxes[i] is not None:
            try:
                hw = image_size(path)
                factor = _scale_for(path, scale, ORIGINAL_LONGEST_SIDE)
            except ImageLoadError as exc:
                bad += apply_on_error([(exc.path, exc.reason)], on_error, folder)
                continue
            scaled = _scaled_box(g.boxes[i], factor, hw)
            if scaled is None:
                problem = (str(gnd_path), f"query {i} ({stem}): box {list(g.boxes[i])} lies outside {path} "
                                          f"({hw[1]} x {hw[0]} pixels)")
                bad += apply_on_error([problem], on_error, gnd_path)
                continue
            box = pil_box(scaled)
            scales.append(factor)
        else:
            scales.append(None)
        query_ids.append(qid)
        query_paths.append(path)
        boxes.append(box)
        labels.append(landmark_of(stem, g.easy[i] + g.hard[i]))
        truth[qid] = revisited_truth(set(g.easy[i]), set(g.hard[i]), set(g.junk[i]), "medium")
    if not query_ids:
        raise DatasetError(f"{gnd_path}: no usable queries")
    return RetrievalDataset(
        name=name or gnd_path.stem.replace("gnd_", ""), root=root, db_ids=db_ids,
        db_paths=[paths[s] for s in db_ids], query_ids=query_ids, query_paths=query_paths,
        ground_truth=truth, query_labels=labels,
        query_boxes=boxes if any(b is not None for b in boxes) else None, bad_files=bad,
        query_metadata={"box_scale": scales},
        metadata={"protocol": "revisited-medium", "gnd": str(gnd_path), "scale": scale,
                  "box_rounding": "PIL crop (nearest integer)", "images_missing": len(problems)})
