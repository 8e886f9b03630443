"""Speed of EfficientNet-Lite0 extraction on CPU: every inference path, and end-to-end extraction
against the bare forward pass, measured in one run on one dataset (``--dataset KIND --data PATH``,
opened with :func:`retrieval.datasets.open.open_dataset`; default the Oxford subset of the data root,
``--config lite0-gem-512``: 512 px longest side, aspect kept; COIL-100 was timed with
``--dataset folder --data .../coil100 --config lite0-gem-224``, 224 x 224), or on both inputs of the speed
targets in one run (``--targets``: :data:`TARGETS`, the Oxford subset at ``lite0-gem-512`` and COIL-100 at
``lite0-gem-224``).

``--bare-images`` database images, spread evenly over the database, are timed in ``--rounds``
interleaved rounds; in each:

1. **bare forward** per float32 backend (``eager``, ``folded``, ``channels_last``, ``torchscript``,
   ``onnxruntime``) and per reduced precision (``--precisions``: ``int8``, ONNX Runtime static
   quantization; ``bfloat16``, channels-last torch under autocast): images decoded and normalised
   beforehand, batched by size exactly as extraction batches them; backbone + pooling + L2; images/s;
2. **end to end** :func:`retrieval.features.deep_extract.extract_global` from the files (decode in
   ``--n-jobs`` threads, resize, normalise, network, pooling, written to a feature file): first the
   old default, float32 ONNX Runtime at batch 1 for aspect-kept input, 4 for squares, with decoding
   beside the network (``overlap=True``, the pipeline before decoding and the network took turns on
   the CPU); then every precision path (float32, each of ``--precisions`` and the new default,
   ``precision="auto"``) at each batch size, decoding in turns with the network (the default on the CPU).

Reported ratios, medians over rounds of ratios taken seconds apart (the machine is shared and its load
drifts, so absolute figures are noisy): ``vs_eager`` = variant / eager forward at the same batch size,
``vs_old_default`` = variant / the old default (bare: float32 ONNX Runtime at its old batch size; end to
end: the same with decoding beside the network), ``e2e_vs_bare`` = end to end / bare forward of the
same path and batch size, and ``min_cos`` = the smallest cosine of an end-to-end file's descriptors to
the old default's (1.0 to float rounding where a path is float32: batching by size buckets and the
order of decoding change nothing). ``--full`` adds the old and the new default end to end over the
whole database (``--limit`` images of it, spread evenly), side by side: the images split into
``--rounds`` interleaved parts, each extracted by the old default then the new.

Writes ``results.json`` (rows: dataset, config, variant, batch, img_per_s, vs_eager, vs_old_default,
e2e_vs_bare, min_cos, default; plus torch_threads, n_jobs, quick, torch, and the default's choice:
auto_precision, auto_batch, auto_probe, prefixed by the configuration with ``--targets``) and
``results.md`` to ``--out``; :func:`run` returns that folder.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

__all__ = ["NAME", "TARGETS", "run", "spread", "size_batches"]

NAME = "deep_speed"
COLUMNS = ["dataset", "config", "variant", "batch", "img_per_s", "vs_eager", "vs_old_default", "e2e_vs_bare", "min_cos",
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
    base = _path_label(ext)
    # the old default: float32 at its batch size, decoding beside the network (the pipeline before
    # decoding and the network took turns on the CPU); every other end-to-end path takes turns
    old_key = ("e2e", f"{base}, decoding beside the network", old_batch)
    e2e = [(old_key, ext, old_batch, True)] + [(("e2e", _path_label(p), bs), p, bs, None)
                                                for p in paths for bs in batch_sizes]
    measured: Dict[tuple, List[float]] = {}
    files: Dict[tuple, Path] = {}
    for r in range(args.rounds):
        for label, bs, backbone, tensors in variants:
            measured.setdefault(("bare", label, bs), []).append(_time_forward(backbone, tensors))
        for n, (key, pext, bs, overlap) in enumerate(e2e):
            files[key] = tmp / f"e2e-{n}.h5"
            res = extract_global(pext, ids, timed, files[key], batch_size=bs, n_jobs=args.n_jobs,
                                 overwrite=True, progress=False, overlap=overlap)
            measured.setdefault(key, []).append(res.computed / res.seconds)
        print(f"  round {r + 1}: " + ", ".join(f"{k[0]} {k[1]} b{k[2]} {v[-1]:.1f}" for k, v in measured.items()),
              flush=True)
    cosines = _min_cosines(files, old_key)

    def ratio(a, b):
        if a not in measured or b not in measured:
            return None
        return float(np.median(np.asarray(measured[a]) / np.asarray(measured[b])))

    rows = []
    for (kind, label, bs), values in measured.items():
        default = "old" if (kind, label, bs) in (old_key, ("bare", base, old_batch)) else ""
        default = "new (auto)" if (label, bs) == new_default else default
        bare_label = base if (kind, label, bs) == old_key else label
        rows.append({"dataset": name, "variant": f"{'bare forward' if kind == 'bare' else 'end to end'}: {label}",
                     "batch": bs, "img_per_s": float(np.median(values)),
                     "vs_eager": ratio((kind, label, bs), ("bare", "eager", bs)) if kind == "bare" else None,
                     "vs_old_default": ratio((kind, label, bs), old_key if kind == "e2e" else ("bare", base, old_batch)),
                     "e2e_vs_bare": ratio((kind, label, bs), ("bare", bare_label, bs)) if kind == "e2e" else None,
                     "min_cos": cosines.get((kind, label, bs)), "default": default})
    if args.full:
        rows += _full_pass(name, ext, old_batch, next(p for p in paths if _path_label(p) == new_default[0]),
                           new_default[1], every, args, tmp)
    return rows


def _full_pass(name: str, old, old_batch: int, new, new_batch: int, every: List[Path], args, tmp: Path) -> List[dict]:
    """The old default (float32, decoding beside the network) and the new default end to end over
    ``every`` file, side by side: the files split into ``args.rounds`` interleaved parts, each extracted
    by the old path then by the new one (appended to each path's feature file, as a resumed run), so
    both see the same drift of a shared machine's load. Rows: img/s over all parts, the new default's
    ratio to the old, the smallest cosine between the two files."""
    from retrieval.features.deep_extract import extract_global

    ids = [str(k) for k in range(len(every))]
    parts = [range(len(every))[r::args.rounds] for r in range(args.rounds)]
    spent = {"old": [0, 0.0], "new": [0, 0.0]}
    files = {"old": tmp / "all-old.h5", "new": tmp / "all-new.h5"}
    for n, part in enumerate(parts):
        for which, pext, bs, overlap in (("old", old, old_batch, True), ("new", new, new_batch, None)):
            res = extract_global(pext, [ids[i] for i in part], [every[i] for i in part], files[which],
                                 batch_size=bs, n_jobs=args.n_jobs, overwrite=n == 0, progress=False, overlap=overlap)
            spent[which][0] += res.computed
            spent[which][1] += res.seconds
    ips = {which: done / seconds for which, (done, seconds) in spent.items()}
    cos = _min_cosines({"old": files["old"], "new": files["new"]}, "old")
    return [{"dataset": name, "variant": f"end to end, all {len(every)} images: "
                                         f"{_path_label(pext)}{', decoding beside the network' if w == 'old' else ''}",
             "batch": bs, "img_per_s": ips[w], "vs_eager": None, "vs_old_default": ips[w] / ips["old"],
             "e2e_vs_bare": None, "min_cos": cos[w], "default": "old" if w == "old" else "new (auto)"}
            for w, pext, bs in (("old", old, old_batch), ("new", new, new_batch))]


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


#: ``--targets``: the two inputs of the speed targets, in one run: (dataset kind, folder of the data root,
#: configuration, images of the full pass (None: all), images timed in the rounds)
TARGETS = (("oxford", "oxford5k_subset", "lite0-gem-512", None, 32),
           ("folder", "coil100", "lite0-gem-224", 1000, 64))


def _time_one(args, kind: str, path: str, config: str, limit: Optional[int], bare_images: int):
    """Rows of one dataset at one configuration (the module docstring's rounds and full pass) and the new
    default's choice."""
    from retrieval.core.config import ConfigError
    from retrieval.datasets.open import DatasetConfig, open_dataset
    from retrieval.features.efficientnet import EfficientNetExtractor

    ds = open_dataset(DatasetConfig(kind=kind, path=path))
    files = [Path(p) for p in ds.db_paths]
    backend = "onnxruntime" if args.backend == "auto" else args.backend
    try:
        # the float32 reference at the old default (ONNX Runtime, batch 1 for aspect-kept input, 4 for
        # squares), then each reduced precision, then the new default (precision and batch "auto")
        options = {k: v for k, v in args.options.items() if k != "precision"}
        ext = EfficientNetExtractor(config, backend=backend, batch_size=args.batch_size,
                                    precision="float32", **options)
        old_batch = args.batch_size or (4 if ext.config["input"] == "square" else 1)
        paths = [ext] + [EfficientNetExtractor(config, precision=p, **options) for p in args.precisions]
        auto = EfficientNetExtractor(config, backend=args.backend, **options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"extractor: {exc}") from None
    if all(_path_label(p) != _path_label(auto) for p in paths):
        paths.append(auto)  # else the default's path is timed once, at every batch size (its own included)
    new_default = (_path_label(auto), auto.batch_size)
    timed, every = spread(files, bare_images), (spread(files, limit) if args.full else [])
    with tempfile.TemporaryDirectory() as tmp:
        rows = time_dataset(ds.root.resolve().name, ext, timed, every, args, Path(tmp), paths,
                            old_batch, new_default)
    return [dict(row, config=config) for row in rows], {"auto_precision": auto.precision, "auto_batch": auto.batch_size, "auto_probe": auto.precision_probe}


def run(args) -> Path:
    """Run the benchmark (module docstring) with the options ``args`` (``retrieval bench deep-speed``,
    :mod:`retrieval.cli.bench_commands`: dataset, data, config, options (extractor keys), backend, out,
    quick, backends, precisions, threads, n_jobs, batch_size, compare_batch, rounds, limit, bare_images, full,
    targets); returns the results folder."""
    import torch

    from retrieval.core.config import ConfigError
    from retrieval.core.paths import data_root
    from retrieval.core.report import write_results

    if args.threads:
        torch.set_num_threads(args.threads)
    args.rounds = args.rounds or (1 if args.quick else 3)
    if getattr(args, "targets", False):
        root = data_root()
        runs = [(kind, str(root / folder), config, args.limit or limit, args.bare_images or n)
                for kind, folder, config, limit, n in TARGETS]
    else:
        if args.data is None and args.dataset != "oxford":
            raise ConfigError(f"--dataset {args.dataset} needs its folder (--data PATH)")
        path = args.data if args.data is not None else str(data_root() / "oxford5k_subset")
        runs = [(args.dataset, path, args.config, args.limit, args.bare_images or (12 if args.quick else 48))]
    rows, extra = [], {"torch_threads": torch.get_num_threads(), "n_jobs": args.n_jobs, "quick": args.quick,
                       "torch": torch.__version__}
    for kind, path, config, limit, bare_images in runs:
        got, choice = _time_one(args, kind, path, config, limit, bare_images)
        rows += got
        extra.update(choice if len(runs) == 1 else {f"{config}: {k}": v for k, v in choice.items()})
    out = Path(args.out)
    table = write_results(rows, out, COLUMNS, extra=extra,
                          title=f"EfficientNet-Lite0 extraction speed (CPU, {torch.get_num_threads()} threads)")
    print(table)
    return out
