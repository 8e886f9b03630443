"""PCA-whitening of global descriptors (VLAD, Fisher, EfficientNet ...), learned on a separate set.

For training vectors ``X`` (N, D) with mean ``m`` and covariance eigen-decomposition
``Cov = U diag(lambda) U^T`` (eigenvalues in decreasing order), the transform keeps the first ``dim``
directions::

    y = diag((lambda_j + s)^(-eigen_power)) U_dim^T (x - m),   then y / ||y|| (``l2_normalize``)

* ``eigen_power = 0.5`` is full whitening, ``0`` plain PCA projection, values between are the partial
  whitening that Jegou & Chum (ECCV 2012) found more robust;
* ``s = shrinkage * mean(lambda_1..dim)`` regularises the smallest eigenvalues (no blow-up of noise
  directions);
* with fewer training vectors than dimensions (N <= D, typical for VLAD: 32k-d from a few thousand
  images) the eigenvectors come from the ``N x N`` Gram matrix ``Xc Xc^T`` (``U = Xc^T V / sqrt(mu)``),
  never from the ``D x D`` covariance; at most ``N - 1`` directions exist then.

Saved as ``.npz`` + JSON (:mod:`retrieval.features.npzio`), never pickle.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Union

import numpy as np
import scipy.linalg

from retrieval.features.npzio import load_model, save_model

PathLike = Union[str, os.PathLike]

__all__ = ["PCAWhitening"]


class PCAWhitening:
    """``PCAWhitening(dim=None, eigen_power=0.5, shrinkage=0.0, l2_normalize=True, max_samples=None,
    seed=0)``: :meth:`fit` on (N, D) vectors, :meth:`transform` to (M, dim) float32."""

    def __init__(self, dim: Optional[int] = None, eigen_power: float = 0.5, shrinkage: float = 0.0,
                 l2_normalize: bool = True, max_samples: Optional[int] = None, seed: int = 0):
        if dim is not None and int(dim) < 1:
            raise ValueError("dim must be >= 1")
        if eigen_power < 0:
            raise ValueError("eigen_power must be >= 0")
        if shrinkage < 0:
            raise ValueError("shrinkage must be >= 0")
        self.requested_dim = None if dim is None else int(dim)
        self.eigen_power = float(eigen_power)
        self.shrinkage = float(shrinkage)
        self.l2_normalize = bool(l2_normalize)
        self.max_samples = None if max_samples is None else int(max_samples)
        self.seed = int(seed)
        self.mean: Optional[np.ndarray] = None
        self.components: Optional[np.ndarray] = None  # (dim, D) rows = eigenvectors
        self.eigenvalues: Optional[np.ndarray] = None  # (dim,)
        self.info: Dict = {}

    # -- learning ------------------------------------------------------------------------------
    def fit(self, vectors: np.ndarray, trained_on: Optional[str] = None) -> "PCAWhitening":
        x = np.asarray(vectors)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"need at least 2 training vectors as (N, D), got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("training vectors contain NaN or infinite values")
        if self.max_samples is not None and len(x) > self.max_samples:
            rng = np.random.default_rng(self.seed)
            x = x[np.sort(rng.choice(len(x), self.max_samples, replace=False))]
        n, d = x.shape
        mean = x.mean(axis=0, dtype=np.float64)
        if n <= d:
            # eigenvectors of Xc^T Xc from those of the small Gram matrix Xc Xc^T; float32 products
            # (a 32k-d VLAD set in float64 would need gigabytes), float64 eigen-decomposition
            xc = np.asarray(x, dtype=np.float32) - mean.astype(np.float32)
            gram = (xc @ xc.T).astype(np.float64)
            total = float(np.trace(gram)) / (n - 1)
            mu, v = scipy.linalg.eigh(gram)
            mu, v = mu[::-1], v[:, ::-1]
            rank = int(np.sum(mu > mu[0] * 1e-10)) if mu[0] > 0 else 0
            keep = rank if self.requested_dim is None else min(self.requested_dim, rank)
            mu, v = mu[:keep], v[:, :keep]
            components = (xc.T @ (v / np.sqrt(mu)).astype(np.float32)).T
            eigenvalues = mu / (n - 1)
        else:
            xc = np.asarray(x, dtype=np.float64) - mean
            cov = xc.T @ xc / (n - 1)
            total = float(np.trace(cov))
            lam, u = scipy.linalg.eigh(cov)
            lam, u = lam[::-1], u[:, ::-1]
            rank = int(np.sum(lam > lam[0] * 1e-10)) if lam[0] > 0 else 0
            keep = rank if self.requested_dim is None else min(self.requested_dim, rank)
            components, eigenvalues = u[:, :keep].T, lam[:keep]
        if rank == 0:
            raise ValueError("training vectors are all identical: nothing to whiten")
        self.mean = mean.astype(np.float32)
        self.components = np.ascontiguousarray(components, dtype=np.float32)
        self.eigenvalues = eigenvalues.astype(np.float32)
        self.info = {"n_train": int(n), "input_dim": int(d), "rank": int(rank), "trained_on": trained_on,
                     "explained_variance": float(eigenvalues.sum() / max(total, 1e-30))}
        return self

    def fit_transform(self, vectors: np.ndarray, trained_on: Optional[str] = None) -> np.ndarray:
        return self.fit(vectors, trained_on=trained_on).transform(vectors)

    # -- applying ------------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self.components is not None

    @property
    def dim(self) -> int:
        if self.components is None:
            raise RuntimeError("PCAWhitening is not fitted")
        return int(self.components.shape[0])

    @property
    def input_dim(self) -> int:
        if self.components is None:
            raise RuntimeError("PCAWhitening is not fitted")
        return int(self.components.shape[1])

    def scale(self) -> np.ndarray:
        """Per-output-dimension factor ``(lambda + s)^(-eigen_power)``."""
        shrink = self.shrinkage * float(self.eigenvalues.mean())
        return np.power(self.eigenvalues.astype(np.float64) + shrink, -self.eigen_power).astype(np.float32)

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        """(M, dim) float32: centre, project, whiten, L2-normalise (if set)."""
        if self.components is None:
            raise RuntimeError("PCAWhitening is not fitted: call fit() or load() first")
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"vectors of shape {x.shape} do not fit a whitening learned on "
                             f"{self.input_dim}-d vectors")
        y = (x - self.mean) @ (self.components.T * self.scale()[None, :])
        if self.l2_normalize:
            from retrieval.features.encoders.encoder import l2_normalize_rows
            y = l2_normalize_rows(y)
        return np.ascontiguousarray(y, dtype=np.float32)

    # -- files ---------------------------------------------------------------------------------
    @property
    def config(self) -> Dict:
        return {"type": "pca-whitening", "dim": None if self.components is None else self.dim,
                "requested_dim": self.requested_dim, "eigen_power": self.eigen_power,
                "shrinkage": self.shrinkage, "l2_normalize": self.l2_normalize,
                "max_samples": self.max_samples, "seed": self.seed, **self.info}

    def arrays(self) -> Dict[str, np.ndarray]:
        if self.components is None:
            raise RuntimeError("PCAWhitening is not fitted")
        return {"mean": self.mean, "components": self.components, "eigenvalues": self.eigenvalues}

    @classmethod
    def from_arrays(cls, arrays: Dict[str, np.ndarray], config: Dict) -> "PCAWhitening":
        w = cls(dim=config.get("requested_dim"), eigen_power=float(config["eigen_power"]),
                shrinkage=float(config["shrinkage"]), l2_normalize=bool(config["l2_normalize"]),
                max_samples=config.get("max_samples"), seed=int(config.get("seed", 0)))
        comps = np.asarray(arrays["components"], dtype=np.float32)
        mean = np.asarray(arrays["mean"], dtype=np.float32)
        eig = np.asarray(arrays["eigenvalues"], dtype=np.float32)
        if comps.ndim != 2 or mean.shape != (comps.shape[1],) or eig.shape != (comps.shape[0],):
            raise ValueError(f"inconsistent shapes: components {comps.shape}, mean {mean.shape}, "
                             f"eigenvalues {eig.shape}")
        w.components, w.mean, w.eigenvalues = comps, mean, eig
        w.info = {key: config[key] for key in ("n_train", "input_dim", "rank", "trained_on",
                                               "explained_variance") if key in config}
        return w

    def save(self, path: PathLike):
        return save_model(path, "pca-whitening", self.arrays(), self.config)

    @classmethod
    def load(cls, path: PathLike) -> "PCAWhitening":
        arrays, config = load_model(path, "pca-whitening")
        try:
            return cls.from_arrays(arrays, config)
        except (KeyError, ValueError) as exc:
            from retrieval.features.store import FeatureFileError
            raise FeatureFileError(path, f"damaged whitening file ({type(exc).__name__}: {exc})") from None
