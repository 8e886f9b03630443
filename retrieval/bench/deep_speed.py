"""Speed of EfficientNet-Lite0 extraction on CPU: every inference path, and end-to-end extraction
against the bare forward pass, measured in one run on one dataset (``--dataset KIND --data PATH``,
opened with :func:`retrieval.datasets.open.open_dataset`; default the Oxford subset of the data root,
``--config lite0-gem-512``: 512 px longest side, aspect kept; COIL-100 was timed with
``--dataset folder --data .../coil100 --config lite0-gem-224``, 224 x 224).

``--bare-images`` database images, spread evenly over the database, are timed in ``--rounds``
interleaved rounds; in each:

1. **bare forward** per float32 backend (``eager``, ``folded``, ``channels_last``, ``torchscript``,
   ``onnxruntime``) and per reduced precision (``--precisions``: ``int8``, ONNX Runtime static
   quantization; ``bfloat16``, channels-last torch under autocast): images decoded and normalised
   beforehand, batched by size exactly as extraction batches them; backbone + pooling + L2; images/s;
2. **end to end** for every precision path: float32 (the old default: ONNX Runtime, batch 1 for
   aspect-kept input, 4 for squares), each of ``--precisions`` and the new default (``precision="auto"``,
   its batch size):
   :func:`retrieval.features.deep_extract.extract_global` from the files (decode in ``--n-jobs``
   threads, resize, normalise, network, pooling, written to a feature file), at each batch size.

Reported ratios, medians over rounds of ratios taken seconds apart (the machine is shared and its load
drifts, so absolute figures are noisy): ``vs_eager`` = variant / eager forward at the same batch size,
``vs_old_default`` = variant / the old default (float32 ONNX Runtime at its old batch size, bare or end to
end alike), ``e2e_vs_bare`` = end to end / bare forward of the same path and batch size, and ``min_cos``
= the smallest cosine of an end-to-end file's descriptors to the old default's (1.0 to float rounding
where a path is float32: batching by size buckets changes nothing). ``--full`` adds one end-to-end pass
of the old and the new default over the whole database (``--limit`` images of it, spread evenly).

Writes ``results.json`` (rows: dataset, variant, batch, img_per_s, vs_eager, vs_old_default, e2e_vs_bare,
min_cos, default; plus torch_threads, n_jobs, quick, torch, and the default's choice: auto_precision,
auto_batch, auto_probe) and ``results.md`` to ``--out``; :func:`main` returns that folder.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

__all__ = ["NAME", "run", "spread", "size_batches"]

NAME = "deep_speed"
COLUMNS = ["dataset", "variant", "batch", "img_per_s", "vs_eager", "vs_old_default", "e2e_vs_bare", "min_cos",
           "default"]


def spread(items: Sequence, n: Optional[int]) -> list:
    """``n`` items taken at an even stride over ``items`` (all of them when ``n`` is falsy), so a
    sample of a labelled set covers every class rather than the first few."""
    if not n:
        return list(items)
    return list(items[:: max(1, len(items) // n)][:n])


def size_batches(prepared: Sequence[np.ndarray], batch_size: int) -> List[np.ndarray]:
    """Stacks of equal-size images, as extraction forms them."""
    groups: Dict[tuple, list] = {}
    for img in prepared:
        groups.setdefault(img.shape, []).append(img)
    out = []
    for imgs in groups.values():
        for s in range(0, len(imgs), batch_size):
            out.append(np.stack(imgs[s:s + batch_size]))
    return out


def _first_of_each_shape(tensors):
    """One tensor of every distinct shape, in order of first appearance."""
    seen: Dict[tuple, object] = {}
    for x in tensors:
        seen.setdefault(tuple(x.shape), x)
    return list(seen.values())


def _time_forward(backbone, tensors) -> float:
    """Images per second of backbone + pooling + L2 (``FastBackbone.describe``), one pass."""
    import torch

    with torch.inference_mode():
        n, start = 0, time.perf_counter()
        for x in tensors:
            backbone.describe(x)
            n += x.shape[0]
        return n / (time.perf_counter() - start)


def _variants(ext, prepared, batch_sizes, backends):
    """(backend, batch size, backbone, tensors) of every bare-forward variant, warmed up."""
    from retrieval.features.efficientnet import preprocess
    from retrieval.features.fast_inference import make_backbone, onnxruntime_available

    variants = []
    for backend in backends:
        if backend == "onnxruntime" and not onnxruntime_available():
            print("  onnxruntime not installed: skipped")
            continue
        backbone = make_backbone(ext.model.net, True, backend, pool=ext.model.pool)
        for bs in batch_sizes:
            if bs != ext.batch_size and backend not in (ext.backend, "eager"):
                continue
            tensors = [preprocess(b, "lite0", channels_last=backbone.channels_last)
                       for b in size_batches(prepared, bs)]
            # warm-up on one batch of every input size: ONNX Runtime plans (and TorchScript profiles)
            # each new input shape on its first run, a cost that a long extraction pays once per size;
            # warming only the first two batches let it into the first timed round (Oxford at 512 px:
            # ONNX Runtime 1.2 img/s in a cold round against 2.3 warm, same session, loaded machine)
            _time_forward(backbone, _first_of_each_shape(tensors))
            variants.append((backend, bs, backbone, tensors))
    return variants


def _path_label(pext) -> str:
    return pext.backend if pext.precision == "float32" else f"{pext.precision} ({pext.backend})"


def _min_cosines(files: Dict[tuple, Path], reference: tuple) -> Dict[tuple, float]:
    """Smallest cosine of each feature file's rows to the reference file's, row for row by id (rows are
    written batch by batch, so a bucketed file holds them in another order)."""
    from retrieval.features.store import load_global

    def by_id(path):
        ids, vectors, _ = load_global(path)
        return vectors[np.argsort(np.asarray(ids, dtype=np.int64))]

    ref = by_id(files[reference])
    return {key: float(np.min(np.sum(by_id(f) * ref, axis=1))) for key, f in files.items()}


def time_dataset(name: str, ext, timed: List[Path], every: List[Path], args, tmp: Path,
                 paths: Optional[list] = None, old_batch: Optional[int] = None,
                 new_default: Optional[tuple] = None) -> List[dict]:
    """Interleaved rounds over the ``timed`` files: in each round every bare-forward variant and then
    end-to-end extraction of the same images by every precision path (``paths``: extractors, the float32
    ``ext`` first), so every ratio compares measurements taken seconds apart (the load of a shared
    machine drifts over minutes); medians over rounds are reported. ``old_batch``: the batch size of
    the old default (float32 ONNX Runtime), the base of ``vs_old_default``. ``every``: the files of
    the ``--full`` pass; ``new_default``: (path label, batch size) of the new default."""
    from retrieval.features.deep_extract import extract_global
    from retrieval.core.imageio import load_image

    paths = paths or [ext]
    old_batch = old_batch or ext.batch_size
    t0 = time.perf_counter()
    prepared = [ext.prepare(load_image(p)) for p in timed]
    decode_ips = len(timed) / (time.perf_counter() - t0)
    sizes = sorted({p.shape[:2] for p in prepared})
    new_default = new_default or (_path_label(ext), ext.batch_size)
    batch_sizes = sorted({ext.batch_size, old_batch, args.compare_batch, new_default[1]})
    print(f"[{name}] {len(timed)} images timed in {args.rounds} rounds ({len(sizes)} distinct input sizes); "
          f"decode+resize (1 thread): {decode_ips:.1f} img/s; paths: {', '.join(map(_path_label, paths))}",
          flush=True)
    variants = _variants(ext, prepared, batch_sizes, args.backends)
    variants += _precision_variants(paths[1:], prepared, batch_sizes)
    ids = [str(k) for k in range(len(timed))]  # unique even where file names repeat across class folders
    measured: Dict[tuple, List[float]] = {}
    files: Dict[tuple, Path] = {}
    for r in range(args.rounds):
        for label, bs, backbone, tensors in variants:
            measured.setdefault(("bare", label, bs), []).append(_time_forward(backbone, tensors))
        for pext in paths:
            for bs in batch_sizes:
                key = ("e2e", _path_label(pext), bs)
                files[key] = tmp / f"e2e-{pext.precision}-{bs}.h5"
                res = extract_global(pext, ids, timed, files[key], batch_size=bs, n_jobs=args.n_jobs,
                                     overwrite=True, progress=False)
                measured.setdefault(key, []).append(res.computed / res.seconds)
        print(f"  round {r + 1}: " + ", ".join(f"{k[0]} {k[1]} b{k[2]} {v[-1]:.1f}" for k, v in measured.items()),
              flush=True)
    base = _path_label(ext)
    cosines = _min_cosines(files, ("e2e", base, old_batch))

    def ratio(a, b):
        if a not in measured or b not in measured:
            return None
        return float(np.median(np.asarray(measured[a]) / np.asarray(measured[b])))

    rows = []
    for (kind, label, bs), values in measured.items():
        default = "old" if (label, bs) == (base, old_batch) else ""
        default = "new (auto)" if (label, bs) == new_default else default
        rows.append({"dataset": name, "variant": f"{'bare forward' if kind == 'bare' else 'end to end'}: {label}",
                     "batch": bs, "img_per_s": float(np.median(values)),
                     "vs_eager": ratio((kind, label, bs), ("bare", "eager", bs)) if kind == "bare" else None,
                     "vs_old_default": ratio((kind, label, bs), (kind, base, old_batch)),
                     "e2e_vs_bare": ratio((kind, label, bs), ("bare", label, bs)) if kind == "e2e" else None,
                     "min_cos": cosines.get((kind, label, bs)), "default": default})
    if args.full:
        chosen = next(p for p in paths if _path_label(p) == new_default[0])
        for pext, bs in ((ext, old_batch), (chosen, new_default[1])):
            res = extract_global(pext, [str(k) for k in range(len(every))], every, tmp / "all.h5", n_jobs=args.n_jobs,
                                 batch_size=bs, progress=False, overwrite=True)
            rows.append({"dataset": name, "variant": f"end to end, all {len(every)} images: {_path_label(pext)}",
                         "batch": bs, "img_per_s": res.computed / res.seconds, "vs_eager": None,
                         "vs_old_default": None, "e2e_vs_bare": None, "min_cos": None,
                         "default": "old" if (pext, bs) == (ext, old_batch) else "new (auto)"})
    return rows


def _precision_variants(paths, prepared, batch_sizes):
    """(label, batch size, backbone, tensors) of the reduced-precision extractors' bare forward, warmed up."""
    from retrieval.features.efficientnet import preprocess

    out = []
    for pext in paths:
        for bs in batch_sizes:
            tensors = [preprocess(b, "lite0", channels_last=pext.backbone.channels_last)
                       for b in size_batches(prepared, bs)]
            _time_forward(pext.backbone, _first_of_each_shape(tensors))
            out.append((_path_label(pext), bs, pext.backbone, tensors))
    return out


def run(args) -> Path:
    """Run the benchmark (module docstring) with the options ``args`` (``retrieval bench deep-speed``,
    :mod:`retrieval.cli.bench_commands`: dataset, data, config, options (extractor keys), backend, out,
    quick, backends, precisions, threads, n_jobs, batch_size, compare_batch, rounds, limit, bare_images, full);
    returns the results folder."""
    import torch

    from retrieval.core.config import ConfigError
    from retrieval.datasets.open import DatasetConfig, open_dataset
    from retrieval.features.efficientnet import EfficientNetExtractor
    from retrieval.core.paths import data_root
    from retrieval.core.report import write_results

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data is None and args.dataset != "oxford":
        raise ConfigError(f"--dataset {args.dataset} needs its folder (--data PATH)")
    path = args.data if args.data is not None else str(data_root() / "oxford5k_subset")
    ds = open_dataset(DatasetConfig(kind=args.dataset, path=path))
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.bare_images = args.bare_images or (12 if args.quick else 48)
    files = [Path(p) for p in ds.db_paths]
    backend = "onnxruntime" if args.backend == "auto" else args.backend
    try:
        # the float32 reference at the old default (ONNX Runtime, batch 1 for aspect-kept input, 4 for
        # squares), then each reduced precision, then the new default (precision and batch "auto")
        options = {k: v for k, v in args.options.items() if k != "precision"}
        ext = EfficientNetExtractor(args.config, backend=backend, batch_size=args.batch_size,
                                    precision="float32", **options)
        old_batch = args.batch_size or (4 if ext.config["input"] == "square" else 1)
        paths = [ext] + [EfficientNetExtractor(args.config, precision=p, **options) for p in args.precisions]
        auto = EfficientNetExtractor(args.config, backend=args.backend, **options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"extractor: {exc}") from None
    if all(_path_label(p) != _path_label(auto) for p in paths):
        paths.append(auto)  # else the default's path is timed once, at every batch size (its own included)
    new_default = (_path_label(auto), auto.batch_size)
    timed, every = spread(files, args.bare_images), (spread(files, args.limit) if args.full else [])
    with tempfile.TemporaryDirectory() as tmp:
        rows = time_dataset(ds.root.resolve().name, ext, timed, every, args, Path(tmp), paths, old_batch,
                            new_default)
    extra = {"torch_threads": torch.get_num_threads(), "n_jobs": args.n_jobs, "quick": args.quick,
             "torch": torch.__version__, "auto_precision": auto.precision, "auto_batch": auto.batch_size,
             "auto_probe": auto.precision_probe}
    out = Path(args.out)
    table = write_results(rows, out, COLUMNS, extra=extra,
                          title=f"EfficientNet-Lite0 extraction speed (CPU, {torch.get_num_threads()} threads)")
    print(table)
    return out
