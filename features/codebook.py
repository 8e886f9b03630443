"""Visual-word codebooks: k-means on a seeded sample of local descriptors, and the one function that
assigns descriptors to their nearest words (shared by BoW, VLAD and anything else that quantises).

Steps: :func:`sample_descriptors` (uniform, seeded, across images) -> :func:`train_codebook`
(faiss k-means when faiss is installed, else scikit-learn ``MiniBatchKMeans``) -> :class:`Codebook`
(``save`` / ``load`` as ``.npz`` + JSON: what it was trained on, k, seed, descriptor configuration).

Assignment is a blocked matrix product: for words ``c_k`` the squared distance is
``||x||^2 - 2 x.c_k + ||c_k||^2``, so the nearest word maximises ``x.c_k - ||c_k||^2 / 2``; one GEMM
per block of descriptors (with the bias folded in as an extra column) and an ``argmax`` /
``argpartition`` give the words, never a Python loop over descriptors.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from retrieval.features.local import LocalFeatures
from retrieval.features.npzio import load_model, save_model

PathLike = Union[str, os.PathLike]
DescriptorSource = Union[LocalFeatures, np.ndarray]

__all__ = ["Codebook", "train_codebook", "learn_codebook", "assign_nearest", "sample_descriptors", "descriptor_arrays",
           "faiss_available"]

# one block's score matrix is at most this many float32 values (32 MiB): big enough for an efficient
# GEMM, small enough to stay in memory next to other helpers' work
_BLOCK_VALUES = 1 << 23


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def descriptor_arrays(features: Sequence[DescriptorSource]) -> List[np.ndarray]:
    """The descriptor matrix of each item (LocalFeatures or an (N, D) array), as given (no copy)."""
    out = []
    for i, item in enumerate(features):
        desc = item.descriptors if isinstance(item, LocalFeatures) else np.asarray(item)
        if desc.ndim != 2:
            raise ValueError(f"item {i}: descriptors must be (N, D), got shape {desc.shape}")
        out.append(desc)
    dims = {d.shape[1] for d in out if len(d)}
    if len(dims) > 1:
        raise ValueError(f"descriptors of different dimensions mixed: {sorted(dims)}")
    return out


def sample_descriptors(features: Sequence[DescriptorSource], n_max: int, seed: int = 0) -> np.ndarray:
    """A uniform random sample (without replacement, seeded) of at most ``n_max`` descriptors drawn
    from all images together, as float32 ``(n, D)``."""
    arrays = descriptor_arrays(features)
    counts = np.array([len(a) for a in arrays], dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        raise ValueError("no descriptors to sample: every image is empty")
    dim = next(a.shape[1] for a in arrays if len(a))
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(total, size=min(int(n_max), total), replace=False))
    starts = np.concatenate([[0], np.cumsum(counts)])
    owner = np.searchsorted(starts, chosen, side="right") - 1
    out = np.empty((len(chosen), dim), dtype=np.float32)
    # group the chosen rows by image: one fancy-index per image, not per descriptor
    bounds = np.searchsorted(owner, np.arange(len(arrays) + 1))
    for i in np.flatnonzero(np.diff(bounds)):
        lo, hi = bounds[i], bounds[i + 1]
        out[lo:hi] = arrays[i][chosen[lo:hi] - starts[i]]
    return out


def assign_nearest(x: np.ndarray, centroids: np.ndarray, n_nearest: int = 1,
                   augmented: Optional[np.ndarray] = None,
                   block_rows: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Nearest ``n_nearest`` centroids of every row of ``x`` by blocked matrix products.

    Returns ``(indices, sq_dists)``, both ``(N, n_nearest)`` (int64, float32), nearest first, with
    ``sq_dists = ||x||^2 - 2 x.c + ||c||^2`` clipped at 0. ``augmented`` is the precomputed
    ``(D + 1, K)`` matrix ``[C^T; -||c||^2 / 2]`` (see :meth:`Codebook.augmented`) so repeated calls do
    not rebuild it.
    """
    x = np.asarray(x, dtype=np.float32)
    centroids = np.asarray(centroids, dtype=np.float32)
    if x.ndim != 2 or centroids.ndim != 2 or (len(x) and x.shape[1] != centroids.shape[1]):
        raise ValueError(f"descriptors {x.shape} and centroids {centroids.shape} do not match")
    n, d = x.shape
    k = len(centroids)
    n_nearest = int(n_nearest)
    if not 1 <= n_nearest <= k:
        raise ValueError(f"n_nearest must be in 1..{k}, got {n_nearest}")
    if augmented is None:
        augmented = _augmented(centroids)
    indices = np.empty((n, n_nearest), dtype=np.int64)
    best = np.empty((n, n_nearest), dtype=np.float32)
    if n == 0:
        return indices, best
    rows = int(block_rows or max(64, min(16384, _BLOCK_VALUES // k)))
    xa = np.empty((min(rows, n), d + 1), dtype=np.float32)
    xa[:, d] = 1.0
    scores = np.empty((min(rows, n), k), dtype=np.float32)
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        m = hi - lo
        xa[:m, :d] = x[lo:hi]
        s = scores[:m]
        np.matmul(xa[:m], augmented, out=s)  # x.c - ||c||^2 / 2: larger is nearer
        if n_nearest == 1:
            idx = s.argmax(axis=1)[:, None]
        else:
            part = np.argpartition(s, k - n_nearest, axis=1)[:, k - n_nearest:]
            order = np.argsort(-np.take_along_axis(s, part, axis=1), axis=1)
            idx = np.take_along_axis(part, order, axis=1)
        indices[lo:hi] = idx
        best[lo:hi] = np.take_along_axis(s, idx, axis=1)
    sq_norms = np.einsum("ij,ij->i", x, x)
    sq = sq_norms[:, None] - 2.0 * best
    np.maximum(sq, 0.0, out=sq)
    return indices, sq.astype(np.float32, copy=False)


def _augmented(centroids: np.ndarray) -> np.ndarray:
    c = np.asarray(centroids, dtype=np.float32)
    return np.ascontiguousarray(np.vstack([c.T, -0.5 * np.einsum("ij,ij->i", c, c)[None, :]]),
                                dtype=np.float32)


class Codebook:
    """``k`` visual words (``centroids``, (k, D) float32) and the configuration they were learned with."""

    def __init__(self, centroids: np.ndarray, config: Optional[dict] = None):
        centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        if centroids.ndim != 2 or len(centroids) < 1:
            raise ValueError(f"centroids must be (k, D) with k >= 1, got {centroids.shape}")
        if not np.all(np.isfinite(centroids)):
            raise ValueError("centroids contain NaN or infinite values")
        self.centroids = centroids
        self.config = dict(config or {})
        self.config["k"] = int(len(centroids))
        self.config["dim"] = int(centroids.shape[1])
        self._augmented: Optional[np.ndarray] = None

    @property
    def k(self) -> int:
        return int(len(self.centroids))

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def augmented(self) -> np.ndarray:
        """``[C^T; -||c||^2 / 2]`` (D + 1, k), built once."""
        if self._augmented is None:
            self._augmented = _augmented(self.centroids)
        return self._augmented

    def assign(self, x: np.ndarray, n_nearest: int = 1) -> Tuple[np.ndarray, np.ndarray]:
        """``(indices, sq_dists)`` of the ``n_nearest`` words of each descriptor (see
        :func:`assign_nearest`)."""
        x = np.asarray(x)
        if x.ndim != 2 or (len(x) and x.shape[1] != self.dim):
            raise ValueError(f"descriptors of shape {x.shape} do not fit a {self.dim}-d codebook")
        return assign_nearest(x, self.centroids, n_nearest, augmented=self.augmented())

    def save(self, path: PathLike):
        return save_model(path, "codebook", {"centroids": self.centroids}, self.config)

    @classmethod
    def load(cls, path: PathLike) -> "Codebook":
        arrays, config = load_model(path, "codebook")
        if "centroids" not in arrays:
            from retrieval.features.store import FeatureFileError
            raise FeatureFileError(path, "codebook file has no 'centroids' array")
        return cls(arrays["centroids"], config)

    def __repr__(self) -> str:
        return f"Codebook(k={self.k}, dim={self.dim}, trained_on={self.config.get('trained_on')!r})"


@contextmanager
def _faiss_blas_blocks(query_rows: int, database_rows: int) -> Iterator[None]:
    """faiss computes exact L2 search as GEMM blocks of 4096 queries x 1024 centroids by default; with
    large vocabularies a 1024-wide block wastes most of the GEMM's speed (measured 2.5x slower for
    k=20000), so the block spans all centroids while k-means runs."""
    import faiss

    old = (faiss.cvar.distance_compute_blas_query_bs, faiss.cvar.distance_compute_blas_database_bs)
    faiss.cvar.distance_compute_blas_query_bs = int(query_rows)
    faiss.cvar.distance_compute_blas_database_bs = int(database_rows)
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_query_bs, faiss.cvar.distance_compute_blas_database_bs = old


def train_codebook(descriptors: np.ndarray, k: int, seed: int = 0, niter: int = 20,
                   max_points_per_centroid: int = 256, backend: str = "auto", spherical: bool = False,
                   metadata: Optional[Dict] = None, verbose: bool = False,
                   n_threads: Optional[int] = None) -> Codebook:
    """k-means codebook of ``k`` words on ``descriptors`` (N, D).

    ``max_points_per_centroid`` subsamples (seeded) to at most ``k * max_points_per_centroid`` training
    points, the usual lever on time: the cost of one iteration is ``O(n k D)``. ``backend``: ``"faiss"``
    (``faiss.Kmeans``), ``"sklearn"`` (``MiniBatchKMeans``) or ``"auto"`` (faiss when installed).
    ``spherical`` normalises centroids to unit length (faiss only; natural for RootSIFT, whose
    descriptors have unit norm). ``metadata`` (e.g. ``trained_on``, ``descriptor_config``) is stored in
    the codebook's configuration. ``n_threads`` sets faiss' OpenMP threads for this call (faiss' spinning
    OpenMP threads slow down several-fold on a machine whose cores are busy with other work; one thread
    is then faster than two).
    """
    x = np.ascontiguousarray(descriptors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"descriptors must be (N, D), got shape {x.shape}")
    k = int(k)
    if k < 1 or len(x) < k:
        raise ValueError(f"cannot learn {k} words from {len(x)} descriptors (need at least k)")
    if not np.all(np.isfinite(x)):
        raise ValueError("descriptors contain NaN or infinite values")
    if backend == "auto":
        backend = "faiss" if faiss_available() else "sklearn"
    rng = np.random.default_rng(seed)
    n_cap = k * int(max_points_per_centroid)
    if len(x) > n_cap:
        x = x[np.sort(rng.choice(len(x), size=n_cap, replace=False))]
    start = time.perf_counter()
    if backend == "faiss":
        import faiss

        # min_points_per_centroid=1: faiss would print its advice (39 points per word) straight to
        # stderr; the configuration records points_per_word instead, for the caller to report
        km = faiss.Kmeans(x.shape[1], k, niter=int(niter), seed=int(seed), spherical=bool(spherical),
                          max_points_per_centroid=int(max_points_per_centroid) + 1, min_points_per_centroid=1,
                          verbose=verbose)
        old_threads = faiss.omp_get_max_threads()
        if n_threads is not None:
            faiss.omp_set_num_threads(int(n_threads))
        try:
            with _faiss_blas_blocks(4096, max(1024, k)):
                km.train(x)
        finally:
            faiss.omp_set_num_threads(old_threads)
        centroids = km.centroids
        objective = float(km.obj[-1]) if len(km.obj) else float("nan")
    elif backend == "sklearn":
        from sklearn.cluster import MiniBatchKMeans

        if spherical:
            raise ValueError("spherical k-means needs the faiss backend")
        km = MiniBatchKMeans(n_clusters=k, random_state=int(seed), n_init=1, max_iter=int(niter),
                             batch_size=max(4096, 4 * k), init="k-means++" if k <= 1024 else "random",
                             compute_labels=False, verbose=int(verbose))
        km.fit(x)
        centroids = km.cluster_centers_
        objective = float(km.inertia_) if getattr(km, "inertia_", None) is not None else float("nan")
    else:
        raise ValueError(f"unknown k-means backend {backend!r} (faiss, sklearn or auto)")
    seconds = time.perf_counter() - start
    config = {"type": "kmeans", "backend": backend, "seed": int(seed), "niter": int(niter),
              "max_points_per_centroid": int(max_points_per_centroid), "spherical": bool(spherical),
              "n_train": int(len(x)), "n_available": int(len(descriptors)), "seconds": round(seconds, 3),
              "points_per_word": round(len(x) / k, 2),
              "objective": objective}
    config.update(metadata or {})
    return Codebook(centroids, config)


def learn_codebook(features: Sequence[DescriptorSource], k: int, n_sample: int = 1_000_000, seed: int = 0,
                   niter: int = 20, max_points_per_centroid: int = 256, backend: str = "auto",
                   spherical: bool = False, metadata: Optional[Dict] = None,
                   n_threads: Optional[int] = None) -> Codebook:
    """:func:`sample_descriptors` (at most ``n_sample``, seeded) then :func:`train_codebook`; the
    configuration records how many images and descriptors it saw."""
    arrays = descriptor_arrays(features)
    sample = sample_descriptors(arrays, n_sample, seed=seed)
    info = {"n_images": len(arrays), "n_descriptors_total": int(sum(len(a) for a in arrays)),
            "n_sample": int(n_sample)}
    info.update(metadata or {})
    return train_codebook(sample, k, seed=seed, niter=niter, max_points_per_centroid=max_points_per_centroid,
                          backend=backend, spherical=spherical, metadata=info, n_threads=n_threads)
