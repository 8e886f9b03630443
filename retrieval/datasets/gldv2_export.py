"""Writing any labelled dataset in the Google Landmarks v2 (Kaggle retrieval) format:
:func:`export_gldv2`, with :func:`gldv2_id`, the stable id it gives each image. The layout is described
in :mod:`retrieval.datasets.gldv2`, whose reader reads what this writes; the writer lives apart so that
the reader does not carry the file linking and manifest code it never runs."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from retrieval.core.fileio import atomic_write_text
from retrieval.datasets.dataset import QueryTruth, RetrievalDataset
from retrieval.datasets.files import DatasetError
from retrieval.datasets.gldv2_layout import SOLUTION_CSV, USAGES, gldv2_image_path

PathLike = Union[str, os.PathLike]

__all__ = ["export_gldv2", "gldv2_id", "LINK_MODES", "MANIFEST"]

LINK_MODES = ("symlink", "hardlink", "copy")
MANIFEST = "export_manifest.json"


def gldv2_id(source: PathLike, root: Optional[PathLike] = None) -> str:
    """16 hex digits of SHA-1 of ``source`` relative to ``root`` (absolute path when not under it),
    so ids are stable wherever the data folder lives."""
    source = Path(source)
    text = source.as_posix()
    if root is not None:
        try:
            text = source.resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            text = source.resolve().as_posix()
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _same_target(target: Path, source: Path, link: str) -> bool:
    """Whether ``target`` already holds ``source`` in the way ``link`` would have put it there."""
    try:
        if link == "symlink":
            return target.is_symlink() and Path(os.readlink(target)) == source
        if target.is_symlink() or not target.is_file():
            return False
        s, t = source.stat(), target.stat()
        if link == "hardlink":
            return (s.st_ino, s.st_dev) == (t.st_ino, t.st_dev)
        return s.st_size == t.st_size and int(t.st_mtime) >= int(s.st_mtime)
    except OSError:
        return False


def _place(source: Path, target: Path, link: str) -> bool:
    """Put ``source`` at ``target``; False when it was already there (resumed run)."""
    if _same_target(target, source, link):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists() or tmp.is_symlink():
        tmp.unlink()
    if link == "symlink":
        os.symlink(source, tmp)
    elif link == "hardlink":
        try:
            os.link(source, tmp)
        except OSError as exc:
            raise DatasetError(f"cannot hard-link {source} into {target.parent} ({exc}); "
                               f"use link='symlink' or 'copy'") from None
    else:
        shutil.copy2(source, tmp)
    os.replace(tmp, target)
    return True


def _csv_text(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def export_gldv2(dataset: RetrievalDataset, out_dir: PathLike, link: str = "symlink", ext: str = ".jpg",
                 id_root: Optional[PathLike] = None, progress: bool = True) -> Dict[str, int]:
    """Write ``dataset`` in GLDv2 format under ``out_dir``: train = ``train_*``, index = database,
    test = queries, solution = each query's positives with its Usage (None counts as Public; the GLDv2
    format has no junk, so junk lists are dropped, and a query whose own file is also in the database
    is refused; a query without any positive in the database is written as Ignored, which is how
    Kaggle treats it). Image files are linked (``link`` = symlink (default), hardlink or copy) to
    ``<split>/a/b/c/<id><ext>`` where id = :func:`gldv2_id` of the source path relative to
    ``id_root`` (default ``dataset.root``); the file keeps its content, so ``<id>.jpg`` may hold PNG
    bytes (decoders sniff content). Labels go to train.csv and the index_labels.csv / test_labels.csv
    extras; ``export_manifest.json`` maps ids to source paths.

    Idempotent and resumable: files already in place are skipped, CSVs are rewritten atomically.
    Returns counts: train / index / test / written / skipped."""
    if link not in LINK_MODES:
        raise ValueError(f"link must be one of {LINK_MODES}, not {link!r}")
    if not dataset.db_ids or not dataset.query_ids:
        raise DatasetError(f"dataset {dataset.name!r} ({dataset.root}): nothing to export "
                           f"({len(dataset.db_ids)} database images, {len(dataset.query_ids)} queries)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    id_root = Path(id_root) if id_root is not None else Path(dataset.root)

    splits = {
        "train": (dataset.train_ids or [], dataset.train_paths or [], dataset.train_labels),
        "index": (dataset.db_ids, dataset.db_paths, dataset.db_labels),
        "test": (dataset.query_ids, dataset.query_paths, dataset.query_labels),
    }
    new_id: Dict[Tuple[str, str], str] = {}
    owner: Dict[str, Tuple[str, str]] = {}
    jobs: List[Tuple[Path, Path]] = []
    manifest: Dict[str, Dict[str, str]] = {}
    for split, (ids, paths, _) in splits.items():
        for old, src in zip(ids, paths):
            src = Path(src).resolve()
            if not src.is_file():
                raise DatasetError(f"{src}: no such image file (dataset {dataset.name!r}, {split} id {old!r})")
            hid = gldv2_id(src, id_root)
            if hid in owner:
                raise DatasetError(f"{src} appears twice ({owner[hid][0]} {owner[hid][1]!r} and {split} "
                                   f"{old!r}); the GLDv2 format cannot mark a query's own image as junk: "
                                   f"take the queries out of the database first")
            owner[hid] = (split, old)
            new_id[(split, old)] = hid
            manifest[hid] = {"split": split, "source": str(src), "source_id": str(old)}
            jobs.append((src, gldv2_image_path(out / split, hid, ext)))

    from tqdm.auto import tqdm

    written = 0
    for src, target in tqdm(jobs, desc=f"export {out.name}", unit="img", disable=not progress, leave=False):
        written += _place(src, target, link)

    def labels_of(split):
        ids, _, labels = splits[split]
        return [(new_id[(split, i)], "" if labels is None else labels[k]) for k, i in enumerate(ids)]

    index_map = {old: new_id[("index", old)] for old in dataset.db_ids}
    sol_rows = []
    for qid in dataset.query_ids:
        truth = dataset.ground_truth.get(qid) or QueryTruth()
        usage = truth.usage or "Public"
        if usage not in USAGES:
            raise DatasetError(f"query {qid!r}: Usage {usage!r} is not one of {USAGES}")
        positives = sorted(index_map[p] for p in truth.positives if p in index_map)
        images = " ".join(positives) if usage != "Ignored" and positives else "None"
        if usage != "Ignored" and not positives:
            usage = "Ignored"  # nothing to find: Kaggle leaves such queries out of the score
        sol_rows.append((new_id[("test", qid)], images, usage))

    atomic_write_text(out / "train.csv", _csv_text(
        ("id", "url", "landmark_id"),
        [(hid, Path(manifest[hid]["source"]).as_uri(), lab) for hid, lab in labels_of("train")]))
    atomic_write_text(out / "index.csv", _csv_text(("id",), [(h,) for h, _ in labels_of("index")]))
    atomic_write_text(out / "test.csv", _csv_text(("id",), [(h,) for h, _ in labels_of("test")]))
    atomic_write_text(out / SOLUTION_CSV, _csv_text(("id", "images", "Usage"), sol_rows))
    if dataset.db_labels is not None:
        atomic_write_text(out / "index_labels.csv", _csv_text(("id", "landmark_id"), labels_of("index")))
    if dataset.query_labels is not None:
        atomic_write_text(out / "test_labels.csv", _csv_text(("id", "landmark_id"), labels_of("test")))
    atomic_write_text(out / MANIFEST, json.dumps(
        {"dataset": dataset.name, "source_root": str(id_root), "link": link, "ext": ext,
         "metadata": dataset.metadata, "images": manifest}, indent=1, sort_keys=True, default=str))
    counts = {split: len(v[0]) for split, v in splits.items()}
    counts.update(written=written, skipped=len(jobs) - written)
    return counts
