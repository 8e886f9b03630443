"""One way to map a function over work units, on this machine (joblib) or on a Ray cluster.

Every dataset-wide stage (local features, global and patch features, encoding, shortlist
re-ranking) hands its work to this module as a list of small, JSON-able *units* (a shard of images,
a batch of queries) and a function that processes one unit::

    results = map_units(extract_shard, units, engine="ray", n_jobs=8, shared=extractor)
    results = map_actors(make_worker, units, engine="ray", n_jobs=2, num_gpus=1)

* :func:`map_units` (CPU stages): ``engine="local"`` runs ``fn(unit, shared)`` in joblib workers
  (processes by default, so OpenCV, numpy and Python code do not share one GIL); ``engine="ray"``
  runs each unit as a Ray Core task. ``shared`` (an extractor, an encoder) is sent once
  (``ray.put``), not once per unit.
* :func:`map_actors` (network stages): ``make_worker()`` builds a worker once per process (an ONNX
  Runtime session, a GPU model) and ``worker(unit)`` processes units. ``engine="ray"`` runs a Ray
  Data ``map_batches`` with an actor pool of ``n_jobs`` actors (``num_gpus`` each when asked);
  ``engine="local"`` builds one worker in this process and runs the units in order.

Results come back in the order of ``units`` whatever the engine. Ray's own fault tolerance does the
retrying: a task or actor whose worker process dies (killed, out of memory) is rerun up to
``max_retries`` times; an exception raised by ``fn`` itself (bad image, disk full) is not retried and
stops the run. There is no scheduler here: at most ``n_jobs`` units are in flight at a time (so a run
asked for 2 workers uses 2 even on a larger cluster), everything else is Ray's.

Where Ray runs (:func:`resolve_address`): the ``ray_address`` given, else ``"auto"`` when a cluster
started with ``ray start`` is running on this machine, else the ``RAY_ADDRESS`` environment variable,
else a local Ray instance started for the run (``n_jobs`` CPUs, no dashboard, Ray's logs kept out of
the output) and shut down at its end. A Ray already initialised in this process (a notebook, the test
suite) is used as it is.

Imports nothing from the orchestration (bench, cli, steps, training); Ray is imported only when
``engine="ray"``.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator, List, Optional, Sequence

from tqdm.auto import tqdm

__all__ = ["ENGINES", "EngineError", "check_engine", "ray_available", "resolve_address", "ray_session",
           "authentication_failure", "AUTH_HELP",
           "map_units", "map_actors"]

ENGINES = ("local", "ray")
DEFAULT_MAX_RETRIES = 3


class EngineError(ValueError):
    """A bad engine name, or Ray asked for but not installed / not reachable."""


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise EngineError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "ray" and not ray_available():
        from retrieval.core.extras import require

        require("ray", "ray", "--engine ray")  # raises MissingExtra: one line naming the extra
    return engine


# how the token reaches a node or client (the README's "Scale out" says the same)
AUTH_HELP = ("A cluster started with `ray start --head` uses token authentication: on every node and client set "
             "RAY_AUTH_MODE=token and give it the head's token (copy the head's ~/.ray/auth_token, or set "
             "RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH); or start every node with RAY_AUTH_MODE=disabled on a "
             "trusted network")


def authentication_failure(exc: BaseException) -> Optional[str]:
    """The message of the authentication error behind ``exc`` (Ray wraps it in "Failed to connect to
    Ray cluster at ..."), or None when ``exc`` has another cause."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(getattr(exc, "message", "") or exc)
        # Ray puts the server's answer inside a traceback text: keep the line that says it
        line = next((ln.strip() for ln in text.splitlines()
                     if any(word in ln.lower() for word in ("authentication", "auth token", "unauthenticated"))), None)
        if line is not None or type(exc).__name__ == "AuthenticationError":
            line = line or text
            start = line.find("Authentication token")
            return (line[start:] if start > 0 else line).split(". ")[0].strip().rstrip(".")
        exc = exc.__cause__ or exc.__context__
    return None


def ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def _running_cluster() -> Optional[str]:
    """The address of a cluster started with ``ray start`` on this machine, if it is still running.
    (Ray records the last ``ray start`` in its temp folder; the address must also belong to a live
    GCS process, so a stale record, or a Ray instance another program started for itself, is not
    taken for a cluster.)"""
    try:
        from ray._private import services
        from ray._private.utils import read_ray_address
    except ImportError:  # pragma: no cover - another Ray layout: no auto-detection
        return None
    try:
        recorded = read_ray_address()
    except OSError:
        return None
    if not recorded:
        return None
    return recorded if recorded in services.find_gcs_addresses() else None


def resolve_address(ray_address: Optional[str] = None) -> Optional[str]:
    """The address to connect to: ``ray_address`` when given, else ``"auto"`` when a ``ray start``
    cluster runs on this machine, else ``$RAY_ADDRESS``, else None (start a local instance)."""
    if ray_address:
        return str(ray_address)
    if _running_cluster():
        return "auto"
    env = os.environ.get("RAY_ADDRESS", "").strip()
    return env or None


def _quiet_ray_data() -> None:
    import warnings

    import ray.data

    with warnings.catch_warnings():  # Ray Data's notices about its own deprecated settings
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.execution_options.verbose_progress = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def _events_to_stderr() -> None:
    """Ray prints its events (a worker died, its task will be retried) on stdout, where they would mix
    with a command's JSON output: send them to stderr. (Ray has no setting for this; its printing
    function is wrapped once, and left as it is if Ray's layout changes.)"""
    try:
        from ray._private import worker
    except ImportError:  # pragma: no cover
        return
    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "to_stderr", False):
        return

    def to_stderr(data, *args, **kwargs):
        return original(dict(data, is_err=True), *args, **kwargs)

    to_stderr.to_stderr = True
    worker.print_to_stdstream = to_stderr


@contextmanager
def ray_session(ray_address: Optional[str] = None, num_cpus: Optional[int] = None,
                num_gpus: Optional[int] = None) -> Iterator[Any]:
    """Yield the ``ray`` module connected to the cluster of :func:`resolve_address`; a Ray this
    context started is shut down at its end, one that was already running is left alone."""
    check_engine("ray")
    import ray

    _events_to_stderr()
    if ray.is_initialized():
        _quiet_ray_data()
        yield ray
        return
    address = resolve_address(ray_address)
    # Ray's C++ core logs warnings straight to this process's stderr; keep only fatal ones
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                  configure_logging=True)
    if address is None:
        kwargs.update(address="local", num_cpus=num_cpus, num_gpus=num_gpus)
    else:
        kwargs.update(address=address)
    try:
        ray.init(**kwargs)
    except Exception as exc:  # ConnectionError, RuntimeError, ray.exceptions.AuthenticationError
        reason = authentication_failure(exc)
        if reason is not None:
            raise EngineError(f"the Ray cluster at {address!r} refused this client: authentication failed ({reason}). "
                              f"{AUTH_HELP}") from None
        if isinstance(exc, ConnectionError):
            raise EngineError(f"cannot reach the Ray cluster at {address!r} ({exc})") from None
        raise
    try:
        _quiet_ray_data()
        yield ray
    finally:
        ray.shutdown()


def _bar(total: int, desc: str, progress: bool):
    return tqdm(total=total, desc=desc, unit="unit", disable=not progress, leave=False, smoothing=0.1)


def _call(fn: Callable, unit: Any, shared: Any) -> Any:
    return fn(unit) if shared is None else fn(unit, shared)


def map_units(fn: Callable, units: Sequence[Any], engine: str = "local", n_jobs: int = 2,
              shared: Any = None, ray_address: Optional[str] = None, backend: str = "loky",
              max_retries: int = DEFAULT_MAX_RETRIES, num_cpus: float = 1, num_gpus: float = 0,
              progress: bool = True, desc: str = "units",
              on_result: Optional[Callable[[int, Any], None]] = None) -> List[Any]:
    """``[fn(unit, shared) for unit in units]`` (``fn(unit)`` when ``shared`` is None), computed by
    ``n_jobs`` workers of ``engine`` (see the module docstring). ``fn`` must be importable (a
    module-level function) for process workers. ``on_result(i, result)`` is called in this process
    as each unit finishes (completion order), e.g. to record progress; the returned list is in unit
    order. The first exception raised by ``fn`` stops the run and is raised here."""
    check_engine(engine)
    units = list(units)
    n_jobs = max(1, int(n_jobs))
    out: List[Any] = [None] * len(units)
    bar = _bar(len(units), desc, progress)
    try:
        if not units:
            return out
        if engine == "local":
            from joblib import Parallel, delayed

            with Parallel(n_jobs=n_jobs, backend=backend, return_as="generator_unordered") as parallel:
                done = parallel(delayed(_indexed)(fn, i, unit, shared) for i, unit in enumerate(units))
                for i, result in done:
                    out[i] = result
                    bar.update(1)
                    if on_result is not None:
                        on_result(i, result)
            return out
        with ray_session(ray_address, num_cpus=n_jobs) as ray:
            remote = ray.remote(_call).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries,
                                               retry_exceptions=False)
            shared_ref = ray.put(shared) if shared is not None else None
            pending = {}
            todo = iter(enumerate(units))
            try:
                while True:
                    # at most n_jobs units in flight: the run uses the workers it was asked for
                    while len(pending) < n_jobs:
                        nxt = next(todo, None)
                        if nxt is None:
                            break
                        pending[remote.remote(fn, nxt[1], shared_ref)] = nxt[0]
                    if not pending:
                        break
                    ready, _ = ray.wait(list(pending), num_returns=1)
                    i = pending.pop(ready[0])
                    out[i] = _unwrap(ray, ready[0])
                    bar.update(1)
                    if on_result is not None:
                        on_result(i, out[i])
            finally:
                for ref in pending:  # an error or Ctrl-C: stop what is still running
                    ray.cancel(ref, force=True)
        return out
    finally:
        bar.close()


def _indexed(fn: Callable, i: int, unit: Any, shared: Any):
    return i, _call(fn, unit, shared)


def _unwrap(ray, ref):
    """``ray.get``, re-raising the task's own exception (a user error stays a user error)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.as_instanceof_cause()
        original = getattr(exc, "cause", None)
        raise (original if isinstance(original, BaseException) else cause) from None


def _actor_class(make_worker: Callable[[], Callable]):
    """A Ray Data actor class that builds the worker once, then processes one unit per row. (The
    factory is captured in the class, not passed as a constructor argument, so a restarted actor
    never depends on an argument kept in the object store.)"""

    class UnitWorker:
        def __init__(self):
            self.worker = make_worker()

        def __call__(self, batch):
            import json

            import numpy as np

            results = [json.dumps(self.worker(json.loads(u))) for u in batch["unit"]]
            return {"index": batch["index"], "result": np.asarray(results, dtype=object)}

    return UnitWorker


def map_actors(make_worker: Callable[[], Callable], units: Sequence[dict], engine: str = "local",
               n_jobs: int = 1, num_gpus: float = 0, num_cpus: float = 1,
               ray_address: Optional[str] = None, max_retries: int = DEFAULT_MAX_RETRIES,
               progress: bool = True, desc: str = "units",
               on_result: Optional[Callable[[int, Any], None]] = None) -> List[Any]:
    """``[worker(unit) for unit in units]`` where ``worker = make_worker()`` is built once per worker
    process (a network and its inference session). Units and results must be JSON-able (they travel
    as rows of a Ray Dataset). ``engine="ray"``: Ray Data ``map_batches`` over an actor pool of
    ``n_jobs`` actors with ``num_gpus`` / ``num_cpus`` each; an actor whose process dies is restarted
    and its unit retried (``max_retries``). ``engine="local"``: one worker here, units in order."""
    check_engine(engine)
    units = list(units)
    bar = _bar(len(units), desc, progress)
    try:
        if not units:
            return []
        if engine == "local":
            worker = make_worker()
            out = []
            for i, unit in enumerate(units):
                out.append(worker(unit))
                bar.update(1)
                if on_result is not None:
                    on_result(i, out[i])
            return out
        import json
        import warnings

        with warnings.catch_warnings(), ray_session(ray_address, num_cpus=max(1, int(n_jobs * num_cpus))) as ray:
            warnings.simplefilter("ignore", DeprecationWarning)  # Ray Data's own deprecation notices
            rows = [{"index": i, "unit": json.dumps(u)} for i, u in enumerate(units)]
            ds = ray.data.from_items(rows, override_num_blocks=len(rows))
            # Ray Data restarts a dead actor and retries its unit; max_retries bounds that as for tasks
            ds = ds.map_batches(_actor_class(make_worker), batch_size=1, num_gpus=num_gpus or None,
                                num_cpus=num_cpus, compute=ray.data.ActorPoolStrategy(size=max(1, int(n_jobs))),
                                max_restarts=max_retries, max_task_retries=max_retries)
            out: List[Any] = [None] * len(units)
            for row in ds.iter_rows():
                i = int(row["index"])
                out[i] = json.loads(row["result"])
                bar.update(1)
                if on_result is not None:
                    on_result(i, out[i])
            return out
    finally:
        bar.close()
