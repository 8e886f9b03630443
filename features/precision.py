"""Reduced-precision inference for the EfficientNet extractor, and ``precision="auto"``.

* ``int8``: the folded network (backbone + pooling + L2, one graph) exported to ONNX, its strided
  convolutions padding themselves (:func:`same_pad_convs`), and quantized by
  ONNX Runtime's static quantization (QDQ, per-channel int8 weights, uint8 activations, MinMax ranges)
  calibrated on images that are NOT in the searched set: the folder ``calibration`` names (default
  ``pairs`` of the data root, the local-matching pairs; a user's folder otherwise), prepared exactly as
  the extractor prepares its input, at every scale of the configuration. The quantized model is cached
  in :func:`cache_dir` ``/onnx/`` under a key of the weights, the layer, the pooling, the input
  settings and the calibration images' digest; a JSON sidecar holds its SHA-256, checked when read back.
* ``bfloat16``: the folded channels-last torch module under ``torch.autocast("cpu", torch.bfloat16)``
  (oneDNN's native bfloat16 where the CPU has AVX512-BF16 / AMX); pooling runs in float32.
* ``float32``: the extractor's float32 backend (ONNX Runtime by default).

``precision="auto"`` (the default of :class:`retrieval.features.efficientnet_configs.EfficientNetConfig`)
is float32 on a GPU or with a backend named explicitly; with ``backend="auto"`` on the CPU it probes,
once per machine, network and input settings (the decision is cached in :func:`cache_dir`, so every
worker of a run and every later run take the same path): each candidate is timed on calibration images
at the configuration's size in interleaved rounds, and its descriptors are compared with float32's. It
keeps the fastest candidate whose smallest cosine to float32 is at least :data:`MIN_COSINE` and that
beats float32 by :data:`MIN_SPEEDUP` (else float32). The cosine bound stands in for the retrieval bound
(E1 mAP within 0.5 points), measured with ``retrieval run global-descriptor`` for each precision
(README, "Deep extraction speed"). The feature file records the precision used; ``precision="float32"``
is one option away.
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

__all__ = ["PRECISIONS", "MIN_COSINE", "MIN_SPEEDUP", "DEFAULT_CALIBRATION", "cache_dir", "calibration_files",
           "calibration_digest", "same_pad_convs", "int8_backbone", "bf16_available", "probe", "auto_decision"]

PRECISIONS = ("float32", "int8", "bfloat16")
DEFAULT_CALIBRATION = "pairs"
#: calibration images used at most (spread evenly over the sorted folder)
CALIBRATION_IMAGES = 32
#: smallest cosine to float32 a reduced precision must keep on the probe images (int8: 0.999 on the pairs
#: images at 512 px, 0.997 at 64 px; its E1 mAP on Oxford and COIL-100 moved by less than 0.5 points)
MIN_COSINE = 0.99
#: a reduced precision is taken only when it is this much faster than float32 in the probe
MIN_SPEEDUP = 1.15
PROBE_IMAGES = 3
PROBE_ROUNDS = 3
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")
#: changes whenever the quantization recipe changes, so that cached models are rebuilt
INT8_RECIPE = "qdq-perchannel-s8u8-minmax-samepad-v2"


def cache_dir() -> Path:
    """Where quantized models and probe decisions are kept: $RETRIEVAL_CACHE, else
    ~/.cache/hybrid-retrieval."""
    env = os.environ.get("RETRIEVAL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hybrid-retrieval"


def calibration_files(calibration: str) -> List[Path]:
    """The calibration images of the folder ``calibration`` (a path, or a folder of the data root such as
    'pairs'): every image file under it, sorted, at most :data:`CALIBRATION_IMAGES` spread evenly."""
    from retrieval.core.paths import data_path

    root = data_path(str(calibration))
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: calibration folder not found (precision int8 needs images that are not "
                                "in the searched set: set calibration to a folder of such images)")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"{root}: no image files to calibrate int8 with")
    step = max(1, len(files) // CALIBRATION_IMAGES)
    return files[::step][:CALIBRATION_IMAGES]


def calibration_digest(files: Sequence[Path]) -> str:
    """Digest of the calibration images' names and bytes: tells two calibration sets apart."""
    from retrieval.core.fileio import file_hash

    h = hashlib.sha256()
    for p in files:
        h.update(Path(p).name.encode())
        h.update(file_hash(p).digest())
    return h.hexdigest()[:16]


def _state_digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def _waiting_lock(path: Path):
    """A blocking ``flock`` on ``path``: parallel workers that need the same cached model or decision
    wait for the first to make it, then read it (one quantization, one probe, one decision)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _export(module: nn.Module, example: torch.Tensor, path: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shape-dependent padding (kept dynamic)
        torch.onnx.export(module, (example,), path, input_names=["image"], output_names=["fmap", "desc"],
                          dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                        "fmap": {0: "batch", 2: "fh", 3: "fw"}, "desc": {0: "batch"}},
                          opset_version=17, dynamo=False)


def same_pad_convs(model) -> int:
    """Every constant zero ``Pad`` feeding only a ``Conv`` (with no padding of its own) of the ONNX ``model``,
    exported from ``SamePadConv2d`` modules (whose only Pad nodes are the TensorFlow "same" padding of the
    strided convolutions, computed from the input size at run time), becomes that convolution's
    ``auto_pad="SAME_UPPER"``: the same padding (the odd pixel after). Left in, each stays float in the
    quantized graph between a dequantization and a quantization, with layout transposes around them
    (ONNX Runtime's profiler, Oxford at 512 px: as long as the int8 convolutions). In place; returns the count."""
    import onnx

    graph, value = model.graph, onnx.helper.get_attribute_value
    producer = {out: node for node in graph.node for out in node.output}
    uses = collections.Counter(name for node in graph.node for name in node.input)
    rewritten = 0
    for conv in list(graph.node):
        pad = producer.get(conv.input[0]) if conv.op_type == "Conv" else None
        if (pad is None or pad.op_type != "Pad" or uses[pad.output[0]] != 1 or (len(pad.input) > 2 and pad.input[2])
                or {a.name: value(a) for a in pad.attribute}.get("mode", b"constant") != b"constant"
                or any(any(value(a)) for a in conv.attribute if a.name == "pads")):
            continue  # not a zero padding used by this convolution alone
        conv.input[0] = pad.input[0]
        kept = [a for a in conv.attribute if a.name not in ("pads", "auto_pad")]
        del conv.attribute[:]
        conv.attribute.extend(kept + [onnx.helper.make_attribute("auto_pad", "SAME_UPPER")])
        graph.node.remove(pad)
        rewritten += 1
    dead = True
    while dead:  # the size arithmetic that fed the removed pads: nodes none of whose outputs is used
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [node for node in graph.node if not any(out in used for out in node.output)]
        for node in dead:
            graph.node.remove(node)
    return rewritten


def _quantize(module: nn.Module, inputs: List[np.ndarray], out: Path) -> None:
    """Export ``module``, let its strided convolutions pad themselves (:func:`same_pad_convs`) and quantize
    it statically into ``out`` (atomically)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from retrieval.core.fileio import atomic_path

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(inputs)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {"image": x}

    root = logging.getLogger()
    level = root.level
    with tempfile.TemporaryDirectory() as tmp, atomic_path(out) as target:
        fp32 = os.path.join(tmp, "float32.onnx")
        _export(module, torch.from_numpy(inputs[0]), fp32)
        model = onnx.load(fp32)
        same_pad_convs(model)
        onnx.save(model, fp32)
        root.setLevel(logging.ERROR)  # the quantizer logs a warning per shape tensor it leaves alone
        try:
            quantize_static(fp32, str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                            extra_options={"CalibTensorRangeSymmetric": False})
        finally:
            root.setLevel(level)


def _read_cached(path: Path) -> Optional[bytes]:
    """The cached model's bytes when its sidecar's SHA-256 matches, else None (rebuilt)."""
    sidecar = path.with_suffix(".json")
    if not (path.is_file() and sidecar.is_file()):
        return None
    try:
        expected = json.loads(sidecar.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    data = path.read_bytes()
    return data if hashlib.sha256(data).hexdigest() == expected else None


def int8_backbone(features: nn.Module, out_channels: int, pool: nn.Module, key_parts: tuple,
                  inputs: Callable[[], List[np.ndarray]], threads: Optional[int] = None):
    """A :class:`retrieval.features.fast_inference.FastBackbone` running the int8 model of
    ``features`` (a ``_FeaturesAndDescriptor`` module: folded backbone + pooling + L2). ``key_parts``
    identify the model and calibration (cache key); ``inputs()`` gives the calibration inputs, called
    only when the cached model is missing or damaged. Returns (backbone, seconds spent quantizing)."""
    from retrieval.core.fileio import atomic_write_text
    from retrieval.features.fast_inference import FastBackbone, ort_session

    path = cache_dir() / "onnx" / f"int8-{_key(INT8_RECIPE, *key_parts)}.onnx"
    spent = 0.0
    with _waiting_lock(path.with_suffix(".lock")):
        data = _read_cached(path)
        if data is None:
            start = time.perf_counter()
            _quantize(features, inputs(), path)
            data = path.read_bytes()
            atomic_write_text(path.with_suffix(".json"), json.dumps(
                {"sha256": hashlib.sha256(data).hexdigest(), "recipe": INT8_RECIPE,
                 "key": [str(p) for p in key_parts]}))
            spent = time.perf_counter() - start
    return FastBackbone("onnxruntime", session=ort_session(data, threads), out_channels=out_channels,
                        pool=pool), spent


def bf16_available() -> bool:
    """Native bfloat16 arithmetic on this CPU (AVX512-BF16 or AMX): without it autocast emulates
    bfloat16 and is slower than float32."""
    from retrieval.indexing.exact_bf16 import bf16_available as native

    return native()


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _time(backbone, inputs: Sequence[torch.Tensor]) -> float:
    start = time.perf_counter()
    for x in inputs:
        backbone.describe(x)
    return len(inputs) / (time.perf_counter() - start)


def probe(candidates: Dict[str, object], inputs: Sequence[torch.Tensor], rounds: int = PROBE_ROUNDS) -> dict:
    """Time every candidate backbone (``{"float32": ..., "int8": ..., ...}``) on ``inputs`` in
    interleaved rounds (medians of images/s) and compare its descriptors with float32's; returns
    ``{"precision": chosen, "img_per_s": {...}, "min_cosine": {...}}`` (module docstring)."""
    reference = np.concatenate([candidates["float32"].describe(x) for x in inputs])
    cosines, speeds = {}, {name: [] for name in candidates}
    for name, backbone in candidates.items():
        desc = np.concatenate([backbone.describe(x) for x in inputs])  # also the warm-up of each shape
        cosines[name] = float(np.min(np.sum(desc * reference, axis=1)))
    for _ in range(rounds):
        for name, backbone in candidates.items():
            speeds[name].append(_time(backbone, inputs))
    ips = {name: float(np.median(v)) for name, v in speeds.items()}
    chosen = "float32"
    for name in candidates:
        if (name != "float32" and cosines[name] >= MIN_COSINE and ips[name] >= MIN_SPEEDUP * ips["float32"]
                and ips[name] > ips[chosen]):
            chosen = name
    return {"precision": chosen, "img_per_s": ips, "min_cosine": cosines}


def auto_decision(key_parts: tuple, run_probe: Callable[[], dict]) -> Tuple[str, dict]:
    """The cached ``precision="auto"`` decision for this machine and network, else ``run_probe()``'s
    (stored atomically for the next extractor). Returns (precision, decision record)."""
    import onnxruntime

    from retrieval.core.fileio import atomic_write_text

    key = _key("auto-v1", _cpu_name(), torch.__version__, onnxruntime.__version__, INT8_RECIPE, *key_parts)
    path = cache_dir() / "precision" / f"auto-{key}.json"
    with _waiting_lock(path.with_suffix(".lock")):
        try:
            record = json.loads(path.read_text())
            if record.get("precision") in PRECISIONS:
                return record["precision"], record
        except (OSError, ValueError, AttributeError):
            pass
        record = dict(run_probe(), cpu=_cpu_name())
        atomic_write_text(path, json.dumps(record, indent=1))
    return record["precision"], record


def _calibration_inputs(files: Sequence[Path], prepare_input, scales) -> List[np.ndarray]:
    """(1, 3, H, W) float32 network inputs of the calibration images at every scale of the extractor."""
    from retrieval.core.imageio import load_image
    from retrieval.features.pooling import resize_tensor

    out = []
    for p in files:
        x = torch.from_numpy(np.ascontiguousarray(prepare_input(load_image(p))))[None]
        out.extend(np.ascontiguousarray(resize_tensor(x, s).numpy()) for s in scales)
    return out


def select_backbone(model, cfg: dict, backend: str, float_backend: str, device: torch.device,
                    threads: Optional[int], prepare_input) -> Tuple[str, object, dict]:
    """(precision, backbone, record) for the extractor's network ``model`` (an
    :class:`~retrieval.features.efficientnet_net.EfficientNetGlobal`) and configuration ``cfg``:
    ``cfg["precision"]`` as asked, or chosen by the probe for 'auto' (module docstring). ``backend``:
    the backend asked for ('auto' or a name), ``float_backend`` the one float32 runs on, ``prepare_input``:
    image -> normalised (3, H, W) input. ``cfg`` is updated to what the feature file records."""
    from retrieval.features.efficientnet_net import is_lite
    from retrieval.features.fast_inference import (GPU_BACKENDS, _FeaturesAndDescriptor, fold_efficientnet,
                                                   make_backbone, onnxruntime_available)

    wanted, lite = cfg.get("precision", "auto"), is_lite(cfg["model"])
    if device.type != "cpu" and wanted == "int8":
        raise ValueError(f"precision 'int8' runs on the CPU only (ONNX Runtime), not on {device}")
    if wanted == "int8" and backend not in ("auto", "onnxruntime"):
        raise ValueError(f"precision 'int8' runs on ONNX Runtime; backend {backend!r} cannot run it")
    if wanted == "bfloat16" and backend not in ("auto",) + GPU_BACKENDS:
        raise ValueError(f"precision 'bfloat16' runs on a torch module backend {GPU_BACKENDS}, not {backend!r}")

    def build(precision: str):
        if precision == "float32":
            return make_backbone(model.net, lite, float_backend, threads=threads, pool=model.pool,
                                 layer=model.layer, device=device), 0.0
        if precision == "bfloat16":
            torch_backend = backend if backend in GPU_BACKENDS else "channels_last"
            return make_backbone(model.net, lite, torch_backend, pool=model.pool, layer=model.layer, device=device,
                                 autocast=torch.bfloat16), 0.0
        features = _FeaturesAndDescriptor(fold_efficientnet(model.net, lite, model.layer), model.pool).eval()
        return int8_backbone(features, model.out_dim, model.pool, int8_key,
                             lambda: _calibration_inputs(files, prepare_input, cfg["scales"]), threads)

    files, digest, int8_key, int8_missing = [], None, (), None
    if wanted in ("int8", "auto") and device.type == "cpu":
        try:
            if not onnxruntime_available():
                raise ImportError("precision 'int8' needs onnxruntime and onnx")
            files = calibration_files(cfg.get("calibration", DEFAULT_CALIBRATION))
            digest = calibration_digest(files)
            int8_key = (_state_digest(model), cfg["model"], model.layer, model.pooling, cfg.get("gem_p"),
                        cfg["input"], cfg["size"], cfg["upscale"], list(cfg["scales"]), digest)
        except (FileNotFoundError, ImportError) as exc:
            if wanted == "int8":
                raise ValueError(str(exc)) from None
            int8_missing = str(exc)
    record: dict = {}
    built: Dict[str, tuple] = {}  # the probe's backbones: the chosen one is kept
    if wanted == "auto":
        if device.type != "cpu" or backend != "auto":
            # on a GPU, or with a backend asked for by name (a reference, a speed comparison): float32
            wanted = "float32"
        else:
            candidates = ["float32"] + (["int8"] if int8_missing is None else []) + \
                         (["bfloat16"] if bf16_available() else [])

            def run_probe():
                built.update((name, build(name)) for name in candidates)
                inputs = [torch.from_numpy(x)
                          for x in _calibration_inputs(files[:PROBE_IMAGES], prepare_input, (1.0,))]
                if not inputs:  # no calibration images: probe on seeded noise of the input size
                    rng = np.random.default_rng(0)
                    inputs = [torch.from_numpy(rng.standard_normal((1, 3, cfg["size"], cfg["size"]),
                                                                   dtype=np.float32))]
                return dict(probe({name: b for name, (b, _) in built.items()}, inputs), candidates=candidates)

            wanted, record = auto_decision((int8_key or _state_digest(model), backend, threads, candidates,
                                            cfg["input"], cfg["size"]), run_probe)
            if int8_missing:
                record = dict(record, int8_unavailable=int8_missing)
    backbone, seconds = built[wanted] if wanted in built else build(wanted)
    if seconds:
        record = dict(record, quantize_seconds=round(seconds, 1))
    # float32 is recorded by omission, as in every file made before precision was a setting: those
    # files stay valid and comparable
    cfg.pop("precision", None)
    if wanted == "int8":
        cfg.update(precision=wanted, calibration=cfg.get("calibration", DEFAULT_CALIBRATION),
                   calibration_sha256=digest)
    else:
        cfg.pop("calibration", None)
        if wanted != "float32":
            cfg["precision"] = wanted
    return wanted, backbone, record
