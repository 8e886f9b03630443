"""Multi-view sets in the other layouts the multi-view protocol reads (``dataset`` of its experiment):
a labelled folder or class-per-folder tree, and the ``DS|DU`` multi-view tree, turned into the
:class:`~retrieval.datasets.viewsets.ViewCatalog` that ``labels.csv`` sets give directly."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from retrieval.datasets.files import natural_key
from retrieval.datasets.viewsets import PathLike, ViewCatalog, build_catalog, name_order, read_view_catalog

__all__ = ["VIEW_KINDS", "catalog_of_dataset", "read_views"]


#: where the multi-view protocol reads its views from (``dataset`` of its experiment)
VIEW_KINDS = ("views", "folder", "multiview")


def catalog_of_dataset(dataset, root: PathLike) -> ViewCatalog:
    """The database of a labelled :class:`~retrieval.datasets.dataset.RetrievalDataset` as a view catalog:
    one object per label (numbered 1, 2, ... in natural label order), its views placed by the
    ``azimuth_deg`` [``elevation_deg``] metadata when the dataset has it, else by ``view`` (the
    multi-view tree's ``<instance>.<k>``), else in file-name order."""
    if not dataset.db_labels:
        raise ValueError(f"{root}: the dataset has no labels, so its images cannot be grouped into objects")
    labels = [str(x) for x in dataset.db_labels]
    number = {lab: i + 1 for i, lab in enumerate(sorted(set(labels), key=natural_key))}
    object_ids = np.asarray([number[lab] for lab in labels], dtype=np.int64)
    paths = [Path(p) for p in dataset.db_paths]
    meta = dataset.db_metadata
    nan = np.full(len(paths), np.nan)
    if "azimuth_deg" in meta:
        first = np.asarray(meta["azimuth_deg"], dtype=np.float64) % 360.0
        second = np.asarray(meta.get("elevation_deg", np.zeros(len(paths))), dtype=np.float64)
        return build_catalog(Path(root), paths, object_ids, first, second, "azimuth", str(root))
    first = np.asarray(meta["view"], dtype=np.float64) if "view" in meta else name_order(paths)
    return build_catalog(Path(root), paths, object_ids, first, nan, "index", str(root))


def read_views(kind: str, root: PathLike):
    """``(catalog, (seen, unseen) or None)`` of a multi-view set in layout ``kind``:

    * ``views``: ``labels.csv`` with view geometry (:func:`read_view_catalog`);
    * ``folder``: a labelled folder or class-per-folder tree (one object per class,
      :func:`catalog_of_dataset`);
    * ``multiview``: the ``DS|DU/retrieval/<class>/<instance>/<instance>.<k>`` tree, one object per
      instance; the tree's own split comes back as the default seen (DS) / unseen (DU) objects."""
    from retrieval.datasets.folders import read_folder, read_multiview_tree

    root = Path(root)
    if kind == "views":
        return read_view_catalog(root), None
    if kind == "folder":
        return catalog_of_dataset(read_folder(root), root), None
    if kind != "multiview":
        raise ValueError(f"unknown multi-view layout {kind!r}; known: {', '.join(VIEW_KINDS)}")
    parts = {split: read_multiview_tree(root, split=split) for split in ("DS", "DU") if (root / split).is_dir()}
    if not parts:
        raise FileNotFoundError(f"{root}: no DS/ or DU/ folder (expected DS|DU/retrieval/<class>/<instance>/...)")
    merged = parts.get("DS") or parts["DU"]
    if len(parts) == 2:
        ds, du = parts["DS"], parts["DU"]
        merged = replace(ds, db_ids=list(ds.db_ids) + list(du.db_ids),
                                     db_paths=list(ds.db_paths) + list(du.db_paths),
                                     db_labels=list(ds.db_labels) + list(du.db_labels),
                                     db_metadata={k: list(v) + list(du.db_metadata[k]) for k, v in ds.db_metadata.items()})
    catalog = catalog_of_dataset(merged, root)
    if len(parts) < 2:
        return catalog, None
    number = {lab: i + 1 for i, lab in enumerate(sorted({str(x) for x in merged.db_labels}, key=natural_key))}
    seen = tuple(sorted({number[str(x)] for x in parts["DS"].db_labels}))
    unseen = tuple(sorted({number[str(x)] for x in parts["DU"].db_labels}))
    return catalog, (seen, unseen)
