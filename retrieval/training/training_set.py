"""What a training run trains on: the images and labels of a labelled folder (all of it, or the labels
listed) or of a GLDv2-format folder's train split (``retrieval train ... --data --format --labels``)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

__all__ = ["parse_label_ranges", "load_training_set"]


def parse_label_ranges(text: Optional[str]) -> Optional[set]:
    """``'1-50,60,70-72'`` -> {'1', ..., '50', '60', '70', '71', '72'} (labels as text); None -> None."""
    if not text:
        return None
    out = set()
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = part.split("-", 1)
            try:
                out.update(str(v) for v in range(int(lo), int(hi) + 1))
            except ValueError:
                raise ValueError(f"--labels: {part!r} is not a range of integers like 1-50") from None
        elif part:
            out.add(part)
    return out


def load_training_set(data: str, fmt: str = "folder", labels: Optional[str] = None):
    """``(paths, labels)`` to train on: a labelled folder (images/ + labels.csv, e.g. COIL-100), all
    of it or the ``labels`` listed, or the train split of a GLDv2-format folder."""
    from retrieval.datasets import read_gldv2, read_labelled_folder

    root = Path(data)
    keep = parse_label_ranges(labels)
    if fmt == "folder":
        ds = read_labelled_folder(root)
        paths, names = ds.db_paths, ds.db_labels
    elif fmt == "gldv2":
        ds = read_gldv2(root)
        if not ds.train_paths:
            raise ValueError(f"{root}: no train split (train.csv) in this GLDv2 folder")
        paths, names = ds.train_paths, ds.train_labels
    else:
        raise ValueError(f"unknown training data format {fmt!r}; choose folder or gldv2")
    if keep is not None:
        rows = [i for i, lab in enumerate(names) if str(lab) in keep]
        if not rows:
            raise ValueError(f"{root}: no image has a label in --labels {labels!r}")
        paths, names = [paths[i] for i in rows], [names[i] for i in rows]
    return list(paths), list(names)
