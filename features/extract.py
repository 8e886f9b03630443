"""Parallel, resumable extraction of local features for a whole dataset into a
:class:`~retrieval.features.store.LocalFeatureStore`.

Any extractor with ``config`` (a dict that fully describes extraction; it is stored in the file) and
``extract_path(path, box=None) -> LocalFeatures`` works (``store_dtype``, when present, sets how
descriptors are kept: ``"uint8"`` for plain SIFT, ``"float16"`` otherwise). Workers compute, the main
process alone writes, in chunks, so an interrupted run keeps every finished chunk and a second run
computes only what is missing. A store made with another configuration is refused.

Threads are the default: OpenCV and Pillow release the GIL while they work, so threads run SIFT in
parallel without copying images or features between processes (the classical protocol's speed table,
``retrieval.experiments.classical_speed``, measures threads against loky processes).
"""
from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from joblib import Parallel, delayed, effective_n_jobs
from tqdm.auto import tqdm

from retrieval.core.imageio import ImageLoadError

from retrieval.features.store import LocalFeatureStore

PathLike = Union[str, os.PathLike]
Box = Tuple[float, float, float, float]

__all__ = ["extract_local_features", "ExtractionResult", "ExtractionError"]


class ExtractionError(RuntimeError, ValueError):
    """Extraction failed on one image; ``path`` names the file and ``reason`` says why. Also a
    ValueError: bad input, which the command line reports as one line (exit code 2)."""

    def __init__(self, image_id: str, path: PathLike, reason: str):
        self.image_id = str(image_id)
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason} (image id {self.image_id!r}); the features computed "
                         "so far are kept in the store and a rerun resumes from them")

    def __reduce__(self):  # picklable, so worker processes (loky, Ray) can hand it back
        return type(self), (self.image_id, self.path, self.reason)


@dataclass
class ExtractionResult:
    """What one call did: ``computed`` images extracted now, ``skipped`` already complete in the
    store, ``failed`` as ``(image_id, path, reason)`` (``on_error="skip"``), wall ``seconds``."""

    computed: int = 0
    skipped: int = 0
    failed: List[Tuple[str, str, str]] = field(default_factory=list)
    seconds: float = 0.0
    n_keypoints: int = 0

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / self.computed if self.computed else float("nan")


@contextmanager
def _opencv_threads(n: Optional[int]):
    """With several workers, each OpenCV call runs single-threaded: parallelism across images scales
    better than OpenCV's partial parallelism inside one SIFT call, and the two would oversubscribe the
    cores. (Loky workers are separate processes and keep their own default.)"""
    try:
        import cv2
    except ImportError:  # an extractor that does not use OpenCV
        yield
        return
    old = cv2.getNumThreads()
    if n is not None:
        cv2.setNumThreads(n)
    try:
        yield
    finally:
        cv2.setNumThreads(old)


@contextmanager
def _torch_threads(n: Optional[int], extractor: Any):
    """With several workers, an extractor that runs torch (``uses_torch``) runs it single-threaded in each:
    torch's intra-op pool defaults to every core, so two workers would run twice as many threads as
    cores. Set before the workers start, so their threads take it up on their first torch call."""
    if n is None or not getattr(extractor, "uses_torch", False):
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextmanager
def ordered_results(work: Callable, tasks: Iterable[tuple], n_jobs: int, ahead: int,
                    backend: str = "threading", in_waves: bool = False) -> Iterator[Iterator]:
    """``work(*task)`` for every task, in task order, computed by ``n_jobs`` workers with at most
    ``ahead`` tasks submitted beyond the one being consumed; use as ``with ordered_results(...) as
    results: for r in results: ...``.

    Leaving the block early (an error, a caught exception, Ctrl-C) cancels the queued tasks and
    waits for the running ones before the block ends. A worker thread still inside OpenCV when the
    interpreter exits is killed by a forced unwind that OpenCV's C++ catches and swallows, and the
    process aborts ("FATAL: exception not rethrown", exit 134) even after the caller handled the
    error: joblib's threading backend, used before, left such threads running. ``backend="loky"``
    (separate processes, which have no such problem) still goes through joblib. ``n_jobs=1``
    computes in the calling thread.

    ``in_waves`` (threads): ``ahead`` tasks are submitted, all of them finish, their results are
    handed over, and only when the caller asks for the result after them is the next wave
    submitted: the workers never run while the caller works on their results. For a caller whose
    own work already uses every core (a multi-threaded ONNX Runtime forward pass), running workers
    beside it only makes its threads wait for each other (:mod:`retrieval.features.deep_extract`)."""
    n_jobs = max(1, effective_n_jobs(n_jobs))
    if backend not in ("threading", "loky"):
        raise ValueError(f"backend must be 'threading' or 'loky', not {backend!r}")
    if backend == "loky":
        with Parallel(n_jobs=n_jobs, backend="loky", return_as="generator",
                      batch_size=max(1, ahead // (2 * n_jobs))) as parallel:
            yield parallel(delayed(work)(*task) for task in tasks)
        return
    if n_jobs == 1:
        yield (work(*task) for task in tasks)
        return
    pool = ThreadPoolExecutor(max_workers=n_jobs, thread_name_prefix="extract")
    pending: deque = deque()

    def generate():
        queue = iter(tasks)
        pending.extend(pool.submit(work, *task) for task in islice(queue, max(1, ahead)))
        while in_waves and pending:
            wait(list(pending))
            while pending:
                yield pending.popleft().result()
            pending.extend(pool.submit(work, *task) for task in islice(queue, max(1, ahead)))
        while pending:
            result = pending.popleft().result()
            pending.extend(pool.submit(work, *task) for task in islice(queue, 1))
            yield result

    try:
        yield generate()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _extract_one(extractor: Any, image_id: str, path: str, box: Optional[Box]):
    """Worker: never raises, so one bad image cannot take the pool (and finished work) down with it."""
    try:
        return image_id, extractor.extract_path(path, box=box), None
    except ImageLoadError as exc:
        return image_id, None, exc.reason
    except Exception as exc:  # OpenCV errors, bad boxes: reported with the file's name
        return image_id, None, f"{type(exc).__name__}: {exc}"


def extract_local_features(image_ids: Sequence[str], image_paths: Sequence[PathLike], extractor: Any,
                           store_path: PathLike, n_jobs: int = 2,
                           boxes: Optional[Sequence[Optional[Box]]] = None, batch_size: int = 64,
                           on_error: str = "raise", backend: str = "threading",
                           progress: bool = True, desc: str = "local features") -> ExtractionResult:
    """Extract local features of every image into ``store_path``, resuming a previous run.

    ``boxes`` (one per image, or None) crop before extraction (Oxford queries), in pixels of the stored
    image file. ``n_jobs`` workers (``backend``: ``"threading"`` or ``"loky"``) compute, the main
    process writes each chunk of ``batch_size`` images and flushes, so an interruption loses at most one
    chunk. ``on_error="raise"``: an unreadable image raises :class:`ExtractionError` naming the file
    (after writing everything finished before it); ``"skip"``: it is listed in the result's ``failed``
    and the run goes on. Ids already complete in the store are skipped; a store made with another
    extractor configuration raises :class:`~retrieval.features.store.FeatureFileError`.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError("on_error must be 'raise' or 'skip'")
    image_ids = [str(i) for i in image_ids]
    image_paths = [str(p) for p in image_paths]
    if len(image_ids) != len(image_paths):
        raise ValueError(f"{len(image_ids)} image ids but {len(image_paths)} paths")
    if boxes is not None and len(boxes) != len(image_ids):
        raise ValueError(f"{len(boxes)} boxes for {len(image_ids)} images")
    if len(set(image_ids)) != len(image_ids):
        raise ValueError("image ids must be unique")
    result = ExtractionResult()
    start = time.perf_counter()
    dtype = getattr(extractor, "store_dtype", "float16")
    with LocalFeatureStore(store_path, mode="a", config=extractor.config, dtype=dtype) as store:
        todo = [i for i, image_id in enumerate(image_ids) if image_id not in store]
        result.skipped = len(image_ids) - len(todo)
        if not todo:
            result.seconds = time.perf_counter() - start
            return result
        tasks = ((extractor, image_ids[i], image_paths[i], None if boxes is None else boxes[i]) for i in todo)
        path_of = {image_ids[i]: image_paths[i] for i in todo}
        bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not progress, leave=False)
        pending = 0
        # the workers finish (ordered_results) before OpenCV's and torch's thread counts are restored
        with _opencv_threads(1 if n_jobs != 1 else None), _torch_threads(1 if n_jobs != 1 else None, extractor), \
                ordered_results(_extract_one, tasks, n_jobs, ahead=max(2 * n_jobs, min(32, batch_size)),
                                backend=backend) as results:
            for image_id, feats, error in results:
                bar.update(1)
                if error is not None:
                    if on_error == "raise":
                        store.flush()
                        bar.close()
                        raise ExtractionError(image_id, path_of[image_id], error)
                    result.failed.append((image_id, path_of[image_id], error))
                    continue
                store.put(image_id, feats)
                result.computed += 1
                result.n_keypoints += len(feats)
                pending += 1
                if pending >= batch_size:
                    store.flush()
                    pending = 0
        bar.close()
        store.flush()
    result.seconds = time.perf_counter() - start
    return result
