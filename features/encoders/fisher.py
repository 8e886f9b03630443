"""Fisher vectors (Perronnin, Sanchez & Mensink, ECCV 2010: the "improved" Fisher vector).

Steps: PCA of the local descriptors to ``pca_dim`` (scikit-learn ``PCA``; decorrelates them for the
diagonal model) -> diagonal GMM with ``k`` components (scikit-learn ``GaussianMixture``,
``covariance_type="diag"``, seeded) -> per image, with posteriors ``gamma_t(i)`` of its ``T``
descriptors ``x_t`` (``predict_proba``) and the statistics ``S0_i = sum_t gamma_t(i)``,
``S1_i = sum_t gamma_t(i) x_t``, ``S2_i = sum_t gamma_t(i) x_t^2``, the normalised gradients

* w.r.t. the means:      ``G_mu_i    = (S1_i - S0_i mu_i) / (T sqrt(w_i) sigma_i)``
* w.r.t. the std. devs.: ``G_sigma_i = (S2_i - 2 mu_i S1_i + (mu_i^2 - sigma_i^2) S0_i) / (T sqrt(2 w_i) sigma_i^2)``

  (i.e. ``1/(T sqrt(w_i)) sum_t gamma_t(i) (x_t - mu_i)/sigma_i`` and
  ``1/(T sqrt(2 w_i)) sum_t gamma_t(i) ((x_t - mu_i)^2/sigma_i^2 - 1)``), concatenated to
  ``2 k pca_dim`` values -> signed square root (``power``) -> L2 normalisation.

The statistics of an image are two matrix products (``gamma^T [x, x^2]`` and a column sum), so no
Python loop ever runs over descriptors. Same dimension as VLAD when ``2 pca_dim = D``: k = 64 with
``pca_dim = 64`` gives 8192 values, as VLAD k = 64 on 128-d SIFT.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

from retrieval.features.codebook import descriptor_arrays, sample_descriptors
from retrieval.features.encoders.encoder import Batch, FeatureInput, LocalEncoder, l2_normalize_rows, signed_power

__all__ = ["FisherEncoder"]


class FisherEncoder(LocalEncoder):
    """Improved Fisher vector; :attr:`dim` = ``2 * k * pca_dim``.

    ``k`` Gaussians, ``pca_dim`` (None: no PCA), ``power`` for power-law normalisation, ``seed`` for
    the descriptor sample, PCA and GMM; ``n_sample`` descriptors train them; ``gmm_max_iter``, ``tol``
    and ``reg_covar`` go to ``GaussianMixture``.
    """

    kind = "fisher"

    def __init__(self, k: int = 64, pca_dim: Optional[int] = 64, power: float = 0.5, seed: int = 0,
                 n_sample: int = 200_000, gmm_max_iter: int = 100, tol: float = 1e-3,
                 reg_covar: float = 1e-6, trained_on: Optional[str] = None):
        if not power > 0:
            raise ValueError("power must be > 0 (1 disables power-law normalisation)")
        self.k = int(k)
        self.pca_dim = None if pca_dim is None else int(pca_dim)
        self.power = float(power)
        self.seed, self.n_sample = int(seed), int(n_sample)
        self.gmm_max_iter, self.tol, self.reg_covar = int(gmm_max_iter), float(tol), float(reg_covar)
        self.trained_on = trained_on
        self.pca_mean: Optional[np.ndarray] = None
        self.pca_components: Optional[np.ndarray] = None  # (pca_dim, D)
        self.gmm = None
        self._input_dim: Optional[int] = None
        self.fit_info: Dict = {}

    # -- learning ------------------------------------------------------------------------------
    def fit(self, features: Sequence[FeatureInput]) -> "FisherEncoder":
        """Learn the PCA and the GMM on a seeded sample of the descriptors of ``features``."""
        import warnings

        from sklearn.decomposition import PCA
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.mixture import GaussianMixture

        arrays = descriptor_arrays(features)
        sample = sample_descriptors(arrays, self.n_sample, seed=self.seed)
        if len(sample) < self.k:
            raise ValueError(f"{len(sample)} descriptors cannot fit {self.k} Gaussians")
        self._input_dim = int(sample.shape[1])
        if self.pca_dim is not None:
            if self.pca_dim > sample.shape[1]:
                raise ValueError(f"pca_dim {self.pca_dim} > descriptor dimension {sample.shape[1]}")
            pca = PCA(n_components=self.pca_dim, svd_solver="full", random_state=self.seed).fit(sample)
            self.pca_mean = pca.mean_.astype(np.float32)
            self.pca_components = pca.components_.astype(np.float32)
        projected = self._project(sample)
        gmm = GaussianMixture(n_components=self.k, covariance_type="diag", random_state=self.seed,
                              max_iter=self.gmm_max_iter, tol=self.tol, reg_covar=self.reg_covar,
                              init_params="k-means++")
        with warnings.catch_warnings():
            # EM stopping at max_iter is recorded in fit_info (gmm_converged), not printed raw
            warnings.simplefilter("ignore", ConvergenceWarning)
            gmm.fit(projected)
        self.gmm = gmm
        self.fit_info = {"n_images": len(arrays), "n_train": int(len(sample)),
                         "gmm_converged": bool(gmm.converged_), "gmm_iterations": int(gmm.n_iter_),
                         "trained_on": self.trained_on}
        return self

    def _project(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self.pca_components is None:
            return x
        return (x - self.pca_mean) @ self.pca_components.T

    # -- encoding ------------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return self.gmm is not None

    @property
    def input_dim(self) -> int:
        if self._input_dim is None:
            raise RuntimeError("FisherEncoder is not fitted: call fit() first")
        return self._input_dim

    @property
    def model_dim(self) -> int:
        return self.pca_dim if self.pca_dim is not None else self.input_dim

    @property
    def dim(self) -> int:
        return 2 * self.k * self.model_dim

    @property
    def config(self) -> Dict:
        return {"type": "fisher", "k": self.k, "pca_dim": self.pca_dim, "power": self.power,
                "seed": self.seed, "n_sample": self.n_sample, "gmm_max_iter": self.gmm_max_iter,
                "tol": self.tol, "reg_covar": self.reg_covar, "input_dim": self._input_dim, **self.fit_info}

    def _encode_batch(self, batch: Batch) -> np.ndarray:
        k, d = self.k, self.model_dim
        out = np.zeros((batch.size, 2 * k * d), dtype=np.float32)
        if not len(batch.x):
            return out
        y = self._project(batch.x)
        gamma = self.gmm.predict_proba(y).astype(np.float32)  # (n, k)
        y_y2 = np.concatenate([y, y * y], axis=1)  # (n, 2d)
        w = self.gmm.weights_.astype(np.float32)
        mu = self.gmm.means_.astype(np.float32)
        var = self.gmm.covariances_.astype(np.float32)
        sigma = np.sqrt(var)
        for b in np.flatnonzero(batch.counts):  # one image at a time: two GEMMs each
            lo, hi = batch.starts[b], batch.starts[b + 1]
            g = gamma[lo:hi]
            s0 = g.sum(axis=0)[:, None]  # (k, 1)
            s12 = g.T @ y_y2[lo:hi]  # (k, 2d)
            s1, s2 = s12[:, :d], s12[:, d:]
            t = float(hi - lo)
            g_mu = (s1 - s0 * mu) / (t * np.sqrt(w)[:, None] * sigma)
            g_sigma = (s2 - 2.0 * mu * s1 + (mu * mu - var) * s0) / (t * np.sqrt(2.0 * w)[:, None] * var)
            out[b, : k * d] = g_mu.ravel()
            out[b, k * d:] = g_sigma.ravel()
        signed_power(out, self.power)
        return l2_normalize_rows(out)

    # -- files ---------------------------------------------------------------------------------
    def _arrays(self) -> Dict[str, np.ndarray]:
        arrays = {"gmm_weights": self.gmm.weights_, "gmm_means": self.gmm.means_,
                  "gmm_covariances": self.gmm.covariances_}
        if self.pca_components is not None:
            arrays.update({"pca_mean": self.pca_mean, "pca_components": self.pca_components})
        return arrays

    @classmethod
    def _from_saved(cls, arrays: Dict[str, np.ndarray], config: Dict) -> "FisherEncoder":
        from sklearn.mixture import GaussianMixture

        enc = cls(k=int(config["k"]), pca_dim=config["pca_dim"], power=float(config["power"]),
                  seed=int(config["seed"]), n_sample=int(config["n_sample"]),
                  gmm_max_iter=int(config["gmm_max_iter"]), tol=float(config["tol"]),
                  reg_covar=float(config["reg_covar"]), trained_on=config.get("trained_on"))
        enc._input_dim = int(config["input_dim"])
        if enc.pca_dim is not None:
            enc.pca_mean = arrays["pca_mean"].astype(np.float32)
            enc.pca_components = arrays["pca_components"].astype(np.float32)
            if enc.pca_components.shape != (enc.pca_dim, enc._input_dim):
                raise ValueError(f"PCA components of shape {enc.pca_components.shape}")
        # kept in the dtype they were learned in, so a reloaded encoder gives the same vectors
        weights, means, covs = arrays["gmm_weights"], arrays["gmm_means"], arrays["gmm_covariances"]
        if means.shape != (enc.k, enc.model_dim) or covs.shape != means.shape or weights.shape != (enc.k,):
            raise ValueError(f"GMM arrays of shapes {weights.shape}, {means.shape}, {covs.shape}")
        if np.any(covs <= 0):
            raise ValueError("GMM variances must be positive")
        # a GaussianMixture rebuilt from its parameters: predict_proba needs exactly these
        gmm = GaussianMixture(n_components=enc.k, covariance_type="diag", random_state=enc.seed)
        gmm.weights_, gmm.means_, gmm.covariances_ = weights, means, covs
        gmm.precisions_cholesky_ = 1.0 / np.sqrt(covs)
        gmm.precisions_ = 1.0 / covs
        gmm.converged_ = bool(config.get("gmm_converged", True))
        gmm.n_iter_ = int(config.get("gmm_iterations", 0))
        gmm.n_features_in_ = enc.model_dim
        enc.gmm = gmm
        enc.fit_info = {key: config[key] for key in ("n_images", "n_train", "gmm_converged",
                                                     "gmm_iterations", "trained_on") if key in config}
        return enc
