"""The arithmetic a training step runs in (``LoopConfig.precision``): which dtype autocast computes the
forward pass in, on which device, and whether the CPU has native bfloat16.

* ``'float32'``: no autocast (the path every trainer had before ``precision`` existed);
* ``'bfloat16'``: ``torch.autocast(device, dtype=torch.bfloat16)`` on CPU or CUDA: convolutions and
  matrix products in bfloat16, reductions, losses and normalisations in float32 (autocast's op
  lists); weights, gradients and optimiser state stay float32, so no loss scaling is needed;
* ``'auto'``: bfloat16 where the hardware computes it natively (a CPU with AVX512-BF16 or AMX, a CUDA
  device that supports it), else float32.

The older CUDA switch ``amp=True`` (with ``amp_dtype`` float16 + loss scaling, or bfloat16) still wins on
CUDA, as before; on CPU ``amp`` is ignored and ``precision`` decides.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["PRECISIONS", "Precision", "cpu_has_native_bf16", "resolve_precision"]

PRECISIONS = ("auto", "float32", "bfloat16")


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bfloat16 products natively (AVX512-BF16 or AMX tiles): the oneDNN
    kernels autocast uses are then faster than float32; elsewhere bfloat16 is emulated and slower."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)  # private probes of torch >= 2.3; flags otherwise
        if check is not None and check():
            return True
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


@dataclass(frozen=True)
class Precision:
    """What a run computes in: ``name`` ('float32', 'bfloat16' or 'float16'), recorded in checkpoints
    and results; ``dtype`` the autocast dtype (None: no autocast); ``loss_scaling`` for CUDA float16."""

    name: str
    device_type: str
    dtype: Optional[torch.dtype] = None
    loss_scaling: bool = False

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)


def resolve_precision(precision: str, device: torch.device, amp: bool = False,
                      amp_dtype: str = "float16") -> Precision:
    """The :class:`Precision` of a run on ``device`` (module docstring)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    kind = device.type
    if kind == "cuda" and amp:
        if amp_dtype == "float16":
            return Precision("float16", kind, torch.float16, loss_scaling=True)
        return Precision("bfloat16", kind, torch.bfloat16)
    if precision == "auto":
        if kind == "cpu":
            native = cpu_has_native_bf16()
        elif kind == "cuda":
            native = torch.cuda.is_bf16_supported()
        else:
            native = False
        precision = "bfloat16" if native else "float32"
    if precision == "float32" or kind not in ("cpu", "cuda"):
        return Precision("float32", kind)
    return Precision("bfloat16", kind, torch.bfloat16)
