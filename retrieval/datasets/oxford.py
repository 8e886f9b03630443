"""Oxford5k / Paris6k (standard ground truth) and revisited-protocol readers.

Layout (``root`` = the dataset folder)::

    images/            every database image (searched recursively, so Paris' per-landmark
                       sub-folders work); image id = file stem, which must be unique
    gt/NAME_query.txt  one line: ``<prefix><image stem> x1 y1 x2 y2`` in ORIGINAL pixels; the prefix
                       ``oxc1_`` (Oxford) is stripped, Paris lines carry the bare stem
    gt/NAME_good.txt, NAME_ok.txt, NAME_junk.txt   image stems, one a line

Database = every image in ``images/`` (sorted by stem); query ids = NAME (``all_souls_1``), query paths
= the query image, query labels = the landmark (NAME without its trailing ``_<n>``), query boxes =
the gt box in pixels of the stored file. Positives = good ∪ ok, junk = junk. In the official files the
query image is itself listed as good (41 queries) or ok (14), and the protocol keeps it in the
database: with the query cropped to its box, finding its own photo is a correct answer.

Box scale. The gt boxes are in pixels of the original images, whose longest side is 1024. With
``scale="auto"`` the factor is derived per query image as ``stored longest side / original_longest``
(``original_longest=1024``), which is 1.0 on the full-size sets and 0.5 (to within a pixel) on the
half-size ``oxford5k_subset``; a float ``scale`` uses that factor for every query (``scale=0.5`` for
the subset, ``1.0`` to keep the original coordinates).

Revisited protocol (:func:`read_revisited`; the layout is ours, text files, no pickles)::

    gt/NAME_query.txt  as above
    gt/NAME_easy.txt, NAME_hard.txt, NAME_junk.txt   image stems, one a line

QueryTruth.easy / .hard / .junk hold the lists; ``positives`` = easy ∪ hard and ``junk`` = junk, which
is the Medium protocol. Easy scores easy as positive with hard ∪ junk ignored; Hard scores hard with
easy ∪ junk ignored (see :func:`revisited_truth`).
"""
from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple, Union

import numpy as np

from retrieval.core.imageio import ImageLoadError, image_size
from retrieval.datasets.dataset import QueryTruth, RetrievalDataset
from retrieval.datasets.files import (IMAGE_EXTENSIONS, DatasetError, apply_on_error, check_images, list_images, read_text,
                    require_dir)

PathLike = Union[str, os.PathLike]
Box = Tuple[float, float, float, float]

__all__ = ["read_oxford", "read_revisited", "read_gt_queries", "crop_query", "revisited_truth",
           "ORIGINAL_LONGEST_SIDE"]

ORIGINAL_LONGEST_SIDE = 1024
_QUERY_PREFIXES = ("oxc1_",)
_QUERY_NUMBER = re.compile(r"_\d+$")


def _read_list(path: Path) -> Set[str]:
    """Image stems listed one a line (blank lines skipped; duplicates, which the official files
    contain, collapse)."""
    text = read_text(path, "ground-truth list")
    names = (line.strip() for line in text.splitlines())
    return {Path(n).stem if Path(n).suffix.lower() in IMAGE_EXTENSIONS else n for n in names if n}


def _parse_query_file(path: Path) -> Tuple[str, Box]:
    lines = [line.split() for line in read_text(path, "query file").splitlines() if line.strip()]
    if len(lines) != 1 or len(lines[0]) != 5:
        raise DatasetError(f"{path}: expected one line '<image> x1 y1 x2 y2', got {len(lines)} line(s)")
    name, *coords = lines[0]
    for prefix in _QUERY_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
    try:
        x1, y1, x2, y2 = (float(c) for c in coords)
    except ValueError:
        raise DatasetError(f"{path}: box coordinates are not numbers: {coords}") from None
    if not (x2 > x1 and y2 > y1):
        raise DatasetError(f"{path}: empty box {coords}")
    return name, (x1, y1, x2, y2)


def read_gt_queries(gt_dir: PathLike) -> Dict[str, Tuple[str, Box]]:
    """``{query name: (image stem, box in original pixels)}`` from every ``*_query.txt``, in natural
    order of the query names."""
    gt_dir = require_dir(gt_dir, "ground-truth folder")
    files = sorted(gt_dir.glob("*_query.txt"))
    if not files:
        raise DatasetError(f"{gt_dir}: no *_query.txt files")
    from retrieval.datasets.files import natural_key

    out = {}
    for f in sorted(files, key=lambda p: natural_key(p.name)):
        out[f.name[: -len("_query.txt")]] = _parse_query_file(f)
    return out


def _scale_for(path: Path, scale: Union[str, float], original_longest: int) -> float:
    if isinstance(scale, str):
        if scale != "auto":
            raise ValueError(f"scale must be 'auto' or a number, not {scale!r}")
        h, w = image_size(path)
        return max(h, w) / float(original_longest)
    if not (math.isfinite(float(scale)) and float(scale) > 0):
        raise ValueError(f"scale must be 'auto' or a positive number, not {scale!r}")
    return float(scale)


def _scaled_box(box: Box, factor: float, hw: Tuple[int, int]) -> Optional[Box]:
    """``box`` scaled by ``factor`` and clipped to the image; None when it does not overlap the image
    at all (clipping would leave an empty box, which a crop used to turn into one pixel)."""
    h, w = hw
    x1, y1, x2, y2 = (c * factor for c in box)
    if x1 >= w or y1 >= h or x2 <= 0 or y2 <= 0:
        return None
    return (min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h))


def crop_query(image: np.ndarray, box: Optional[Sequence[float]]) -> np.ndarray:
    """Crop ``image`` (H, W, ...) to ``box`` = (x1, y1, x2, y2) in its pixels: the box is widened to
    whole pixels (floor of the start, ceil of the end), clipped to the image, and kept at least one
    pixel wide and tall, so the crop is never empty. A box that does not overlap the image at all is
    refused (ValueError) rather than cropped to a pixel of the border. ``box=None`` returns the whole
    image."""
    if box is None:
        return image
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"cannot crop an empty image of shape {image.shape}")
    x1, y1, x2, y2 = (float(c) for c in box)
    if not all(math.isfinite(c) for c in (x1, y1, x2, y2)):
        raise ValueError(f"box {box} has non-finite coordinates")
    if min(x1, x2) >= w or min(y1, y2) >= h or max(x1, x2) <= 0 or max(y1, y2) <= 0:
        raise ValueError(f"box {tuple(box)} lies outside the image ({w} x {h} pixels)")
    c0 = int(min(max(math.floor(min(x1, x2)), 0), w - 1))
    r0 = int(min(max(math.floor(min(y1, y2)), 0), h - 1))
    c1 = int(min(max(math.ceil(max(x1, x2)), c0 + 1), w))
    r1 = int(min(max(math.ceil(max(y1, y2)), r0 + 1), h))
    return image[r0:r1, c0:c1]


def _database(root: Path, images_dir: str) -> Tuple[List[str], List[Path], Dict[str, Path]]:
    folder = root / images_dir
    paths = list_images(folder)
    paths.sort(key=lambda p: p.stem)
    by_stem: Dict[str, Path] = {}
    for p in paths:
        if p.stem in by_stem:
            raise DatasetError(f"{folder}: two images share the id {p.stem!r}: {by_stem[p.stem]} and {p}")
        by_stem[p.stem] = p
    return [p.stem for p in paths], paths, by_stem


def _build(root: PathLike, scale, images_dir: str, gt_dir: str, name: Optional[str],
           original_longest: int, check: bool, on_error: str, n_jobs: int, truth_for) -> RetrievalDataset:
    root = require_dir(root, "dataset folder")
    db_ids, db_paths, by_stem = _database(root, images_dir)
    gt_path = root / gt_dir
    queries = read_gt_queries(gt_path)
    bad: List[Tuple[str, str]] = []
    if check:
        bad = apply_on_error(check_images(db_paths, n_jobs=n_jobs), on_error, root / images_dir)
        bad_set = {p for p, _ in bad}
        keep = [i for i, p in enumerate(db_paths) if str(p) not in bad_set]
        db_ids = [db_ids[i] for i in keep]
        db_paths = [db_paths[i] for i in keep]
    bad_set = {p for p, _ in bad}

    query_ids, query_paths, query_labels, boxes, scales = [], [], [], [], []
    truth: Dict[str, QueryTruth] = {}
    referenced: Set[str] = set()
    for qname, (stem, box) in queries.items():
        path = by_stem.get(stem)
        if path is None:
            problem = (str(gt_path / f"{qname}_query.txt"), f"query image {stem!r} not in {root / images_dir}")
            apply_on_error([problem], on_error, root)
            bad.append(problem)
            continue
        if str(path) in bad_set:
            continue  # unreadable query image: already reported in bad_files
        try:
            hw = image_size(path)
            factor = _scale_for(path, scale, original_longest)
        except ImageLoadError as exc:
            apply_on_error([(exc.path, exc.reason)], on_error, root)
            bad.append((exc.path, exc.reason))
            continue
        scaled = _scaled_box(box, factor, hw)
        if scaled is None:
            problem = (str(gt_path / f"{qname}_query.txt"),
                       f"query box {box} (x{factor:.3g} = {tuple(round(c * factor, 1) for c in box)}) lies "
                       f"outside the image {path} ({hw[1]} x {hw[0]} pixels)")
            if on_error == "raise":
                raise DatasetError(f"{problem[0]}: {problem[1]}")
            bad.append(problem)
            continue
        query_ids.append(qname)
        query_paths.append(path)
        query_labels.append(_QUERY_NUMBER.sub("", qname))
        boxes.append(scaled)
        scales.append(factor)
        truth[qname] = truth_for(gt_path, qname)
        t = truth[qname]
        referenced |= t.positives | t.junk | (t.easy or set()) | (t.hard or set())
    if not query_ids:
        raise DatasetError(f"{gt_path}: no usable queries")
    absent = sorted(referenced - set(by_stem))
    if absent:
        warnings.warn(f"{gt_path}: {len(absent)} image(s) named in the ground truth are not in "
                      f"{root / images_dir} (e.g. {absent[:3]}); they count as missed positives")
    return RetrievalDataset(
        name=name or root.name, root=root, db_ids=db_ids, db_paths=db_paths,
        query_ids=query_ids, query_paths=query_paths, ground_truth=truth, query_labels=query_labels,
        query_boxes=boxes, bad_files=bad, query_metadata={"box_scale": scales},
        metadata={"scale": scale, "original_longest_side": original_longest,
                  "gt_images_missing": len(absent)})


def _query_lists(gt_path: Path, qname: str, kinds: Sequence[str], what: str) -> List[Set[str]]:
    """The lists ``gt/<qname>_<kind>.txt`` of one query, one per kind, in the order of ``kinds``."""
    lists = []
    for kind in kinds:
        f = gt_path / f"{qname}_{kind}.txt"
        if not f.is_file():
            raise DatasetError(f"{f}: missing {what} for query {qname!r}")
        lists.append(_read_list(f))
    return lists


def _standard_truth(gt_path: Path, qname: str) -> QueryTruth:
    good, ok, junk = _query_lists(gt_path, qname, ("good", "ok", "junk"), "ground-truth list")
    return QueryTruth(positives=good | ok, junk=junk - good - ok)


def _revisited_lists(gt_path: Path, qname: str) -> QueryTruth:
    easy, hard, junk = _query_lists(gt_path, qname, ("easy", "hard", "junk"), "revisited ground-truth list")
    return revisited_truth(easy, hard, junk, "medium")


def revisited_truth(easy: Set[str], hard: Set[str], junk: Set[str], protocol: str = "medium") -> QueryTruth:
    """QueryTruth for one revisited protocol (Radenović et al. 2018):

    * easy:   positives = easy,          junk = junk ∪ hard
    * medium: positives = easy ∪ hard,   junk = junk
    * hard:   positives = hard,          junk = junk ∪ easy

    ``easy``/``hard`` are kept on the result so any protocol can be derived again."""
    easy, hard, junk = set(easy), set(hard), set(junk)
    protocol = protocol.lower()
    if protocol == "easy":
        pos, ign = easy, junk | hard
    elif protocol == "medium":
        pos, ign = easy | hard, junk
    elif protocol == "hard":
        pos, ign = hard, junk | easy
    else:
        raise ValueError(f"revisited protocol must be easy, medium or hard, not {protocol!r}")
    return QueryTruth(positives=pos, junk=ign - pos, easy=easy, hard=hard)


def read_oxford(root: PathLike, scale: Union[str, float] = "auto", images_dir: str = "images",
                gt_dir: str = "gt", name: Optional[str] = None,
                original_longest: int = ORIGINAL_LONGEST_SIDE, check: bool = False,
                on_error: str = "raise", n_jobs: int = 1) -> RetrievalDataset:
    """Read Oxford5k / Paris6k (or a subset such as ``oxford5k_subset``) with the standard ground
    truth (see the module docstring for the layout and the box ``scale`` rule).

    ``check=True`` decodes every database image first (``n_jobs`` in parallel); unreadable files then
    raise :class:`DatasetError` (``on_error='raise'``) or are left out of the database and listed in
    ``bad_files`` (``on_error='collect'``; the ground truth is unchanged, so a dropped positive counts
    as missed). A query whose image is absent is handled the same way."""
    return _build(root, scale, images_dir, gt_dir, name, original_longest, check, on_error, n_jobs,
                  _standard_truth)


def read_revisited(root: PathLike, scale: Union[str, float] = "auto", images_dir: str = "images",
                   gt_dir: str = "gt", name: Optional[str] = None,
                   original_longest: int = ORIGINAL_LONGEST_SIDE, check: bool = False,
                   on_error: str = "raise", n_jobs: int = 1) -> RetrievalDataset:
    """Read a revisited-protocol dataset (gt/NAME_query.txt + NAME_easy/hard/junk.txt, see the module
    docstring). Ground truth is the Medium protocol with ``easy``/``hard`` kept on every QueryTruth;
    :func:`revisited_truth` derives Easy or Hard."""
    ds = _build(root, scale, images_dir, gt_dir, name, original_longest, check, on_error, n_jobs,
                _revisited_lists)
    ds.metadata["protocol"] = "revisited-medium"
    return ds
