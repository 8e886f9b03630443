"""Labelled image folders and multi-view layouts.

* :func:`read_labelled_folder`: a flat folder plus ``labels.csv`` (COIL-100, COIL-20):
  ``filename,object_id[,more columns]``. Every image goes into the database (no queries; make queries
  with :func:`retrieval.datasets.splits.every_nth_query`); labels = the label column as text; the other
  columns (COIL's ``azimuth_deg``) become ``db_metadata`` columns (numbers parsed).
  :func:`read_labels_csv` is its CSV reader (also used by :mod:`retrieval.datasets.viewsets`).
* :func:`read_class_tree`: a class-per-folder tree ``root/<class>/*.jpg`` (any depth below the class
  folder); labels = the class folder's name. :func:`read_folder` reads either layout (``labels.csv``
  present: the labelled folder, else the class tree).
* :func:`read_multiview_tree`: ``ROOT/{DS,DU}/{train,retrieval}/<class>/<instance>/<instance>.<k>.png``
  (k = view number). Every image goes into the database, labelled by instance
  (``<class>/<instance>``), with ``db_metadata`` columns ``class``, ``instance``, ``view``.
* :func:`read_os_core`: the OS-*-core open-set layout (see its docstring).
* :func:`group_views`: ``[(instance, [paths ordered by view])]``, the building block for multi-view
  protocols (k views per instance).

Image ids are the path relative to the images folder without its extension (``obj1__0``,
``chair/chair_0001/chair_0001.3``), unique by construction.
"""
from __future__ import annotations

import csv
import io
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, Hashable, List, Optional, Sequence, Tuple, Union

from retrieval.datasets.dataset import QueryTruth, RetrievalDataset
from retrieval.datasets.files import (IMAGE_EXTENSIONS, DatasetError, apply_on_error, check_images, check_inside, list_images,
                    missing_files, natural_key, read_text, require_dir)

PathLike = Union[str, os.PathLike]

__all__ = ["read_labelled_folder", "read_class_tree", "read_folder", "read_labels_csv", "read_multiview_tree", "read_os_core", "group_views",
           "parse_number", "sortable"]

_LABEL_COLUMNS = ("label", "object_id", "class", "landmark_id", "instance")
_FILENAME_COLUMNS = ("filename", "file", "path", "image")


def parse_number(text: str) -> Any:
    """``'5'`` -> 5, ``'2.5'`` -> 2.5, anything else unchanged (stripped)."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def sortable(value: Any) -> Tuple:
    """Sort key for a parsed CSV value: numbers before text, numbers numerically, text naturally."""
    if isinstance(value, (int, float)):
        return (0, value)
    return (1, natural_key(str(value)))


def _image_id(path: Path, folder: Path) -> str:
    return path.relative_to(folder).with_suffix("").as_posix()


def _finish_db(name, root, folder, ids, paths, labels, metadata, check, on_error, n_jobs,
               extra_bad=()) -> RetrievalDataset:
    """Drop missing (and, with ``check``, undecodable) files per ``on_error`` and build the dataset."""
    bad = list(extra_bad)
    problems = missing_files(paths)
    if check:
        gone = {p for p, _ in problems}
        problems += check_images([p for p in paths if str(p) not in gone], n_jobs=n_jobs)
    bad += apply_on_error(problems, on_error, folder)
    if problems:
        drop = {p for p, _ in problems}
        keep = [i for i, p in enumerate(paths) if str(p) not in drop]
        ids = [ids[i] for i in keep]
        paths = [paths[i] for i in keep]
        labels = [labels[i] for i in keep]
        metadata = {k: [v[i] for i in keep] for k, v in metadata.items()}
    if not ids:
        raise DatasetError(f"{folder}: no readable images")
    return RetrievalDataset(name=name, root=root, db_ids=ids, db_paths=paths, query_ids=[], query_paths=[],
                            ground_truth={}, db_labels=labels, bad_files=bad, db_metadata=metadata)


def read_labels_csv(csv_path: PathLike,
                    required: Sequence[str] = ()) -> Tuple[List[str], List[Tuple[int, List[str]]]]:
    """The header (names stripped) and the rows of a labels CSV file (``filename,object_id[,...]``) as
    ``(line, fields)``, ``line`` counting the header as 1; blank rows are skipped. Raises
    :class:`DatasetError` naming the file (and line) when it is missing, has no header and row, fewer
    than two columns, lacks a ``required`` column, or has a row whose number of fields differs from
    the header's."""
    csv_path = Path(csv_path)
    text = read_text(csv_path, "labels file")
    with io.StringIO(text, newline="") as f:
        rows = list(csv.reader(f))
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if len(rows) < 2:
        raise DatasetError(f"{csv_path}: no labelled images (need a header and at least one row)")
    header = [h.strip() for h in rows[0]]
    if len(header) < 2:
        raise DatasetError(f"{csv_path}: need at least two columns (filename, label), got {header}")
    for column in required:
        if column not in header:
            raise DatasetError(f"{csv_path}: no column {column!r} (columns: {header})")
    body = list(enumerate(rows[1:], start=2))
    for line, row in body:
        if len(row) != len(header):
            raise DatasetError(f"{csv_path}:{line}: {len(row)} fields, header has {len(header)}")
    return header, body


def read_labelled_folder(root: PathLike, images_dir: str = "images", labels_csv: str = "labels.csv",
                         label_column: Optional[str] = None, name: Optional[str] = None,
                         check: bool = False, on_error: str = "raise", n_jobs: int = 1) -> RetrievalDataset:
    """Read ``root/images_dir`` labelled by ``root/labels_csv`` (COIL-100 / COIL-20 layout).

    The CSV needs a header; the file column is ``filename`` (else the first column), the label column
    ``label_column`` or the first of label/object_id/class/landmark_id/instance present (else the
    second column). All images listed go into the database, sorted by (label, remaining columns,
    filename) with numbers compared as numbers; no queries. Rows whose file is missing (or, with
    ``check=True``, does not decode) raise :class:`DatasetError` or, with ``on_error='collect'``, are
    dropped and listed in ``bad_files``. Image files not listed in the CSV are ignored."""
    root = require_dir(root, "dataset folder")
    folder = require_dir(root / images_dir, "image folder")
    csv_path = root / labels_csv
    header, rows = read_labels_csv(csv_path, () if label_column is None else (label_column,))
    file_col = next((header.index(c) for c in _FILENAME_COLUMNS if c in header), 0)
    if label_column is not None:
        label_col = header.index(label_column)
    else:
        label_col = next((header.index(c) for c in _LABEL_COLUMNS if c in header), 1 if file_col != 1 else 0)
    other = [i for i in range(len(header)) if i not in (file_col, label_col)]

    records = []
    for line, row in rows:
        filename, label = row[file_col].strip(), row[label_col].strip()
        if not filename or not label:
            raise DatasetError(f"{csv_path}:{line}: empty {'file name' if not filename else 'label'} "
                               f"(column {header[file_col if not filename else label_col]!r}); give every "
                               "image a file name and a label, or delete the row")
        check_inside(filename, folder, f"{csv_path}:{line}")
        records.append((label, [parse_number(row[i]) for i in other], filename))
    records.sort(key=lambda r: (natural_key(r[0]), [sortable(v) for v in r[1]], natural_key(r[2])))
    paths = [folder / r[2] for r in records]
    ids = [_image_id(p, folder) for p in paths]
    seen: Dict[str, int] = {}
    for i, image_id in enumerate(ids):
        if image_id in seen:
            raise DatasetError(f"{csv_path}: {records[i][2]!r} listed twice (or two files share the id "
                               f"{image_id!r})")
        seen[image_id] = i
    labels = [r[0] for r in records]
    metadata = {header[c]: [r[1][j] for r in records] for j, c in enumerate(other)}
    return _finish_db(name or root.name, root, folder, ids, paths, labels, metadata, check, on_error, n_jobs)


def read_class_tree(root: PathLike, name: Optional[str] = None, check: bool = False, on_error: str = "raise",
                    n_jobs: int = 1) -> RetrievalDataset:
    """Read a class-per-folder tree ``root/<class>/**/<image>`` (the torchvision ``ImageFolder``
    layout). Every image goes into the database labelled by its top folder, sorted by (class, path)
    naturally; ids are the path relative to ``root`` without extension (``cat/001``). Image files
    directly under ``root`` have no class and are a layout error naming the first one."""
    root = require_dir(root, "dataset folder")
    paths = list_images(root)
    loose = [p for p in paths if len(p.relative_to(root).parts) < 2]
    if loose:
        raise DatasetError(f"{loose[0]}: an image directly under {root}; a class-per-folder tree keeps "
                           f"each image in a folder named by its class (root/<class>/<image>), a labelled "
                           f"folder has images/ and labels.csv")
    labels = [p.relative_to(root).parts[0] for p in paths]
    order = sorted(range(len(paths)), key=lambda i: (natural_key(labels[i]),
                                                     natural_key(paths[i].relative_to(root).as_posix())))
    paths = [paths[i] for i in order]
    labels = [labels[i] for i in order]
    ids = [_image_id(p, root) for p in paths]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DatasetError(f"{root}: two images share the id {dup!r} (same name, different extension)")
    ds = _finish_db(name or root.name, root, root, ids, paths, labels, {}, check, on_error, n_jobs)
    ds.metadata["layout"] = "class-tree"
    return ds


def read_folder(root: PathLike, name: Optional[str] = None, check: bool = False, on_error: str = "raise",
                n_jobs: int = 1) -> RetrievalDataset:
    """The ``folder`` dataset kind: ``root/images`` + ``root/labels.csv`` when ``labels.csv`` exists
    (:func:`read_labelled_folder`), else a class-per-folder tree (:func:`read_class_tree`). Every
    image is in the database and there are no queries yet (see :mod:`retrieval.datasets.splits`)."""
    root = require_dir(root, "dataset folder")
    if (root / "labels.csv").is_file():
        return read_labelled_folder(root, name=name, check=check, on_error=on_error, n_jobs=n_jobs)
    return read_class_tree(root, name=name, check=check, on_error=on_error, n_jobs=n_jobs)


_VIEW_SUFFIX = re.compile(r"^(?P<instance>.+)\.(?P<view>\d+)$")


def read_multiview_tree(root: PathLike, split: str = "DS", part: str = "retrieval",
                        name: Optional[str] = None, check: bool = False, on_error: str = "raise",
                        n_jobs: int = 1) -> RetrievalDataset:
    """Read ``root/<split>/<part>/<class>/<instance>/<instance>.<k>.<ext>`` (``split`` DS or DU,
    ``part`` train or retrieval). Every image is a database entry labelled ``<class>/<instance>``;
    ``db_metadata`` has ``class``, ``instance`` and ``view`` (k as int). A file whose name is not
    ``<instance>.<k>`` (or is not two folders deep) is a layout error naming the file."""
    root = require_dir(root, "dataset folder")
    folder = require_dir(root / split / part, f"{split}/{part} folder")
    paths = list_images(folder)
    ids, labels, classes, instances, views = [], [], [], [], []
    for p in paths:
        rel = p.relative_to(folder)
        match = _VIEW_SUFFIX.match(p.stem)
        if len(rel.parts) != 3 or match is None:
            raise DatasetError(f"{p}: expected <class>/<instance>/<instance>.<k>.<ext> under {folder}")
        cls, inst = rel.parts[0], rel.parts[1]
        ids.append(_image_id(p, folder))
        labels.append(f"{cls}/{inst}")
        classes.append(cls)
        instances.append(inst)
        views.append(int(match.group("view")))
    order = sorted(range(len(paths)), key=lambda i: (natural_key(labels[i]), views[i], natural_key(ids[i])))
    pick = lambda xs: [xs[i] for i in order]  # noqa: E731
    metadata = {"class": pick(classes), "instance": pick(instances), "view": pick(views)}
    ds = _finish_db(name or f"{root.name}-{split}-{part}", root, folder, pick(ids), pick(paths),
                    pick(labels), metadata, check, on_error, n_jobs)
    ds.metadata.update({"split": split, "part": part})
    return ds


def _read_label_file(path: Path) -> "OrderedDict[str, str]":
    """``name label`` per line (whitespace or comma separated; a header line whose second field is
    'label' is skipped); name may carry an extension."""
    out: "OrderedDict[str, str]" = OrderedDict()
    for line_no, line in enumerate(read_text(path, "label file").splitlines(), start=1):
        fields = [f for f in re.split(r"[,\s]+", line.strip()) if f]
        if not fields:
            continue
        if len(fields) < 2:
            raise DatasetError(f"{path}:{line_no}: expected '<name> <label>', got {line.strip()!r}")
        if line_no == 1 and fields[1].lower() in ("label", "class", "label_id"):
            continue
        key = fields[0]
        if Path(key).suffix.lower() in IMAGE_EXTENSIONS:
            key = Path(key).with_suffix("").as_posix()
        out[key] = fields[1]
    if not out:
        raise DatasetError(f"{path}: no labels")
    return out


def _os_part(folder: Path, labels: "OrderedDict[str, str]", label_file: Path):
    """Images of a query/target folder: each entry of the label file names either one image file
    (``<name>.<ext>``) or an object folder holding its views (searched recursively)."""
    rows = []  # (image id, path, label, instance, view index)
    all_images = list_images(folder)
    by_top: Dict[str, List[Path]] = {}
    for p in all_images:
        rel = p.relative_to(folder)
        top = rel.parts[0] if len(rel.parts) > 1 else rel.with_suffix("").as_posix()
        by_top.setdefault(top, []).append(p)
    for inst, label in labels.items():
        views = by_top.get(inst)
        if not views:
            raise DatasetError(f"{label_file}: {inst!r} has no image file or folder in {folder}")
        for k, p in enumerate(views):
            rows.append((_image_id(p, folder), p, label, inst, k))
    return rows


def read_os_core(root: PathLike, name: Optional[str] = None, train_dir: str = "train",
                 query_dir: str = "query", target_dir: str = "target",
                 query_labels: str = "query_label.txt", target_labels: str = "target_label.txt",
                 check: bool = False, on_error: str = "raise", n_jobs: int = 1) -> RetrievalDataset:
    """Read the OS-*-core open-set layout::

        root/train/<class>/<object>/...images      training objects (label = class folder)
        root/query/<object>/...images              (or root/query/<object>.<ext>: one image each)
        root/target/<object>/...images
        root/query_label.txt, root/target_label.txt   '<object> <label>' per line

    Queries = every query image (``query_metadata['instance']`` = object, ``['view']`` = view index in
    natural file order), database = every target image, positives = target images whose object has
    the query's label. ``train_*`` = training images labelled by class (absent train folder: None).
    Multi-view protocols regroup views per object with :func:`group_views`."""
    root = require_dir(root, "dataset folder")
    qfile, tfile = root / query_labels, root / target_labels
    q_rows = _os_part(require_dir(root / query_dir, "query folder"), _read_label_file(qfile), qfile)
    t_rows = _os_part(require_dir(root / target_dir, "target folder"), _read_label_file(tfile), tfile)
    bad: List[Tuple[str, str]] = []
    if check:
        problems = check_images([r[1] for r in q_rows + t_rows], n_jobs=n_jobs)
        bad = apply_on_error(problems, on_error, root)
        drop = {p for p, _ in bad}
        q_rows = [r for r in q_rows if str(r[1]) not in drop]
        t_rows = [r for r in t_rows if str(r[1]) not in drop]
    if not q_rows or not t_rows:
        raise DatasetError(f"{root}: no readable query or target images")
    by_label: Dict[str, set] = {}
    for r in t_rows:
        by_label.setdefault(r[2], set()).add(r[0])
    # query and target may reuse object names: prefix ids with the part so they never collide
    q_ids = [f"{query_dir}/{r[0]}" for r in q_rows]
    truth = {qid: QueryTruth(positives=set(by_label.get(r[2], set()))) for qid, r in zip(q_ids, q_rows)}
    train_ids = train_paths = train_labels = None
    train_folder = root / train_dir
    if train_folder.is_dir():
        tp = list_images(train_folder)
        train_ids = [f"{train_dir}/{_image_id(p, train_folder)}" for p in tp]
        train_paths = tp
        train_labels = [p.relative_to(train_folder).parts[0] for p in tp]
    return RetrievalDataset(
        name=name or root.name, root=root,
        db_ids=[r[0] for r in t_rows], db_paths=[r[1] for r in t_rows],
        query_ids=q_ids, query_paths=[r[1] for r in q_rows], ground_truth=truth,
        db_labels=[r[2] for r in t_rows], query_labels=[r[2] for r in q_rows],
        train_ids=train_ids, train_paths=train_paths, train_labels=train_labels, bad_files=bad,
        db_metadata={"instance": [r[3] for r in t_rows], "view": [r[4] for r in t_rows]},
        query_metadata={"instance": [r[3] for r in q_rows], "view": [r[4] for r in q_rows]})


def group_views(paths: Sequence, instances: Sequence[Hashable], order_key: Optional[Sequence] = None,
                k: Optional[int] = None, drop_incomplete: bool = True,
                stride: Optional[int] = None) -> List[Tuple[Hashable, List]]:
    """Group items (paths, ids, anything) into view sets per instance.

    Items are grouped by ``instances[i]``, ordered within a group by ``order_key[i]`` (default: input
    order), and groups are returned in natural order of the instance name. With ``k`` each group is
    cut into consecutive view sets of ``k`` items (``stride`` = step between set starts, default ``k``:
    non-overlapping); a set is named ``(instance, j)`` for its j-th window. Groups with fewer than ``k``
    views (and a last partial window) are dropped when ``drop_incomplete`` else kept short. Without
    ``k`` every instance is one set named by the instance itself."""
    if len(paths) != len(instances):
        raise ValueError(f"group_views: {len(paths)} items but {len(instances)} instance labels")
    if order_key is not None and len(order_key) != len(paths):
        raise ValueError(f"group_views: {len(paths)} items but {len(order_key)} order keys")
    if k is not None and k < 1:
        raise ValueError(f"group_views: k must be >= 1, got {k}")
    groups: Dict[Hashable, List[int]] = {}
    for i, inst in enumerate(instances):
        groups.setdefault(inst, []).append(i)
    out: List[Tuple[Hashable, List]] = []
    for inst in sorted(groups, key=lambda g: natural_key(str(g))):
        idx = groups[inst]
        if order_key is not None:
            idx = sorted(idx, key=lambda i: order_key[i])
        items = [paths[i] for i in idx]
        if k is None:
            out.append((inst, items))
            continue
        step = stride or k
        for j, start in enumerate(range(0, len(items), step)):
            window = items[start:start + k]
            if len(window) < k and drop_incomplete:
                break
            out.append(((inst, j), window))
            if start + k >= len(items):
                break
    return out
