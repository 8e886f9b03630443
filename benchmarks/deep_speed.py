"""Speed of EfficientNet-Lite0 extraction on CPU: every inference path, and end-to-end extraction
against the bare forward pass, measured in one run.

For each dataset (Oxford images at 512 px longest side, aspect kept; COIL-100 at 224 x 224):

The first ``--bare-images`` images of each set are timed in ``--rounds`` interleaved rounds; in each:

1. **bare forward** per backend (``eager``, ``folded``, ``channels_last``, ``torchscript``,
   ``onnxruntime``): images decoded and normalised beforehand, batched by size exactly as extraction
   batches them (the extractor's batch size; the default backend and eager also at
   ``--compare-batch``), backbone + pooling + L2; images/s;
2. **end to end** with the extractor's default backend: :func:`features.deep_extract.extract_global`
   from the files (decode in ``--n-jobs`` threads, resize, normalise, network, pooling, written to a
   feature file), at both batch sizes.

Reported ratios, medians over rounds of ratios taken seconds apart (the machine is shared and its load
drifts, so absolute figures are noisy): ``vs_eager`` = variant / eager forward at the same batch size
(target >= 2 for the default backend) and ``e2e_vs_bare`` = end to end / bare forward of the same
backend and batch size (target >= 0.85). ``--full`` adds one end-to-end pass over every image (845
Oxford, 1000 COIL-100) for the absolute figure.

    .venv/bin/python benchmarks/deep_speed.py --quick
    .venv/bin/python benchmarks/deep_speed.py --full
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from retrieval.features.deep_extract import extract_global  # noqa: E402
from retrieval.features.efficientnet import EfficientNetExtractor, preprocess  # noqa: E402
from retrieval.features.fast_inference import BACKENDS, make_backbone, onnxruntime_available  # noqa: E402
from retrieval.imageio import load_image  # noqa: E402
from retrieval.paths import data_root  # noqa: E402
from retrieval.report import write_results  # noqa: E402

NAME = "deep_speed"


def dataset_files(root: Path, which: str, limit: int) -> List[Path]:
    """Oxford: the first ``limit`` JPEGs; COIL-100: ``limit`` PNGs spread over all objects."""
    if which == "oxford":
        files = sorted((root / "oxford5k_subset" / "images").glob("*.jpg"))
    else:
        files = sorted((root / "coil100" / "images").glob("*.png"))
        # spread over all objects rather than the first few
        files = files[:: max(1, len(files) // max(1, limit))] if limit else files
    if not files:
        raise SystemExit(f"no {which} images under {root}")
    return files[:limit] if limit else files


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


def first_of_each_shape(tensors: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """One tensor of every distinct shape, in order of first appearance."""
    seen: Dict[tuple, torch.Tensor] = {}
    for x in tensors:
        seen.setdefault(tuple(x.shape), x)
    return list(seen.values())


def time_forward(backbone, tensors: Sequence[torch.Tensor]) -> float:
    """Images per second of backbone + pooling + L2 (``FastBackbone.describe``), one pass."""
    with torch.inference_mode():
        n, start = 0, time.perf_counter()
        for x in tensors:
            backbone.describe(x)
            n += x.shape[0]
        return n / (time.perf_counter() - start)


def run_dataset(which: str, config: str, files: List[Path], args, tmp: Path) -> List[dict]:
    """Interleaved rounds: in each round every bare-forward variant and then end-to-end extraction of
    the same images, so every ratio compares measurements taken seconds apart (the load of a shared
    machine drifts over minutes); medians over rounds are reported."""
    ext = EfficientNetExtractor(config, backend="auto", batch_size=args.batch_size)
    t0 = time.perf_counter()
    subset = files[: args.bare_images]
    prepared = [ext.prepare(load_image(p)) for p in subset]
    decode_ips = len(subset) / (time.perf_counter() - t0)
    sizes = sorted({p.shape[:2] for p in prepared})
    batch_sizes = sorted({ext.batch_size, args.compare_batch})
    print(f"[{which}] {len(subset)} images timed in {args.rounds} rounds ({len(sizes)} distinct input sizes); "
          f"decode+resize (1 thread): {decode_ips:.1f} img/s", flush=True)
    variants = []  # (backend, batch size, backbone, tensors)
    for backend in args.backends:
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
            time_forward(backbone, first_of_each_shape(tensors))
            variants.append((backend, bs, backbone, tensors))
    ids = [p.stem for p in subset]
    measured: Dict[tuple, List[float]] = {}
    for r in range(args.rounds):
        for backend, bs, backbone, tensors in variants:
            measured.setdefault(("bare", backend, bs), []).append(time_forward(backbone, tensors))
        for bs in batch_sizes:
            res = extract_global(ext, ids, subset, tmp / f"{which}-{bs}.h5", batch_size=bs, n_jobs=args.n_jobs,
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
        rows.append({"dataset": which, "variant": f"{'bare forward' if kind == 'bare' else 'end to end'}: {backend}",
                     "batch": bs, "img_per_s": float(np.median(values)),
                     "vs_eager": ratio((kind, backend, bs), ("bare", "eager", bs)),
                     "e2e_vs_bare": ratio((kind, backend, bs), ("bare", ext.backend, bs)) if kind == "e2e" else None,
                     "default": backend == ext.backend and bs == ext.batch_size})
    if args.full:
        res = extract_global(ext, [p.stem for p in files], files, tmp / f"{which}-all.h5", n_jobs=args.n_jobs,
                             progress=False)
        rows.append({"dataset": which, "variant": f"end to end, all {len(files)} images: {ext.backend}",
                     "batch": ext.batch_size, "img_per_s": res.computed / res.seconds, "vs_eager": None,
                     "e2e_vs_bare": None, "default": True})
    return rows


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="data folder (default: retrieval.paths.data_root())")
    parser.add_argument("--out", default=f"results/{NAME}", help="results folder")
    parser.add_argument("--cache", default="cache", help="(unused: nothing here is worth caching)")
    parser.add_argument("--quick", action="store_true", help="small subsets (well under two minutes)")
    parser.add_argument("--datasets", nargs="+", default=["oxford", "coil100"], choices=["oxford", "coil100"])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    parser.add_argument("--threads", type=int, default=None, help="torch / ONNX Runtime intra-op threads")
    parser.add_argument("--n-jobs", type=int, default=2, help="decoding threads")
    parser.add_argument("--batch-size", type=int, default=None, help="images per forward (default: extractor's)")
    parser.add_argument("--compare-batch", type=int, default=8,
                        help="a second batch size timed for the default backend and eager")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 3, quick 1)")
    parser.add_argument("--limit", type=int, default=None, help="images per dataset in the --full pass")
    parser.add_argument("--bare-images", type=int, default=None,
                        help="images (the first ones) timed in the rounds (default 48, quick 12)")
    parser.add_argument("--full", action="store_true", help="also extract every image once (absolute figure)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = data_root(args.data)
    limit = args.limit
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.bare_images = args.bare_images or (12 if args.quick else 48)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for which in args.datasets:
            n = (limit or (845 if which == "oxford" else 1000)) if args.full else args.bare_images
            config = "lite0-gem-512" if which == "oxford" else "lite0-gem-224"
            rows += run_dataset(which, config, dataset_files(root, which, n), args, Path(tmp))
    extra = {"torch_threads": torch.get_num_threads(), "n_jobs": args.n_jobs, "quick": args.quick,
             "torch": torch.__version__}
    table = write_results(rows, args.out, ["dataset", "variant", "batch", "img_per_s", "vs_eager", "e2e_vs_bare",
                                           "default"],
                          title=f"EfficientNet-Lite0 extraction speed (CPU, {torch.get_num_threads()} threads)",
                          extra=extra)
    print(table)
    return table


if __name__ == "__main__":
    main()
