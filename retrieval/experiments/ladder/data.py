"""The ladder's data: the object dataset (GLDv2 format, made from COIL-100 or a labelled folder when
needed), the landmark dataset (any reader with ground-truth lists), the one quick-subset helper, and
the cross-fitting groups are :func:`retrieval.steps.choose.query_groups`."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Dict, Hashable, List, Sequence, Tuple

import numpy as np

from retrieval.datasets import DatasetError, RetrievalDataset

from retrieval.experiments.ladder.settings import LadderConfig
from retrieval.experiments.ladder.stages import RunCache, remove, say

__all__ = ["object_dataset", "landmark_dataset", "read_landmarks", "quick_subset",
           "QUICK_COIL", "FULL_COIL"]

QUICK_COIL = dict(train_objects=range(1, 9), test_objects=range(51, 59))
FULL_COIL = dict(train_objects=range(1, 51), test_objects=range(51, 101))


def _coil_root(conf: LadderConfig) -> Path:
    root = Path(conf.object.data) if conf.object.data else conf.root()
    for candidate in (root, root / "coil100"):
        if (candidate / "labels.csv").is_file():
            return candidate
    raise DatasetError(f"{root}: no COIL-100 here (expected {root / 'coil100' / 'labels.csv'}); set "
                       "object.data, or object.dataset = 'gldv2' / 'folder'")


def _coil_split(coil_root: Path, quick: bool, query_step: int) -> RetrievalDataset:
    """COIL-100 in GLDv2 format: full = objects 1-50 train, 51-100 test; quick = objects 1-8 / 51-58,
    every second view (36 per object), every 6th of those a query."""
    from retrieval.datasets import coil100_gldv2_split, labelled_gldv2_split, read_labelled_folder

    if not quick:
        return coil100_gldv2_split(coil_root, query_step=query_step, **FULL_COIL)
    full = read_labelled_folder(coil_root)
    objects = {str(o) for o in QUICK_COIL["train_objects"]} | {str(o) for o in QUICK_COIL["test_objects"]}
    azimuth = full.db_metadata.get("azimuth_deg")
    keep = [i for i, lab in enumerate(full.db_labels)
            if lab in objects and (azimuth is None or int(round(float(azimuth[i]))) % 10 == 0)]
    return labelled_gldv2_split(_take_db(full, keep), [str(o) for o in QUICK_COIL["train_objects"]],
                                [str(o) for o in QUICK_COIL["test_objects"]], query_step=6)


def _take_db(ds: RetrievalDataset, keep: Sequence[int]) -> RetrievalDataset:
    """The labelled database rows ``keep`` of ``ds`` (no queries)."""
    return RetrievalDataset(
        name=ds.name, root=ds.root, db_ids=[ds.db_ids[i] for i in keep], db_paths=[ds.db_paths[i] for i in keep],
        query_ids=[], query_paths=[], ground_truth={}, db_labels=[ds.db_labels[i] for i in keep],
        bad_files=ds.bad_files, db_metadata={k: [v[i] for i in keep] for k, v in ds.db_metadata.items()},
        metadata=ds.metadata)


def _folder_split(root: Path, conf: LadderConfig) -> RetrievalDataset:
    """A labelled folder split by label: the first ``train_fraction`` of the labels (natural order)
    train, the rest index + queries (:func:`retrieval.datasets.labelled_gldv2_split`); quick: at most 8
    labels each side."""
    from retrieval.datasets import labelled_gldv2_split, natural_key, read_labelled_folder

    full = read_labelled_folder(root)
    labels = sorted(set(full.db_labels), key=natural_key)
    n_train = max(1, min(len(labels) - 2, int(round(conf.object.train_fraction * len(labels)))))
    train, test = labels[:n_train], labels[n_train:]
    if len(test) < 2:
        raise DatasetError(f"{root}: {len(labels)} labels leave fewer than 2 test labels (Public and Private)")
    if conf.quick:
        train, test = train[:8], test[:8]
    keep = [i for i, lab in enumerate(full.db_labels) if lab in set(train) | set(test)]
    return labelled_gldv2_split(_take_db(full, keep), train, test, query_step=conf.object.query_step)


def object_dataset(conf: LadderConfig, cache: RunCache) -> Tuple[RetrievalDataset, str]:
    """The object half's GLDv2-format dataset and its display name. ``gldv2`` is read as it is; COIL-100
    and labelled folders are exported to ``<cache>/<name>-gldv2`` once (the run cache is cleared when
    the export would come from other data or another split)."""
    from retrieval.datasets import export_gldv2, read_gldv2
    from retrieval.datasets.gldv2 import MANIFEST

    o = conf.object
    if o.dataset == "gldv2":
        if not o.data or not Path(o.data).is_dir():
            raise DatasetError(f"{o.data or '(object.data unset)'}: no such GLDv2 folder")
        from retrieval.datasets.gldv2_protocol import read_gldv2_protocol

        with cache.stage("data") as st:
            st.computed = False
            ds = read_gldv2_protocol(o.data, o.gldv2_protocol)
        if not ds.train_ids:
            raise DatasetError(f"{o.data}: no train.csv (or no training images): E2-E4 need training data")
        return ds, Path(o.data).resolve().name or "gldv2"
    if o.dataset == "coil100":
        source, base = _coil_root(conf), "coil100"
        split = {k: [min(v), max(v)] for k, v in (QUICK_COIL if conf.quick else FULL_COIL).items()}
        make = lambda: _coil_split(source, conf.quick, o.query_step)  # noqa: E731
    else:
        source = Path(o.data)
        if not source.is_dir():
            raise DatasetError(f"{o.data or '(object.data unset)'}: no such labelled folder")
        base = source.resolve().name
        split = {"train_fraction": o.train_fraction}
        make = lambda: _folder_split(source, conf)  # noqa: E731
    name = f"{base}-gldv2"
    folder = cache.root / name
    key = {"source": str(source.resolve()), "quick": conf.quick, "split": split, "version": 1}
    if o.query_step != 8:
        key["query_step"] = o.query_step
    key_file = cache.root / "data.json"
    stale = key_file.is_file() and json.loads(key_file.read_text()) != key
    if "data" in conf.recompute or stale:
        if stale:
            say(f"{folder} was exported from other data or another split: clearing {cache.root}")
            remove(cache.root)
            cache.timer.seconds.clear()
        else:
            remove(folder)
    with cache.stage("data") as st:
        if not (folder / MANIFEST).is_file() or not key_file.is_file():
            say(f"exporting {base} to GLDv2 format in {folder}")
            export_gldv2(make(), folder, progress=conf.progress)
            key_file.parent.mkdir(parents=True, exist_ok=True)
            key_file.write_text(json.dumps(key, indent=1))
        else:
            st.computed = False
        ds = read_gldv2(folder)
    return ds, name + ("-quick" if conf.quick else "")


def landmark_dataset(conf: LadderConfig) -> Tuple[RetrievalDataset, str]:
    """The landmark half's dataset (``oxford`` / ``paris``: standard lists, ``revisited``: Medium,
    ``gldv2``: its solution file) and its display name; quick: :func:`quick_subset`."""
    lm = conf.landmark
    root = Path(lm.data) if lm.data else conf.root() / "oxford5k_subset"
    ds = read_landmarks(lm.dataset, root)
    from retrieval.experiments.ladder.revisited import add_revisited_queries

    ds = add_revisited_queries(conf, ds)  # the revisited queries it lacks, when those protocols are asked for
    name = root.resolve().name
    if conf.quick:
        ds = quick_subset(ds)
        name += "-quick"
    return ds, name


def read_landmarks(kind: str, root) -> RetrievalDataset:
    """A landmark dataset with ground truth: ``oxford`` / ``paris`` (standard lists), ``revisited``
    (Medium), ``gldv2`` (its solution file), ``holidays`` / ``ukbench`` (their numbering), in any layout
    :func:`retrieval.datasets.open.open_dataset` reads; query labels default to the query ids."""
    from retrieval.datasets.open import DatasetConfig, open_dataset

    from retrieval.experiments.ladder.settings import LANDMARK_KINDS

    if kind not in LANDMARK_KINDS:
        raise DatasetError(f"unknown landmark dataset kind {kind!r}; known: {sorted(LANDMARK_KINDS)}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such {kind} folder")
    ds = open_dataset(DatasetConfig(kind=kind, path=str(root)))  # every layout the kind reads
    if not ds.query_ids:
        raise DatasetError(f"{root}: no queries")
    if ds.query_labels is None:
        ds = replace(ds, query_labels=[str(q) for q in ds.query_ids])
    return ds


def quick_subset(dataset: RetrievalDataset, n_labels: int = 2, per_label: int = 2, n_others: int = 20,
                 seed: int = 0) -> RetrievalDataset:
    """A small copy for smoke runs (the one quick-subset helper): the first ``per_label`` queries of
    the ``n_labels`` labels with the fewest relevant images, a database of their positives and junk
    plus ``n_others`` other images (seeded), ground truth restricted to that database."""
    by_label: Dict[Hashable, List[int]] = {}
    labels = dataset.query_labels or [str(q) for q in dataset.query_ids]
    for i, lab in enumerate(labels):
        if dataset.query_ids[i] in dataset.ground_truth:
            by_label.setdefault(lab, []).append(i)
    size = {lab: len(dataset.ground_truth[dataset.query_ids[pos[0]]].positives) for lab, pos in by_label.items()}
    chosen = sorted((lab for lab in by_label if size[lab] > 0), key=lambda lab: (size[lab], str(lab)))[:n_labels]
    qpos = [p for lab in sorted(chosen, key=str) for p in by_label[lab][:per_label]]
    keep = set()
    for p in qpos:
        t = dataset.ground_truth[dataset.query_ids[p]]
        keep |= t.positives | t.junk
    others = sorted(i for i in dataset.db_ids if i not in keep)
    rng = np.random.default_rng(seed)
    keep |= set(rng.choice(others, size=min(n_others, len(others)), replace=False).tolist()) if others else set()
    dpos = [i for i, d in enumerate(dataset.db_ids) if d in keep]
    truth = {}
    for p in qpos:
        t = dataset.ground_truth[dataset.query_ids[p]]
        truth[dataset.query_ids[p]] = replace(t, positives=t.positives & keep, junk=t.junk & keep)
    take = lambda xs, pos: None if xs is None else [xs[i] for i in pos]  # noqa: E731
    return replace(dataset, name=dataset.name + "-quick", db_ids=take(dataset.db_ids, dpos),
                   db_paths=take(dataset.db_paths, dpos), db_labels=take(dataset.db_labels, dpos),
                   query_ids=take(dataset.query_ids, qpos), query_paths=take(dataset.query_paths, qpos),
                   query_labels=take(labels, qpos), query_boxes=take(dataset.query_boxes, qpos),
                   ground_truth=truth,
                   db_metadata={k: take(v, dpos) for k, v in dataset.db_metadata.items()},
                   query_metadata={k: take(v, qpos) for k, v in dataset.query_metadata.items()},
                   metadata=dict(dataset.metadata, subset="quick"))
