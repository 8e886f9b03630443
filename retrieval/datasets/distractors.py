"""Distractors: a folder of unlabelled images added to the database of any dataset (the ``+1M``
setting of revisited Oxford / Paris, Holidays + Flickr100k ...).

Every image under the folder (searched recursively) joins the database with its file stem as id; it
is relevant to no query, so it can only push positives down. A stem that repeats, or that is already
a database id, is refused naming both files (ids must stay unique). The dataset's ``metadata``
records ``distractors`` (the count, which :func:`retrieval.evaluation.evaluate.evaluate` puts in every result)
and ``distractors_path``.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Dict, Union

from retrieval.datasets.dataset import RetrievalDataset
from retrieval.datasets.files import DatasetError, list_images, require_dir

__all__ = ["add_distractors"]


def add_distractors(dataset: RetrievalDataset, folder: Union[str, os.PathLike]) -> RetrievalDataset:
    """``dataset`` with every image under ``folder`` added to its database (module docstring)."""
    folder = require_dir(Path(folder).expanduser(), "distractor folder")
    paths = list_images(folder)
    known: Dict[str, Path] = {str(i): Path(p) for i, p in zip(dataset.db_ids, dataset.db_paths)}
    ids = []
    for p in paths:
        if p.stem in known:
            raise DatasetError(f"{p}: distractor id {p.stem!r} is already taken by {known[p.stem]}; "
                               "distractor file names must differ from the dataset's and each other's")
        known[p.stem] = p
        ids.append(p.stem)
    n = len(ids)
    return replace(dataset, db_ids=list(dataset.db_ids) + ids, db_paths=list(dataset.db_paths) + paths,
                   db_labels=None if dataset.db_labels is None else list(dataset.db_labels) + [""] * n,
                   db_metadata={k: list(v) + [None] * n for k, v in dataset.db_metadata.items()},
                   metadata=dict(dataset.metadata, distractors=n, distractors_path=str(folder)))
