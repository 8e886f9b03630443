"""A GLDv2-format folder at the real row counts, its images linked from a pool of real images.

:func:`generate_gldv2` writes ``train.csv`` (id,url,landmark_id), ``train_clean.csv``
(landmark_id,images), ``index.csv``, ``test.csv`` and ``retrieval_solution_v2.1.csv`` (Public /
Private / Ignored) with GLDv2's row counts times ``scale`` (``scale=1``: 4,132,914 train images of
203,094 landmarks; the clean subset 1,580,470 images of 81,313 landmarks; 761,757 index and 117,577
test images; 1,129 scored queries, a third Public). Landmark sizes follow a long tail (Zipf
weights); ids are 16 hex digits from ``default_rng(seed)``.

Images: GLDv2 keeps ``<split>/a/b/c/<id>.jpg``. Every id maps to one pool image (the pool is the
sorted list of image files under ``pool_dirs``; many ids share a file) through its first 8 hex
digits, so :func:`link_images` can materialise any subset later (``images="lazy"``, the default:
no image links until asked for; ``"all"`` links every id, which at full size is 5 million
symlinks). ``gldv2_pool.json`` keeps the pool.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Union

import numpy as np

from retrieval.core.fileio import atomic_path, atomic_write_text
from retrieval.datasets.files import DatasetError, list_images
from retrieval.datasets.gldv2_layout import SOLUTION_CSV, gldv2_image_path

PathLike = Union[str, os.PathLike]

__all__ = ["FULL_COUNTS", "generate_gldv2", "link_images", "pool_image", "CLEAN_TRAIN_CSV", "POOL_FILE"]

CLEAN_TRAIN_CSV = "train_clean.csv"
POOL_FILE = "gldv2_pool.json"
FULL_COUNTS = {"train": 4_132_914, "landmarks": 203_094, "clean_images": 1_580_470, "clean_landmarks": 81_313,
               "index": 761_757, "test": 117_577, "scored_queries": 1_129, "index_landmarks": 101_302}
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def scaled_counts(scale: float) -> Dict[str, int]:
    """GLDv2's counts times ``scale`` (each at least 2; the clean subset never exceeds train)."""
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    c = {k: max(2, int(round(v * scale))) for k, v in FULL_COUNTS.items()}
    c["landmarks"] = min(c["landmarks"], c["train"])
    c["clean_landmarks"] = min(c["clean_landmarks"], c["landmarks"])
    c["clean_images"] = max(c["clean_landmarks"], min(c["clean_images"], c["train"]))
    c["index_landmarks"] = min(c["index_landmarks"], c["index"])
    c["scored_queries"] = min(c["scored_queries"], c["test"])
    return c


def hex_ids(values: np.ndarray) -> np.ndarray:
    """uint64 values as 16-character lowercase hex strings (numpy unicode array), vectorised."""
    shifts = np.arange(60, -4, -4, dtype=np.uint64)
    nibbles = ((values.astype(np.uint64)[:, None] >> shifts) & np.uint64(15)).astype(np.intp)
    return np.ascontiguousarray(_HEX[nibbles]).view("S16").ravel().astype("U16")


def _labels(rng: np.random.Generator, n_images: int, n_labels: int, exponent: float = 1.1) -> np.ndarray:
    """Each of ``n_labels`` labels at least once, the rest drawn with Zipf weights (long tail)."""
    weights = 1.0 / np.arange(1, n_labels + 1) ** exponent
    rest = rng.choice(n_labels, size=n_images - n_labels, p=weights / weights.sum())
    labels = np.concatenate([np.arange(n_labels), rest])
    rng.shuffle(labels)
    return labels


def _pool(pool_dirs: Sequence[PathLike]) -> List[Path]:
    files: List[Path] = []
    for d in pool_dirs:
        if not Path(d).is_dir():
            raise DatasetError(f"{d}: image pool folder not found")
        files += [Path(p).resolve() for p in list_images(d, recursive=True)]
    if not files:
        raise DatasetError(f"no images under {list(map(str, pool_dirs))}")
    return sorted(set(files))


def pool_image(pool: Sequence[Path], image_id: str) -> Path:
    """The pool file an id stands for (from the id's first 8 hex digits)."""
    return pool[int(image_id[:8], 16) % len(pool)]


def _write_csv(path: Path, frame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def generate_gldv2(out_dir: PathLike, pool_dirs: Sequence[PathLike], scale: float = 1.0, seed: int = 0,
                   images: str = "lazy", link: str = "symlink", progress: bool = True) -> Dict[str, int]:
    """Write the GLDv2 folder (see the module docstring) and return its counts."""
    import pandas as pd

    if images not in ("lazy", "all"):
        raise ValueError(f"images must be 'lazy' or 'all', not {images!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    c = scaled_counts(scale)
    pool = _pool(pool_dirs)
    rng = np.random.default_rng(seed)
    n_all = c["train"] + c["index"] + c["test"]
    raw = np.unique(rng.integers(0, 2 ** 63, size=int(n_all * 1.001) + 16, dtype=np.int64))
    if len(raw) < n_all:
        raise DatasetError("id collision beyond the margin; use another seed")
    raw = rng.permutation(raw)[:n_all]
    ids = hex_ids(raw.astype(np.uint64))
    train_ids, index_ids, test_ids = np.split(ids, [c["train"], c["train"] + c["index"]])

    train_labels = _labels(rng, c["train"], c["landmarks"])
    urls = np.char.add(np.char.add("https://upload.wikimedia.org/wikipedia/commons/", train_ids), ".jpg")
    _write_csv(out / "train.csv", pd.DataFrame({"id": train_ids, "url": urls, "landmark_id": train_labels}))

    # clean subset: the largest landmarks, one image each for sure, then random images of them
    sizes = np.bincount(train_labels, minlength=c["landmarks"])
    clean_lm = np.sort(np.argsort(-sizes, kind="stable")[:c["clean_landmarks"]])
    in_clean = np.isin(train_labels, clean_lm)
    cand = np.flatnonzero(in_clean)
    if len(cand) < c["clean_images"]:
        raise DatasetError(f"the clean landmarks hold {len(cand)} images, fewer than {c['clean_images']}")
    first = np.unique(train_labels[cand], return_index=True)[1]
    rest = np.setdiff1d(np.arange(len(cand)), first)
    chosen = cand[np.sort(np.concatenate([first, rng.choice(rest, c["clean_images"] - len(first), replace=False)]))]
    clean = pd.DataFrame({"landmark_id": train_labels[chosen], "id": train_ids[chosen]})
    clean = clean.groupby("landmark_id", sort=True)["id"].agg(" ".join).reset_index()
    clean.columns = ["landmark_id", "images"]
    _write_csv(out / CLEAN_TRAIN_CSV, clean)

    _write_csv(out / "index.csv", pd.DataFrame({"id": index_ids}))
    _write_csv(out / "test.csv", pd.DataFrame({"id": test_ids}))

    # solution: scored queries look for every index image of one index landmark
    index_labels = _labels(rng, c["index"], c["index_landmarks"])
    order = np.argsort(index_labels, kind="stable")
    starts = np.searchsorted(index_labels[order], np.arange(c["index_landmarks"] + 1))
    scored = rng.choice(c["test"], size=c["scored_queries"], replace=False)
    usage = np.full(c["test"], "Ignored", dtype="U7")
    n_public = max(1, c["scored_queries"] // 3)
    usage[scored[:n_public]], usage[scored[n_public:]] = "Public", "Private"
    images_col = np.full(c["test"], "None", dtype=object)
    for q, lm in zip(scored, rng.integers(0, c["index_landmarks"], size=len(scored))):
        images_col[q] = " ".join(index_ids[order[starts[lm]:starts[lm + 1]]])
    _write_csv(out / SOLUTION_CSV, pd.DataFrame({"id": test_ids, "images": images_col, "Usage": usage}))
    _write_csv(out / "index_labels.csv", pd.DataFrame({"id": index_ids, "landmark_id": index_labels}))

    atomic_write_text(out / POOL_FILE, json.dumps({"seed": seed, "scale": scale, "counts": c,
                                                   "pool": [str(p) for p in pool]}, indent=0))
    counts = dict(c, pool=len(pool), linked=0)
    if images == "all":
        for split, split_ids in (("train", train_ids), ("index", index_ids), ("test", test_ids)):
            counts["linked"] += link_images(out, split, split_ids, link=link, progress=progress)
    return counts


def link_images(root: PathLike, split: str, image_ids: Iterable[str], link: str = "symlink",
                progress: bool = True) -> int:
    """Materialise ``root/<split>/a/b/c/<id>.jpg`` for ``image_ids`` as links to their pool images
    (``gldv2_pool.json``); ids already present are skipped. Returns how many links were made."""
    from tqdm.auto import tqdm

    root = Path(root)
    try:
        pool = [Path(p) for p in json.loads((root / POOL_FILE).read_text())["pool"]]
    except (OSError, ValueError, KeyError) as exc:
        raise DatasetError(f"{root / POOL_FILE}: no readable image pool ({exc}); run generate_gldv2 first") from None
    if link not in ("symlink", "hardlink"):
        raise ValueError(f"link must be 'symlink' or 'hardlink', not {link!r}")
    made = 0
    made_dirs = set()
    for image_id in tqdm(list(image_ids), desc=f"link {split}", unit="img", disable=not progress, leave=False):
        target = gldv2_image_path(root / split, image_id)
        if target.parent not in made_dirs:
            target.parent.mkdir(parents=True, exist_ok=True)
            made_dirs.add(target.parent)
        if os.path.lexists(target):
            continue
        source = pool_image(pool, image_id)
        (os.symlink if link == "symlink" else os.link)(source, target)
        made += 1
    return made
