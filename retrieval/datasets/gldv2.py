"""Google Landmarks v2 (Kaggle retrieval format): reader and the project's COIL-100 split (the writer,
:func:`export_gldv2`, is :mod:`retrieval.datasets.gldv2_export`; importable from here too).

Layout (``root``)::

    train.csv                      id,url,landmark_id
    index.csv                      id
    test.csv                       id
    retrieval_solution_v2.1.csv    id,images,Usage   (images: space-separated index ids; Usage
                                   Public / Private / Ignored; Ignored rows carry images 'None')
    train/a/b/c/abc....jpg         image <id> under its first three characters as nested folders
    index/..., test/...            same scheme
    index_labels.csv, test_labels.csv   optional extras written by :func:`export_gldv2`: id,landmark_id

:func:`read_gldv2` returns database = index ids, queries = test ids (Usage on every QueryTruth; test
ids absent from the solution are Ignored, as Kaggle scores them), training = train ids with their
landmark labels. :func:`export_gldv2` writes any labelled :class:`RetrievalDataset` in this format
(image files linked, ids = 16 hex digits of SHA-1 of the source path relative to the dataset root),
so GLDv2-style experiments run on data we have; :func:`labelled_gldv2_split` / :func:`coil100_gldv2_split`
make the split.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import numpy as np

from retrieval.datasets.dataset import QueryTruth, RetrievalDataset
from retrieval.datasets.files import (DatasetError, apply_on_error, check_images, check_safe_id, missing_files, natural_key,
                    read_text, require_dir)
from retrieval.datasets.folders import read_labelled_folder
from retrieval.datasets.gldv2_export import LINK_MODES, MANIFEST, export_gldv2, gldv2_id
from retrieval.datasets.gldv2_layout import SOLUTION_CSV, USAGES, gldv2_image_path
from retrieval.datasets.splits import canonical_order

PathLike = Union[str, os.PathLike]

__all__ = ["read_gldv2", "export_gldv2", "gldv2_image_path", "gldv2_id", "labelled_gldv2_split",
           "coil100_gldv2_split", "SOLUTION_CSV", "USAGES", "LINK_MODES", "MANIFEST"]


# --------------------------------------------------------------------------------------- reading

def _read_csv(path: Path, required: Sequence[str]) -> List[Dict[str, str]]:
    text = read_text(path, "CSV file")
    with io.StringIO(text, newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {missing} (header: {header})")
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    return rows


def _ids(rows: List[Dict[str, str]], path: Path) -> List[str]:
    ids = [r["id"] for r in rows]
    first: Dict[str, int] = {}
    for row, image_id in enumerate(ids, start=1):  # row 1 is the line after the header
        where = f"{path}: row {row}"
        if not image_id:
            raise DatasetError(f"{where}: empty id; give every row an id or delete it")
        if image_id in first:
            raise DatasetError(f"{where}: duplicate ids: {image_id!r} is also row {first[image_id]}; delete one")
        first[image_id] = row
        # ids become file paths (a/b/c/<id>.jpg): "../" in one would read outside the dataset
        check_safe_id(image_id, where)
        if len(image_id) < 3:
            raise DatasetError(f"{where}: id {image_id!r} is shorter than 3 characters (GLDv2 keeps an image "
                               "under folders named by the id's first three characters); use longer ids")
    return ids


def _labels_extra(path: Path, ids: List[str]) -> Optional[List[str]]:
    if not path.is_file():
        return None
    table = {r["id"]: r["landmark_id"] for r in _read_csv(path, ("id", "landmark_id"))}
    return [table.get(i, "") for i in ids]


def read_gldv2(root: PathLike, train_dir: Optional[PathLike] = None, index_dir: Optional[PathLike] = None,
               test_dir: Optional[PathLike] = None, solution_csv: str = SOLUTION_CSV,
               with_train: bool = True, ext: str = ".jpg", check_files: bool = True, check: bool = False,
               on_error: str = "raise", n_jobs: int = 1, name: Optional[str] = None,
               train_file: str = "train.csv") -> RetrievalDataset:
    """Read a GLDv2-format folder (layout in the module docstring). Image roots default to
    ``root/train``, ``root/index``, ``root/test`` and may be given separately.

    ``check_files`` stats every image (cheap) and ``check`` decodes every index/test image; missing or
    unreadable files raise :class:`DatasetError` naming them (``on_error='raise'``) or are dropped and
    listed in ``bad_files`` (``'collect'``; a dropped index image stays in the solutions, i.e. counts as
    missed). Without ``train.csv`` (or with ``with_train=False``) the train fields are None.
    ``train_file="train_clean.csv"`` takes the train split from the clean subset instead
    (``landmark_id,images`` rows; :mod:`retrieval.datasets.gldv2_tables` reads both files at full
    size, and the thesis protocol)."""
    root = require_dir(root, "GLDv2 folder")
    if train_file not in ("train.csv", "train_clean.csv"):
        raise ValueError(f"train_file must be 'train.csv' or 'train_clean.csv', not {train_file!r}")
    dirs = {"train": Path(train_dir) if train_dir else root / "train",
            "index": Path(index_dir) if index_dir else root / "index",
            "test": Path(test_dir) if test_dir else root / "test"}
    index_ids = _ids(_read_csv(root / "index.csv", ("id",)), root / "index.csv")
    test_ids = _ids(_read_csv(root / "test.csv", ("id",)), root / "test.csv")
    if not index_ids:
        raise DatasetError(f"{root / 'index.csv'}: no index images")
    if not test_ids:
        raise DatasetError(f"{root / 'test.csv'}: no test images")
    sol_path = root / solution_csv
    solution_rows = _read_csv(sol_path, ("id", "images", "Usage"))
    index_set, test_set = set(index_ids), set(test_ids)
    truth: Dict[str, QueryTruth] = {}
    for line, row in enumerate(solution_rows, start=2):
        qid, usage = row["id"], row["Usage"]
        if qid not in test_set:
            raise DatasetError(f"{sol_path}:{line}: query {qid!r} is not in test.csv")
        if usage not in USAGES:
            raise DatasetError(f"{sol_path}:{line}: Usage {usage!r} is not one of {USAGES}")
        if usage != "Ignored" and row["images"] in ("", "None"):
            # Kaggle / DELF score such a query 0 (no relevant image can be found); leaving it out of
            # the mean would raise the score, so the row is refused rather than guessed at
            raise DatasetError(f"{sol_path}:{line}: {usage} query {qid!r} has no relevant images "
                               f"(images {row['images']!r}); only Ignored rows may have none")
        images = set() if row["images"] in ("", "None") else set(row["images"].split())
        unknown = images - index_set
        if unknown:
            raise DatasetError(f"{sol_path}:{line}: {len(unknown)} image(s) not in index.csv, "
                               f"e.g. {sorted(unknown)[:3]}")
        if qid in truth:
            raise DatasetError(f"{sol_path}:{line}: query {qid!r} listed twice")
        truth[qid] = QueryTruth(positives=images if usage != "Ignored" else set(), usage=usage)
    not_in_solution = 0
    for qid in test_ids:
        if qid not in truth:
            truth[qid] = QueryTruth(usage="Ignored")
            not_in_solution += 1

    index_paths = [gldv2_image_path(dirs["index"], i, ext) for i in index_ids]
    test_paths = [gldv2_image_path(dirs["test"], i, ext) for i in test_ids]
    train_ids = train_paths = train_labels = None
    if with_train and train_file == "train_clean.csv" and (root / train_file).is_file():
        from retrieval.datasets.gldv2_tables import read_clean_train  # landmark_id,images rows: one per landmark
        clean_ids, clean_labels = read_clean_train(root / train_file)
        train_ids, train_labels = clean_ids.tolist(), clean_labels.astype(str).tolist()
        train_paths = [gldv2_image_path(dirs["train"], i, ext) for i in train_ids]
    elif with_train and (root / "train.csv").is_file():
        rows = _read_csv(root / "train.csv", ("id", "landmark_id"))
        train_ids = _ids(rows, root / "train.csv")
        train_labels = [r["landmark_id"] for r in rows]
        train_paths = [gldv2_image_path(dirs["train"], i, ext) for i in train_ids]

    problems: List[Tuple[str, str]] = []
    if check_files:
        problems += missing_files(index_paths + test_paths + (train_paths or []))
    if check:
        gone = {p for p, _ in problems}
        problems += check_images([p for p in index_paths + test_paths if str(p) not in gone], n_jobs=n_jobs)
    bad = apply_on_error(problems, on_error, root)
    drop = {p for p, _ in bad}

    def keep(ids, paths, labels=None):
        pos = [i for i, p in enumerate(paths) if str(p) not in drop]
        return ([ids[i] for i in pos], [paths[i] for i in pos],
                None if labels is None else [labels[i] for i in pos])

    index_labels = _labels_extra(root / "index_labels.csv", index_ids)
    test_labels = _labels_extra(root / "test_labels.csv", test_ids)
    index_ids, index_paths, index_labels = keep(index_ids, index_paths, index_labels)
    test_ids, test_paths, test_labels = keep(test_ids, test_paths, test_labels)
    truth = {q: truth[q] for q in test_ids}
    if train_ids is not None:
        train_ids, train_paths, train_labels = keep(train_ids, train_paths, train_labels)
    if not index_ids or not test_ids:
        raise DatasetError(f"{root}: no readable index or test images")
    return RetrievalDataset(
        name=name or root.name, root=root, db_ids=index_ids, db_paths=index_paths, query_ids=test_ids,
        query_paths=test_paths, ground_truth=truth, db_labels=index_labels, query_labels=test_labels,
        train_ids=train_ids, train_paths=train_paths, train_labels=train_labels, bad_files=bad,
        metadata={"format": "gldv2", "test_ids_not_in_solution": not_in_solution})


# ---------------------------------------------------------------------------------------- splits

def labelled_gldv2_split(dataset: RetrievalDataset, train_labels: Iterable[str], test_labels: Iterable[str],
                         query_step: int = 8, seed: int = 0, ignored_fraction: float = 0.0,
                         order_by: Optional[str] = "auto") -> RetrievalDataset:
    """GLDv2-style split of a labelled database (queries empty) by label.

    * train: every image of ``train_labels``;
    * for each label in ``test_labels``, its images in :func:`canonical_order` (label, azimuth/view,
      id); position k is a query when ``k % query_step == offset_label``, the offset drawn per label
      from ``default_rng(seed)`` in 0..query_step-1 (a fixed, seeded phase so queries are not always
      the same azimuth); the other images are index images;
    * Usage: the test labels are shuffled with the same generator and the first half (rounded up) is
      Public, the rest Private, so the two leaderboards never share an object; then a seeded
      ``ignored_fraction`` of the query images is marked Ignored;
    * solution: the index images with the query's label.
    """
    if dataset.db_labels is None:
        raise DatasetError(f"dataset {dataset.name!r} ({dataset.root}) has no labels to split by")
    if query_step < 2:
        raise ValueError(f"query_step must be >= 2 (some views must stay in the index), got {query_step}")
    if not 0.0 <= ignored_fraction < 1.0:
        raise ValueError(f"ignored_fraction must be in [0, 1), got {ignored_fraction}")
    train_set = {str(x) for x in train_labels}
    test_list = sorted({str(x) for x in test_labels}, key=natural_key)
    overlap = train_set & set(test_list)
    if overlap:
        raise ValueError(f"labels both in train and test: {sorted(overlap, key=natural_key)[:5]}")
    present = set(dataset.db_labels)
    absent = [x for x in test_list if x not in present] + sorted(train_set - present, key=natural_key)
    if absent:
        raise DatasetError(f"dataset {dataset.name!r} ({dataset.root}) has no images of label(s) {absent[:5]}")
    rng = np.random.default_rng(seed)
    offsets = {lab: int(rng.integers(query_step)) for lab in test_list}
    shuffled = list(test_list)
    rng.shuffle(shuffled)
    n_public = (len(shuffled) + 1) // 2
    usage_of = {lab: ("Public" if i < n_public else "Private") for i, lab in enumerate(shuffled)}

    order = canonical_order(dataset, order_by)
    labels = dataset.db_labels
    train_pos, index_pos, query_pos = [], [], []
    rank_in_label: Dict[str, int] = {}
    for i in order:
        lab = labels[i]
        if lab in train_set:
            train_pos.append(i)
        elif lab in offsets:
            k = rank_in_label.get(lab, 0)
            rank_in_label[lab] = k + 1
            (query_pos if k % query_step == offsets[lab] else index_pos).append(i)
    ids, paths = dataset.db_ids, dataset.db_paths
    members: Dict[str, Set[str]] = {}
    for i in index_pos:
        members.setdefault(labels[i], set()).add(ids[i])
    n_ignored = int(round(ignored_fraction * len(query_pos)))
    ignored = set(rng.choice(len(query_pos), size=n_ignored, replace=False).tolist()) if n_ignored else set()
    truth = {}
    for j, i in enumerate(query_pos):
        usage = "Ignored" if j in ignored else usage_of[labels[i]]
        truth[ids[i]] = QueryTruth(positives=set(members.get(labels[i], set())), usage=usage)
    take = lambda xs, pos: [xs[i] for i in pos]  # noqa: E731
    return RetrievalDataset(
        name=f"{dataset.name}-gldv2", root=dataset.root,
        db_ids=take(ids, index_pos), db_paths=take(paths, index_pos),
        query_ids=take(ids, query_pos), query_paths=take(paths, query_pos), ground_truth=truth,
        db_labels=take(labels, index_pos), query_labels=take(labels, query_pos),
        train_ids=take(ids, train_pos), train_paths=take(paths, train_pos),
        train_labels=take(labels, train_pos), bad_files=list(dataset.bad_files),
        db_metadata={k: take(v, index_pos) for k, v in dataset.db_metadata.items()},
        query_metadata={k: take(v, query_pos) for k, v in dataset.db_metadata.items()},
        metadata={**dataset.metadata, "split": "labelled_gldv2_split", "query_step": query_step,
                  "seed": seed, "ignored_fraction": ignored_fraction,
                  "public_labels": sorted((l for l, u in usage_of.items() if u == "Public"), key=natural_key),
                  "private_labels": sorted((l for l, u in usage_of.items() if u == "Private"), key=natural_key)})


def coil100_gldv2_split(root: PathLike, train_objects: Iterable[int] = range(1, 51),
                        test_objects: Iterable[int] = range(51, 101), query_step: int = 8, seed: int = 0,
                        ignored_fraction: float = 0.0) -> RetrievalDataset:
    """The project's standard COIL-100 GLDv2 split: train on objects 1-50 (all views); objects 51-100
    give the index and the queries, every 8th azimuth of each (9 of 72 views; phase per object from
    ``seed``) being a query and the other 63 index images; half the query objects (seeded) are
    Public, the other half Private. Pass smaller object ranges for tiny subsets (tests)."""
    full = read_labelled_folder(root)
    train = {str(o) for o in train_objects}
    test = {str(o) for o in test_objects}
    keep = [i for i, lab in enumerate(full.db_labels) if lab in train | test]
    sub = RetrievalDataset(
        name=full.name, root=full.root, db_ids=[full.db_ids[i] for i in keep],
        db_paths=[full.db_paths[i] for i in keep], query_ids=[], query_paths=[], ground_truth={},
        db_labels=[full.db_labels[i] for i in keep], bad_files=full.bad_files,
        db_metadata={k: [v[i] for i in keep] for k, v in full.db_metadata.items()}, metadata=full.metadata)
    return labelled_gldv2_split(sub, train, test, query_step=query_step, seed=seed,
                                ignored_fraction=ignored_fraction)
