"""The dataset kinds the readers know, in a module that imports nothing, so that the command line can
offer them (``--dataset KIND``) without loading numpy. The readers (:mod:`retrieval.datasets.open`)
and every protocol take their kinds from here.
"""
from __future__ import annotations

__all__ = ["DATASET_KINDS", "LANDMARK_KINDS", "DEFAULT_PROTOCOL"]

#: the kinds :func:`retrieval.datasets.open.open_dataset` reads
DATASET_KINDS = ("folder", "gldv2", "oxford", "paris", "revisited", "holidays", "ukbench", "multiview", "os-core")

#: kinds read as landmark photographs with ground-truth lists (the others hold objects): the landmark
#: half of the ladder, and the landmark settings of the re-rankers (retrieval.steps.rerank.LOCAL_FEATURES)
LANDMARK_KINDS = ("oxford", "paris", "revisited", "gldv2", "holidays", "ukbench")

#: the evaluation protocol(s) a kind comes with (comma-separated: reported side by side)
DEFAULT_PROTOCOL = {"oxford": "oxford,landmark", "paris": "oxford,landmark", "revisited": "revisited,landmark",
                    "gldv2": "gldv2", "folder": "general", "multiview": "general", "os-core": "general",
                    "holidays": "holidays,general", "ukbench": "ukbench"}
