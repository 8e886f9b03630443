"""Dataset-scale deep extraction: parallel decoding, batched inference, resumable feature files.

* :func:`extract_global`: global descriptors of every image into a global feature file
  (:class:`retrieval.features.store.GlobalFeatureWriter`; ids + (N, D) float32 + the extractor's configuration).
* :func:`extract_patches`: patch tokens of every image into a :class:`retrieval.features.store.LocalFeatureStore`
  (keypoints at feature-map cell centres), like any local features.

Pipeline: worker threads (``n_jobs``) read, decode, crop, resize and normalise images (Pillow and
OpenCV release the GIL); the main thread groups the prepared images by size, since images whose aspect
ratio is kept cannot be stacked otherwise, and runs the network on full batches of one size
(``batch_size``); at the end each partial group runs as it is (a batch of one is a plain per-image
forward, no padding). Where the network runs on the CPU, decoding and the network take turns
(``overlap=False``, the default there): the workers decode a wave of ``2 n_jobs`` chunks of images,
then the network runs on them with every core. Decoding beside a forward pass whose intra-op threads
already fill the cores makes those threads wait for each other at every operator
(``benchmarks/deep_speed.py --targets``, 2 loaded cores: float32 ONNX Runtime on Oxford at 512 px
1.20x faster end to end in turns than beside, COIL-100 at 224 px 0.99x). On a GPU decoding overlaps
the network (``overlap=True``).

Resuming: computed rows are written in chunks (``write_every``) and whatever is computed is written
when an error or an interruption ends the run; a rerun skips ids already in the file and computes
only the rest. A file made with another configuration is refused. An unreadable image
raises :class:`retrieval.features.extract.ExtractionError` naming the file after every image decoded before it
has been computed and written (``on_error="skip"`` lists it in the result and goes on).
"""
from __future__ import annotations

import os
import time
from typing import Dict, List, Optional, Sequence, Tuple, Union

import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

from retrieval.core.imageio import ImageLoadError, load_image

from retrieval.features.extract import ExtractionError, ExtractionResult, _opencv_threads, ordered_results
from retrieval.features.store import GlobalFeatureWriter, LocalFeatureStore

PathLike = Union[str, os.PathLike]
Box = Tuple[float, float, float, float]

__all__ = ["extract_global", "extract_patches", "patch_config", "decode_overlaps", "ExtractionError",
           "ExtractionResult"]


def _prepare_one(extractor, image_id: str, path: str, box: Optional[Box]):
    """Worker: (id, normalised float32 (3, H, W) network input, (h, w) of the cropped image, error):
    decode, crop, resize and normalise all happen here, off the network's thread. Never raises."""
    try:
        image = load_image(path)
        if box is not None:
            from retrieval.datasets.oxford import crop_query

            image = crop_query(image, box)
        return image_id, extractor.to_input(extractor.prepare(image)), image.shape[:2], None
    except ImageLoadError as exc:
        return image_id, None, None, exc.reason
    except Exception as exc:  # a bad box, an OpenCV error: reported with the file's name
        return image_id, None, None, f"{type(exc).__name__}: {exc}"


def _prepare_many(extractor, items):
    return [_prepare_one(extractor, image_id, path, box) for image_id, path, box in items]


def _check_inputs(ids, paths, boxes):
    ids = [str(i) for i in ids]
    paths = [str(p) for p in paths]
    if len(ids) != len(paths):
        raise ValueError(f"{len(ids)} image ids but {len(paths)} paths")
    if boxes is not None and len(boxes) != len(ids):
        raise ValueError(f"{len(boxes)} boxes for {len(ids)} images")
    if len(set(ids)) != len(ids):
        raise ValueError("image ids must be unique")
    return ids, paths


def decode_overlaps(extractor, overlap: Optional[bool] = None) -> bool:
    """Whether decoding runs beside the network (``overlap``; None: only where the extractor's network
    runs off the CPU, module docstring)."""
    if overlap is not None:
        return bool(overlap)
    return torch.device(getattr(extractor, "device", "cpu")).type != "cpu"


def _run(extractor, ids: List[str], paths: List[str], todo: List[int], boxes, batch_size: int, n_jobs: int,
         on_error: str, consume, result: ExtractionResult, desc: str, progress: bool, chunk: int = 8,
         overlap: Optional[bool] = None) -> None:
    """Decode ``todo`` in worker threads, group by input size, call ``consume(ids, inputs (B, 3, H, W),
    image_sizes)`` per batch; errors per ``on_error``; decoding beside ``consume`` or in turns with it
    (:func:`decode_overlaps`)."""
    groups: Dict[tuple, list] = {}
    bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not progress, leave=False)

    def flush(shape):
        items = groups.pop(shape)
        batch = items[0][1][None] if len(items) == 1 else np.stack([p for _, p, _ in items])
        consume([i for i, _, _ in items], torch.from_numpy(batch), [s for _, _, s in items])
        result.computed += len(items)
        bar.update(len(items))

    # a task = a few consecutive images: per-task dispatch costs about as much as decoding a small image
    chunks = [todo[s:s + chunk] for s in range(0, len(todo), chunk)]
    tasks = ((extractor, [(ids[i], paths[i], None if boxes is None else boxes[i]) for i in part])
             for part in chunks)
    path_of = {ids[i]: paths[i] for i in todo}
    try:
        # one OpenCV thread per worker: the workers are the parallelism (features.extract does the same)
        # (and the workers have stopped, by ordered_results, before its thread count is restored)
        with _opencv_threads(1), ordered_results(_prepare_many, tasks, n_jobs, ahead=max(2, 2 * n_jobs),
                                                 in_waves=not decode_overlaps(extractor, overlap)) as parts:
            for image_id, prepared, in_size, error in (item for part in parts for item in part):
                if error is not None:
                    if on_error == "raise":
                        for shape in list(groups):
                            flush(shape)
                        raise ExtractionError(image_id, path_of[image_id], error)
                    result.failed.append((image_id, path_of[image_id], error))
                    bar.update(1)
                    continue
                bucket = groups.setdefault(prepared.shape, [])
                bucket.append((image_id, prepared, in_size))
                if len(bucket) >= batch_size:
                    flush(prepared.shape)
            for shape in list(groups):
                flush(shape)
    finally:
        bar.close()


def extract_global(extractor, ids: Sequence, paths: Sequence[PathLike], out_path: PathLike,
                   batch_size: Optional[int] = None, n_jobs: int = 2,
                   boxes: Optional[Sequence[Optional[Box]]] = None, on_error: str = "raise",
                   overwrite: bool = False, progress: bool = True, write_every: int = 64,
                   desc: str = "global features", overlap: Optional[bool] = None) -> ExtractionResult:
    """Global descriptors of every image into the feature file ``out_path`` (resumable).

    ``extractor``: an :class:`retrieval.features.efficientnet.EfficientNetExtractor` (or anything with its
    ``prepare``, ``to_input``, ``describe_inputs``, ``dim`` and ``config``). ``boxes`` (one per image,
    or None) crop first, in pixels of the stored file. ``batch_size`` images of one input size go
    through the network together (default: the extractor's). ``n_jobs`` decoding threads, running beside
    the network (``overlap=True``) or in turns with it (False); default: beside it only where the
    network runs off the CPU (:func:`decode_overlaps`). Rows are
    written every ``write_every`` images (and whatever is computed when an error or an interruption
    ends the run). Returns an :class:`ExtractionResult`; read the file with
    :func:`retrieval.features.store.load_global`."""
    if on_error not in ("raise", "skip"):
        raise ValueError("on_error must be 'raise' or 'skip'")
    ids, paths = _check_inputs(ids, paths, boxes)
    batch_size = int(batch_size or getattr(extractor, "batch_size", 8))
    result = ExtractionResult()
    start = time.perf_counter()
    with GlobalFeatureWriter(out_path, extractor.dim, config=extractor.config, overwrite=overwrite) as writer:
        done = set(writer.done_ids)
        todo = [i for i, image_id in enumerate(ids) if image_id not in done]
        result.skipped = len(ids) - len(todo)
        pending: List[Tuple[List[str], np.ndarray]] = []  # (ids, rows) of computed batches

        def write():
            if pending:
                writer.append([i for batch_ids, _ in pending for i in batch_ids],
                              np.concatenate([rows for _, rows in pending]))
                pending.clear()

        def consume(batch_ids, inputs, _sizes):
            # a batch's ids and rows are recorded together (one append) once it is computed: an
            # interruption inside the forward pass leaves nothing half-recorded for the final write
            pending.append((list(batch_ids), extractor.describe_inputs(inputs)))
            if sum(len(b) for b, _ in pending) >= write_every:
                write()

        try:
            if todo:
                _run(extractor, ids, paths, todo, boxes, batch_size, n_jobs, on_error, consume, result, desc,
                     progress, overlap=overlap)
        except BaseException:
            # whatever was computed is kept, even on an error or an interruption; a failing write
            # (e.g. the disk is full) must not hide the error or the Ctrl-C that ended the run
            try:
                write()
            except Exception as write_exc:
                warnings.warn(f"{out_path}: {sum(len(b) for b, _ in pending)} computed rows could not be written "
                              f"({write_exc})", RuntimeWarning, stacklevel=2)
            raise
        write()
    result.seconds = time.perf_counter() - start
    return result


def patch_config(extractor) -> dict:
    """The configuration stored with patch tokens: the extractor's network and input settings (scales,
    pooling and whitening do not apply to patches)."""
    cfg = {k: v for k, v in extractor.config.items()
           if k not in ("scales", "pooling", "gem_p", "whitening", "name")}
    cfg["features"] = "patch-tokens"
    return cfg


def extract_patches(extractor, ids: Sequence, paths: Sequence[PathLike], store_path: PathLike,
                    batch_size: Optional[int] = None, n_jobs: int = 2,
                    boxes: Optional[Sequence[Optional[Box]]] = None, on_error: str = "raise",
                    overwrite: bool = False, progress: bool = True, write_every: int = 64,
                    desc: str = "patch tokens", overlap: Optional[bool] = None) -> ExtractionResult:
    """Patch tokens (L2-normalised feature-map cells, keypoints at cell centres in pixels of the
    (cropped) stored image) of every image into the :class:`LocalFeatureStore` ``store_path``
    (float16, resumable; flushed every ``write_every`` images and when the store closes); ``n_jobs`` and
    ``overlap`` as for :func:`extract_global`.
    ``extractor`` needs ``prepare``, ``to_input``, ``feature_maps_inputs`` and ``patches_from_map``
    (:class:`retrieval.features.efficientnet.EfficientNetExtractor`)."""
    if on_error not in ("raise", "skip"):
        raise ValueError("on_error must be 'raise' or 'skip'")
    ids, paths = _check_inputs(ids, paths, boxes)
    batch_size = int(batch_size or getattr(extractor, "batch_size", 8))
    result = ExtractionResult()
    start = time.perf_counter()
    with LocalFeatureStore(store_path, mode="a", config=patch_config(extractor), overwrite=overwrite,
                           dtype="float16") as store:
        todo = [i for i, image_id in enumerate(ids) if image_id not in store]
        result.skipped = len(ids) - len(todo)
        since_flush = [0]

        def consume(batch_ids, inputs, sizes):
            fmaps = extractor.feature_maps_inputs(inputs)
            for k, image_id in enumerate(batch_ids):
                feats = extractor.patches_from_map(fmaps[k], sizes[k])
                store.put(image_id, feats)
                result.n_keypoints += len(feats)
            since_flush[0] += len(batch_ids)
            if since_flush[0] >= write_every:
                store.flush()
                since_flush[0] = 0

        if todo:
            _run(extractor, ids, paths, todo, boxes, batch_size, n_jobs, on_error, consume, result, desc, progress,
                 overlap=overlap)
    result.seconds = time.perf_counter() - start
    return result
