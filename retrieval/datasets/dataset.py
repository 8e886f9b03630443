"""The dataset object every reader returns and every benchmark consumes.

A retrieval dataset is a database (ids, image paths, optional labels), a set of queries (ids, paths,
optional boxes to crop) and ground truth per query: the relevant database ids, ids to ignore (junk),
and optionally the GLDv2 ``Usage`` (Public / Private / Ignored). Training images, when the dataset has
them, ride along in the same object.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple


@dataclass
class QueryTruth:
    """Ground truth for one query. ``positives`` count as relevant, ``junk`` are removed from the
    ranking before scoring (Oxford protocol), ``usage`` is GLDv2's Public / Private / Ignored."""

    positives: Set[str] = field(default_factory=set)
    junk: Set[str] = field(default_factory=set)
    usage: Optional[str] = None
    # revisited Oxford/Paris (Easy / Medium / Hard) lists, when the dataset has them
    easy: Optional[Set[str]] = None
    hard: Optional[Set[str]] = None


@dataclass
class RetrievalDataset:
    """A database, its queries and their ground truth, as every reader returns them.

    Database (what is searched; lists aligned by position):

    * ``db_ids``: unique image ids (text), e.g. ``obj1__0`` (labelled folder: path under ``images/``
      without extension), ``cat/001`` (class tree), ``all_souls_000013`` (Oxford: file stem), the
      GLDv2 hex id. Rankings and feature files name images by these ids.
    * ``db_paths``: the image files.
    * ``db_labels``: the class / object / landmark of each image, or None when the dataset has none
      (Oxford has ground-truth lists instead).
    * ``db_metadata``: extra per-image columns, ``{column: [value per database image]}`` (COIL's
      ``azimuth_deg``, a multi-view tree's ``class`` / ``instance`` / ``view``).

    Queries (aligned by position):

    * ``query_ids``: unique ids; a query may also be a database image (then it is its own junk, see
      :func:`retrieval.datasets.every_nth_query`). ``query_paths``: their files.
    * ``query_labels``: like ``db_labels`` (Oxford: the landmark, e.g. ``all_souls``), or None.
    * ``query_boxes``: per query ``(x1, y1, x2, y2)`` in pixels of the stored image file, the region
      to crop before describing it (Oxford's query boxes), or None for the whole image; the list itself
      is None when no query has a box.
    * ``query_metadata``: like ``db_metadata``.
    * ``ground_truth``: ``{query id: QueryTruth}``: relevant database ids (``positives``), ids to
      ignore (``junk``), GLDv2 ``usage``, revisited ``easy`` / ``hard`` lists. :meth:`solution` gives
      the ``{query id: relevant ids}`` the metrics take.

    Other fields: ``name`` (for tables and messages), ``root`` (the dataset folder), ``train_ids`` /
    ``train_paths`` / ``train_labels`` (training images when the dataset has a training part, else
    None), ``bad_files`` (``(path, reason)`` of images skipped by a reader run with
    ``on_error="collect"``) and ``metadata`` (dataset-level facts: box scale, query protocol, split).
    """

    name: str
    root: Path
    db_ids: List[str]
    db_paths: List[Path]
    query_ids: List[str]
    query_paths: List[Path]
    ground_truth: Dict[str, QueryTruth]
    db_labels: Optional[List[str]] = None
    query_labels: Optional[List[str]] = None
    # (x1, y1, x2, y2) in pixels of the image file as stored, or None for the whole image
    query_boxes: Optional[List[Optional[Tuple[float, float, float, float]]]] = None
    train_ids: Optional[List[str]] = None
    train_paths: Optional[List[Path]] = None
    train_labels: Optional[List[str]] = None
    # files skipped because they could not be read (when a reader collects instead of raising)
    bad_files: List[Tuple[str, str]] = field(default_factory=list)
    # extra per-image columns (e.g. COIL's azimuth_deg), each a list aligned with db_ids / query_ids
    db_metadata: Dict[str, List[Any]] = field(default_factory=dict)
    query_metadata: Dict[str, List[Any]] = field(default_factory=dict)
    # dataset-level facts a reader wants to keep (scale used for boxes, protocol, source split ...)
    metadata: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.db_ids) != len(self.db_paths):
            raise ValueError(f"dataset {self.name!r}: {len(self.db_ids)} database ids but "
                             f"{len(self.db_paths)} paths")
        if len(self.query_ids) != len(self.query_paths):
            raise ValueError(f"dataset {self.name!r}: {len(self.query_ids)} query ids but "
                             f"{len(self.query_paths)} paths")
        for label, values, n in (("db_labels", self.db_labels, len(self.db_ids)),
                                 ("query_labels", self.query_labels, len(self.query_ids)),
                                 ("query_boxes", self.query_boxes, len(self.query_ids))):
            if values is not None and len(values) != n:
                raise ValueError(f"dataset {self.name!r}: {label} has {len(values)} entries for {n} ids")
        for label, columns, n in (("db_metadata", self.db_metadata, len(self.db_ids)),
                                  ("query_metadata", self.query_metadata, len(self.query_ids))):
            for column, values in columns.items():
                if len(values) != n:
                    raise ValueError(f"dataset {self.name!r}: {label}[{column!r}] has {len(values)} "
                                     f"entries for {n} ids")

    def solution(self, usage: Optional[Sequence[str]] = None) -> Dict[str, Set[str]]:
        """``{query_id: relevant db ids}`` as the metrics take it; ``usage`` keeps only queries whose
        Usage is in that list (e.g. ``["Public"]``). Queries marked Ignored are always left out."""
        out = {}
        for qid in self.query_ids:
            truth = self.ground_truth.get(qid)
            if truth is None or truth.usage == "Ignored":
                continue
            if usage is not None and truth.usage not in usage:
                continue
            out[qid] = set(truth.positives)
        return out

    def summary(self) -> str:
        n_train = len(self.train_ids) if self.train_ids else 0
        distractors = (f" (of which {self.metadata['distractors']} distractors)"
                       if self.metadata.get("distractors") else "")
        return (f"{self.name}: {len(self.db_ids)} database images{distractors}, {len(self.query_ids)} queries, "
                f"{n_train} training images, {len(self.bad_files)} unreadable files skipped")
