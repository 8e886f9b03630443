"""GLDv2's CSVs at full size, read vectorised (pandas' C parser), and the thesis' protocol.

:func:`read_gldv2_tables` reads ``train.csv`` (id,url,landmark_id) and/or the clean
``train_clean.csv`` (landmark_id,images: one row per landmark, its image ids space-separated),
``index.csv``, ``test.csv`` and the retrieval solution with pyarrow's multi-threaded CSV parser into
numpy arrays (ids as str objects, landmark ids as int64; uniqueness and membership are hash-based),
so 4 million train rows read in seconds.

:func:`thesis_protocol` is the evaluation the thesis line uses on GLDv2: the network trains on the
clean train subset; ``n_queries`` (1,000) queries and ``n_index`` (100,000) index images are sampled
with ``default_rng(seed)`` from train images not used in training (landmarks outside the clean
subset, or with ``exclude="images"`` merely images outside it). Each query's landmark keeps its
other images in the index (the positives), the rest of the index is random distractors. It returns
a :class:`RetrievalDataset` whose train split is the clean subset.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from retrieval.datasets.dataset import QueryTruth, RetrievalDataset
from retrieval.datasets.files import DatasetError, require_dir
from retrieval.datasets.gldv2_layout import SOLUTION_CSV, USAGES, gldv2_image_path

PathLike = Union[str, os.PathLike]

__all__ = ["GLDv2Tables", "GLDv2Paths", "read_gldv2_tables", "read_clean_train", "thesis_protocol", "TRAIN_FILES"]

TRAIN_FILES = ("train.csv", "train_clean.csv")


@dataclass
class GLDv2Tables:
    """The CSVs as arrays. ``train_*``: train.csv rows; ``clean_*``: train_clean.csv expanded to one
    entry per image (None when the file was not read); solution: ``query_ids`` / ``usage`` per row and
    the positives of row ``i`` as ``positives[offsets[i]:offsets[i + 1]]``."""
    root: Path
    train_ids: Optional[np.ndarray]
    train_labels: Optional[np.ndarray]
    clean_ids: Optional[np.ndarray]
    clean_labels: Optional[np.ndarray]
    index_ids: np.ndarray
    test_ids: np.ndarray
    solution_ids: np.ndarray
    usage: np.ndarray
    positives: np.ndarray
    offsets: np.ndarray


def _read(path: Path, columns, types: Dict[str, object]):
    """The ``columns`` of a CSV as a pyarrow Table (multi-threaded parse, no per-row Python objects)."""
    import pyarrow as pa
    from pyarrow import csv as pacsv
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        # blocks large enough for train_clean.csv's longest row (a landmark with thousands of images)
        table = pacsv.read_csv(path, read_options=pacsv.ReadOptions(block_size=1 << 26),
                               convert_options=pacsv.ConvertOptions(
            include_columns=list(columns), column_types=types, strings_can_be_null=False,
            null_values=[], quoted_strings_can_be_null=False))
    except (pa.ArrowInvalid, KeyError) as exc:
        raise DatasetError(f"{path}: not a readable CSV with columns {list(columns)} ({exc})") from None
    return table


def _strings(table, column: str) -> np.ndarray:
    return table[column].to_numpy(zero_copy_only=False)  # object array of str


def _unique_ids(table, column: str, path: Path) -> np.ndarray:
    import pyarrow.compute as pc
    col = table[column]
    if len(col) and pc.any(pc.equal(pc.utf8_length(col), 0)).as_py():
        raise DatasetError(f"{path}: empty id")
    if pc.count_distinct(col).as_py() != len(col):  # hash-based: no sort of millions of strings
        raise DatasetError(f"{path}: duplicate ids")
    return _strings(table, column)


def _isin(values: np.ndarray, value_set: np.ndarray) -> np.ndarray:
    """Hash-based membership of strings (pyarrow), or np.isin for numbers."""
    if values.dtype != object:
        return np.isin(values, value_set)
    import pyarrow as pa
    import pyarrow.compute as pc
    return pc.is_in(pa.array(values, type=pa.string()),
                    value_set=pa.array(value_set, type=pa.string())).to_numpy(zero_copy_only=False)


def _split_lists(column: List[str], path: Path):
    """Space-separated lists -> (flat array of items, per-row counts), vectorised."""
    items = np.asarray(" ".join(column).split(), dtype=object)
    counts = np.asarray([0 if not s.strip() else s.count(" ") + 1 for s in column], dtype=np.int64)
    if counts.sum() != len(items):
        raise DatasetError(f"{path}: image lists must be separated by single spaces")
    return items, counts


def _labels(table, path: Path) -> np.ndarray:
    """Landmark ids as int64 (GLDv2's are integers; numbers compare and sample fast)."""
    try:
        return table["landmark_id"].to_numpy().astype(np.int64)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: landmark_id must be integers ({exc})") from None


def read_clean_train(path: PathLike):
    """``train_clean.csv`` (landmark_id,images) as per-image (ids, int64 landmark ids)."""
    import pyarrow as pa
    path = Path(path)
    table = _read(path, ("landmark_id", "images"), {"landmark_id": pa.int64(), "images": pa.string()})
    ids, counts = _split_lists(_strings(table, "images").tolist(), path)
    if len(set(ids.tolist())) != len(ids):
        raise DatasetError(f"{path}: duplicate ids")
    return ids, np.repeat(_labels(table, path), counts)


def read_gldv2_tables(root: PathLike, train_files=TRAIN_FILES, solution_csv: str = SOLUTION_CSV) -> GLDv2Tables:
    """Read the GLDv2 CSVs under ``root`` (``train_files``: any of ``train.csv`` and
    ``train_clean.csv``, both by default; a train file that is not there is skipped)."""
    import pyarrow as pa
    root = require_dir(root, "GLDv2 folder")
    unknown = set(train_files) - set(TRAIN_FILES)
    if unknown:
        raise ValueError(f"train files must be among {TRAIN_FILES}, got {sorted(unknown)}")
    train_ids = train_labels = clean_ids = clean_labels = None
    if "train.csv" in train_files and (root / "train.csv").is_file():
        table = _read(root / "train.csv", ("id", "landmark_id"), {"id": pa.string(), "landmark_id": pa.int64()})
        train_ids = _unique_ids(table, "id", root / "train.csv")
        train_labels = _labels(table, root / "train.csv")
    if "train_clean.csv" in train_files and (root / "train_clean.csv").is_file():
        clean_ids, clean_labels = read_clean_train(root / "train_clean.csv")
    index_ids = _unique_ids(_read(root / "index.csv", ("id",), {"id": pa.string()}), "id", root / "index.csv")
    test_ids = _unique_ids(_read(root / "test.csv", ("id",), {"id": pa.string()}), "id", root / "test.csv")
    sol = _read(root / solution_csv, ("id", "images", "Usage"),
                {"id": pa.string(), "images": pa.string(), "Usage": pa.string()})
    usage = _strings(sol, "Usage").astype(str)
    bad = np.flatnonzero(~np.isin(usage, USAGES))
    if bad.size:
        raise DatasetError(f"{root / solution_csv}:{bad[0] + 2}: Usage {usage[bad[0]]!r} is not one of {USAGES}")
    images = ["" if u == "Ignored" or i == "None" else i for i, u in zip(_strings(sol, "images").tolist(), usage.tolist())]
    positives, counts = _split_lists(images, root / solution_csv)
    empty = np.flatnonzero((usage != "Ignored") & (counts == 0))
    if empty.size:  # Kaggle scores such a query 0; the metrics would leave it out (see read_gldv2)
        raise DatasetError(f"{root / solution_csv}:{empty[0] + 2}: {usage[empty[0]]} query "
                           f"{_strings(sol, 'id')[empty[0]]!r} has no relevant images; only Ignored rows may "
                           "have none")
    unknown_pos = ~_isin(positives, index_ids)
    if unknown_pos.any():
        raise DatasetError(f"{root / solution_csv}: {int(unknown_pos.sum())} image(s) not in index.csv, "
                           f"e.g. {positives[unknown_pos][:3].tolist()}")
    return GLDv2Tables(root=root, train_ids=train_ids, train_labels=train_labels, clean_ids=clean_ids,
                       clean_labels=clean_labels, index_ids=index_ids, test_ids=test_ids,
                       solution_ids=_strings(sol, "id"), usage=usage, positives=positives,
                       offsets=np.concatenate([[0], np.cumsum(counts)]))


class GLDv2Paths(Sequence):
    """``split_dir/a/b/c/<id><ext>`` for each id, built when asked for (a list of 1.6 million Path
    objects takes a minute and hundreds of MB)."""

    def __init__(self, split_dir: Path, ids: np.ndarray, ext: str = ".jpg"):
        self.split_dir, self.ids, self.ext = Path(split_dir), ids, ext

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [gldv2_image_path(self.split_dir, x, self.ext) for x in self.ids[i]]
        return gldv2_image_path(self.split_dir, self.ids[i], self.ext)


def _every_query_keeps_a_positive(queries: np.ndarray, eligible: np.ndarray, train_labels: np.ndarray,
                                  seed: int) -> np.ndarray:
    """The drawn ``queries`` (train rows, sorted) repaired so that every query landmark keeps an image
    in the index: where all of a landmark's held-out images were drawn, its last query goes back to
    the index, and a replacement is drawn (seeded, apart from the main draw) among the eligible images
    of the other query landmarks that keep at least two index images. The query landmarks, and so the
    number of index positives and the distractor draw, stay what they were."""
    labels = train_labels[eligible]
    pool_size = dict(zip(*np.unique(labels, return_counts=True)))
    chosen = list(queries.tolist())
    taken = {}
    for lab in train_labels[queries].tolist():
        taken[lab] = taken.get(lab, 0) + 1
    full = [lab for lab, n in taken.items() if n >= pool_size[lab]]
    if not full:
        return queries
    rng = np.random.default_rng([seed, 1])
    chosen_set = set(chosen)
    for lab in sorted(full, key=str):
        drop = max(r for r in chosen if train_labels[r] == lab)
        chosen.remove(drop)
        chosen_set.discard(drop)
        taken[lab] -= 1
        roomy = [l for l, n in taken.items() if n + 2 <= pool_size[l]]
        spare = eligible[np.isin(labels, roomy) & ~np.isin(eligible, list(chosen_set | {drop}))]
        if not len(spare):
            raise DatasetError(f"the thesis protocol cannot give every query an index image of its landmark "
                               f"({len(full)} landmarks were drawn whole); draw fewer queries")
        pick = int(rng.choice(spare))
        chosen.append(pick)
        chosen_set.add(pick)
        taken[train_labels[pick]] += 1
    return np.sort(np.asarray(chosen, dtype=queries.dtype))


def thesis_protocol(root: PathLike, n_queries: int = 1000, n_index: int = 100_000, seed: int = 0,
                    exclude: str = "landmarks", tables: Optional[GLDv2Tables] = None,
                    ext: str = ".jpg") -> RetrievalDataset:
    """The thesis' GLDv2 protocol (module docstring) as a dataset: queries and index from
    ``root/train``, train split = the clean subset."""
    if exclude not in ("landmarks", "images"):
        raise ValueError(f"exclude must be 'landmarks' or 'images', not {exclude!r}")
    tables = tables or read_gldv2_tables(root)
    if tables.train_ids is None or tables.clean_ids is None:
        raise DatasetError(f"{root}: the thesis protocol needs both train.csv and train_clean.csv")
    held = ~np.isin(tables.train_labels, np.unique(tables.clean_labels)) if exclude == "landmarks" \
        else ~_isin(tables.train_ids, tables.clean_ids)
    pool = np.flatnonzero(held)
    labels = tables.train_labels[pool]
    _, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    rng = np.random.default_rng(seed)
    eligible = pool[sizes[inverse] >= 2]  # a query needs another image of its landmark in the index
    if len(eligible) < n_queries:
        raise DatasetError(f"{root}: only {len(eligible)} held-out images have a second image of their "
                           f"landmark; {n_queries} queries asked for")
    queries = _every_query_keeps_a_positive(np.sort(rng.choice(eligible, size=n_queries, replace=False)),
                                            eligible, tables.train_labels, seed)
    query_lms = np.unique(tables.train_labels[queries])
    is_query = np.isin(pool, queries)
    positive_rows = pool[np.isin(labels, query_lms) & ~is_query]
    if len(positive_rows) > n_index:
        raise DatasetError(f"{root}: the queries' landmarks hold {len(positive_rows)} images, more than "
                           f"the {n_index} index images asked for")
    others = pool[~np.isin(labels, query_lms)]
    distractors = rng.choice(others, size=min(len(others), n_index - len(positive_rows)), replace=False)
    index_rows = np.sort(np.concatenate([positive_rows, distractors]))
    train_dir = tables.root / "train"
    index_ids = tables.train_ids[index_rows].tolist()
    index_labels = tables.train_labels[index_rows].astype(str)
    by_label: Dict[str, set] = {}
    for i, lab in zip(index_ids, index_labels.tolist()):
        by_label.setdefault(lab, set()).add(i)
    query_ids = tables.train_ids[queries].tolist()
    query_labels = tables.train_labels[queries].astype(str).tolist()
    truth = {q: QueryTruth(positives=set(by_label.get(lab, set())), usage="Public")
             for q, lab in zip(query_ids, query_labels)}
    return RetrievalDataset(
        name=f"{tables.root.name}-thesis", root=tables.root,
        db_ids=index_ids, db_paths=[gldv2_image_path(train_dir, i, ext) for i in index_ids],
        query_ids=query_ids, query_paths=[gldv2_image_path(train_dir, i, ext) for i in query_ids],
        ground_truth=truth, db_labels=index_labels.tolist(), query_labels=query_labels,
        train_ids=tables.clean_ids.tolist(),
        train_paths=GLDv2Paths(train_dir, tables.clean_ids, ext),
        train_labels=tables.clean_labels.astype(str).tolist(),
        metadata={"format": "gldv2", "protocol": "thesis", "n_queries": n_queries, "n_index": len(index_rows),
                  "seed": seed, "exclude": exclude})
