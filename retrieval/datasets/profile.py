"""What is in a dataset, before any model sees it: ``retrieval dataset profile --dataset KIND --data PATH
--out DIR`` (or :func:`main`) writes ``profile.json`` and ``profile.png`` with

* images per class and the long tail (sorted class sizes; share of classes with <= 1, 2, 5, 10 images);
* the grayscale share (mode L / LA / 1 / I / F from the header; with ``check_pixels``, RGB images whose
  channels are equal on a small draft decode count too: e.g. COIL-20 saved as RGB);
* image sizes and aspect ratios (width / height), from the header;
* EXIF capture time (DateTimeOriginal, else DateTime: the year histogram) and camera model, where present;
* missing and unreadable files (counts, first examples);
* exact duplicates (SHA-1 of the file bytes: groups, count, examples) and, optionally, near-duplicates:
  pairs of images whose global descriptors (a feature file written by ``retrieval extract global``,
  the toolkit's own features) have cosine >= ``near_threshold``.

It streams: images are taken one at a time from a records source (GLDv2's CSVs are read row by row,
never loaded whole); per image only the header is read (PIL opens lazily) unless ``check_pixels``
asks for a draft decode, and the file is hashed in chunks. Memory grows with the number of classes
(the class counts) and by 16 bytes per image (digest + row for the duplicate search); sizes are kept
as a seeded reservoir sample of ``sample_size`` for the plots.
"""
from __future__ import annotations

import csv
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np

from retrieval.core.config import Config, ConfigError
from retrieval.core.fileio import file_hash

PathLike = Union[str, os.PathLike]
#: one image: (split, image id, path, class label or None)
Record = Tuple[str, str, Path, Optional[str]]

__all__ = ["ProfileConfig", "main", "gldv2_records", "dataset_records", "profile_records"]

GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F", "P;L"}
EXIF_IFD, DATETIME, DATETIME_ORIGINAL, MODEL = 0x8769, 306, 36867, 272


@dataclass(frozen=True)
class ProfileConfig(Config):
    check_pixels: bool = True  # draft-decode RGB images to find grayscale ones stored as RGB
    hash_files: bool = True  # exact duplicates by file hash (reads every file once)
    near_features: Optional[str] = None  # global-feature file (ids = image ids) for near-duplicates
    near_threshold: float = 0.95
    sample_size: int = 20000
    examples: int = 20
    seed: int = 0

    def check(self) -> None:
        if not -1 <= self.near_threshold <= 1:
            raise ConfigError(f"near_threshold is a cosine in [-1, 1], got {self.near_threshold}")
        if self.sample_size < 1 or self.examples < 0:
            raise ConfigError("sample_size must be >= 1 and examples >= 0")


def gldv2_records(root: PathLike) -> Callable[[], Iterator[Record]]:
    """A re-iterable stream over a GLDv2 folder (train.csv with landmark_id, index.csv, test.csv),
    row by row; the image of id ``abc...`` is ``<split>/a/b/c/abc....jpg``."""
    from retrieval.datasets.gldv2 import gldv2_image_path

    root = Path(root)
    csvs = [(split, root / f"{split}.csv") for split in ("train", "index", "test")]
    present = [(s, p) for s, p in csvs if p.is_file()]
    if not present:
        raise FileNotFoundError(f"{root}: no train.csv, index.csv or test.csv (GLDv2 layout)")

    def stream() -> Iterator[Record]:
        for split, path in present:
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                if "id" not in (reader.fieldnames or []):
                    raise ValueError(f"{path}: no 'id' column")
                for row in reader:
                    label = row.get("landmark_id") or None
                    yield split, row["id"], gldv2_image_path(root / split, row["id"]), label
    return stream


def dataset_records(dataset) -> Callable[[], Iterator[Record]]:
    """A re-iterable stream over a :class:`RetrievalDataset`'s train, database and query images, each
    file once (a reader may list a query image in the database too)."""
    def stream() -> Iterator[Record]:
        seen = set()
        parts = [("train", dataset.train_ids or [], dataset.train_paths or [], dataset.train_labels),
                 ("database", dataset.db_ids, dataset.db_paths, dataset.db_labels),
                 ("query", dataset.query_ids, dataset.query_paths, dataset.query_labels)]
        for split, ids, paths, labels in parts:
            for i, (image_id, path) in enumerate(zip(ids, paths)):
                if str(path) in seen:
                    continue
                seen.add(str(path))
                yield split, str(image_id), Path(path), (str(labels[i]) if labels is not None else None)
    return stream


def _file_digest(path: Path) -> bytes:
    return file_hash(path, "sha1").digest()


def _looks_gray(im) -> bool:
    """Equal channels on a small draft decode (JPEG decodes at 1/8 scale; others are reduced)."""
    im.draft("RGB", (64, 64))
    small = np.asarray(im.convert("RGB").resize((32, 32)), dtype=np.int16)
    return int(np.abs(small[..., 0] - small[..., 1]).max()) <= 2 and int(np.abs(small[..., 1] - small[..., 2]).max()) <= 2


def _exif(im) -> Tuple[Optional[str], Optional[str]]:
    try:
        exif = im.getexif()
    except Exception:  # a damaged EXIF block is not an unreadable image
        return None, None
    if not exif:
        return None, None
    when = None
    try:
        when = exif.get_ifd(EXIF_IFD).get(DATETIME_ORIGINAL)
    except Exception:
        pass
    when = when or exif.get(DATETIME)
    model = exif.get(MODEL)
    return (str(when).strip("\x00 ") or None) if when else None, (str(model).strip("\x00 ") or None) if model else None


def profile_records(records: Callable[[], Iterator[Record]], conf: ProfileConfig, progress: bool = True) -> dict:
    """The profile (module docstring) of a records stream; see :func:`main` for the files."""
    from PIL import Image, UnidentifiedImageError
    from tqdm.auto import tqdm

    rng = np.random.default_rng(conf.seed)
    classes: Counter = Counter()
    splits: Counter = Counter()
    years: Counter = Counter()
    models: Counter = Counter()
    modes: Counter = Counter()
    sample: List[Tuple[int, int]] = []
    missing: List[str] = []
    unreadable: List[Tuple[str, str]] = []
    n = n_missing = n_bad = gray = with_time = with_model = unlabelled = 0
    digests = bytearray()
    for split, image_id, path, label in tqdm(records(), desc="profile", unit="img", disable=not progress):
        row = n
        n += 1
        splits[split] += 1
        if label is None:
            unlabelled += 1
        else:
            classes[label] += 1
        if not path.is_file():
            n_missing += 1
            if len(missing) < conf.examples:
                missing.append(str(path))
            digests += bytes(8) + row.to_bytes(8, "little")
            continue
        try:
            with Image.open(path) as im:
                w, h = im.size
                modes[im.mode] += 1
                when, model = _exif(im)
                is_gray = im.mode in GRAY_MODES or (conf.check_pixels and im.mode in ("RGB", "RGBA", "P")
                                                    and _looks_gray(im))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            n_bad += 1
            if len(unreadable) < conf.examples:
                unreadable.append((str(path), f"{type(exc).__name__}: {exc}"))
            digests += bytes(8) + row.to_bytes(8, "little")
            continue
        gray += int(is_gray)
        if when:
            with_time += 1
            if when[:4].isdigit():
                years[when[:4]] += 1
        if model:
            with_model += 1
            models[model] += 1
        if len(sample) < conf.sample_size:  # reservoir sample of sizes
            sample.append((w, h))
        else:
            j = int(rng.integers(0, n))
            if j < conf.sample_size:
                sample[j] = (w, h)
        digest = _file_digest(path)[:8] if conf.hash_files else bytes(8)
        digests += digest + row.to_bytes(8, "little")
    readable = n - n_missing - n_bad
    table = np.frombuffer(bytes(digests), dtype=np.dtype([("h", "<u8"), ("row", "<i8")]))
    duplicates = _duplicate_groups(table, records, conf.examples) if conf.hash_files else None
    sizes = np.asarray(sample, dtype=np.float64).reshape(-1, 2)
    counts = np.sort(np.fromiter(classes.values(), dtype=np.int64, count=len(classes)))[::-1]
    out = {
        "images": n, "splits": dict(splits), "readable": readable,
        "missing": {"count": n_missing, "examples": missing},
        "unreadable": {"count": n_bad, "examples": [{"path": p, "error": e} for p, e in unreadable]},
        "classes": _class_stats(counts, unlabelled),
        "grayscale": {"count": gray, "share": gray / readable if readable else float("nan"),
                      "pixels_checked": conf.check_pixels, "modes": dict(modes)},
        "sizes": _size_stats(sizes),
        "exif": {"capture_time": with_time, "capture_time_share": with_time / readable if readable else float("nan"),
                 "years": dict(sorted(years.items())), "camera_model": with_model,
                 "top_models": dict(models.most_common(conf.examples))},
        "exact_duplicates": duplicates,
    }
    return out, counts, sizes


def _duplicate_groups(table: np.ndarray, records, examples: int) -> dict:
    """Rows sharing a file digest (the zero digest marks skipped files); ids of the first groups
    come from a second pass over the records (no id is kept for every image)."""
    table = table[table["h"] != 0]
    order = np.argsort(table["h"], kind="stable")
    h, rows = table["h"][order], table["row"][order]
    same = np.flatnonzero(h[1:] == h[:-1]) + 1
    extra = len(same)  # images that repeat an earlier one
    starts = np.unique(np.r_[[i - 1 for i in same]]) if extra else np.zeros(0, dtype=np.int64)
    groups = []
    for s in starts:
        members = rows[s:s + np.searchsorted(h[s:], h[s], side="right")].tolist()
        if not groups or members != groups[-1]:
            groups.append(members)
        if len(groups) >= examples:
            break
    wanted = {r for g in groups for r in g}
    ids = {}
    if wanted:
        for row, (_, image_id, _, _) in enumerate(records()):
            if row in wanted:
                ids[row] = image_id
    n_groups = int(len(np.unique(h[same]))) if extra else 0
    return {"groups": n_groups, "redundant_images": int(extra),
            "examples": [[ids[r] for r in g] for g in groups]}


def _class_stats(counts: np.ndarray, unlabelled: int) -> dict:
    if len(counts) == 0:
        return {"classes": 0, "unlabelled_images": unlabelled}
    total = counts.sum()
    return {"classes": int(len(counts)), "unlabelled_images": unlabelled, "max": int(counts[0]),
            "median": float(np.median(counts)), "min": int(counts[-1]), "mean": float(counts.mean()),
            "classes_with_at_most": {str(k): int((counts <= k).sum()) for k in (1, 2, 5, 10)},
            "share_of_images_in_top_10pct_classes": float(counts[:max(1, len(counts) // 10)].sum() / total)}


def _size_stats(sizes: np.ndarray) -> dict:
    if len(sizes) == 0:
        return {"sampled": 0}
    aspect = sizes[:, 0] / sizes[:, 1]
    common = Counter(map(tuple, sizes.astype(int).tolist())).most_common(10)
    return {"sampled": int(len(sizes)), "width": _quantiles(sizes[:, 0]), "height": _quantiles(sizes[:, 1]),
            "aspect_w_over_h": _quantiles(aspect), "landscape_share": float((aspect > 1).mean()),
            "portrait_share": float((aspect < 1).mean()),
            "most_common": [{"size": f"{w}x{h}", "count": c} for (w, h), c in common]}


def _quantiles(x: np.ndarray) -> dict:
    q = np.quantile(x, [0, 0.05, 0.5, 0.95, 1])
    return dict(zip(("min", "p5", "median", "p95", "max"), (float(v) for v in q)))


def near_duplicates(feature_file: PathLike, threshold: float, examples: int) -> dict:
    """Pairs of images whose global descriptors have cosine >= ``threshold`` (blocked exact search of
    each image's 10 nearest neighbours with :class:`retrieval.indexing.index.Index`)."""
    from retrieval.features.store import load_global
    from retrieval.indexing.index import Index

    ids, vectors, config = load_global(feature_file)
    v = np.asarray(vectors, dtype=np.float32)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    found = Index(v, ids=list(range(len(v)))).search(v, min(11, len(v)))
    pairs = set()
    for i, (nbrs, sims) in enumerate(zip(found.ids, found.scores)):
        for j, s in zip(nbrs, sims):
            if int(j) != i and s >= threshold:
                pairs.add((min(i, int(j)), max(i, int(j)), float(s)))
    ranked = sorted(pairs, key=lambda p: -p[2])
    return {"feature_file": str(feature_file), "threshold": threshold, "pairs": len(ranked),
            "images": len({i for p in ranked for i in p[:2]}),
            "examples": [{"a": ids[a], "b": ids[b], "cosine": round(s, 4)} for a, b, s in ranked[:examples]]}


def plot_profile(profile: dict, counts: np.ndarray, sizes: np.ndarray, path: Path) -> Path:
    from retrieval.core.report import save_figure, subplots

    fig, axes = subplots(1, 4, figsize=(20, 4))
    ax = axes[0]
    if len(counts):
        ax.loglog(np.arange(1, len(counts) + 1), counts, ".-", ms=2)
    ax.set(title="images per class (sorted: the long tail)", xlabel="class rank", ylabel="images")
    ax = axes[1]
    if len(sizes):
        ax.scatter(sizes[:, 0], sizes[:, 1], s=3, alpha=0.3)
    ax.set(title=f"image sizes ({len(sizes)} sampled)", xlabel="width", ylabel="height")
    ax = axes[2]
    if len(sizes):
        ax.hist(np.log2(sizes[:, 0] / sizes[:, 1]), bins=40)
    ax.set(title="aspect ratio", xlabel="log2(width / height)", ylabel="images")
    ax = axes[3]
    years = profile["exif"]["years"]
    ax.bar(list(years), list(years.values()))
    ax.set(title=f"EXIF capture year ({profile['exif']['capture_time']} images)", xlabel="year")
    ax.tick_params(axis="x", rotation=90)
    return save_figure(fig, path, dpi=90)


def main(conf: ProfileConfig, dataset: Union[Callable[[], Iterator[Record]], Iterable, object],
         out: PathLike, progress: bool = True) -> Path:
    """Profile ``dataset`` (a records stream factory, e.g. :func:`gldv2_records`, or a
    :class:`RetrievalDataset`) into ``out``/profile.json and profile.png; returns the JSON's path."""
    from retrieval.core.fileio import atomic_write_text

    records = dataset if callable(dataset) else dataset_records(dataset)
    result, counts, sizes = profile_records(records, conf, progress)
    if conf.near_features:
        result["near_duplicates"] = near_duplicates(conf.near_features, conf.near_threshold, conf.examples)
    result["config"] = conf.to_dict()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result["plot"] = str(plot_profile(result, counts, sizes, out / "profile.png"))
    path = out / "profile.json"
    atomic_write_text(path, json.dumps(result, indent=1, default=str))
    return path
