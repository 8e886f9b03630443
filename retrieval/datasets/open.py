"""One way to name a dataset, from the command line (``--dataset KIND --data PATH``), from Python and
from an experiment file (a ``[dataset]`` table): :class:`DatasetConfig`, opened by :func:`open_dataset`.

Kinds (:data:`DATASET_KINDS`):

* ``folder``: ``images/`` + ``labels.csv`` (COIL), or a class-per-folder tree ``root/<class>/<image>``;
* ``gldv2``: the Kaggle CSV layout;
* ``oxford`` / ``paris``: ``images/`` + ``gt/`` with the standard good / ok / junk lists, or the
  official tarballs as unpacked (``oxbuild_images/`` or ``paris/<landmark>/`` + ``gt_files_*/``:
  :mod:`~retrieval.datasets.oxford_layout`);
* ``revisited``: the benchmark's own ``jpg/`` + ``gnd_roxford5k.pkl`` / ``gnd_rparis6k.pkl``
  (:mod:`~retrieval.datasets.revisitop`; ``gnd`` names the pickle when the folder has several), or
  ``images/`` + ``gt/`` easy / hard / junk text lists;
* ``holidays``: INRIA Holidays ``jpg/NNNNNN.jpg`` (``rotations``: a list of photos to read upright);
  ``ukbench``: ``full/ukbenchNNNNN.jpg`` (:mod:`~retrieval.datasets.numbered`);
* ``multiview``: the ``DS|DU/train|retrieval/<class>/<instance>/<instance>.<k>`` tree;
* ``os-core``: query / target folders with label files.

Labelled sets without their own queries (``folder``, ``multiview``) get them from ``queries``:
``"auto"`` (default) reads ``queries.txt`` in the dataset folder when there is one (image ids or paths
relative to the image folder, one a line) and otherwise makes every ``every``-th image of each
label's run a query (:func:`~retrieval.datasets.splits.every_nth_query`: a deterministic quarter of
each class by default); ``"every"`` forces that; any other value is the path of a query list.

Any kind takes ``distractors``: a folder of unlabelled images added to its database
(:mod:`~retrieval.datasets.distractors`; results name their count).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Union

from retrieval.core.config import Config, ConfigError
from retrieval.core.dataset_kinds import DATASET_KINDS, DEFAULT_PROTOCOL, LANDMARK_KINDS
from retrieval.datasets.dataset import RetrievalDataset
from retrieval.datasets.files import DatasetError

__all__ = ["DATASET_KINDS", "LANDMARK_KINDS", "DEFAULT_PROTOCOL", "DatasetConfig", "open_dataset"]


Kind = Literal["folder", "gldv2", "oxford", "paris", "revisited", "holidays", "ukbench", "multiview", "os-core"]


@dataclass(frozen=True)
class DatasetConfig(Config):
    """Which dataset, where, and the reader options that decide its queries.

    ``kind`` / ``path``: the reader and the dataset folder (``~`` expanded). ``scale``:
    oxford/paris/revisited query-box scale, ``"auto"`` or a number. ``queries`` / ``every`` / ``db``:
    how labelled sets without queries get them (module docstring; ``db="all"`` keeps each query's own
    image in the database as its junk, ``"rest"`` takes the queries out). ``split`` / ``part``:
    multiview DS|DU and train|retrieval. ``protocol``: gldv2, ``"kaggle"`` (the index / test split
    with its solution file) or ``"thesis"`` (``thesis_queries`` queries, default 1,000, against
    ``thesis_index`` index images, default 100,000, sampled, seeded, from train images of landmarks
    not in train_clean.csv: :func:`~retrieval.datasets.gldv2_protocol.read_gldv2_protocol`). ``on_error``: ``"raise"`` on a
    missing or unreadable image, ``"collect"`` to skip it and list it in ``bad_files`` (image folders then
    decode every image first, so one that fails to decode is skipped too, with a count). ``gnd``:
    revisited, the ground-truth pickle (default: the one ``gnd_*.pkl`` in the folder); oxford / paris,
    a revisited pickle to score that subset with, restricted to its images. ``rotations``:
    holidays, the list of photos to read upright (off by default). ``distractors``: any kind, a
    folder of unlabelled images added to the database."""

    kind: Kind = "folder"
    path: str = ""
    scale: Union[float, str] = "auto"
    queries: str = "auto"
    every: int = 4
    db: Literal["all", "rest"] = "all"
    split: str = "DS"
    part: str = "retrieval"
    protocol: Literal["kaggle", "thesis"] = "kaggle"
    thesis_queries: int = 1000
    thesis_index: int = 100_000
    on_error: Literal["raise", "collect"] = "raise"
    gnd: str = ""
    rotations: str = ""
    distractors: str = ""

    def check(self) -> None:
        if isinstance(self.scale, str) and self.scale != "auto":
            try:  # "0.5" from a --set override
                object.__setattr__(self, "scale", float(self.scale))
            except ValueError:
                pass
        if isinstance(self.scale, str) and self.scale != "auto":
            raise ConfigError(f"scale must be 'auto' or a number, not {self.scale!r}")
        if not isinstance(self.scale, str) and not (math.isfinite(self.scale) and self.scale > 0):
            raise ConfigError(f"scale must be a positive number, not {self.scale!r}")
        if self.every < 1:
            raise ConfigError(f"every must be >= 1, got {self.every}")
        if self.thesis_queries < 1 or self.thesis_index < 1:
            raise ConfigError("thesis_queries and thesis_index must be >= 1")

    @property
    def root(self) -> Path:
        return Path(self.path).expanduser()


def _with_queries(conf: DatasetConfig, base: RetrievalDataset, root: Path) -> RetrievalDataset:
    from retrieval.datasets.splits import every_nth_query, listed_queries, read_query_list

    if conf.queries == "every":
        return every_nth_query(base, n=conf.every, db=conf.db)
    if conf.queries == "auto":
        listed = root / "queries.txt"
        if not listed.is_file():
            return every_nth_query(base, n=conf.every, db=conf.db)
    else:
        listed = Path(conf.queries).expanduser()
        if not listed.is_file() and (root / conf.queries).is_file():
            listed = root / conf.queries
    return listed_queries(base, read_query_list(listed), db=conf.db, source=str(listed))


def open_dataset(conf: DatasetConfig) -> RetrievalDataset:
    """The :class:`RetrievalDataset` that ``conf`` names (queries made as the module docstring says),
    with ``conf.distractors`` added to its database."""
    dataset = _open(conf)
    if conf.distractors:
        from retrieval.datasets.distractors import add_distractors

        dataset = add_distractors(dataset, conf.distractors)
    return dataset


def _open(conf: DatasetConfig) -> RetrievalDataset:
    from retrieval.datasets.folders import read_folder, read_multiview_tree, read_os_core
    from retrieval.datasets.gldv2 import read_gldv2
    from retrieval.datasets.oxford import read_oxford, read_revisited

    if not conf.path:
        raise DatasetError(f"no dataset folder given for the {conf.kind!r} dataset (--data PATH, or "
                           f"path = ... in the experiment file's [dataset] table)")
    root = conf.root
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder")
    kind = conf.kind
    check = conf.on_error == "collect"  # skipping what cannot be read needs reading it first
    if kind == "revisited" and (conf.gnd or any(root.glob("gnd_*.pkl"))):
        from retrieval.datasets.revisitop import read_revisitop

        return read_revisitop(root, gnd=Path(conf.gnd).expanduser() if conf.gnd else None, scale=conf.scale,
                              on_error=conf.on_error)
    if kind in ("oxford", "paris", "revisited"):
        from retrieval.datasets.oxford_layout import find_layout

        images, gt = find_layout(root)
        reader = read_revisited if kind == "revisited" else read_oxford
        dataset = reader(root, scale=conf.scale, images_dir=images, gt_dir=gt, on_error=conf.on_error)
        if conf.gnd:  # a subset scored with the official revisited ground truth, restricted to its images
            from retrieval.datasets.revisited_subset import revisited_subset

            dataset = revisited_subset(dataset, Path(conf.gnd).expanduser())
        return dataset
    if kind in ("holidays", "ukbench"):
        from retrieval.datasets.numbered import read_holidays, read_ukbench

        if kind == "ukbench":
            return read_ukbench(root)
        return read_holidays(root, rotations=Path(conf.rotations).expanduser() if conf.rotations else None)
    if kind == "gldv2":
        if conf.protocol == "thesis":
            from retrieval.datasets.gldv2_protocol import read_gldv2_protocol

            return read_gldv2_protocol(root, "thesis", n_queries=conf.thesis_queries, n_index=conf.thesis_index)
        return read_gldv2(root, on_error=conf.on_error)
    if kind == "folder":
        return _with_queries(conf, read_folder(root, check=check, on_error=conf.on_error), root)
    if kind == "multiview":
        base = read_multiview_tree(root, split=conf.split, part=conf.part, check=check, on_error=conf.on_error)
        return _with_queries(conf, base, root)
    if kind == "os-core":
        return read_os_core(root, check=check, on_error=conf.on_error)
    raise DatasetError(f"unknown dataset kind {kind!r}; known: {', '.join(DATASET_KINDS)}")
