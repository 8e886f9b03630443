"""Which GLDv2 evaluation an experiment runs: the Kaggle index / test split, or the thesis' protocol
sampled from the train images (linking, in a generated folder, only the images it uses). Above the reader,
the tables and the generator, which it combines."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from retrieval.datasets.dataset import RetrievalDataset
from retrieval.datasets.gldv2 import read_gldv2
from retrieval.datasets.gldv2_synth import POOL_FILE, link_images
from retrieval.datasets.gldv2_tables import thesis_protocol

__all__ = ["read_gldv2_protocol"]

PathLike = Union[str, os.PathLike]


def read_gldv2_protocol(root: PathLike, protocol: str = "kaggle", **thesis_options) -> RetrievalDataset:
    """The dataset an experiment runs on: ``"kaggle"`` = :func:`retrieval.datasets.read_gldv2` (index /
    test split), ``"thesis"`` = :func:`thesis_protocol`. In a folder written by
    :func:`retrieval.datasets.gldv2_synth.generate_gldv2` the protocol's images are linked first (only
    those: the full folder has 5 million ids)."""
    if protocol == "kaggle":
        return read_gldv2(root)
    if protocol != "thesis":
        raise ValueError(f"protocol must be 'kaggle' or 'thesis', not {protocol!r}")
    dataset = thesis_protocol(root, **thesis_options)
    if (Path(root) / POOL_FILE).is_file():
        link_images(root, "train", list(dataset.query_ids) + list(dataset.db_ids))
    return dataset
