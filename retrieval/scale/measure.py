"""Peak memory of one job, measured in a fresh child process (so what the parent already holds -
other data, imported libraries - does not count, and the job's peak is its own)."""
from __future__ import annotations

import importlib
import multiprocessing as mp
import time
from typing import Any, Dict, Tuple


def _child(target: str, kwargs: Dict[str, Any], conn) -> None:
    from ..report import peak_rss_mb
    try:
        module, name = target.split(":")
        fn = getattr(importlib.import_module(module), name)
        baseline = peak_rss_mb()
        start = time.perf_counter()
        result = fn(**kwargs)
        conn.send(("ok", result, time.perf_counter() - start, peak_rss_mb(), baseline))
    except BaseException as exc:  # report any failure to the parent instead of dying silently
        conn.send(("error", f"{type(exc).__name__}: {exc}", 0.0, 0.0, 0.0))
    finally:
        conn.close()


def run_measured(target: str, **kwargs) -> Tuple[Any, Dict[str, float]]:
    """Run ``module:function(**kwargs)`` in a spawned child process; returns its (picklable) result
    and ``{"seconds", "peak_rss_mb", "baseline_rss_mb"}`` (baseline: the child's peak after imports,
    before the job). A failure in the child is raised here as RuntimeError."""
    ctx = mp.get_context("spawn")  # not fork: faiss/torch thread pools do not survive a fork
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(target, kwargs, child))
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
