"""A bounded load test of ``/api/search`` (search by id) on loopback: at most 500 requests, at most 8 at a
time, a wall-clock limit; it starts its own server (a child process, on a free 127.0.0.1 port) and stops it.

The index holds synthetic vectors (random Gaussian rows, L2-normalised, seeded): search cost depends on
the number and dimension of the vectors, not on where they came from. ``retrieval bench serve-load`` (and
``benchmarks/serve_load.py``) is the command-line entry point.
"""
from __future__ import annotations

import multiprocessing
import os
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import List, Sequence

import numpy as np

__all__ = ["MAX_REQUESTS", "MAX_CONCURRENCY", "synthetic_catalog", "run_load", "n_fmt"]

MAX_REQUESTS = 500
MAX_CONCURRENCY = 8
HOST = "127.0.0.1"


def synthetic_catalog(n: int = 100_000, dim: int = 320, seed: int = 0):
    """A :class:`~retrieval.serve.Catalog` over ``n`` random unit vectors (ids ``img000000`` ...)."""
    from retrieval import Index

    from retrieval.serve.catalog import Catalog

    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    index = Index(vectors, ids=_ids(n), config={"extractor": "synthetic", "dim": dim, "seed": seed})
    return Catalog(index, {}, index.config, source={"synthetic": f"{n} x {dim}, seed {seed}"})


def _ids(n: int) -> List[str]:
    return [f"img{i:06d}" for i in range(n)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _percentile(values: Sequence[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values, dtype=np.float64), q)), 2) if values else float("nan")


def _serve_synthetic(n: int, dim: int, seed: int, port: int, ready) -> None:
    """Child process: serve :func:`synthetic_catalog` on loopback; ``ready`` is set once it listens."""
    serve_until_killed(synthetic_catalog(n, dim, seed), port, ready)


def serve_until_killed(catalog, port: int, ready) -> None:
    """Serve ``catalog`` (a Catalog or a live one) on loopback ``port``; ``ready`` is set once it listens."""
    import logging

    import uvicorn

    from retrieval.serve.app import create_app

    logging.getLogger("retrieval.serve").setLevel(logging.ERROR)  # no "no image file" warning
    server = uvicorn.Server(uvicorn.Config(create_app(catalog), host=HOST, port=port, log_level="warning"))

    def announce():
        while not server.started:
            time.sleep(0.02)
        ready.set()

    threading.Thread(target=announce, daemon=True).start()
    server.run()


def run_load(n: int = 100_000, dim: int = 320, requests: int = MAX_REQUESTS, concurrency: int = MAX_CONCURRENCY,
             k: int = 20, time_limit: float = 120.0, seed: int = 0) -> dict:
    """Serve :func:`synthetic_catalog` ``(n, dim, seed)`` on loopback (in a child process, so the
    client's threads do not share its interpreter lock) and send ``requests`` searches by random id,
    ``concurrency`` at a time (both capped); stops after ``time_limit`` seconds whatever is left, then
    stops the server. Latencies in milliseconds, measured by the client (request sent to answer read)."""
    import httpx

    requests = max(1, min(int(requests), MAX_REQUESTS))
    concurrency = max(1, min(int(concurrency), MAX_CONCURRENCY))
    port = _free_port()
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    process = ctx.Process(target=_serve_synthetic, args=(n, dim, seed, port, ready), daemon=True)
    process.start()
    rng = np.random.default_rng(seed + 1)
    ids = [f"img{i:06d}" for i in rng.integers(0, n, size=requests)]
    base = f"http://{HOST}:{port}"
    latencies: List[float] = []
    statuses: dict = {}
    lock = threading.Lock()
    try:
        if not ready.wait(300):
            raise RuntimeError("the server did not start within 300 s")
        stop_at = time.monotonic() + time_limit

        def one(image_id: str, client) -> None:
            if time.monotonic() > stop_at:
                return
            t0 = time.perf_counter()
            response = client.get(f"{base}/api/search", params={"id": image_id, "k": k})
            elapsed = (time.perf_counter() - t0) * 1000.0
            with lock:
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code == 200:
                    latencies.append(elapsed)

        with httpx.Client(timeout=30.0, limits=httpx.Limits(max_connections=concurrency)) as client:
            one(ids[0], client)  # the first request (cold caches) is not counted
            latencies.clear()
            statuses.clear()
            start = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                list(pool.map(lambda i: one(i, client), ids))
            wall = time.perf_counter() - start
    finally:
        process.terminate()
        process.join(10)
    # the search alone, in this process, one query at a time: what HTTP and queueing add is the difference
    catalog = synthetic_catalog(n, dim, seed)
    direct = []
    for image_id in ids[:50]:
        t0 = time.perf_counter()
        catalog.index.search(catalog.vector(image_id)[None], k=k)
        direct.append((time.perf_counter() - t0) * 1000.0)
    done = sum(statuses.values())
    return {"index": {"count": n, "dim": dim, "backend": catalog.index.backend,
                      "vectors": "synthetic (random Gaussian, L2-normalised)"},
            "requests": done, "asked": requests, "concurrency": concurrency, "k": k,
            "statuses": {str(s): c for s, c in statuses.items()},
            "wall_seconds": round(wall, 3), "requests_per_second": round(done / wall, 1) if wall else None,
            "latency_ms": {"p50": _percentile(latencies, 50), "p95": _percentile(latencies, 95),
                           "p99": _percentile(latencies, 99),
                           "mean": round(statistics.fmean(latencies), 2) if latencies else None,
                           "max": round(max(latencies), 2) if latencies else None},
            "direct_search_ms": {"p50": _percentile(direct, 50), "p95": _percentile(direct, 95)},
            "stopped_by_time_limit": done < requests,
            "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def n_fmt(report: dict) -> str:
    return f"{report['index']['count']:,} x {report['index']['dim']}"
