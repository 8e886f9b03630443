"""The dataset kinds the readers know, in a module that imports nothing, so that the command line can
offer them (``--dataset KIND``) without loading numpy. The readers (:mod:`retrieval.datasets.open`)
and every protocol take their kinds from here.
"""
from __future__ import annotations

__all__ = ["DATASET_KINDS", "LANDMARK_KINDS", "DEFAULT_PROTOCOL"]

#: the kinds :func:`retrieval.datasets.open.open_dataset` reads
DATASET_KINDS = ("folder", "gldv2", "oxford", "paris", "revisited", "multiview", "os-core")

#: kinds with landmark ground truth (good / ok / junk lists, or GLDv2's landmark ids)
LANDMARK_KINDS = ("oxford", "paris", "revisited", "gldv2")

#: the evaluation protocol(s) a kind comes with (comma-separated: reported side by side)
DEFAULT_PROTOCOL = {"oxford": "oxford,landmark", "paris": "oxford,landmark", "revisited": "revisited,landmark",
                    "gldv2": "gldv2", "folder": "general", "multiview": "general", "os-core": "general"}
