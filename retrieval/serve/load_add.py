"""The loopback load test of ``/api/search`` while the served collection grows: ``retrieval bench
serve-load --collection [--add 1000]``.

A synthetic collection (the random unit vectors of :func:`retrieval.serve.load.synthetic_catalog`, in a
temporary folder) is served by a child process (:class:`~retrieval.serve.live.LiveCatalog`, polling the
manifest every 0.25 s); the client sends searches by random id, at most 8 at a time; once a tenth of
the planned requests are answered, another child process adds ``add`` vectors with ``Collection.add``
(vectors only, no images). Reported: latency before, during (from the add's start until the server
shows the new count) and after the add, the add's own time, and the time from the add's return until
``/api/info`` shows the new count (polled every 10 ms: the figure is that much coarse). The server's
own cost of loading the new generation is reported under the load and, for comparison, alone (no
request in flight, the same collection and add size, in the parent process afterwards).
"""
from __future__ import annotations

import multiprocessing
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Tuple

import numpy as np

from retrieval.serve.load import HOST, MAX_CONCURRENCY, _free_port, _ids, _percentile, serve_until_killed

__all__ = ["run_load_during_add", "MAX_REQUESTS_DURING_ADD", "MAX_ADD"]

MAX_REQUESTS_DURING_ADD = 2000
MAX_ADD = 100_000
POLL = 0.25


def _vectors(n: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)


def _serve_collection(folder: str, port: int, ready) -> None:
    """Child process: serve the collection ``folder`` on loopback, following its generations."""
    from retrieval.serve.live import LiveCatalog

    serve_until_killed(LiveCatalog(folder, poll=POLL).start(), port, ready)


def _add_vectors(folder: str, start: int, add: int, dim: int, seed: int, ready, go, out) -> None:
    """Child process: set ``ready`` once started (imports and the collection's opening are not timed
    with the load), then once ``go`` is set, add ``add`` vectors (ids after the ``start`` first) and put
    (wall time before, wall time after, the add's report) on ``out``."""
    from retrieval.indexing.collection import Collection

    vectors = _vectors(add, dim, seed + 7)
    ids = [f"img{i:06d}" for i in range(start, start + add)]
    collection = Collection.open(folder)
    ready.set()
    go.wait()
    t0 = time.time()
    report = collection.add(ids, vectors)
    out.put((t0, time.time(), report))


def _swap_alone(folder: Path, start: int, add: int, dim: int, seed: int) -> dict:
    """What the watcher's load of a new generation costs with no request in flight (the server's own
    figure under load is ``server_swap_seconds``): one more add of ``add`` vectors, then a refresh."""
    from retrieval.indexing.collection import Collection
    from retrieval.serve.live import LiveCatalog

    live = LiveCatalog(folder)
    live.current.index.search(np.ones((1, dim), np.float32), k=1)  # as a serving process: search code warm
    ids = [f"img{i:06d}" for i in range(start, start + add)]
    Collection.open(folder).add(ids, _vectors(add, dim, seed + 11))
    live.refresh()
    live.close()
    return live.last_swap


def run_load_during_add(n: int = 100_000, dim: int = 320, add: int = 1000, requests: int = 500,
                        concurrency: int = MAX_CONCURRENCY, k: int = 20, time_limit: float = 120.0,
                        seed: int = 0) -> dict:
    """The measurement of the module docstring; latencies in milliseconds, measured by the client.
    The load runs for ``requests`` searches, and on (up to :data:`MAX_REQUESTS_DURING_ADD`) until the
    added vectors have been served for half a second."""
    from retrieval.indexing.collection import Collection

    requests = max(1, min(int(requests), MAX_REQUESTS_DURING_ADD))
    concurrency = max(1, min(int(concurrency), MAX_CONCURRENCY))
    add = max(1, min(int(add), MAX_ADD))
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        folder = Path(tmp) / "collection"
        t = time.perf_counter()
        Collection.create(folder, _ids(n), _vectors(n, dim, seed), config={"extractor": "synthetic", "dim": dim,
                                                                         "seed": seed})
        create_seconds = time.perf_counter() - t
        port = _free_port()
        ready, adder_ready, go, out = ctx.Event(), ctx.Event(), ctx.Event(), ctx.Queue()
        server = ctx.Process(target=_serve_collection, args=(str(folder), port, ready), daemon=True)
        adder = ctx.Process(target=_add_vectors, args=(str(folder), n, add, dim, seed, adder_ready, go, out), daemon=True)
        server.start()
        adder.start()
        try:
            if not ready.wait(300) or not adder_ready.wait(300):
                raise RuntimeError("the server or the adding process did not start within 300 s")
            result = _drive(f"http://{HOST}:{port}", n, add, requests, concurrency, k, time_limit, seed, go, out)
        finally:
            server.terminate()
            adder.terminate()
            server.join(10)
            adder.join(10)
        quiet_swap = _swap_alone(folder, n + add, add, dim, seed)
    return {"index": {"count": n, "dim": dim, "backend": "exact", "added": add,
                      "vectors": "synthetic (random Gaussian, L2-normalised): a collection folder"},
            "collection_create_seconds": round(create_seconds, 2), "concurrency": concurrency, "k": k,
            "watcher_poll_seconds": POLL, **result, "server_swap_without_requests": quiet_swap,
            "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def _drive(base: str, n: int, add: int, requests: int, concurrency: int, k: int, time_limit: float, seed: int,
           go, out) -> dict:
    import httpx

    rng = np.random.default_rng(seed + 1)
    ids = [f"img{i:06d}" for i in rng.integers(0, n, size=MAX_REQUESTS_DURING_ADD)]
    sent: List[Tuple[float, float, int]] = []  # (wall time sent, latency ms, status)
    lock = threading.Lock()
    state = {"next": 0, "seen": None}
    stop_at = time.monotonic() + time_limit

    def take() -> int:
        with lock:
            i = state["next"]
            seen = state["seen"]
            more = i < requests or (seen is None or time.time() < seen + 0.5)
            if i >= MAX_REQUESTS_DURING_ADD or not more or time.monotonic() > stop_at:
                return -1
            state["next"] = i + 1
            if i == requests // 10:
                go.set()  # the add starts once the load is under way
            return i

    def worker(client) -> None:
        while True:
            i = take()
            if i < 0:
                return
            t_wall, t0 = time.time(), time.perf_counter()
            response = client.get(f"{base}/api/search", params={"id": ids[i], "k": k})
            with lock:
                sent.append((t_wall, (time.perf_counter() - t0) * 1000.0, response.status_code))

    def watch(client) -> None:  # when does /api/info show the added rows?
        go.wait()
        while time.monotonic() < stop_at:
            if client.get(f"{base}/api/info").json()["count"] >= n + add:
                with lock:
                    state["seen"] = time.time()
                return
            time.sleep(0.01)

    with httpx.Client(timeout=30.0, limits=httpx.Limits(max_connections=concurrency + 1)) as client:
        client.get(f"{base}/api/search", params={"id": ids[0], "k": k})  # cold caches: not counted
        watcher = threading.Thread(target=watch, args=(client,), daemon=True)
        watcher.start()
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            for f in [pool.submit(worker, client) for _ in range(concurrency)]:
                f.result()
        wall = time.perf_counter() - start
        watcher.join(max(0.0, stop_at - time.monotonic()))
        swap = client.get(f"{base}/api/info").json().get("last_swap")
    t0, t1, report = out.get(timeout=60)
    seen = state["seen"]
    ok = [(ts, ms) for ts, ms, status in sent if status == 200]

    def summary(lo: float, hi: float) -> dict:
        ms = [m for ts, m in ok if lo <= ts < hi]
        return {"requests": len(ms), "p50": _percentile(ms, 50), "p95": _percentile(ms, 95),
                "max": round(max(ms), 2) if ms else None}

    statuses: dict = {}
    for _, _, status in sent:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {"requests": len(sent), "statuses": statuses, "wall_seconds": round(wall, 3),
            "latency_ms": {"all": summary(0, float("inf")), "before_add": summary(0, t0),
                           "during_add": summary(t0, seen if seen else float("inf")),
                           "after_add": summary(seen, float("inf")) if seen else None},
            "add_seconds": round(t1 - t0, 3), "add_report": report,
            "server_swap_seconds": swap,  # the server's read / catalog / warm-up / total of the new generation
            "visible_after_add_ms": round((seen - t1) * 1000.0, 1) if seen else None,
            "stopped_by_time_limit": seen is None}
