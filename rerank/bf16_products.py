"""The bfloat16 side of :mod:`retrieval.rerank.matching_bf16`: descriptors prepared for the product
(bfloat16 rows padded so that the GEMM's shapes repeat, norms, rounding residuals), cached per array
while it lives; the bound on a bfloat16 product's error; int16 keys that order bfloat16 values for
numpy's integer argmax."""
from __future__ import annotations

import threading
import weakref
from typing import Dict

import numpy as np
import torch

__all__ = ["PreparedDescriptors", "prepared", "error_bound_rows", "order_keys", "key_values", "cut_keys", "padded",
           "KEY_FLOOR"]

_SAFETY = 1.01  # the bound's own float64 arithmetic


def padded(rows: int, multiple: int) -> int:
    return -(-rows // multiple) * multiple


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
        # float32 is enough here: a float32 minus its bfloat16 rounding is exact, and the norms'
        # own rounding (~1e-7 relative) sits well inside the bound's safety factor
        rounded = self.bf16[:len(f32)].float().numpy()
        residual = f32 - rounded
        self.norm_bf = np.sqrt(np.einsum("ij,ij->i", rounded, rounded)).astype(np.float64)
        self.norm_res = np.sqrt(np.einsum("ij,ij->i", residual, residual)).astype(np.float64)
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


def error_bound_rows(norm_bf: np.ndarray, norm_res: np.ndarray, other_bf: float, other_res: float, dim: int,
           magnitude: np.ndarray) -> np.ndarray:
    """Bound on ``|t - s|`` for rows (``norm_bf``, ``norm_res``: norms of the bfloat16 rows and their
    rounding residuals) against any row of the other side (largest norms ``other_bf``, ``other_res``),
    where every estimate of the row is at most ``magnitude`` in size: input rounding (Cauchy-Schwarz on
    ``a.b - a~.b~ = a~.db + da.b~ + da.db``), float32 accumulation of ``dim`` products, and the
    rounding of the output to bfloat16."""
    inputs = norm_bf * other_res + norm_res * other_bf + norm_res * other_res
    accumulation = dim * 2.0 ** -24 * norm_bf * other_bf
    return _SAFETY * (inputs + accumulation) + _half_ulp(magnitude)


KEY_FLOOR = np.int16(-32768)  # below the key of every bfloat16 number (-inf included)
_SIGN_FLIP = np.int16(0x7FFF)


def order_keys(t: torch.Tensor, nonneg: bool) -> np.ndarray:
    """int16 keys in the order of the bfloat16 values of ``t``, for numpy's fast integer argmax: the
    bit patterns themselves when every value is >= +0 (products of nonnegative rows, whose -0.0 were
    made +0.0), else sign-magnitude flipped (one pass)."""
    bits = t.view(torch.int16).numpy()
    return bits if nonneg else bits ^ ((bits >> 15) & _SIGN_FLIP)


def key_values(keys: np.ndarray, nonneg: bool) -> np.ndarray:
    """The float64 values of :func:`order_keys` (the flip is its own inverse)."""
    bits = keys if nonneg else keys ^ ((keys >> 15) & _SIGN_FLIP)
    return (bits.astype(np.int32) << 16).view(np.float32).astype(np.float64)


def cut_keys(cut: np.ndarray, nonneg: bool) -> np.ndarray:
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
