"""Peak memory of one job, measured in a fresh child process (so what the parent already holds -
other data, imported libraries - does not count, and the job's peak is its own)."""
from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any, Callable, Dict, Tuple


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return float(line.split()[1]) / 1024
    raise OSError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux: VmHWM) so the job's peak is not the imports'."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _status_mb("VmHWM")
        return True
    except OSError:
        return False


def _child(fn: Callable[..., Any], kwargs: Dict[str, Any], conn) -> None:
    from retrieval.core.report import peak_rss_mb
    try:
        linux = _reset_peak()
        baseline = _status_mb("VmRSS") if linux else peak_rss_mb()
        start = time.perf_counter()
        result = fn(**kwargs)
        peak = _status_mb("VmHWM") if linux else peak_rss_mb()
        conn.send(("ok", result, time.perf_counter() - start, peak, baseline))
    except BaseException as exc:  # report any failure to the parent instead of dying silently
        conn.send(("error", f"{type(exc).__name__}: {exc}", 0.0, 0.0, 0.0))
    finally:
        conn.close()


def run_measured(fn: Callable[..., Any], **kwargs) -> Tuple[Any, Dict[str, float]]:
    """Run ``fn(**kwargs)`` in a spawned child process (``fn`` a module-level function: the child imports
    it by its qualified name, as pickle names it); returns its (picklable) result
    and ``{"seconds", "peak_rss_mb", "baseline_rss_mb"}``: on Linux the peak is the job's own (the
    kernel's high-water mark is reset after the imports; baseline = resident memory then), elsewhere
    the process' lifetime peak. A failure in the child is raised here as RuntimeError."""
    ctx = mp.get_context("spawn")  # not fork: faiss/torch thread pools do not survive a fork
    parent, child = ctx.Pipe(duplex=False)
    target = f"{fn.__module__}.{fn.__qualname__}"
    proc = ctx.Process(target=_child, args=(fn, kwargs, child))
    proc.start()
    child.close()
    try:
        status, result, seconds, peak, baseline = parent.recv()
    except EOFError:
        proc.join()
        raise RuntimeError(f"{target} died in its child process (exit code {proc.exitcode})") from None
    proc.join()
    if status != "ok":
        raise RuntimeError(f"{target} failed in its child process: {result}")
    return result, {"seconds": seconds, "peak_rss_mb": peak, "baseline_rss_mb": baseline}


def _allocate_for_test(megabytes: int) -> int:
    """Touch ``megabytes`` of memory (the test that the child's peak is measured)."""
    import numpy as np
    block = np.ones(megabytes * 2 ** 20, dtype=np.uint8)
    return int(block.sum() // 2 ** 20)
