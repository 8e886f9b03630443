"""Benchmarks whose ground truth is the file numbering: INRIA Holidays and UKBench.

INRIA Holidays (Jégou, Douze, Schmid, ECCV 2008)::

    root/jpg/NNNNNN.jpg      six digits; an image's group is NNNNNN // 100

The first image of each group (in number order) is its query, the rest of the group its positives.
Every image is in the database; a query's own image is its junk, so it is left out of its ranking
(the benchmark's evaluation drops it). Any other file in ``jpg/`` is refused, naming it.

Some Holidays photos are stored rotated (a known pitfall of the set). ``rotations=PATH`` names a list
file, one ``NNNNNN.jpg DEGREES`` a line (DEGREES = 90, 180 or 270, clockwise, to make it upright;
``#`` comments): those images are read upright, from lossless PNG copies written once to
``<list file's folder>/holidays_upright/``. Off by default; ``metadata["upright"]`` says which.

UKBench (Nistér, Stewénius, CVPR 2006)::

    root/full/ukbenchNNNNN.jpg   (or jpg/), five digits; groups of 4 consecutive numbers

Every image is a query and in the database; its group's four images, itself included, are its
positives (the N-S score counts the query itself among the top 4).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from retrieval.datasets.dataset import QueryTruth, RetrievalDataset
from retrieval.datasets.files import DatasetError, read_text, require_dir

PathLike = Union[str, os.PathLike]

__all__ = ["read_holidays", "read_ukbench", "read_rotations", "HOLIDAYS_NAME", "UKBENCH_NAME"]

HOLIDAYS_NAME = re.compile(r"^(\d{6})\.jpg$", re.IGNORECASE)
UKBENCH_NAME = re.compile(r"^ukbench(\d{5})\.jpg$", re.IGNORECASE)
_ANGLES = (90, 180, 270)


def _numbered(folder: Path, pattern: re.Pattern, what: str) -> List[Tuple[int, Path]]:
    """``(number, path)`` of every file in ``folder`` (sorted by number); anything else in the folder
    (a stray file, a sub-folder, a duplicate number) is a :class:`DatasetError` naming it."""
    out: Dict[int, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") and entry.is_file():
            continue  # .DS_Store and friends
        match = pattern.match(entry.name)
        if not match or not entry.is_file():
            raise DatasetError(f"{entry}: not a {what} image (expected names like "
                               f"{pattern.pattern.strip('^$').replace(chr(92), '')}); move it out of {folder}")
        number = int(match.group(1))
        if number in out:
            raise DatasetError(f"{entry}: number {number} also names {out[number]}")
        out[number] = entry
    if not out:
        raise DatasetError(f"{folder}: no {what} images")
    return sorted(out.items())


def read_rotations(path: PathLike) -> Dict[str, int]:
    """``{image stem: clockwise degrees}`` from a rotation list (module docstring)."""
    path = Path(path)
    out = {}
    for n, line in enumerate(read_text(path, "rotation list").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or int(parts[1]) % 360 not in _ANGLES:
            raise DatasetError(f"{path}:{n}: expected '<image> <90|180|270>', got {line!r}")
        out[Path(parts[0]).stem] = int(parts[1]) % 360
    return out


def _upright_copies(paths: Dict[str, Path], rotations: Dict[str, int], folder: Path) -> Dict[str, Path]:
    """PNG copies of the rotated images, turned upright (written once, atomically)."""
    import numpy as np

    from retrieval.core.fileio import atomic_path
    from retrieval.core.imageio import load_image

    unknown = sorted(set(rotations) - set(paths))
    if unknown:
        raise DatasetError(f"{folder.parent}: the rotation list names images that are not in the dataset: "
                           f"{unknown[:3]}")
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for stem, degrees in sorted(rotations.items()):
        target = folder / f"{stem}_r{degrees}.png"
        if not target.is_file():
            from PIL import Image

            image = np.rot90(load_image(paths[stem]), k=-degrees // 90)  # clockwise
            with atomic_path(target) as tmp:
                Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG")
        out[stem] = target
    return out


def read_holidays(root: PathLike, images_dir: str = "jpg", rotations: Optional[PathLike] = None,
                  name: Optional[str] = None) -> RetrievalDataset:
    """Read INRIA Holidays (module docstring)."""
    root = require_dir(root, "dataset folder")
    folder = require_dir(root / images_dir, "image folder")
    files = _numbered(folder, HOLIDAYS_NAME, "Holidays")
    stems = [p.stem for _, p in files]
    paths = {p.stem: p for _, p in files}
    upright = "as stored"
    if rotations:
        turns = read_rotations(rotations)
        paths.update(_upright_copies(paths, turns, Path(rotations).parent / "holidays_upright"))
        upright = f"{len(turns)} image(s) read upright from {rotations}"
    groups: Dict[int, List[str]] = {}
    for number, p in files:
        groups.setdefault(number // 100, []).append(p.stem)
    query_ids, truth = [], {}
    for group, members in sorted(groups.items()):
        query, rest = members[0], members[1:]
        query_ids.append(query)
        truth[query] = QueryTruth(positives=set(rest), junk={query})
    group_of = {s: str(number // 100) for number, s in zip((n for n, _ in files), stems)}
    return RetrievalDataset(
        name=name or root.name, root=root, db_ids=stems, db_paths=[paths[s] for s in stems],
        db_labels=[group_of[s] for s in stems], query_ids=query_ids,
        query_paths=[paths[q] for q in query_ids], query_labels=[group_of[q] for q in query_ids],
        ground_truth=truth,
        metadata={"upright": upright, "groups": len(groups),
                  "queries_without_positives": sum(1 for t in truth.values() if not t.positives)})


def read_ukbench(root: PathLike, images_dir: Optional[str] = None, name: Optional[str] = None) -> RetrievalDataset:
    """Read UKBench (module docstring); ``images_dir`` defaults to ``full/`` (as distributed), else ``jpg/``."""
    root = require_dir(root, "dataset folder")
    if images_dir is None:
        images_dir = next((d for d in ("full", "jpg") if (root / d).is_dir()), "full")
    folder = require_dir(root / images_dir, "image folder")
    files = _numbered(folder, UKBENCH_NAME, "UKBench")
    stems = [p.stem for _, p in files]
    groups: Dict[int, List[str]] = {}
    for number, p in files:
        groups.setdefault(number // 4, []).append(p.stem)
    short = {g: m for g, m in groups.items() if len(m) != 4}
    if short:
        g, members = next(iter(sorted(short.items())))
        raise DatasetError(f"{folder}: group {g} (ukbench{4 * g:05d}-ukbench{4 * g + 3:05d}) has "
                           f"{len(members)} image(s), UKBench groups have 4")
    labels = [str(number // 4) for number, _ in files]
    truth = {s: QueryTruth(positives=set(groups[number // 4])) for number, s in zip((n for n, _ in files), stems)}
    return RetrievalDataset(
        name=name or root.name, root=root, db_ids=stems, db_paths=[p for _, p in files], db_labels=labels,
        query_ids=list(stems), query_paths=[p for _, p in files], query_labels=list(labels),
        ground_truth=truth, metadata={"groups": len(groups)})
