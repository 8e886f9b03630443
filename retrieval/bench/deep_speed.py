"""Speed of EfficientNet-Lite0 extraction on CPU: every inference path, and end-to-end extraction
against the bare forward pass, measured in one run on one dataset (``--dataset KIND --data PATH``,
opened with :func:`retrieval.datasets.open.open_dataset`; default the Oxford subset of the data root,
``--config lite0-gem-512``: 512 px longest side, aspect kept; COIL-100 was timed with
``--dataset folder --data .../coil100 --config lite0-gem-224``, 224 x 224).

``--bare-images`` database images, spread evenly over the database, are timed in ``--rounds``
interleaved rounds; in each:

1. **bare forward** per backend (``eager``, ``folded``, ``channels_last``, ``torchscript``,
   ``onnxruntime``): images decoded and normalised beforehand, batched by size exactly as extraction
   batches them (the extractor's batch size; the default backend and eager also at
   ``--compare-batch``), backbone + pooling + L2; images/s;
2. **end to end** with the extractor's default backend: :func:`retrieval.features.deep_extract.extract_global`
   from the files (decode in ``--n-jobs`` threads, resize, normalise, network, pooling, written to a
   feature file), at both batch sizes.

Reported ratios, medians over rounds of ratios taken seconds apart (the machine is shared and its load
drifts, so absolute figures are noisy): ``vs_eager`` = variant / eager forward at the same batch size
(target >= 2 for the default backend) and ``e2e_vs_bare`` = end to end / bare forward of the same
backend and batch size (target >= 0.85). ``--full`` adds one end-to-end pass over the whole database
(``--limit`` images of it, spread evenly) for the absolute figure.

Writes ``results.json`` (rows: dataset, variant, batch, img_per_s, vs_eager, e2e_vs_bare, default; plus
torch_threads, n_jobs, quick, torch) and ``results.md`` to ``--out``; :func:`main` returns that folder.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

__all__ = ["NAME", "run", "spread", "size_batches"]

NAME = "deep_speed"
COLUMNS = ["dataset", "variant", "batch", "img_per_s", "vs_eager", "e2e_vs_bare", "default"]


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


def time_dataset(name: str, ext, timed: List[Path], every: List[Path], args, tmp: Path) -> List[dict]:
    """Interleaved rounds over the ``timed`` files: in each round every bare-forward variant and then
    end-to-end extraction of the same images, so every ratio compares measurements taken seconds apart
    (the load of a shared machine drifts over minutes); medians over rounds are reported. ``every``:
    the files of the ``--full`` pass."""
    from retrieval.features.deep_extract import extract_global
    from retrieval.core.imageio import load_image

    t0 = time.perf_counter()
    prepared = [ext.prepare(load_image(p)) for p in timed]
    decode_ips = len(timed) / (time.perf_counter() - t0)
    sizes = sorted({p.shape[:2] for p in prepared})
    batch_sizes = sorted({ext.batch_size, args.compare_batch})
    print(f"[{name}] {len(timed)} images timed in {args.rounds} rounds ({len(sizes)} distinct input sizes); "
          f"decode+resize (1 thread): {decode_ips:.1f} img/s", flush=True)
    variants = _variants(ext, prepared, batch_sizes, args.backends)
    ids = [str(k) for k in range(len(timed))]  # unique even where file names repeat across class folders
    measured: Dict[tuple, List[float]] = {}
    for r in range(args.rounds):
        for backend, bs, backbone, tensors in variants:
            measured.setdefault(("bare", backend, bs), []).append(_time_forward(backbone, tensors))
        for bs in batch_sizes:
            res = extract_global(ext, ids, timed, tmp / f"e2e-{bs}.h5", batch_size=bs, n_jobs=args.n_jobs,
                                 overwrite=True, progress=False)
            measured.setdefault(("e2e", ext.backend, bs), []).append(res.computed / res.seconds)
        print(f"  round {r + 1}: " + ", ".join(f"{k[0]} {k[1]} b{k[2]} {v[-1]:.1f}" for k, v in measured.items()),
              flush=True)

    def ratio(a, b):
        if a not in measured or b not in measured:
            return None
        return float(np.median(np.asarray(measured[a]) / np.asarray(measured[b])))

    rows = []
    for (kind, backend, bs), values in measured.items():
        rows.append({"dataset": name, "variant": f"{'bare forward' if kind == 'bare' else 'end to end'}: {backend}",
                     "batch": bs, "img_per_s": float(np.median(values)),
                     "vs_eager": ratio((kind, backend, bs), ("bare", "eager", bs)),
                     "e2e_vs_bare": ratio((kind, backend, bs), ("bare", ext.backend, bs)) if kind == "e2e" else None,
                     "default": backend == ext.backend and bs == ext.batch_size})
    if args.full:
        res = extract_global(ext, [str(k) for k in range(len(every))], every, tmp / "all.h5", n_jobs=args.n_jobs,
                             progress=False)
        rows.append({"dataset": name, "variant": f"end to end, all {len(every)} images: {ext.backend}",
                     "batch": ext.batch_size, "img_per_s": res.computed / res.seconds, "vs_eager": None,
                     "e2e_vs_bare": None, "default": True})
    return rows


def run(args) -> Path:
    """Run the benchmark (module docstring) with the options ``args`` (``retrieval bench deep-speed``,
    :mod:`retrieval.cli.bench_commands`: dataset, data, config, options (extractor keys), backend, out,
    quick, backends, threads, n_jobs, batch_size, compare_batch, rounds, limit, bare_images, full);
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
    try:
        ext = EfficientNetExtractor(args.config, backend=args.backend, batch_size=args.batch_size,
                                    **args.options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"extractor: {exc}") from None
    timed, every = spread(files, args.bare_images), (spread(files, args.limit) if args.full else [])
    with tempfile.TemporaryDirectory() as tmp:
        rows = time_dataset(ds.root.resolve().name, ext, timed, every, args, Path(tmp))
    extra = {"torch_threads": torch.get_num_threads(), "n_jobs": args.n_jobs, "quick": args.quick,
             "torch": torch.__version__}
    out = Path(args.out)
    table = write_results(rows, out, COLUMNS, extra=extra,
                          title=f"EfficientNet-Lite0 extraction speed (CPU, {torch.get_num_threads()} threads)")
    print(table)
    return out
