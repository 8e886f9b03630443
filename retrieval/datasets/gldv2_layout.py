"""The GLDv2 folder layout shared by its reader, its CSV tables and its generator: the solution file's
name, its usages, and where an id's image lives (``split/a/b/c/abc....jpg``). A module of its own so that
those three import it, not each other."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from retrieval.datasets.files import DatasetError, check_safe_id

__all__ = ["SOLUTION_CSV", "USAGES", "gldv2_image_path"]

PathLike = Union[str, os.PathLike]
SOLUTION_CSV = "retrieval_solution_v2.1.csv"
USAGES = ("Public", "Private", "Ignored")


def gldv2_image_path(split_dir: PathLike, image_id: str, ext: str = ".jpg") -> Path:
    """``split_dir/a/b/c/abc....jpg`` for id ``abc...``."""
    image_id = check_safe_id(str(image_id), f"GLDv2 image folder {split_dir}")
    if len(image_id) < 3:
        raise DatasetError(f"{split_dir}: GLDv2 id {image_id!r} is shorter than 3 characters (images are kept "
                           "under folders named by its first three); use longer ids")
    return Path(split_dir) / image_id[0] / image_id[1] / image_id[2] / f"{image_id}{ext}"
