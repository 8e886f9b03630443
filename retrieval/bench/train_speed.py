"""Training speed of the EfficientNet trainers in each arithmetic: float32 against bfloat16 autocast
(``loop.precision``), each with NCHW or channels-last (NHWC) activations, for the ladder's E2
(classifier), E3 and E4 (Siamese) configurations, measured side by side in one process.

Every measurement is a real training call (:func:`~retrieval.training.finetune.train_classifier` or
:func:`~retrieval.training.siamese.train_siamese`, fresh from ImageNet weights into a temporary folder)
of ``warmup + steps`` optimiser steps on COIL-100 training images (the first ``--classes`` objects of
``<data root>/coil100``; ``--synthetic``: random images of the same size); the per-step wall times come
from the loop itself (``losses.json``: batch wait, augmentation, forward, backward, update). The first
``warmup`` steps (oneDNN builds its kernels then) are left out. Variants run interleaved in ``rounds``
rounds, so a shared machine's drifting load falls on all of them alike; reported: the median over
rounds of each round's median ms/step, ``speedup`` = the median over rounds of float32-NCHW's
ms/step / the variant's in the same round, and the same two for the process's CPU time per step
(``cpu_ms_per_step``, ``cpu_speedup``: the work done, which a loaded machine's waiting does not inflate;
with more than one thread it includes threads spinning for work). E4 runs E3's step (same network, batch and loss; it starts
from E2 and has another learning rate, which do not change the cost), so it is timed from ImageNet too.

Writes ``results.json`` (rows: rung, config, variant, precision, channels_last, ms_per_step, speedup,
cpu_ms_per_step, cpu_speedup, first_loss; plus torch_threads, native_bf16, load_average) and ``results.md`` to ``--out``.
"""
from __future__ import annotations

import csv
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

__all__ = ["NAME", "VARIANTS", "RUNGS", "run", "parse_variant"]

NAME = "train_speed"
VARIANTS = ("float32", "float32+nhwc", "bfloat16", "bfloat16+nhwc")
RUNGS = {"e2": "coil-e2", "e3": "coil-e3", "e4": "coil-e4"}
COLUMNS = ["rung", "config", "variant", "precision", "channels_last", "ms_per_step", "speedup", "cpu_ms_per_step",
           "cpu_speedup", "first_loss"]


def parse_variant(name: str) -> Tuple[str, bool]:
    """'bfloat16+nhwc' -> ('bfloat16', True)."""
    precision, _, layout = name.partition("+")
    if precision not in ("float32", "bfloat16") or layout not in ("", "nhwc"):
        raise ValueError(f"unknown variant {name!r}; variants are PRECISION[+nhwc], e.g. {', '.join(VARIANTS)}")
    return precision, layout == "nhwc"


def _coil_images(data: Path, classes: int) -> Tuple[List[Path], List[str]]:
    table = data / "labels.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{table}: not found (COIL-100 with images/ and labels.csv; or use --synthetic)")
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    wanted = sorted({r["object_id"] for r in rows}, key=int)[:classes]
    keep = [r for r in rows if r["object_id"] in set(wanted)]
    return [data / "images" / r["filename"] for r in keep], [r["object_id"] for r in keep]


def _synthetic_images(folder: Path, classes: int, per_class: int = 16, size: int = 128):
    import cv2

    rng = np.random.default_rng(0)
    paths, labels = [], []
    for c in range(classes):
        for i in range(per_class):
            path = folder / f"c{c}_{i}.png"
            cv2.imwrite(str(path), rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
            paths.append(path)
            labels.append(str(c))
    return paths, labels


def _time_once(rung: str, variant: str, images, paths, labels, opts) -> Tuple[List[float], List[float], float]:
    from retrieval.training import TRAIN_CONFIGS, train_classifier, train_siamese

    precision, nhwc = parse_variant(variant)
    overrides = {"loop.precision": precision, "channels_last": nhwc, "loop.epochs": 1,
                 "loop.max_steps_per_epoch": opts.warmup + opts.steps, "loop.checkpoint_every": 0,
                 "loop.device": opts.device}
    if opts.quick:
        overrides.update({"P": 4, "K": 4, "batch_size": 16, "image_size": 64})
    cfg = TRAIN_CONFIGS.get(RUNGS[rung], overrides)
    trainer = train_classifier if cfg.method == "classifier" else train_siamese
    with tempfile.TemporaryDirectory() as tmp:
        trainer(cfg, paths, labels, tmp, images=images, progress=False, resume=False)
        record = json.loads((Path(tmp) / "losses.json").read_text())
    if record["precision"] != precision:
        raise RuntimeError(f"{rung} {variant}: the run computed in {record['precision']}, not {precision}")
    return (record["step_seconds_this_call"][opts.warmup:], record["step_cpu_seconds_this_call"][opts.warmup:],
            float(record["losses"][0]))


def run(opts) -> Path:
    """Time every (rung, variant) in ``opts.rounds`` interleaved rounds (module docstring)."""
    import torch

    from retrieval.core.paths import data_root
    from retrieval.core.report import write_results
    from retrieval.training import TRAIN_CONFIGS
    from retrieval.training.finetune import images_for
    from retrieval.training.precision import cpu_has_native_bf16

    if opts.threads:
        torch.set_num_threads(opts.threads)
    for v in opts.variants:
        parse_variant(v)
    with tempfile.TemporaryDirectory() as tmp:
        if opts.synthetic:
            paths, labels = _synthetic_images(Path(tmp), opts.classes)
        else:
            paths, labels = _coil_images(Path(opts.data) if opts.data else Path(data_root()) / "coil100", opts.classes)
        images = images_for(TRAIN_CONFIGS.get(RUNGS[opts.rungs[0]]), paths, labels, progress=False)
        print(f"[train-speed] {len(paths)} training images of {len(set(labels))} classes; {opts.rounds} rounds of "
              f"{opts.warmup} + {opts.steps} steps per rung and variant; torch threads {torch.get_num_threads()}, "
              f"native bfloat16 on this CPU: {cpu_has_native_bf16()}; load average {os.getloadavg()[0]:.1f}",
              flush=True)
        per_round: Dict[Tuple[str, str], List[float]] = {}
        cpu_round: Dict[Tuple[str, str], List[float]] = {}
        first_loss: Dict[Tuple[str, str], float] = {}
        for r in range(opts.rounds):
            for rung in opts.rungs:
                for variant in opts.variants:
                    seconds, cpu, loss = _time_once(rung, variant, images, paths, labels, opts)
                    per_round.setdefault((rung, variant), []).append(1000.0 * statistics.median(seconds))
                    cpu_round.setdefault((rung, variant), []).append(1000.0 * statistics.median(cpu))
                    first_loss[(rung, variant)] = loss
                    print(f"  round {r + 1} {rung.upper()} {variant:14s} {per_round[(rung, variant)][-1]:8.0f} ms/step, "
                          f"CPU {cpu_round[(rung, variant)][-1]:8.0f} ms/step (first loss {loss:.4f}; load average "
                          f"{os.getloadavg()[0]:.1f})", flush=True)
    base = opts.variants[0]
    rows = []
    for rung in opts.rungs:
        for variant in opts.variants:
            times, cpu = per_round[(rung, variant)], cpu_round[(rung, variant)]
            ratios = [b / t for b, t in zip(per_round[(rung, base)], times)]
            cpu_ratios = [b / t for b, t in zip(cpu_round[(rung, base)], cpu)]
            precision, nhwc = parse_variant(variant)
            rows.append({"rung": rung.upper(), "config": RUNGS[rung], "variant": variant, "precision": precision,
                         "channels_last": nhwc, "ms_per_step": round(statistics.median(times), 1),
                         "speedup": round(statistics.median(ratios), 2),
                         "cpu_ms_per_step": round(statistics.median(cpu), 1),
                         "cpu_speedup": round(statistics.median(cpu_ratios), 2),
                         "first_loss": round(first_loss[(rung, variant)], 4)})
    extra = {"baseline": base, "rounds": opts.rounds, "steps": opts.steps, "warmup": opts.warmup,
             "classes": opts.classes, "synthetic": bool(opts.synthetic), "quick": bool(opts.quick),
             "torch_threads": torch.get_num_threads(), "native_bf16": cpu_has_native_bf16(),
             "load_average": list(os.getloadavg()), "torch": torch.__version__}
    table = write_results(rows, opts.out, columns=COLUMNS, extra=extra,
                          title=f"Training ms/step, speed-up against {base} (median of {opts.rounds} rounds)")
    print(table)
    return Path(opts.out)
