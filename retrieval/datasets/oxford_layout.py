"""Where an Oxford5k / Paris6k folder keeps its images and ground-truth lists: the toolkit's own
layout (``images/`` + ``gt/``) or the official tarballs unpacked as distributed.

Official layouts recognised (``root`` = the dataset folder)::

    Oxford5k:  oxbuild_images/*.jpg  (oxbuild_images.tgz)      gt_files_170407/*.txt  (gt_files_170407.tgz)
    Paris6k:   paris/<landmark>/*.jpg (paris_1.tgz, paris_2.tgz) gt_files_120310/*.txt  (paris_120310.tgz)

More loosely: the ground-truth folder is ``gt/``, a folder whose name starts with ``gt`` or any
folder holding ``*_query.txt`` files (or ``root`` itself when the lists lie there); the image folder
is ``images/``, ``jpg/``, ``oxbuild_images/``, ``paris/`` or the one other folder holding images.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

from retrieval.datasets.files import IMAGE_EXTENSIONS, DatasetError, require_dir

__all__ = ["find_layout", "IMAGE_FOLDERS"]

IMAGE_FOLDERS = ("images", "jpg", "oxbuild_images", "paris")


def _has_queries(folder: Path) -> bool:
    return any(folder.glob("*_query.txt"))


def _has_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.rglob("*"))


def find_layout(root) -> Tuple[str, str]:
    """``(images folder, ground-truth folder)`` relative to ``root`` (module docstring);
    :class:`DatasetError` naming ``root`` when either cannot be told."""
    root = require_dir(root, "dataset folder")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    gt_candidates: List[Path] = [p for p in subdirs if _has_queries(p)]
    if (root / "gt").is_dir():
        gt = "gt"
    elif gt_candidates:
        named = [p for p in gt_candidates if p.name.lower().startswith("gt")]
        gt = (named or gt_candidates)[0].name
    elif _has_queries(root):
        gt = "."
    else:
        raise DatasetError(f"{root}: no ground-truth lists (*_query.txt) in gt/, gt_files_*/ or the folder "
                           "itself")
    for name in IMAGE_FOLDERS:
        if (root / name).is_dir():
            return name, gt
    others = [p for p in subdirs if p.name != gt and _has_images(p)]
    if len(others) != 1:
        raise DatasetError(f"{root}: cannot tell the image folder (expected one of {', '.join(IMAGE_FOLDERS)}"
                           f"{'; found ' + ', '.join(p.name for p in others) if others else ''})")
    return others[0].name, gt
