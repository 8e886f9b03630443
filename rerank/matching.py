"""Batched nearest-neighbour matching of one query's local descriptors against every image of its
shortlist, with Lowe's ratio test and an optional mutual (cross-check) test.

Why not ``cv2.BFMatcher`` per pair: for a query of n descriptors and a shortlist of 100 images of
~1,600 descriptors each, the pair-by-pair matcher spends ~0.8-1.6 s. Here each pair is one BLAS matrix
product followed by cheap vectorised reductions, and the pairs run in a small thread pool (torch and
numpy release the GIL), which is 5-10x faster and gives the same neighbours.

Formulas (a: query descriptor, b: database descriptor, Euclidean distance d):

* ``d(a, b)^2 = |a|^2 + |b|^2 - 2 a.b``. Per query row ``|a|^2`` is constant, so the nearest and
  second-nearest database descriptors are the two largest entries of ``G = 2 a.b - |b|^2`` (one fused
  ``addmm``); for L2-normalised descriptors (RootSIFT) this is ``2 a.b - 1``, i.e. the largest cosine.
* Lowe's ratio test: a tentative match (a, NN1(a)) passes when ``d1 < ratio * d2`` (distances, not
  squared distances), where d1, d2 are the distances to the nearest and second-nearest database
  descriptor of the same image. An image with fewer than two descriptors passes no match (the test is
  undefined), as with ``knnMatch(k=2)`` followed by the usual ``len(m) == 2`` check.
* Mutual test: (a, b) is kept only if a is also the nearest query descriptor of b (within the pair).
  Exact ties count as mutual.

Every query descriptor has one tentative match per image with at least one descriptor, so the number
of tentative matches of a pair is ``n_query`` (or 0 for an empty image).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch

__all__ = ["PairMatches", "ShortlistMatches", "match_shortlist", "match_pair", "default_workers"]


def default_workers() -> int:
    """Threads used for per-pair work: the CPUs this process may use (at most 8)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        n = os.cpu_count() or 1
    return max(1, min(8, n))


@dataclass
class PairMatches:
    """Matches of one (query, database image) pair that passed the tests, as index arrays into the
    query's and the database image's keypoints. ``distance`` is d1 (Euclidean), ``ratio`` is d1/d2
    (``inf`` when the image has a single descriptor)."""

    query_idx: np.ndarray  # (m,) int64
    db_idx: np.ndarray  # (m,) int64
    distance: np.ndarray  # (m,) float32
    ratio: np.ndarray  # (m,) float32
    n_tentative: int  # nearest-neighbour matches before any test (= n_query, or 0 for an empty image)

    def __len__(self) -> int:
        return len(self.query_idx)

    @classmethod
    def empty(cls, n_tentative: int = 0) -> "PairMatches":
        z = np.zeros(0, np.int64)
        f = np.zeros(0, np.float32)
        return cls(z, z.copy(), f, f.copy(), int(n_tentative))


@dataclass
class ShortlistMatches:
    """Matches of one query against each image of its shortlist, in shortlist order."""

    pairs: List[PairMatches]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> PairMatches:
        return self.pairs[i]

    @property
    def n_matches(self) -> np.ndarray:
        """(k,) number of matches that passed, per pair."""
        return np.array([len(p) for p in self.pairs], dtype=np.int64)

    @property
    def n_tentative(self) -> np.ndarray:
        return np.array([p.n_tentative for p in self.pairs], dtype=np.int64)


@contextmanager
def _torch_threads(n: int):
    """Run torch ops single-threaded inside our own thread pool (no oversubscription), then restore."""
    old = torch.get_num_threads()
    if n != old:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != old:
            torch.set_num_threads(old)


def _as_tensor(desc: np.ndarray) -> torch.Tensor:
    arr = np.asarray(desc)
    if arr.dtype != np.float32:
        arr = arr.astype(np.float32)  # float16 / uint8 stores -> exact float32
    return torch.from_numpy(np.ascontiguousarray(arr))


class _Query:
    """The query side, prepared once per shortlist: float32 descriptors (a tensor, and its transpose for
    the reverse check) and squared norms."""

    def __init__(self, desc: np.ndarray):
        self.t = _as_tensor(desc)
        self.tT = self.t.T
        sq = np.einsum("ij,ij->i", self.t.numpy(), self.t.numpy())
        self.sqnorm = sq.astype(np.float64)
        self.neg_sqnorm = torch.from_numpy(-sq)[None, :]  # (1, n) float32


def _match_one(query: _Query, db_desc: np.ndarray, ratio: Optional[float], mutual: bool,
               row_block: int) -> PairMatches:
    n = len(query.t)
    m = len(db_desc)
    if n == 0 or m == 0:
        return PairMatches.empty(n if m > 0 else 0)
    db = _as_tensor(db_desc)
    dbn = db.numpy()
    neg_b2 = torch.from_numpy(-np.einsum("ij,ij->i", dbn, dbn))[None, :]  # (1, m), no (m, D) temporary
    dbT = db.T
    best = np.empty(n, dtype=np.int64)
    g1 = np.empty(n, dtype=np.float64)
    g2 = np.full(n, -np.inf)
    # rows in blocks so that each (rows, m) block of G stays in cache between the GEMM and the two
    # reductions that read it
    for r0 in range(0, n, row_block):
        r1 = min(n, r0 + row_block)
        # G = 2 a.b - |b|^2  (= |a|^2 - d^2): the row maxima are the nearest neighbours
        gn = torch.addmm(neg_b2, query.t[r0:r1], dbT, beta=1.0, alpha=2.0).numpy()
        idx = gn.argmax(1)
        rows = np.arange(r1 - r0)
        best[r0:r1] = idx
        g1[r0:r1] = gn[rows, idx]
        if m > 1:
            gn[rows, idx] = -np.inf
            g2[r0:r1] = gn.max(1)
    d1sq = np.maximum(query.sqnorm - g1, 0.0)
    d2sq = np.maximum(query.sqnorm - g2, 0.0)  # +inf when m == 1
    with np.errstate(divide="ignore", invalid="ignore"):
        rat = np.sqrt(d1sq) / np.sqrt(d2sq)
    rat[(d1sq == 0) & (d2sq == 0)] = 1.0  # duplicate descriptors: a tie, never a distinctive match
    if m < 2:
        rat[:] = np.inf
    if ratio is None:
        keep = np.ones(n, dtype=bool)
    elif m < 2:
        keep = np.zeros(n, dtype=bool)
    else:
        # d1 < r d2  <=>  d1^2 < r^2 d2^2 (the squared form avoids the square roots' rounding)
        keep = d1sq < (ratio * ratio) * d2sq
    if mutual:
        # reverse check on the candidates only: for each database descriptor some candidate points at,
        # its nearest query descriptor is the argmax of 2 a.b - |a|^2 (one small GEMM)
        cand = np.flatnonzero(keep)
        if len(cand):
            cols, inverse = np.unique(best[cand], return_inverse=True)
            rev = torch.addmm(query.neg_sqnorm, db[torch.from_numpy(cols)], query.tT, beta=1.0, alpha=2.0)
            owner = rev.numpy().argmax(1)
            keep[cand] = owner[inverse] == cand
    sel = np.flatnonzero(keep)
    return PairMatches(sel, best[sel], np.sqrt(d1sq[sel]).astype(np.float32), rat[sel].astype(np.float32),
                       n_tentative=n)


def _check(query_desc: np.ndarray, db_descs: Sequence[np.ndarray]) -> None:
    if np.ndim(query_desc) != 2:
        raise ValueError(f"query descriptors must be 2-D (n, D), got shape {np.shape(query_desc)}")
    dim = query_desc.shape[1]
    for i, d in enumerate(db_descs):
        if np.ndim(d) != 2:
            raise ValueError(f"shortlist image {i}: descriptors must be 2-D (m, D), got shape {np.shape(d)}")
        if len(d) and len(query_desc) and d.shape[1] != dim:
            raise ValueError(f"shortlist image {i}: {d.shape[1]}-d descriptors, the query has {dim}-d "
                             "(features from different extractors?)")


def match_shortlist(query_desc: np.ndarray, db_descs: Sequence[np.ndarray], ratio: Optional[float] = 0.8,
                    mutual: bool = False, n_workers: Optional[int] = None,
                    row_block: int = 512) -> ShortlistMatches:
    """Match one query against every image of a shortlist.

    ``query_desc``: (n, D); ``db_descs``: one (m_i, D) array per shortlisted image (float32, float16 or
    uint8). ``ratio``: Lowe's ratio threshold, or None to keep every nearest-neighbour match;
    ``mutual``: also require the match to be mutual. The pairs are processed by ``n_workers`` threads
    (default: the usable CPUs), each doing one GEMM + reductions per pair with single-threaded torch.
    """
    _check(query_desc, db_descs)
    if ratio is not None and not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    if len(query_desc) == 0:
        return ShortlistMatches([PairMatches.empty(0) for _ in db_descs])
    query = _Query(query_desc)
    workers = default_workers() if n_workers is None else max(1, int(n_workers))
    workers = min(workers, max(1, len(db_descs)))

    def one(d):
        return _match_one(query, d, ratio, mutual, row_block)

    # one worker: torch's own threads parallelise each GEMM; several: single-threaded torch per worker
    with _torch_threads(1 if workers > 1 else torch.get_num_threads()):
        if workers == 1:
            pairs = [one(d) for d in db_descs]
        else:
            with ThreadPoolExecutor(workers) as pool:
                pairs = list(pool.map(one, db_descs))
    return ShortlistMatches(pairs)


def match_pair(query_desc: np.ndarray, db_desc: np.ndarray, ratio: Optional[float] = 0.8,
               mutual: bool = False) -> PairMatches:
    """One pair (same tests as :func:`match_shortlist`)."""
    return match_shortlist(query_desc, [db_desc], ratio=ratio, mutual=mutual, n_workers=1)[0]
