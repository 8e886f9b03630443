"""The interface every encoder of local features into one global vector shares (BoW, VLAD, Fisher).

An encoder is used in explicit steps::

    enc = VladEncoder(k=64).fit(train_features)      # learn codebook / GMM (and idf, PCA, ...)
    db = enc.encode_many(db_features)                # (N, dim) float32, rows L2-normalised
    q = enc.encode(query_features)                   # (dim,) float32
    enc.save("vlad64.npz"); enc = load_encoder("vlad64.npz")

Inputs are :class:`~retrieval.features.local.LocalFeatures` or bare ``(n, D)`` descriptor arrays. The output goes
to :class:`retrieval.Index` unchanged. An image without descriptors encodes to the zero vector (there
is no evidence to point anywhere; a NaN would poison every score), so its similarity to everything is 0.

``encode_many`` works on batches of images at once: the descriptors of a batch are concatenated so
quantisation / posteriors are one large matrix product per batch, and per-image sums are sparse or
segmented matrix products, never a Python loop over descriptors. Batches can run in threads
(``n_jobs``); the matrix products already use every BLAS thread, so ``n_jobs=1`` is the default.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import scipy.sparse as sp

from retrieval.features.codebook import descriptor_arrays
from retrieval.features.local import LocalFeatures
from retrieval.core.vectors import l2_normalize_rows

from retrieval.features.npzio import load_model, save_model

PathLike = Union[str, os.PathLike]
FeatureInput = Union[LocalFeatures, np.ndarray]

__all__ = ["LocalEncoder", "l2_normalize_rows", "signed_power", "Batch", "batches_by_descriptors"]


def signed_power(x: np.ndarray, alpha: float) -> np.ndarray:
    """Power-law normalisation ``sign(x) |x|^alpha`` (alpha = 0.5: signed square root), in place on a
    float array."""
    if alpha == 1.0:
        return x
    sign = np.sign(x)
    np.abs(x, out=x)
    if alpha == 0.5:
        np.sqrt(x, out=x)
    else:
        np.power(x, alpha, out=x)
    x *= sign
    return x


class Batch:
    """The descriptors of a few images concatenated: ``x`` (n, D) float32, ``owner`` (n,) image index
    within the batch, ``counts`` (B,) descriptors per image, ``starts`` (B + 1,) offsets."""

    def __init__(self, arrays: Sequence[np.ndarray], dim: int):
        self.counts = np.array([len(a) for a in arrays], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.size = len(arrays)
        nonempty = [a for a in arrays if len(a)]
        if nonempty:
            self.x = np.ascontiguousarray(np.concatenate(nonempty, axis=0), dtype=np.float32)
        else:
            self.x = np.zeros((0, dim), dtype=np.float32)
        self.owner = np.repeat(np.arange(self.size, dtype=np.int64), self.counts)

    def indicator(self, weights: Optional[np.ndarray] = None) -> sp.csr_matrix:
        """(B, n) sparse matrix with ``weights`` (default 1) at [owner(j), j]: ``indicator @ Y`` sums the
        rows of ``Y`` per image."""
        n = len(self.x)
        data = np.ones(n, dtype=np.float32) if weights is None else np.asarray(weights, dtype=np.float32)
        return sp.csr_matrix((data, np.arange(n), self.starts), shape=(self.size, n))


def batches_by_descriptors(arrays: Sequence[np.ndarray], max_descriptors: int) -> List[Tuple[int, int]]:
    """``[(lo, hi), ...]`` image ranges holding at most ``max_descriptors`` descriptors each (an image
    with more forms a batch of its own)."""
    out = []
    lo, total = 0, 0
    for i, a in enumerate(arrays):
        n = len(a)
        if i > lo and total + n > max_descriptors:
            out.append((lo, i))
            lo, total = i, 0
        total += n
    if lo < len(arrays):
        out.append((lo, len(arrays)))
    return out


class LocalEncoder(ABC):
    """Local descriptors of an image -> one L2-normalised float32 vector of length :attr:`dim`."""

    #: file kind and short name in result tables
    kind: str = "encoder"

    #: descriptors per encoding batch: bounds memory of the batch's matrix products
    batch_descriptors: int = 131072

    # -- to implement ----------------------------------------------------------------------------
    @abstractmethod
    def fit(self, features: Sequence[FeatureInput]) -> "LocalEncoder":
        """Learn what the encoder needs (codebook, GMM, idf ...) from these images' descriptors."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Length of the encoding."""

    @property
    @abstractmethod
    def config(self) -> Dict:
        """JSON-serialisable configuration, including what the learned parts were trained on."""

    @property
    @abstractmethod
    def input_dim(self) -> int:
        """Dimension of the local descriptors it takes."""

    @abstractmethod
    def _encode_batch(self, batch: Batch) -> np.ndarray:
        """(B, dim) float32 final encodings (normalised; zero rows for empty images)."""

    @abstractmethod
    def _arrays(self) -> Dict[str, np.ndarray]:
        """The learned arrays to save."""

    @classmethod
    @abstractmethod
    def _from_saved(cls, arrays: Dict[str, np.ndarray], config: Dict) -> "LocalEncoder":
        """Rebuild from :meth:`_arrays` and :attr:`config`."""

    # -- shared --------------------------------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return True

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit() or load() first")

    def _arrays_of(self, features: Sequence[FeatureInput]) -> List[np.ndarray]:
        arrays = descriptor_arrays(features)
        for i, a in enumerate(arrays):
            if len(a) and a.shape[1] != self.input_dim:
                raise ValueError(f"item {i}: {a.shape[1]}-d descriptors, this encoder takes "
                                 f"{self.input_dim}-d ones")
        return arrays

    def encode(self, features: FeatureInput) -> np.ndarray:
        """(dim,) float32 encoding of one image (L2 norm 1, or the zero vector for an empty image)."""
        return self.encode_many([features])[0]

    def encode_many(self, features: Sequence[FeatureInput], n_jobs: int = 1,
                    progress: bool = False, engine: str = "local", ray_address: Optional[str] = None) -> np.ndarray:
        """(N, dim) float32 encodings of many images, in batches of about :attr:`batch_descriptors`
        descriptors (``n_jobs`` batches at a time in threads; ``engine="ray"``: as Ray tasks, see
        :mod:`retrieval.scale.engine`, with the same batches, so the same encodings up to float order)."""
        self._check_fitted()
        arrays = self._arrays_of(features)
        out = np.zeros((len(arrays), self.dim), dtype=np.float32)
        ranges = batches_by_descriptors(arrays, self.batch_descriptors)
        if engine != "local":
            from retrieval.scale.engine import map_units

            units = [arrays[lo:hi] for lo, hi in ranges]
            parts = map_units(_encode_arrays, units, engine=engine, n_jobs=max(1, n_jobs), shared=self,
                              ray_address=ray_address, progress=progress, desc=f"encode {self.kind}")
            for (lo, hi), part in zip(ranges, parts):
                out[lo:hi] = part
            return out

        def run(lo_hi):
            lo, hi = lo_hi
            out[lo:hi] = self._encode_batch(Batch(arrays[lo:hi], self.input_dim))

        if n_jobs == 1 or len(ranges) <= 1:
            from tqdm.auto import tqdm

            for r in tqdm(ranges, desc=f"encode {self.kind}", disable=not progress, leave=False):
                run(r)
        else:
            from joblib import Parallel, delayed

            Parallel(n_jobs=n_jobs, backend="threading")(delayed(run)(r) for r in ranges)
        return out

    def save(self, path: PathLike):
        """Write the learned arrays and configuration as ``.npz`` + JSON (no pickle)."""
        self._check_fitted()
        return save_model(path, self.kind, self._arrays(), self.config)

    @classmethod
    def load(cls, path: PathLike) -> "LocalEncoder":
        arrays, config = load_model(path, cls.kind)
        try:
            return cls._from_saved(arrays, config)
        except (KeyError, ValueError) as exc:
            from retrieval.features.store import FeatureFileError
            raise FeatureFileError(path, f"damaged {cls.kind} file ({type(exc).__name__}: {exc})") from None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim if self.is_fitted else '?'})"


def _encode_arrays(arrays: List[np.ndarray], encoder: "LocalEncoder") -> np.ndarray:
    """One work unit of :meth:`LocalEncoder.encode_many` on another engine: a batch of images."""
    return encoder._encode_batch(Batch(arrays, encoder.input_dim))
