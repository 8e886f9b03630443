"""The one L2 normaliser for numpy rows (torch tensors: :func:`retrieval.features.pooling.l2n`), and the
checks every index applies to the vectors and ids it is given (:mod:`retrieval.indexing.index`)."""
from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np

__all__ = ["l2_normalize_rows", "normalize_rows", "as_matrix", "check_unit_norm", "id_array", "UNIT_NORM_TOLERANCE",
           "check_file_rows"]

UNIT_NORM_TOLERANCE = 1e-3


def l2_normalize_rows(x, eps: float = 1e-12, zero_rows: str = "keep", what: str = "vectors",
                      copy: bool = False) -> np.ndarray:
    """Rows of ``x`` (float32) divided by their L2 norm, in place on a float32 array unless ``copy``.

    A row whose norm is at most ``eps`` has no direction: ``zero_rows="keep"`` leaves it all zero,
    ``"error"`` refuses it with a ValueError naming the rows of ``what``."""
    if zero_rows not in ("keep", "error"):
        raise ValueError(f"zero_rows must be 'keep' or 'error', got {zero_rows!r}")
    x = np.array(x, dtype=np.float32, copy=True) if copy else np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{what} must be 2-D (N, D), got shape {x.shape}")
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64)).astype(np.float32)
    nz = norms > eps
    if zero_rows == "error" and not nz.all():
        zero = np.flatnonzero(~nz)
        raise ValueError(f"{what} rows {zero[:10].tolist()}{' ...' if zero.size > 10 else ''} are all "
                         "zero and cannot be L2-normalised")
    x[nz] /= norms[nz, None]
    x[~nz] = 0.0
    return x


def as_matrix(vectors, what: str) -> np.ndarray:
    """``vectors`` as a C-contiguous float32 (n, d) array, or a ValueError saying what is wrong."""
    if hasattr(vectors, "detach") and hasattr(vectors, "cpu"):  # a torch tensor
        vectors = vectors.detach().cpu().numpy()
    arr = np.asarray(vectors)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{what} must be a real floating-point array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{what} must be 2-D (n, dim), got shape {arr.shape}"
                         + ("; for a single vector use v[None, :]" if arr.ndim == 1 else ""))
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.size and not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        raise ValueError(f"{what} contain NaN or infinite values (rows {bad[:10].tolist()}"
                         f"{' ...' if bad.size > 10 else ''})")
    return arr


def normalize_rows(vectors: np.ndarray, what: str = "vectors") -> np.ndarray:
    """Rows divided by their L2 norm (float32, a new array); a zero row cannot be normalised and is
    refused (:func:`retrieval.core.vectors.l2_normalize_rows`)."""
    return l2_normalize_rows(vectors, eps=0.0, zero_rows="error", what=what, copy=True)


def check_unit_norm(vectors: np.ndarray, what: str) -> None:
    if not vectors.size:
        return
    norms = np.linalg.norm(vectors, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > UNIT_NORM_TOLERANCE)
    if bad.size:
        raise ValueError(f"{what} are not L2-normalised (row {int(bad[0])} has norm {norms[bad[0]]:.4g}; "
                         f"{bad.size} rows off by more than {UNIT_NORM_TOLERANCE}); normalise them or "
                         "build the index with normalize=True")


def id_array(ids: Sequence[Hashable], what: str = "ids") -> np.ndarray:
    """Ids as a 1-D numpy array: int64 when all are integers, unicode when all are strings."""
    if not isinstance(ids, np.ndarray):
        ids = list(ids)
        kinds = {str if isinstance(x, str) else int if isinstance(x, (int, np.integer))
                 and not isinstance(x, bool) else type(x) for x in ids}
        if kinds - {str, int} or len(kinds) > 1:
            raise ValueError(f"{what} must be all strings or all integers, got types "
                             f"{sorted(t.__name__ for t in kinds)}")
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a flat sequence, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64)
    if arr.dtype.kind == "U":
        return arr
    if arr.dtype.kind == "S":
        return arr.astype(str)
    raise ValueError(f"{what} must be all strings or all integers, got dtype {arr.dtype} "
                     f"(first id {arr.flat[0]!r})")


def check_file_rows(path, ids: Sequence[Hashable], vectors: np.ndarray, what: str = "image") -> np.ndarray:
    """The rows of a feature file's ``vectors`` that are all zero (an image without keypoints: no
    direction), after refusing a row with NaN or infinite values with a ValueError naming ``path``
    and the row's id (not only its position)."""
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        more = f" and {bad.size - 1} more" if bad.size > 1 else ""
        raise ValueError(f"{path}: {what} {ids[bad[0]]!r} (row {int(bad[0])}){more} has NaN or infinite values; "
                         "extract it again or leave it out")
    return np.flatnonzero(~np.any(vectors != 0, axis=1))
