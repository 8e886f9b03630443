"""Speed measurements of the classical protocol (:mod:`retrieval.experiments.classical`): SIFT extraction
images/s with 1 and 2 workers (threads and loky processes), VLAD and Fisher encoding descriptors/s
against the bare matrix products of the same sizes (the bound), and the cost of a large k-means."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from retrieval.datasets.dataset import RetrievalDataset
from retrieval.features.codebook import sample_descriptors, train_codebook
from retrieval.features.encoders import FisherEncoder, VladEncoder
from retrieval.features.extract import extract_local_features
from retrieval.features.local import LocalFeatures
from retrieval.features.sift import SiftExtractor

__all__ = ["extraction_speed", "encoding_speed", "kmeans_timing"]


def extraction_speed(ds: RetrievalDataset, sift: str, n_images: int) -> List[dict]:
    """SIFT images/s on the same database images with 1 and 2 workers (threads, loky processes)."""
    ids, paths = ds.db_ids[:n_images], ds.db_paths[:n_images]
    extractor = SiftExtractor(sift)
    rows = []
    for n_jobs, backend in ((1, "threading"), (2, "threading"), (2, "loky")):
        with tempfile.TemporaryDirectory() as tmp:
            res = extract_local_features(ids, paths, extractor, Path(tmp) / "s.h5", n_jobs=n_jobs,
                                         backend=backend, progress=False)
        rows.append({"what": f"SIFT extraction ({extractor.name})", "workers": n_jobs, "backend": backend,
                     "images": len(ids), "images_per_s": round(len(ids) / res.seconds, 2)})
        print(f"  extraction {n_jobs} x {backend:9s}: {rows[-1]['images_per_s']:6.2f} images/s", flush=True)
    return rows


def _best_of(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def encoding_speed(db: Sequence[LocalFeatures], vlad: VladEncoder, fisher: FisherEncoder, n_desc: int) -> List[dict]:
    """Descriptors/s of VLAD and Fisher encoding against the bare matrix products of the same sizes."""
    take, total = [], 0
    for f in db:
        take.append(f)
        total += len(f)
        if total >= n_desc:
            break
    x = np.concatenate([f.descriptors for f in take]).astype(np.float32)
    n = len(x)
    rows = []
    # VLAD bound: the assignment GEMM (n x D) @ (D x k)
    c_t = np.ascontiguousarray(vlad.codebook.centroids.T)
    t_enc = _best_of(lambda: vlad.encode_many(take))
    t_gemm = _best_of(lambda: x @ c_t)
    rows.append({"what": f"VLAD k={vlad.k} encoding", "descriptors": n,
                 "descriptors_per_s": round(n / t_enc), "bound_descriptors_per_s": round(n / t_gemm),
                 "fraction_of_bound": round(t_gemm / t_enc, 3)})
    # Fisher bound: PCA projection, the log-likelihood GEMM (n x 2d) @ (2d x k), statistics (k x n) @ (n x 2d)
    d, k = fisher.model_dim, fisher.k
    proj = np.ascontiguousarray(fisher.pca_components.T)
    a = np.ascontiguousarray(np.random.default_rng(0).random((2 * d, k), dtype=np.float32))
    y2 = np.ascontiguousarray(np.random.default_rng(1).random((n, 2 * d), dtype=np.float32))
    g = np.ascontiguousarray(np.random.default_rng(2).random((n, k), dtype=np.float32))

    def bare_fisher():
        x @ proj
        y2 @ a
        g.T @ y2

    t_enc = _best_of(lambda: fisher.encode_many(take))
    t_gemm = _best_of(bare_fisher)
    rows.append({"what": f"Fisher k={k} (PCA{d}) encoding", "descriptors": n,
                 "descriptors_per_s": round(n / t_enc), "bound_descriptors_per_s": round(n / t_gemm),
                 "fraction_of_bound": round(t_gemm / t_enc, 3)})
    for r in rows:
        print(f"  {r['what']:32s}: {r['descriptors_per_s']:>10,} desc/s  (bare GEMM bound "
              f"{r['bound_descriptors_per_s']:>10,}; {100 * r['fraction_of_bound']:.0f}%)", flush=True)
    return rows


def kmeans_timing(db: Sequence[LocalFeatures], k: int, n: int, niter: int, seed: int,
                  faiss_threads: Optional[int]) -> List[dict]:
    """Seconds for a k-word codebook on n descriptors, and the cost of one faiss iteration with faiss'
    default GEMM blocks against the blocks :func:`train_codebook` uses (same run)."""
    import faiss

    x = sample_descriptors(db, n, seed=seed)
    rows = []
    one = x[: min(len(x), 200_000)]
    for label, blocks in (("faiss default blocks", (4096, 1024)), ("blocks spanning all centroids", (4096, k))):
        old = (faiss.cvar.distance_compute_blas_query_bs, faiss.cvar.distance_compute_blas_database_bs)
        faiss.cvar.distance_compute_blas_query_bs, faiss.cvar.distance_compute_blas_database_bs = blocks
        try:
            km = faiss.Kmeans(x.shape[1], k, niter=1, seed=seed, max_points_per_centroid=10 ** 6)
            t0 = time.perf_counter()
            km.train(one)
            sec = time.perf_counter() - t0
        finally:
            faiss.cvar.distance_compute_blas_query_bs, faiss.cvar.distance_compute_blas_database_bs = old
        rows.append({"what": f"k-means 1 iteration, k={k}, {len(one)} points, {label}", "seconds": round(sec, 2)})
        print(f"  {rows[-1]['what']}: {sec:.1f} s", flush=True)
    t0 = time.perf_counter()
    cb = train_codebook(x, k, seed=seed, niter=niter, max_points_per_centroid=max(1, len(x) // k),
                        n_threads=faiss_threads)
    sec = time.perf_counter() - t0
    rows.append({"what": f"codebook k={k} on {len(x)} descriptors, {niter} iterations", "seconds": round(sec, 1),
                 "objective": cb.config["objective"]})
    print(f"  {rows[-1]['what']}: {sec:.1f} s", flush=True)
    return rows
