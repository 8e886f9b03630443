"""``retrieval add`` / ``retrieval remove``: grow or shrink a collection (:mod:`retrieval.indexing.collection`).

:func:`add_images` describes new images exactly as the collection's vectors were described (the extractor
configuration it recorded, rebuilt and checked; local features too where the collection has them),
records their metadata (``folder`` and ``file`` relative to ``root``, the absolute ``path``, the EXIF
``date`` when the file has one, every column of a labels CSV) and adds them in one change. Extraction
goes to a staging folder inside the collection named after the image list, so an interrupted add (Ctrl-C,
a killed process) resumes where it stopped when run again; the collection itself changes only at the end,
all at once. :func:`add_features` adds the vectors of a global feature file (any encoder), checked
against the collection's configuration.
"""
from __future__ import annotations

import csv
import hashlib
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from retrieval.core.config import ConfigError

__all__ = ["add_images", "add_features", "remove_ids", "image_metadata", "labels_metadata", "global_extractor"]

#: EXIF tags: DateTimeOriginal (in the Exif sub-IFD) and DateTime (IFD0), "YYYY:MM:DD HH:MM:SS"
_EXIF_IFD, _DATE_ORIGINAL, _DATE_TIME = 0x8769, 36867, 306


def _exif_date(path: Path) -> str:
    """The photo's EXIF date as ``YYYY-MM-DD HH:MM:SS`` (sorts as it reads), "" when it has none."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            exif = image.getexif()
            value = exif.get_ifd(_EXIF_IFD).get(_DATE_ORIGINAL) or exif.get(_DATE_TIME)
    except (OSError, ValueError, SyntaxError):  # not readable by Pillow, or damaged EXIF: no date
        return ""
    text = str(value or "").strip().replace("\x00", "")
    if len(text) >= 10 and text[4] == ":" and text[7] == ":":
        text = text[:4] + "-" + text[5:7] + "-" + text[8:]
    return text


def image_metadata(paths: Sequence[Path], root: Optional[Path]) -> List[Dict[str, str]]:
    """``folder``, ``file``, ``path`` and ``date`` of each image (see the module docstring)."""
    out = []
    for path in paths:
        path = Path(path).resolve()
        rel = path.relative_to(root.resolve()) if root is not None else Path(path.name)
        out.append({"folder": rel.parent.as_posix() if rel.parent != Path(".") else "", "file": path.name,
                    "path": str(path), "date": _exif_date(path)})
    return out


def labels_metadata(labels: Path, ids: Sequence[str]) -> List[Dict[str, str]]:
    """The columns of a labels CSV (a header row; the ``id`` column, else the first, names the image) for
    each of ``ids`` ({} for an id the file does not list)."""
    try:
        with open(labels, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{labels}: not a readable CSV file ({exc})") from None
    if not rows:
        raise ConfigError(f"{labels}: no rows (a header row, then one row per image)")
    key = "id" if "id" in rows[0] else next(iter(rows[0]))
    by_id = {str(r[key]): {k: v for k, v in r.items() if k != key and k is not None} for r in rows}
    return [by_id.get(str(i), {}) for i in ids]


def global_extractor(config: dict):
    """The collection's extractor (:func:`retrieval.steps.image_features.extractor_from_record`)."""
    from retrieval.steps.image_features import extractor_from_record

    try:
        return extractor_from_record(config)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; add a feature file made the same way (retrieval add COLLECTION --features "
                          "FILE)") from None


def _default_ids(paths: Sequence[Path], root: Optional[Path]) -> List[str]:
    if root is None:
        return [Path(p).stem for p in paths]
    return [Path(p).resolve().relative_to(root.resolve()).with_suffix("").as_posix() for p in paths]


def add_images(collection: Path, images: Sequence[Path], root: Optional[Path] = None,
               ids: Optional[Sequence[str]] = None, labels: Optional[Path] = None, replace: bool = False,
               progress: bool = False, extractor=None, n_jobs: int = 2) -> dict:
    """Describe ``images`` as the collection was described and add them (module docstring). ``ids``
    default to the path under ``root`` without its suffix (else the file stem). Returns what changed."""
    from retrieval.features.deep_extract import extract_global
    from retrieval.features.extract import extract_local_features
    from retrieval.features.local_extractors import local_extractor
    from retrieval.features.store import config_json, load_global
    from retrieval.indexing.collection import Collection
    from retrieval.indexing.metadata import Metadata

    coll = Collection.open(collection)
    images = [Path(p) for p in images]
    if not images:
        raise ConfigError("no images to add")
    ids = [str(i) for i in (ids if ids is not None else _default_ids(images, root))]
    if len(ids) != len(images) or len(set(ids)) != len(ids):
        raise ConfigError("image ids must be unique, one per image (two files share a name? pass root)")
    present = sorted(set(ids) & set(map(str, coll.live_ids().tolist())))
    if present and not replace:  # before any extraction
        raise ConfigError(f"{len(present)} id(s) already in the collection {collection}, e.g. {present[:5]}; pass "
                          "replace=True (--replace) to replace them")
    config = coll.manifest["config"]
    if extractor is None:
        extractor = global_extractor(config)
    elif config_json(extractor.config) != config_json(config):
        raise ConfigError(f"the extractor given has configuration {config_json(extractor.config)}, the collection "
                          f"records {config_json(config)}")
    key = hashlib.sha256("\n".join(f"{i}\t{p.resolve()}" for i, p in zip(ids, images)).encode()).hexdigest()[:16]
    staging = Path(collection) / f".staging-{key}"  # same images, same folder: a rerun resumes
    staging.mkdir(exist_ok=True)
    paths = [str(p) for p in images]
    extract_global(extractor, ids, paths, staging / "global.h5", n_jobs=n_jobs, progress=progress, desc="add")
    got_ids, vectors, _ = load_global(staging / "global.h5")
    order = {str(i): r for r, i in enumerate(got_ids)}
    vectors = vectors[[order[i] for i in ids]]
    local = None
    if coll.manifest.get("local_config"):
        local = staging / "local.h5"
        extract_local_features(ids, paths, local_extractor(dict(coll.manifest["local_config"])), local,
                               n_jobs=n_jobs, progress=progress, desc="add local")
    records = image_metadata(images, root)
    if labels is not None:
        records = [{**r, **extra} for r, extra in zip(records, labels_metadata(labels, ids))]
    info = coll.add(ids, vectors, Metadata.from_records(records), local_store=local, replace=replace)
    shutil.rmtree(staging, ignore_errors=True)
    return {"collection": str(collection), **info}


def add_features(collection: Path, features: Path, labels: Optional[Path] = None, replace: bool = False) -> dict:
    """Add every vector of a global feature file made with the collection's configuration."""
    from retrieval.features.store import config_json, load_global
    from retrieval.indexing.collection import Collection
    from retrieval.indexing.metadata import Metadata

    coll = Collection.open(collection)
    ids, vectors, config = load_global(features)
    if not len(ids):
        raise ConfigError(f"{features}: the feature file holds no vectors")
    if config_json(config) != config_json(coll.manifest["config"]):
        raise ConfigError(f"{features}: made with {config_json(config)}, the collection {collection} with "
                          f"{config_json(coll.manifest['config'])}: the vectors are not comparable")
    records = labels_metadata(labels, ids) if labels is not None else [{} for _ in ids]
    return {"collection": str(collection),
            **coll.add(ids, np.asarray(vectors), Metadata.from_records(records), replace=replace)}


def remove_ids(collection: Path, ids: Sequence[str]) -> dict:
    from retrieval.indexing.collection import Collection

    coll = Collection.open(collection)
    id_type = coll.manifest["id_type"]
    try:
        wanted = [int(i) for i in ids] if id_type == "int" else [str(i) for i in ids]
    except ValueError:
        raise ConfigError(f"the collection {collection} has integer ids; got {list(ids)[:3]}") from None
    try:
        return {"collection": str(collection), **coll.remove(wanted)}
    except KeyError as exc:
        raise ConfigError(str(exc.args[0])) from None
