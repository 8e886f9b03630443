"""Finding image files in a folder and checking that they decode.

Shared by every reader: :func:`list_images` (recursive, deterministic order), :func:`natural_key`
(``obj2`` sorts before ``obj10``), :func:`check_images` (decode every file in parallel and report the
ones that fail) and :func:`apply_on_error` (the readers' ``on_error="raise"|"collect"`` policy).
Nothing is left out silently: :func:`scan_images` lists what is not a readable image file (broken or
looping links, folders named like images, other files) and :func:`list_images` counts it in a
:class:`DatasetWarning`; ``on_error="collect"`` counts the unreadable images it skips the same way;
:func:`check_folder` is ``retrieval dataset check``'s report.
"""
from __future__ import annotations

import errno
import os
import re
import stat
import warnings
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple, Union

from retrieval.core.imageio import ImageLoadError, load_image

PathLike = Union[str, os.PathLike]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff",
                              ".webp", ".gif"})
ON_ERROR_CHOICES = ("raise", "collect")

__all__ = ["IMAGE_EXTENSIONS", "DatasetError", "DatasetWarning", "natural_key", "list_images", "scan_images",
           "images_by_id", "check_folder", "check_images", "apply_on_error", "require_dir", "read_bytes", "read_text",
           "check_safe_id", "check_inside"]


class DatasetError(ValueError):
    """A dataset folder or one of its files is missing, empty or malformed; the message names it."""


_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> Tuple:
    """Sort key that orders embedded numbers numerically: ``obj2__5 < obj2__10 < obj10__0``."""
    return tuple(int(part) if part.isdigit() else part for part in _DIGITS.split(str(text)))


def require_dir(path: PathLike, what: str = "folder") -> Path:
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"{path}: no such {what}")
    return path


def read_bytes(path: PathLike, what: str = "file") -> bytes:
    """The bytes of a dataset file; a folder, a missing or an unreadable file is a :class:`DatasetError`
    naming it."""
    path = Path(path)
    if path.is_dir():
        raise DatasetError(f"{path}: is a folder, expected a {what}")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such {what}") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None


def read_text(path: PathLike, what: str = "file") -> str:
    """The UTF-8 text of a dataset file (CSV, ground-truth list, label file; a byte-order mark is
    dropped). A missing, unreadable or non-UTF-8 file is a :class:`DatasetError` naming it (and the
    line of the first undecodable byte)."""
    path = Path(path)
    data = read_bytes(path, what)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise DatasetError(f"{path}:{line}: {what} is not UTF-8 text (byte 0x{data[exc.start]:02x} at "
                           f"offset {exc.start}); save it as UTF-8") from None


# an id that becomes part of a file path: letters, digits, '_', '-', '.', no leading dot, no
# separators, so "../x" or "/etc/x" can never reach outside the dataset folder
_SAFE_ID = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$")


def check_safe_id(image_id: str, where: str) -> str:
    """``image_id`` when it is a plain name that is safe to put in a path; :class:`DatasetError`
    naming ``where`` (file and line) otherwise (path separators, ``..``, empty, control characters)."""
    if not _SAFE_ID.match(image_id) or ".." in image_id:
        raise DatasetError(f"{where}: id {image_id!r} is not a plain name (letters, digits, '_', '-', "
                           "'.'); ids with path separators or '..' could read files outside the dataset")
    return image_id


def check_inside(path: PathLike, folder: PathLike, where: str) -> Path:
    """``path`` when it names a file inside ``folder`` (``..`` and absolute paths resolved lexically,
    not through symbolic links, which datasets use on purpose); :class:`DatasetError` naming ``where``
    otherwise."""
    path, folder = Path(path), Path(folder)
    normal = Path(os.path.normpath(folder / path))
    base = Path(os.path.normpath(folder))
    if normal != base and base not in normal.parents:
        raise DatasetError(f"{where}: {str(path)!r} points outside {folder}; file names must stay inside "
                           "the dataset folder")
    return normal


class DatasetWarning(UserWarning):
    """Something in a dataset folder was left out (not an image, a broken link, ...); the message
    names the folder, says how many entries and why."""


def scan_images(folder: PathLike, recursive: bool = True) -> Tuple[List[Path], List[Tuple[str, str]]]:
    """``(images, skipped)``: every image file (by extension, case-insensitive) under ``folder`` in
    the order :func:`list_images` gives, and ``(path, reason)`` for each entry left out: a symbolic
    link that is dangling or loops, a folder named like an image (``x.jpg/``), a file that is not an
    image by its extension (``notes.txt``, ``.DS_Store``). Folders themselves are not listed."""
    folder = require_dir(folder, "image folder")
    pattern = "**/*" if recursive else "*"
    paths: List[Path] = []
    skipped: List[Tuple[str, str]] = []
    for p in folder.glob(pattern):
        image_name = p.suffix.lower() in IMAGE_EXTENSIONS
        try:
            p.stat()
        except OSError as exc:  # ELOOP: a symbolic link loop; ENOENT: a dangling link
            loop = exc.errno == errno.ELOOP
            skipped.append((str(p), "symbolic link loop" if loop else "dangling symbolic link"))
            continue
        if p.is_dir():
            if image_name:
                skipped.append((str(p), "folder named like an image"))
            continue
        if not image_name:
            skipped.append((str(p), "non-image file (by its extension)"))
        elif p.is_file():
            paths.append(p)
        else:
            skipped.append((str(p), "not a regular file"))
    paths.sort(key=lambda p: natural_key(p.relative_to(folder).as_posix()))
    skipped.sort(key=lambda item: natural_key(item[0]))
    return paths, skipped


def skipped_summary(folder: PathLike, skipped: Sequence[Tuple[str, str]]) -> str:
    """One line: how many entries of ``folder`` were left out and why, the first of each reason."""
    by_reason: Dict[str, List[str]] = {}
    for path, reason in skipped:
        by_reason.setdefault(reason, []).append(path)
    parts = [f"{reason}: {len(paths)} (e.g. {paths[0]})" for reason, paths in by_reason.items()]
    what = "entry that is not a readable image" if len(skipped) == 1 else "entries that are not readable images"
    return f"{folder}: skipped {len(skipped)} {what}: {'; '.join(parts)}; fix or remove them if they should be images"


def list_images(folder: PathLike, recursive: bool = True) -> List[Path]:
    """Every image file (by extension, case-insensitive) under ``folder``, sorted by relative path
    in natural order. Raises :class:`DatasetError` naming the folder when it is missing or holds no
    images. Entries left out (broken links, folders named like images, other files below the top
    folder) are counted in one :class:`DatasetWarning` naming the folder (:func:`scan_images` lists
    them all). Other files directly in ``folder`` are not: a dataset's root holds its README, label
    file and query list."""
    paths, skipped = scan_images(folder, recursive)
    root = Path(folder)
    skipped = [(p, r) for p, r in skipped
               if Path(p).suffix.lower() in IMAGE_EXTENSIONS or Path(p).parent != root]
    if skipped:
        warnings.warn(skipped_summary(folder, skipped), DatasetWarning, stacklevel=2)
    if not paths:
        raise DatasetError(f"{folder}: no image files found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return paths


def _check_one(path: str) -> Tuple[str, str]:
    try:
        load_image(path)
    except ImageLoadError as exc:
        return path, exc.reason
    return path, ""


def check_images(paths: Iterable[PathLike], n_jobs: int = 1, progress: bool = True,
                 desc: str = "checking images") -> List[Tuple[str, str]]:
    """Decode every image fully (the way :func:`retrieval.core.imageio.load_image` does) and return
    ``[(path, reason), ...]`` for the files that fail (missing, empty, truncated, corrupt, not an
    image), in input order. ``n_jobs`` > 1 (or -1 for all cores) decodes in parallel with joblib."""
    paths = [str(p) for p in paths]
    if not paths:
        return []
    from tqdm.auto import tqdm

    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, leave=False)
    results: List[Tuple[str, str]] = []
    try:
        if n_jobs == 1:
            for path in paths:
                results.append(_check_one(path))
                bar.update(1)
        else:
            from joblib import Parallel, delayed

            # chunks keep the per-task overhead small against a ~1 ms decode
            chunk = 64
            runner = Parallel(n_jobs=n_jobs, return_as="generator")
            for part in runner(delayed(_check_many)(paths[i:i + chunk])
                               for i in range(0, len(paths), chunk)):
                results.extend(part)
                bar.update(len(part))
    finally:
        bar.close()
    return [(path, reason) for path, reason in results if reason]


def check_folder(path: PathLike, n_jobs: int = 1, progress: bool = True) -> dict:
    """``retrieval dataset check``: decode every image of the folder ``path`` (or the one file) and
    report ``checked``, ``unreadable`` and ``bad_files`` (entries named like images that cannot be
    read: broken links and folders count too), and ``skipped`` / ``skipped_files`` (other files)."""
    path = Path(path)
    paths, skipped = ([path], []) if path.is_file() else scan_images(path)
    broken = [s for s in skipped if Path(s[0]).suffix.lower() in IMAGE_EXTENSIONS]
    others = [s for s in skipped if s not in broken]
    if not paths and not broken:
        raise DatasetError(f"{path}: no image files found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    bad = broken + check_images(paths, n_jobs=n_jobs, progress=progress)
    return {"path": str(path), "checked": len(paths) + len(broken), "unreadable": len(bad),
            "bad_files": [{"path": p, "reason": r} for p, r in bad], "skipped": len(others),
            "skipped_files": [{"path": p, "reason": r} for p, r in others]}


def _check_many(paths: Sequence[str]) -> List[Tuple[str, str]]:
    return [_check_one(p) for p in paths]


def apply_on_error(problems: Sequence[Tuple[str, str]], on_error: str, where: PathLike) -> List[Tuple[str, str]]:
    """Raise :class:`DatasetError` listing the first problems when ``on_error='raise'``; return them
    unchanged (for ``RetrievalDataset.bad_files``) when ``on_error='collect'``."""
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, not {on_error!r}")
    problems = list(problems)
    if problems and on_error == "raise":
        shown = "; ".join(f"{p}: {r}" for p, r in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise DatasetError(f"{where}: {len(problems)} unreadable image file(s): {shown}{more}; "
                           "fix or remove them, or skip them with on_error='collect' (commands: --on-error "
                           "collect; retrieval run: --set dataset.on_error=collect)")
    if problems:
        warnings.warn(f"{where}: skipped {len(problems)} unreadable image file(s) (first: {problems[0][0]}: "
                      f"{problems[0][1]}); they are left out of the dataset", DatasetWarning, stacklevel=2)
    return problems


def missing_files(paths: Iterable[PathLike]) -> List[Tuple[str, str]]:
    """``(path, reason)`` for every path that does not exist or is empty (a cheap stat, no decode)."""
    out = []
    for p in paths:
        try:
            info = os.stat(p)
            size = info.st_size if stat.S_ISREG(info.st_mode) else None
        except OSError:
            size = None
        if size is None:
            out.append((str(p), "no such file"))
        elif size == 0:
            out.append((str(p), "file is empty (0 bytes)"))
    return out


def images_by_id(root: PathLike) -> Dict[str, Path]:
    """``id -> file`` for the images under ``root``: an id may be the path relative to ``root`` (with or
    without its suffix) or the file's stem; a stem shared by several files is left out."""
    root = Path(root)
    out: Dict[str, Path] = {}
    stems: Dict[str, List[Path]] = {}
    for path in list_images(root):
        rel = path.relative_to(root)
        out[rel.as_posix()] = path
        out[rel.with_suffix("").as_posix()] = path
        stems.setdefault(path.stem, []).append(path)
    for stem, paths in stems.items():
        if len(paths) == 1:
            out.setdefault(stem, paths[0])
    return out
