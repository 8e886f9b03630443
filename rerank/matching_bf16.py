"""Shortlist matching with a bfloat16 product and an exact check: the matches of
:func:`retrieval.rerank.matching.match_shortlist` (same nearest neighbours, ratio test and mutual test),
with the products that decide them re-scored in float64 and rounded to float32 as the float32 path
rounds them.

Why: on CPUs with native bfloat16 (AVX512-BF16, AMX) torch's bfloat16 GEMM runs 4-5x faster than its
float32 GEMM for the shapes of matching (~1,000 x 1,500 x 128 per pair), and the GEMM was most of the
float32 path's time. The bfloat16 scores are off by at most ``E_i``
(:func:`retrieval.rerank.bf16_products.error_bound_rows`: input rounding from the actual residual norms,
float32 accumulation, output rounding at the row's largest magnitude), so they only pre-select; every
number that decides a match comes from the exact check.

For one pair (query rows a_i, database rows b_j), with ``s_ij = a_i . b_j``, ``beta_j = |b_j|^2 / 2``
and ``h_ij = s_ij - beta_j`` (half the float32 path's ``G``; the nearest neighbour maximises it):

* ``t_ij``: the bfloat16 estimate of ``s_ij``, ``|t_ij - s_ij| <= E_i``; ``T1_i >= T2_i`` the two
  largest ``t`` of row i; ``beta`` lies in ``[beta_lo, beta_hi]`` (``spread = beta_hi - beta_lo``:
  ~0 for L2-normalised descriptors such as RootSIFT);
* the true second-largest ``h`` is ``>= T2 - E - beta_hi`` (both rows of the two largest estimates are),
  and ``h_ij <= t_ij + E - beta_lo``; so the exact top two of row i are among the candidates
  ``t_ij >= T2 - 2E - spread`` (less a slack of a few float32 ulps, so that a float32 tie with the
  runner-up is re-scored too). The candidates (~4 a row on RootSIFT) are re-scored exactly;
* Lowe's test ``d1 < r d2`` (``d^2 = |a|^2 - 2h``) can only pass when it passes with the bounds most
  in its favour (``h1 <= T1 + E - beta_lo``, ``h2 >= T2 - E - beta_hi``); the other rows certainly fail
  and are not re-scored (on the Oxford subset two thirds of the rows at ratio 0.9, 94% at 0.8);
* ``T1`` and a lower bound of ``T2`` come from one reduction pass (the maxima of interleaved column
  classes, :func:`_candidates`), and the candidates are looked for only in the classes that reach the
  cut;
* mutual test of a passing match (i, j): the same pre-selection along column j (one small bfloat16
  GEMM of the matched columns against every query row, ``alpha_i = |a_i|^2 / 2`` in the role of
  ``beta``), then the scores ``2 s - |a|^2`` of the rows that may own the column, exactly; first row
  on ties as the float32 path's argmax.

Database images of similar sizes go through one GEMM in groups of ``group_size`` (each padded to the
group's width; the reductions then run over all of them at once), and the bfloat16 rows are kept per
array across queries (:func:`retrieval.rerank.bf16_products.prepared`). The reductions read int16
keys that order the bfloat16 products (:func:`retrieval.rerank.bf16_products.order_keys`).

The exact check computes each candidate product in float64 (exact for float32 / float16 / uint8
inputs up to ~1e-16) and rounds ``2 s - |b|^2`` to float32, as the float32 path's ``addmm`` does; that
path's own rounding can therefore differ only where two float32 scores tie to within its accumulation
error (a few ulps), where the float32 path's choice is itself arbitrary.

Pairs whose database norms spread too widely for the pre-selection to pay (unnormalised SIFT), and
images with fewer than two descriptors, go through the float32 path; so does everything on a CPU
without native bfloat16 (:func:`retrieval.indexing.exact_bf16.bf16_available`).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Sequence

import numpy as np
import torch

from retrieval.indexing.exact_bf16 import bf16_available
from retrieval.rerank.bf16_products import (KEY_FLOOR, PreparedDescriptors, cut_keys, error_bound_rows, key_values,
                                            order_keys, padded, prepared)
from retrieval.rerank.matching import (PairMatches, ShortlistMatches, _check, _match_one, _Query, _torch_threads,
                                       default_workers)

__all__ = ["match_shortlist_bf16", "PreparedDescriptors", "prepared", "PRECISIONS", "use_bf16_matching"]

#: ``float32``: the float32 path (one float32 GEMM per pair); ``bfloat16``: this module's path;
#: ``auto``: ``bfloat16`` where the CPU multiplies bfloat16 natively and the matching is of the kind
#: where it pays (:func:`use_bf16_matching`), else ``float32``
PRECISIONS = ("auto", "float32", "bfloat16")
#: ``auto`` takes the bfloat16 path only for descriptors of at least this many dimensions with a ratio
#: test. Without a ratio test no row can be skipped and every nearest neighbour is re-scored exactly; and
#: a 64-d float32 GEMM is cheap next to the pre-selection's bookkeeping. Measured on the Oxford subset
#: (100 database images a query, mutual NN, 2 threads, loaded machine) by ``retrieval bench learned-speed``
#: with matchers ``...:affine-ransac-mnn+precision=float32`` / ``+precision=bfloat16`` (README, "Learned
#: local features"): XFeat 512 and 1k keypoints without a ratio test 3-4x slower in bfloat16, with ratio
#: 0.9 1.3-1.6x slower; RootSIFT 4k (128-d) with ratio 0.9 about 10 % faster, the case it was made for
MIN_BF16_DIM = 128
#: a pair goes through the float32 path when its database's squared norms spread more than this
#: fraction of the largest (unnormalised SIFT: the candidate window would hold much of each row)
MAX_SPREAD = 0.01
_F32_EPS = 2.0 ** -23
_QUERY_ROWS = 64  # query rows padded to a multiple of this (repeating GEMM shapes)
_STRIDE = 64  # interleaved column classes of the one reduction pass (divides the padded widths)


def use_bf16_matching(precision: str, ratio: Optional[float] = 0.8, dim: int = MIN_BF16_DIM) -> bool:
    """Whether matching with Lowe's ``ratio`` (None: none) on ``dim``-d descriptors takes this module's
    path for ``precision`` (one of :data:`PRECISIONS`; an unknown one is refused)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return ratio is not None and int(dim) >= MIN_BF16_DIM and bf16_available()
    return precision == "bfloat16"


class _QueryBF16(_Query):
    """The query side: the float32 path's fields plus the prepared bfloat16 rows."""

    def __init__(self, desc: np.ndarray):
        super().__init__(desc)
        self.f32 = self.t.numpy()
        self.f64 = self.f32.astype(np.float64)  # the exact check's query side, converted once
        self.sqnorm32 = self.sqnorm.astype(np.float32)
        self.half_sq = self.sqnorm / 2
        self.alpha_lo, self.alpha_hi = float(self.half_sq.min()), float(self.half_sq.max())
        self.prep = PreparedDescriptors(self.f32, _QUERY_ROWS)
        self.bf16 = self.prep.bf16


def _exact_dots(a64: np.ndarray, b: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """float64 ``a64[rows] . b[cols]`` for float32 values (``a64`` already in float64: products of
    float32 numbers are exact in float64)."""
    # np.take: the same rows as fancy indexing, a little faster for a row gather
    return np.einsum("ij,ij->i", np.take(a64, rows, axis=0), np.take(b, cols, axis=0).astype(np.float64))


def _best_first(segment: np.ndarray, tie: np.ndarray, score: np.ndarray) -> np.ndarray:
    """The order by ``segment``, then descending ``score``, then ascending ``tie`` (nonnegative
    ints): one sort of an int64 key where the bits allow (a 3-key lexsort costs ~2.5x more), the
    float32 scores' order as unsigned integers, -0.0 made +0.0 so that it ties with +0.0."""
    tie_bits, seg_bits = int(tie.max()).bit_length(), int(segment.max()).bit_length()
    if tie_bits + seg_bits + 32 > 63:
        return np.lexsort((tie, -score, segment))
    u = (score + np.float32(0.0)).view(np.uint32).astype(np.int64)
    ascending = np.where(u >= 0x80000000, 0xFFFFFFFF - u, u | 0x80000000)
    return np.argsort((segment.astype(np.int64) << (32 + tie_bits)) | ((0xFFFFFFFF - ascending) << tie_bits) | tie)


def _segments_top2(rows: np.ndarray, cols: np.ndarray, score: np.ndarray):
    """Per row, the column of the largest ``score`` (lowest column on ties) and the two largest
    scores: ``(row ids, best col, best, second)``; every row has >= 2 entries."""
    order = _best_first(rows, cols, score)
    r, c, s = rows[order], cols[order], score[order]
    first = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
    return r[first], c[first], s[first], s[first + 1]


def _mutual_owners(query: _QueryBF16, group: "_Group", images: np.ndarray, qi: np.ndarray,
                   dj: np.ndarray) -> np.ndarray:
    """For matches (query row ``qi[m]``, column ``dj[m]`` of the group's image ``images[m]``): is
    ``qi[m]`` the float32 path's argmax of that column of ``2 a.b - |a|^2`` (first query row on
    ties)? The matched columns (few: the matches that passed) against every query row in one
    bfloat16 GEMM; per column, the rows that may own it, as for the rows' top two (module
    docstring, with the query's ``|a|^2 / 2`` in ``[alpha_lo, alpha_hi]``): ``t >= T - 2E - spread``,
    ``T`` the column's largest estimate; those are scored exactly."""
    n, q = len(query.f32), query.prep
    cols, inverse = np.unique(images * group.width + dj, return_inverse=True)  # rows of the stack
    m = len(cols)
    stacked = torch.zeros((padded(m, _QUERY_ROWS), group.stack.shape[1]), dtype=torch.bfloat16)
    stacked[:m] = group.stack[torch.from_numpy(cols)]
    nonneg = group.nonneg and q.nonneg
    # (columns, padded query rows); the query's rows are padded to a multiple of _STRIDE
    keys = order_keys(torch.mm(stacked, query.bf16.T), nonneg)[:m]
    lowest = None if nonneg else key_values(keys[:, :n].min(1), nonneg)
    keys[:, n:] = KEY_FLOOR  # padding rows never own a column
    classes = keys.shape[1] // _STRIDE
    # one reduction pass as in _candidates: the maxima of the interleaved row classes of each column
    class_max = torch.from_numpy(keys).view(m, classes, _STRIDE).amax(1).numpy()  # (columns, _STRIDE)
    image_of, col_of = cols // group.width, cols % group.width
    norm_bf, norm_res = np.empty(m), np.empty(m)
    db32 = np.empty((m, query.f32.shape[1]), np.float32)
    for k in np.unique(image_of):
        at = image_of == k
        prep = group.preps[k]
        norm_bf[at], norm_res[at] = prep.norm_bf[col_of[at]], prep.norm_res[col_of[at]]
        db32[at] = group.descs[k][col_of[at]]
    top = key_values(class_max.max(1), nonneg)
    magnitude = top if nonneg else np.maximum(np.abs(top), np.abs(lowest))
    E = error_bound_rows(norm_bf, norm_res, q.norm_bf.max(), q.norm_res.max(), query.f32.shape[1], magnitude)
    slack = 8 * _F32_EPS * (2 * query.alpha_hi + 2 * np.abs(top) + 2 * E)
    cut = cut_keys(top - 2 * E - (query.alpha_hi - query.alpha_lo) - slack, nonneg)
    # the classes that hold a possible owner, then the owners among their entries
    at, oi = np.nonzero(class_max >= cut[:, None])
    entries = keys.reshape(m, classes, _STRIDE)[at, :, oi]  # (classes found, classes)
    hit, ci = np.nonzero(entries >= cut[at][:, None])
    col, row = at[hit], ci * _STRIDE + oi[hit]
    exact = _exact_dots(query.f64, db32, row, col)
    score = (2 * exact - query.sqnorm32[row]).astype(np.float32)
    order = _best_first(col, row, score)  # per column: best score, then the first row
    col, row = col[order], row[order]
    owner = row[np.flatnonzero(np.r_[True, col[1:] != col[:-1]])]
    return owner[inverse] == qi


class _Group:
    """Database images matched by one GEMM: their bfloat16 rows stacked, each padded to the
    group's width ``width`` (the images of a group have similar sizes), and per image the
    constants of the bound."""

    def __init__(self, descs: Sequence[np.ndarray], preps: Sequence[PreparedDescriptors]):
        self.descs = [p.float32(d) for d, p in zip(descs, preps)]
        self.preps = preps
        self.sizes = np.array([len(d) for d in self.descs])
        self.width = max(p.bf16.shape[0] for p in preps)
        dim = self.descs[0].shape[1]
        # each image's rows, then zero rows up to the width (no zero fill of the whole stack first)
        self.stack = torch.empty((len(preps) * self.width, dim), dtype=torch.bfloat16)
        for k, p in enumerate(preps):
            self.stack[k * self.width:k * self.width + len(p.bf16)] = p.bf16
            self.stack[k * self.width + len(p.bf16):(k + 1) * self.width] = 0
        self.nonneg = all(p.nonneg for p in preps)
        self.norm_bf = np.array([p.norm_bf.max() for p in preps])
        self.norm_res = np.array([p.norm_res.max() for p in preps])
        self.beta_lo = np.array([p.half_sq.min() for p in preps])
        self.beta_hi = np.array([p.half_sq.max() for p in preps])


def _candidates(query: _QueryBF16, group: _Group, r0: int, r1: int, ratio: Optional[float]):
    """Query rows ``r0:r1`` against every image of ``group``: ``(rows, images, cols)`` of the
    candidates that may hold each (row, image)'s exact top two, for the (row, image)s whose ratio
    test may pass (module docstring).

    One reduction pass over the estimates: the maxima of the ``_STRIDE`` interleaved column classes
    of each (row, image) (columns ``o, o + _STRIDE, ...``; a vertical max, which torch vectorises
    well). Their largest is ``T1``; their second largest is a value of another entry than ``T1``'s,
    so it is at most the true ``T2`` (equal unless the top two share a class), and a lower ``T2``
    only widens the cut and the ratio test's doubt. The candidates are then looked for in the
    classes whose maximum reaches the cut (a few per row) instead of in the whole row."""
    q = query.prep
    g, width = len(group.preps), group.width
    nonneg = group.nonneg and q.nonneg
    rows_n, classes = r1 - r0, width // _STRIDE
    t = torch.mm(query.bf16[r0:r0 + padded(rows_n, _QUERY_ROWS)], group.stack.T)  # bfloat16 estimates
    if not nonneg:
        t = torch.from_numpy(order_keys(t, nonneg))
    keys_t = t.view(torch.int16)[:rows_n].view(rows_n, g, classes, _STRIDE)
    keys = keys_t.numpy()
    if not nonneg:  # padding (+0) included: harmless
        lowest = key_values(keys.reshape(rows_n, g, width).min(2), nonneg)
    for k, m in enumerate(group.sizes):
        keys.reshape(rows_n, g, width)[:, k, m:] = KEY_FLOOR  # padding never wins
    class_max = keys_t.amax(2).numpy()  # (rows, images, _STRIDE)
    top2 = np.partition(class_max, _STRIDE - 2, axis=2)[:, :, _STRIDE - 2:]
    t1 = key_values(top2[:, :, 1], nonneg)
    t2 = key_values(top2[:, :, 0], nonneg)  # <= the true second largest estimate
    magnitude = t1 if nonneg else np.maximum(np.abs(t1), np.abs(lowest))
    E = error_bound_rows(q.norm_bf[r0:r1, None], q.norm_res[r0:r1, None], group.norm_bf, group.norm_res,
                         query.f32.shape[1], magnitude)
    a2 = query.sqnorm[r0:r1, None]
    # a float32 rounding of |a|^2 - 2h is ~ulps of its terms: widen every test by that much
    slack = 8 * _F32_EPS * (a2 + 2 * group.beta_hi + 2 * np.abs(t1) + 2 * E)
    if ratio is None:
        maybe = np.ones((rows_n, g), bool)
    else:
        d1_lo = np.maximum(a2 - 2 * (t1 + E - group.beta_lo) - slack, 0.0)
        d2_hi = a2 - 2 * (t2 - E - group.beta_hi) + slack
        maybe = d1_lo < (ratio * ratio) * d2_hi
    ri, gi = np.nonzero(maybe)
    cut = cut_keys((t2 - 2 * E - (group.beta_hi - group.beta_lo) - slack)[ri, gi], nonneg)
    # the classes that hold a candidate, then the candidates among their entries
    at, oi = np.nonzero(class_max[ri, gi] >= cut[:, None])
    ri, gi = ri[at], gi[at]
    entries = keys[ri, gi, :, oi]  # (classes found, width / _STRIDE)
    hit, ci = np.nonzero(entries >= cut[at][:, None])
    return ri[hit] + r0, gi[hit], ci * _STRIDE + oi[hit]


def _match_group(query: _QueryBF16, group: _Group, ratio: Optional[float], mutual: bool,
                 row_block: int) -> List[PairMatches]:
    n, g = len(query.f32), len(group.preps)
    best = np.zeros((n, g), np.int64)
    g1 = np.zeros((n, g))
    g2 = np.zeros((n, g))
    done = np.zeros((n, g), bool)
    for r0 in range(0, n, row_block):
        rows, images, cols = _candidates(query, group, r0, min(n, r0 + row_block), ratio)
        if len(rows) == 0:  # every row of the block certainly fails the ratio test
            continue
        score = np.empty(len(rows), np.float32)
        for k in range(g):
            at = np.flatnonzero(images == k)
            # the float32 path's G = fl32(2 a.b - |b|^2), here from the exact product
            exact = _exact_dots(query.f64, group.descs[k], rows[at], cols[at])
            score[at] = (2 * exact - group.preps[k].sqnorm32[cols[at]]).astype(np.float32)
        ids, col, s1, s2 = _segments_top2(rows * g + images, cols, score)
        best.flat[ids], g1.flat[ids], g2.flat[ids], done.flat[ids] = col, s1, s2, True
    d1sq = np.maximum(query.sqnorm[:, None] - g1, 0.0)
    d2sq = np.maximum(query.sqnorm[:, None] - g2, 0.0)
    keep = done.copy() if ratio is None else done & (d1sq < (ratio * ratio) * d2sq)
    if mutual:
        rows, images = np.nonzero(keep)
        if len(rows):
            keep[rows, images] = _mutual_owners(query, group, images, rows, best[rows, images])
    out = []
    for k in range(g):
        cand = np.flatnonzero(keep[:, k])
        d1, d2 = np.sqrt(d1sq[cand, k]), np.sqrt(d2sq[cand, k])
        with np.errstate(divide="ignore", invalid="ignore"):
            rat = d1 / d2
        rat[(d1 == 0) & (d2 == 0)] = 1.0
        out.append(PairMatches(cand, best[cand, k], d1.astype(np.float32), rat.astype(np.float32), n_tentative=n))
    return out


def _plan(db_descs: Sequence[np.ndarray], group_size: int):
    """``(groups, singles)``: images for the bfloat16 path in groups of similar sizes (index lists),
    and the images the float32 path answers (fewer than two descriptors, or norms spread widely)."""
    fast, singles = [], []
    for j, d in enumerate(db_descs):
        if len(d) < 2:
            singles.append(j)
            continue
        p = prepared(d)
        spread = float(p.half_sq.max() - p.half_sq.min())
        (singles if spread > MAX_SPREAD * float(p.half_sq.max()) else fast).append(j)
    fast.sort(key=lambda j: len(db_descs[j]))
    return [fast[i:i + group_size] for i in range(0, len(fast), group_size)], singles


def match_shortlist_bf16(query_desc: np.ndarray, db_descs: Sequence[np.ndarray], ratio: Optional[float] = 0.8,
                         mutual: bool = False, n_workers: Optional[int] = None,
                         row_block: int = 512, group_size: int = 4) -> ShortlistMatches:
    """:func:`retrieval.rerank.matching.match_shortlist` (same arguments, same matches) with the
    bfloat16 pre-selection and exact check of the module docstring: ``group_size`` database images
    of similar sizes per GEMM, the groups in ``n_workers`` threads. Database descriptors are
    prepared once per array and reused while the array lives (:func:`prepared`)."""
    _check(query_desc, db_descs)
    if ratio is not None and not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    if len(query_desc) == 0:
        return ShortlistMatches([PairMatches.empty(0) for _ in db_descs])
    workers = default_workers() if n_workers is None else max(1, int(n_workers))
    workers = min(workers, max(1, len(db_descs)))
    # every torch op here, the preparation included, single-threaded when the pool runs in parallel:
    # torch's own threads would wait on each other under the pool (and spin on a loaded machine)
    with _torch_threads(1 if workers > 1 else torch.get_num_threads()):
        query = _QueryBF16(query_desc)
        groups, singles = _plan(db_descs, max(1, int(group_size)))
        tasks = [("group", idx) for idx in groups] + [("single", [j]) for j in singles]

        def one(task):
            kind, idx = task
            if kind == "single":
                return [_match_one(query, db_descs[idx[0]], ratio, mutual, row_block)]
            group = _Group([db_descs[j] for j in idx], [prepared(db_descs[j]) for j in idx])
            return _match_group(query, group, ratio, mutual, row_block)

        if workers == 1 or len(tasks) < 2:
            results = [one(t) for t in tasks]
        else:
            with ThreadPoolExecutor(min(workers, len(tasks))) as pool:
                results = list(pool.map(one, tasks))
    pairs: List[Optional[PairMatches]] = [None] * len(db_descs)
    for (_, idx), res in zip(tasks, results):
        for j, pm in zip(idx, res):
            pairs[j] = pm
    return ShortlistMatches(pairs)  # type: ignore[arg-type]
