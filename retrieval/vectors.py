"""The one L2 normaliser for numpy rows (torch tensors: :func:`retrieval.features.pooling.l2n`)."""
from __future__ import annotations

import numpy as np

__all__ = ["l2_normalize_rows"]


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
