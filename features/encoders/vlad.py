"""VLAD: vector of locally aggregated descriptors (Jegou et al. CVPR 2010), with the normalisations of
Arandjelovic & Zisserman ("All about VLAD", CVPR 2013) and optional PCA-whitening (Jegou & Chum,
ECCV 2012).

For a codebook ``c_1..c_k`` and descriptors ``x`` with nearest word ``NN(x)``:

* ``v_i = sum_{x: NN(x) = i} r(x)`` with residual ``r(x) = x - c_i``, or ``(x - c_i) / ||x - c_i||``
  with ``residual_norm`` (Delhumeau et al. 2013: every descriptor votes with the same weight); with
  ``n_nearest = m > 1`` (multiple assignment) each descriptor adds ``a_j r_j(x)`` to each of its ``m``
  nearest words, ``a_j = exp(-d_j^2 / (2 sigma^2)) / sum_l exp(-d_l^2 / (2 sigma^2))``;
* ``intra_norm``: each ``v_i`` divided by its L2 norm (damps bursts within a word);
* ``power``: signed power ``sign(v) |v|^power`` (0.5 = signed square root; 1 disables it);
* L2 normalisation of the concatenated ``(k * D)`` vector;
* ``whitening`` (:class:`~retrieval.features.whitening.PCAWhitening`, learned on another set of images with
  :meth:`VladEncoder.fit_whitening`): project, whiten, L2 again; :attr:`dim` becomes its output size.

Per batch, residual sums are one sparse product: an ``(B*k, n)`` indicator of (image, word) per
descriptor times the ``(n, D)`` residuals.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import scipy.sparse as sp

from retrieval.features.codebook import Codebook, learn_codebook
from retrieval.features.whitening import PCAWhitening
from retrieval.features.encoders.encoder import Batch, FeatureInput, LocalEncoder, l2_normalize_rows, signed_power

__all__ = ["VladEncoder"]


class VladEncoder(LocalEncoder):
    """VLAD over a ``k``-word codebook; :attr:`dim` = ``k * D`` (or the whitening's output size)."""

    kind = "vlad"

    def __init__(self, codebook: Optional[Codebook] = None, k: int = 64, intra_norm: bool = True,
                 power: float = 0.5, residual_norm: bool = False, n_nearest: int = 1,
                 sigma: Optional[float] = None, whitening: Optional[PCAWhitening] = None, seed: int = 0, n_sample: int = 500_000,
                 niter: int = 20, max_points_per_centroid: int = 256, trained_on: Optional[str] = None):
        if not power > 0:
            raise ValueError("power must be > 0 (1 disables power-law normalisation)")
        self.codebook = codebook
        self.k = codebook.k if codebook is not None else int(k)
        self.intra_norm = bool(intra_norm)
        self.power = float(power)
        self.residual_norm = bool(residual_norm)
        if n_nearest < 1:
            raise ValueError("n_nearest must be >= 1")
        if n_nearest > 1 and not (sigma and sigma > 0):
            raise ValueError("multiple assignment (n_nearest > 1) needs a positive sigma")
        self.n_nearest = int(n_nearest)
        self.sigma = None if sigma is None else float(sigma)
        self.whitening = whitening
        self.seed, self.n_sample, self.niter = int(seed), int(n_sample), int(niter)
        self.max_points_per_centroid = int(max_points_per_centroid)
        self.trained_on = trained_on

    def fit(self, features: Sequence[FeatureInput]) -> "VladEncoder":
        """Learn the codebook on ``features`` (unless one was given)."""
        if self.codebook is None:
            self.codebook = learn_codebook(features, self.k, n_sample=self.n_sample, seed=self.seed,
                                           niter=self.niter,
                                           max_points_per_centroid=self.max_points_per_centroid,
                                           metadata={"trained_on": self.trained_on})
        return self

    def fit_whitening(self, features: Sequence[FeatureInput], dim: Optional[int] = None,
                      trained_on: Optional[str] = None, **whitening_options) -> "VladEncoder":
        """Learn PCA-whitening to ``dim`` on the (unwhitened) VLADs of ``features`` — images other than
        the ones searched — and apply it from now on."""
        self.whitening = None
        raw = self.encode_many(features)
        raw = raw[np.any(raw != 0, axis=1)]
        self.whitening = PCAWhitening(dim=dim, **whitening_options).fit(raw, trained_on=trained_on)
        return self

    @property
    def is_fitted(self) -> bool:
        return self.codebook is not None

    @property
    def input_dim(self) -> int:
        if self.codebook is None:
            raise RuntimeError("VladEncoder has no codebook yet: call fit() first")
        return self.codebook.dim

    @property
    def raw_dim(self) -> int:
        return self.k * self.input_dim

    @property
    def dim(self) -> int:
        return self.whitening.dim if self.whitening is not None else self.raw_dim

    @property
    def config(self) -> Dict:
        return {"type": "vlad", "k": self.k, "intra_norm": self.intra_norm, "power": self.power,
                "residual_norm": self.residual_norm, "n_nearest": self.n_nearest, "sigma": self.sigma,
                "codebook": None if self.codebook is None else self.codebook.config,
                "whitening": None if self.whitening is None else self.whitening.config}

    def _encode_batch(self, batch: Batch) -> np.ndarray:
        k, d = self.k, self.input_dim
        out = np.zeros((batch.size * k, d), dtype=np.float32)
        if len(batch.x):
            m = self.n_nearest
            idx, sq = self.codebook.assign(batch.x, m)
            rows = np.repeat(np.arange(len(batch.x)), m)
            words = idx.ravel()
            residuals = batch.x[rows] - self.codebook.centroids[words]
            if self.residual_norm:
                l2_normalize_rows(residuals)
            if m > 1:
                # subtract each row's nearest distance before exp: same normalised weights, no underflow
                a = np.exp(-(sq - sq[:, :1]) / (2.0 * self.sigma ** 2))
                a /= a.sum(axis=1, keepdims=True)
                residuals *= a.ravel()[:, None].astype(np.float32)
            cell = batch.owner[rows] * k + words
            n = len(cell)
            indicator = sp.csr_matrix((np.ones(n, dtype=np.float32), (cell, np.arange(n))),
                                      shape=(batch.size * k, n))
            out = np.asarray(indicator @ residuals, dtype=np.float32)
        if self.intra_norm:
            l2_normalize_rows(out)
        out = out.reshape(batch.size, k * d)
        signed_power(out, self.power)
        l2_normalize_rows(out)
        if self.whitening is not None:
            empty = ~np.any(out != 0, axis=1)
            out = self.whitening.transform(out)
            out[empty] = 0.0  # an empty image stays the zero vector
        return out

    def _arrays(self) -> Dict[str, np.ndarray]:
        arrays = {"centroids": self.codebook.centroids}
        if self.whitening is not None:
            arrays.update({"whitening_" + name: a for name, a in self.whitening.arrays().items()})
        return arrays

    @classmethod
    def _from_saved(cls, arrays: Dict[str, np.ndarray], config: Dict) -> "VladEncoder":
        whitening = None
        if config.get("whitening") is not None:
            whitening = PCAWhitening.from_arrays(
                {name[len("whitening_"):]: a for name, a in arrays.items() if name.startswith("whitening_")},
                config["whitening"])
        return cls(codebook=Codebook(arrays["centroids"], config["codebook"]),
                   intra_norm=bool(config["intra_norm"]), power=float(config["power"]),
                   residual_norm=bool(config.get("residual_norm", False)),
                   n_nearest=int(config.get("n_nearest", 1)), sigma=config.get("sigma"), whitening=whitening)
