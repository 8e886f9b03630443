"""Shortlist matching with a bfloat16 product and an exact check: the matches of
:func:`retrieval.rerank.matching.match_shortlist` (same nearest neighbours, ratio test and mutual test),
with the products that decide them re-scored in float64 and rounded to float32 as the float32 path
rounds them.

Why: on CPUs with native bfloat16 (AVX512-BF16, AMX) torch's bfloat16 GEMM runs 4-5x faster than its
float32 GEMM for the shapes of matching (~1,000 x 1,500 x 128 per pair), and the GEMM was most of the
float32 path's time. The bfloat16 scores are off by at most ``E_i`` (the bound of
:func:`retrieval.indexing.exact_bf16.error_bound`: input rounding, float32 accumulation, output
rounding), so they can only pre-select; every number that decides a match comes from the exact check.

For one pair (query rows a_i, database rows b_j), with ``s_ij = a_i . b_j``, ``beta_j = |b_j|^2 / 2``
and ``h_ij = s_ij - beta_j`` (half the float32 path's ``G``; the nearest neighbour maximises it):

* ``t_ij``: the bfloat16 estimate of ``s_ij``, ``|t_ij - s_ij| <= E_i``; ``T1_i >= T2_i`` the two
  largest ``t`` of row i; ``beta`` lies in ``[beta_lo, beta_hi]`` (``spread = beta_hi - beta_lo``:
  ~0 for L2-normalised descriptors such as RootSIFT);
* the true second-largest ``h`` is ``>= T2 - E - beta_hi`` (both rows of the two largest estimates are),
  and ``h_ij <= t_ij + E - beta_lo``; so the exact top two of row i are among the candidates
  ``t_ij >= T2 - 2E - spread`` (less a slack of a few float32 ulps, so that a float32 tie with the
  runner-up is re-scored too). The candidates (~8 a row on RootSIFT) are re-scored exactly;
* Lowe's test ``d1 < r d2`` (``d^2 = |a|^2 - 2h``) can only pass when it passes with the bounds most
  in its favour (``h1 <= T1 + E - beta_lo``, ``h2 >= T2 - E - beta_hi``); the other rows certainly fail
  and are not re-scored;
* mutual test of a passing match (i, j): the query rows that could beat row i in column j (score
  ``s - |a|^2 / 2``, first index on ties, as the float32 path's argmax) are those whose estimate is
  within the bound; they come from one bfloat16 product of the matched columns and are re-scored.

The exact check computes each candidate product in float64 (exact for float32 / float16 / uint8
inputs up to ~1e-16) and rounds ``2 s - |b|^2`` to float32, as the float32 path's ``addmm`` does; that
path's own rounding can therefore differ only where two float32 scores tie to within its accumulation
error (a few ulps), where the float32 path's choice is itself arbitrary.

Pairs whose database norms spread too widely for the pre-selection to pay (unnormalised SIFT), and
images with fewer than two descriptors, go through the float32 path; so does everything on a CPU
without native bfloat16 (:func:`retrieval.indexing.exact_bf16.bf16_available`).
"""
from __future__ import annotations

import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from retrieval.indexing.exact_bf16 import bf16_available
from retrieval.rerank.matching import (PairMatches, ShortlistMatches, _check, _match_one, _Query, _torch_threads,
                                       default_workers)

__all__ = ["match_shortlist_bf16", "PreparedDescriptors", "prepared", "PRECISIONS", "use_bf16_matching"]

#: ``float32``: the float32 path (one float32 GEMM per pair); ``bfloat16``: this module's path;
#: ``auto``: ``bfloat16`` where the CPU multiplies bfloat16 natively, else ``float32``
PRECISIONS = ("auto", "float32", "bfloat16")
#: a pair goes through the float32 path when its database's squared norms spread more than this
#: fraction of the largest (unnormalised SIFT: the candidate window would hold much of each row)
MAX_SPREAD = 0.01
_F32_EPS = 2.0 ** -23
_SAFETY = 1.01  # the bound's own float64 arithmetic
_ARGMAX_PASSES = 4
_QUERY_ROWS = 64   # query rows likewise


def _padded(rows: int, multiple: int) -> int:
    return -(-rows // multiple) * multiple  # candidates beyond the top two found by argmax before a full comparison


def use_bf16_matching(precision: str) -> bool:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision == "bfloat16" or (precision == "auto" and bf16_available())


class PreparedDescriptors:
    """One side's descriptors as the matcher reads them: bfloat16 rows (the product's input), the
    float32 path's squared norms, and the pieces of the error bound: norms of the bfloat16 rows and
    of their rounding residuals. A float32 array is read as it is and never held here (so the cache
    entry of an array does not keep the array alive); other dtypes keep a float32 copy."""

    __slots__ = ("copy32", "bf16", "sqnorm32", "half_sq", "norm_bf", "norm_res", "nonneg")

    def __init__(self, desc: np.ndarray, multiple: int = 256):
        f32 = _float32(desc)
        self.copy32 = None if f32 is desc else f32
        self.bf16 = _padded_bf16(f32, multiple)
        # the float32 path's |b|^2 (float32 einsum), so that both paths subtract the same number
        self.sqnorm32 = np.einsum("ij,ij->i", f32, f32)
        self.half_sq = self.sqnorm32.astype(np.float64) / 2
        rounded = self.bf16[:len(f32)].double().numpy()
        residual = f32.astype(np.float64) - rounded
        self.norm_bf = np.sqrt(np.einsum("ij,ij->i", rounded, rounded))
        self.norm_res = np.sqrt(np.einsum("ij,ij->i", residual, residual))
        self.nonneg = bool(len(f32) == 0 or f32.min() >= 0)

    def float32(self, desc: np.ndarray) -> np.ndarray:
        return desc if self.copy32 is None else self.copy32


def _padded_bf16(f32: np.ndarray, multiple: int) -> torch.Tensor:
    """bfloat16 rows padded with zero rows to a multiple of ``multiple``: the GEMM's shapes then
    repeat across pairs and queries, and oneDNN reuses its compiled kernel for a shape instead of
    building one per pair (~0.7 ms each, more than the product itself)."""
    rows = -(-len(f32) // multiple) * multiple
    out = torch.zeros((rows, f32.shape[1]), dtype=torch.bfloat16)
    # -0.0 + 0.0 = +0.0: no negative zero reaches the product (a row of them would give -0.0)
    out[:len(f32)] = torch.from_numpy(f32 + np.float32(0.0))
    return out


def _float32(desc: np.ndarray) -> np.ndarray:
    arr = np.asarray(desc)
    if arr.dtype == np.float32 and arr.flags.c_contiguous:
        return arr
    return np.ascontiguousarray(arr, dtype=np.float32)


class _PreparedCache:
    """Prepared descriptors by array identity, held as long as the array lives (a weak reference
    to the array drops its entry), so a database image kept in memory across queries (a preloaded
    dict, a cached store) is converted once, not once per query."""

    def __init__(self):
        self._entries: Dict[int, tuple] = {}
        self._lock = threading.Lock()

    def get(self, desc: np.ndarray) -> PreparedDescriptors:
        key = id(desc)
        with self._lock:
            hit = self._entries.get(key)
        if hit is not None and hit[0]() is desc:
            return hit[1]
        prep = PreparedDescriptors(desc)
        try:
            ref = weakref.ref(desc, lambda r, key=key: self._drop(key, r))
        except TypeError:  # not weakly referenceable: not cached
            return prep
        with self._lock:
            self._entries[key] = (ref, prep)
        return prep

    def _drop(self, key: int, ref) -> None:
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0] is ref:
                del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)


_CACHE = _PreparedCache()


def prepared(desc: np.ndarray) -> PreparedDescriptors:
    """The (cached) :class:`PreparedDescriptors` of ``desc``."""
    return _CACHE.get(desc)


def _half_ulp(magnitude: np.ndarray) -> np.ndarray:
    """Half a bfloat16 ulp at ``magnitude`` (the output rounding of every entry up to it)."""
    _, exp = np.frexp(np.maximum(np.abs(magnitude), np.finfo(np.float32).tiny))
    return np.ldexp(np.ones(np.shape(magnitude)), (exp - 9).astype(np.int32))


def _bound(norm_bf: np.ndarray, norm_res: np.ndarray, other_bf: float, other_res: float, dim: int,
           magnitude: np.ndarray) -> np.ndarray:
    """Bound on ``|t - s|`` for rows (``norm_bf``, ``norm_res``: norms of the bfloat16 rows and their
    rounding residuals) against any row of the other side (largest norms ``other_bf``, ``other_res``),
    where every estimate of the row is at most ``magnitude`` in size: input rounding (Cauchy-Schwarz on
    ``a.b - a~.b~ = a~.db + da.b~ + da.db``), float32 accumulation of ``dim`` products, and the
    rounding of the output to bfloat16."""
    inputs = norm_bf * other_res + norm_res * other_bf + norm_res * other_res
    accumulation = dim * 2.0 ** -24 * norm_bf * other_bf
    return _SAFETY * (inputs + accumulation) + _half_ulp(magnitude)


_KEY_FLOOR = np.int16(-32768)  # below the key of every bfloat16 number (-inf included)
_SIGN_FLIP = np.int16(0x7FFF)


def _keys(t: torch.Tensor, nonneg: bool) -> np.ndarray:
    """int16 keys in the order of the bfloat16 values of ``t``, for numpy's fast integer argmax: the
    bit patterns themselves when every value is >= +0 (products of nonnegative rows, whose -0.0 were
    made +0.0), else sign-magnitude flipped (one pass)."""
    bits = t.view(torch.int16).numpy()
    return bits if nonneg else bits ^ ((bits >> 15) & _SIGN_FLIP)


def _values(keys: np.ndarray, nonneg: bool) -> np.ndarray:
    """The float64 values of :func:`_keys` (the flip is its own inverse)."""
    bits = keys if nonneg else keys ^ ((keys >> 15) & _SIGN_FLIP)
    return (bits.astype(np.int32) << 16).view(np.float32).astype(np.float64)


def _cut_keys(cut: np.ndarray, nonneg: bool) -> np.ndarray:
    """Keys ``c`` such that ``key >= c`` selects exactly the bfloat16 values ``>= cut``."""
    # float32 rounding is monotone and keeps every bfloat16 value: v >= cut <=> v >= fl32(cut)
    want = torch.from_numpy(np.asarray(cut, np.float64)).float()
    rounded = want.bfloat16()
    up = rounded.float() < want
    rounded = torch.where(up, torch.nextafter(rounded, torch.full_like(rounded, float("inf"))), rounded)
    bits = rounded.view(torch.int16).numpy()
    if nonneg:
        return np.maximum(bits, 0)  # a cut <= 0 keeps every value (all are >= +0)
    keys = bits ^ ((bits >> 15) & _SIGN_FLIP)
    return np.where(rounded.float().numpy() == 0, np.int16(-1), keys)  # -0.0 (key -1) >= a zero cut


class _QueryBF16(_Query):
    """The query side: the float32 path's fields plus the prepared bfloat16 rows."""

    def __init__(self, desc: np.ndarray):
        super().__init__(desc)
        self.f32 = self.t.numpy()
        self.t64 = self.t.double()
        self.sqnorm32 = self.sqnorm.astype(np.float32)
        self.half_sq = self.sqnorm / 2
        self.prep = PreparedDescriptors(self.f32, _QUERY_ROWS)
        self.bf16 = self.prep.bf16


def _exact_dots(a: np.ndarray, b: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """float64 ``a[rows] . b[cols]`` (products of float32 numbers are exact in float64)."""
    return np.einsum("ij,ij->i", a[rows].astype(np.float64), b[cols].astype(np.float64))


def _segments_top2(rows: np.ndarray, cols: np.ndarray, score: np.ndarray):
    """Per row, the column of the largest ``score`` (lowest column on ties) and the two largest
    scores: ``(row ids, best col, best, second)``; every row has >= 2 entries."""
    order = np.lexsort((cols, -score, rows))
    r, c, s = rows[order], cols[order], score[order]
    first = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
    return r[first], c[first], s[first], s[first + 1]


def _mutual_owners(query: _QueryBF16, db32: np.ndarray, qi: np.ndarray, dj: np.ndarray) -> np.ndarray:
    """For matches (qi[k], dj[k]): is qi[k] the float32 path's argmax of column dj[k] of
    ``2 a.b - |a|^2`` (first query row on ties)? The matched columns are few (the matches that
    passed), so their scores against every query row are computed exactly (one small float64 GEMM)."""
    cols, inverse = np.unique(dj, return_inverse=True)
    # torch's float64 GEMM, single-threaded in the pool (numpy's BLAS would start its own threads)
    exact = torch.mm(torch.from_numpy(db32[cols]).double(), query.t64.T).numpy()  # (|cols|, n)
    score = (2 * exact - query.sqnorm32[None, :]).astype(np.float32)
    return score.argmax(1)[inverse] == qi


def _candidates(query: _QueryBF16, db: PreparedDescriptors, r0: int, r1: int, ratio: Optional[float]):
    """Rows ``r0:r1``: the (row, column) pairs that may hold each row's exact top two, for the rows
    whose ratio test may pass (module docstring); rows listed in ascending runs."""
    q = query.prep
    m = len(db.sqnorm32)
    nonneg = db.nonneg and q.nonneg
    t = torch.mm(query.bf16[r0:r0 + _padded(r1 - r0, _QUERY_ROWS)], db.bf16.T)  # bfloat16 estimates
    keys = _keys(t, nonneg)[:r1 - r0, :m]
    ar = np.arange(r1 - r0)
    i1 = keys.argmax(1)
    k1 = keys[ar, i1]
    t1 = _values(k1, nonneg)
    magnitude = t1 if nonneg else np.maximum(np.abs(t1), np.abs(_values(keys.min(1), nonneg)))
    keys[ar, i1] = _KEY_FLOOR
    i2 = keys.argmax(1)
    t2 = _values(keys[ar, i2], nonneg)
    keys[ar, i1] = k1
    E = _bound(q.norm_bf[r0:r1], q.norm_res[r0:r1], float(db.norm_bf.max()), float(db.norm_res.max()),
               db.bf16.shape[1], magnitude)
    beta_lo, beta_hi = float(db.half_sq.min()), float(db.half_sq.max())
    a2 = query.sqnorm[r0:r1]
    # a float32 rounding of |a|^2 - 2h is ~ulps of its terms: widen every test by that much
    slack = 8 * _F32_EPS * (a2 + 2 * beta_hi + 2 * np.abs(t1) + 2 * E)
    if ratio is None:
        maybe = np.ones(r1 - r0, bool)
    else:
        d1_lo = np.maximum(a2 - 2 * (t1 + E - beta_lo) - slack, 0.0)
        d2_hi = a2 - 2 * (t2 - E - beta_hi) + slack
        maybe = d1_lo < (ratio * ratio) * d2_hi
    rows = np.flatnonzero(maybe)
    cut = _cut_keys(t2[rows] - 2 * E[rows] - (beta_hi - beta_lo) - slack[rows], nonneg)
    # the candidates of the rows that may pass: the two largest estimates, then the next largest
    # while they reach the cut (argmax passes over those rows), the rest by a full comparison
    sub = keys[rows]
    ar = np.arange(len(rows))
    out_rows, out_cols = [rows, rows], [i1[rows], i2[rows]]
    sub[ar, i1[rows]] = _KEY_FLOOR
    sub[ar, i2[rows]] = _KEY_FLOOR
    live = np.ones(len(rows), bool)
    for _ in range(_ARGMAX_PASSES):
        ik = sub.argmax(1)
        live &= sub[ar, ik] >= cut
        if not live.any():
            break
        out_rows.append(rows[live])
        out_cols.append(ik[live])
        sub[ar[live], ik[live]] = _KEY_FLOOR
    rest = np.flatnonzero(live)
    if len(rest):
        rr, cc = np.nonzero(sub[rest] >= cut[rest, None])
        out_rows.append(rows[rest[rr]])
        out_cols.append(cc)
    return np.concatenate(out_rows) + r0, np.concatenate(out_cols)


def _match_one_bf16(query: _QueryBF16, db_desc: np.ndarray, ratio: Optional[float], mutual: bool,
                    row_block: int) -> PairMatches:
    n, m = len(query.t), len(db_desc)
    if n == 0 or m < 2:
        return _match_one(query, db_desc, ratio, mutual, row_block)
    db = prepared(db_desc)
    db32 = db.float32(db_desc)
    spread = float(db.half_sq.max() - db.half_sq.min())
    if spread > MAX_SPREAD * float(db.half_sq.max()):
        return _match_one(query, db_desc, ratio, mutual, row_block)
    best = np.zeros(n, np.int64)
    g1 = np.zeros(n, np.float64)
    g2 = np.zeros(n, np.float64)
    done = np.zeros(n, bool)
    for r0 in range(0, n, row_block):
        rows, cols = _candidates(query, db, r0, min(n, r0 + row_block), ratio)
        if len(rows) == 0:
            continue
        # the float32 path's G = fl32(2 a.b - |b|^2), here from the exact product
        score = (2 * _exact_dots(query.f32, db32, rows, cols) - db.sqnorm32[cols]).astype(np.float32)
        ids, col, s1, s2 = _segments_top2(rows, cols, score)
        best[ids], g1[ids], g2[ids], done[ids] = col, s1, s2, True
    d1sq = np.maximum(query.sqnorm - g1, 0.0)
    d2sq = np.maximum(query.sqnorm - g2, 0.0)
    keep = done.copy() if ratio is None else done & (d1sq < (ratio * ratio) * d2sq)
    if mutual:
        cand = np.flatnonzero(keep)
        if len(cand):
            keep[cand] = _mutual_owners(query, db32, cand, best[cand])
    sel = np.flatnonzero(keep)
    d1, d2 = np.sqrt(d1sq[sel]), np.sqrt(d2sq[sel])
    with np.errstate(divide="ignore", invalid="ignore"):
        rat = d1 / d2
    rat[(d1sq[sel] == 0) & (d2sq[sel] == 0)] = 1.0
    return PairMatches(sel, best[sel], d1.astype(np.float32), rat.astype(np.float32), n_tentative=n)


def match_shortlist_bf16(query_desc: np.ndarray, db_descs: Sequence[np.ndarray], ratio: Optional[float] = 0.8,
                         mutual: bool = False, n_workers: Optional[int] = None,
                         row_block: int = 1024) -> ShortlistMatches:
    """:func:`retrieval.rerank.matching.match_shortlist` (same arguments, same matches) with the
    bfloat16 pre-selection and exact check of the module docstring. Database descriptors are
    prepared once per array and reused while the array lives (:func:`prepared`)."""
    _check(query_desc, db_descs)
    if ratio is not None and not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    if len(query_desc) == 0:
        return ShortlistMatches([PairMatches.empty(0) for _ in db_descs])
    query = _QueryBF16(query_desc)
    workers = default_workers() if n_workers is None else max(1, int(n_workers))
    workers = min(workers, max(1, len(db_descs)))

    def one(d):
        return _match_one_bf16(query, d, ratio, mutual, row_block)

    with _torch_threads(1 if workers > 1 else torch.get_num_threads()):
        if workers == 1:
            pairs = [one(d) for d in db_descs]
        else:
            with ThreadPoolExecutor(workers) as pool:
                pairs = list(pool.map(one, db_descs))
    return ShortlistMatches(pairs)
