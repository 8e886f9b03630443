"""The trained rungs E2-E4 of the object ladder: E2 a classifier head, E3 Siamese from ImageNet, E4
Siamese from E2 (:mod:`retrieval.training`), trained once into the run cache and resumed from
``last.pt`` when interrupted."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Mapping

from retrieval.core.config import parse_overrides

from retrieval.experiments.ladder.settings import LadderConfig
from retrieval.experiments.ladder.stages import RunCache, remove, say

__all__ = ["quick_train_overrides", "resolve_train_config", "rung_overrides", "train_models", "trained_precision"]


def quick_train_overrides() -> Dict[str, object]:
    """Training in quick mode: a handful of steps on small inputs (the same code path)."""
    return {"loop.epochs": 1, "loop.max_steps_per_epoch": 3, "loop.warmup_steps": 0, "P": 4, "K": 4,
            "batch_size": 16, "image_size": 64, "loop.checkpoint_every": 0}


def rung_overrides(train_set) -> Dict[str, Dict[str, str]]:
    """``("e3.loop.epochs=2", ...)`` -> ``{"e3": {"loop.epochs": "2"}}``."""
    out: Dict[str, Dict[str, str]] = {}
    for key, value in parse_overrides(train_set).items():
        rung, _, field = key.partition(".")
        out.setdefault(rung.lower(), {})[field] = value
    return out


def resolve_train_config(family: str, rung: str, device: str, overrides: Mapping[str, str], quick: bool):
    """The TrainConfig of ``rung`` ('e2' | 'e3' | 'e4') in ``family``: ``<family>-<rung>`` (e.g.
    ``coil-e2``) or ``<first>-<rung>-<rest>`` (``gldv2-gpu`` -> ``gldv2-e2-gpu``), with ``loop.device``,
    the quick overrides and the user's overrides applied."""
    from retrieval.training import TRAIN_CONFIGS

    head, _, tail = family.partition("-")
    candidates = [f"{family}-{rung}", f"{head}-{rung}-{tail}" if tail else None, family]
    name = next((c for c in candidates if c and c in TRAIN_CONFIGS and
                 (c != family or TRAIN_CONFIGS[c].name.endswith(rung))), None)
    if name is None:
        raise ValueError(f"no training configuration for {rung.upper()} in family {family!r} (tried "
                         f"{[c for c in candidates[:2] if c]}); known: {sorted(TRAIN_CONFIGS)}")
    cfg = TRAIN_CONFIGS.get(name, {"loop.device": device})
    if quick:
        cfg = cfg.override(quick_train_overrides())
    return cfg.override(dict(overrides))


def train_models(dataset, conf: LadderConfig, cache: RunCache) -> Dict[str, Path]:
    """Train E2, E3, E4 into ``<cache>/train/<rung>/``; a finished model trained with the same
    configuration is reused. Returns ``{"E2": model.pt, ...}``."""
    from retrieval.training import train_classifier, train_siamese
    from retrieval.training.finetune import images_for
    from retrieval.training.loop import run_precision

    root = cache.root / "train"
    cache.fresh("train", root)
    overrides = rung_overrides(conf.object.train_set)
    paths: Dict[str, Path] = {}
    images, images_key = None, None
    for rung in ("e2", "e3", "e4"):
        cfg = resolve_train_config(conf.object.train_config, rung, conf.device, overrides.get(rung, {}), conf.quick)
        out = root / rung
        model = out / "model.pt"
        if model.is_file() and model.with_suffix(".json").is_file():
            stored = json.loads(model.with_suffix(".json").read_text()).get("config", {})
            # 'auto' precision: the arithmetic this machine would use must be the one the model had
            same_precision = stored.get("precision", "float32") == run_precision(cfg.loop).name
            if stored.get("train_config") == json.loads(json.dumps(cfg.to_dict())) and same_precision:
                paths[rung.upper()] = model
                if cache.timer[f"train {rung.upper()}"] == 0.0 and stored.get("train_seconds"):
                    cache.timer.add(f"train {rung.upper()}", float(stored["train_seconds"]))
                continue
            say(f"{model} was trained with another configuration: training {rung.upper()} again")
            remove(out)
        key = (cfg.load_size, cfg.fit, cfg.cache_images, cfg.n_jobs, cfg.decode_backend, cfg.on_error)
        with cache.stage(f"train {rung.upper()}"):
            if images is None or key != images_key:
                say(f"decoding {len(dataset.train_paths)} training images")
                images = images_for(cfg, dataset.train_paths, dataset.train_labels, conf.progress)
                images_key = key
            say(f"training {rung.upper()} ({cfg.name}) in {out}")
            if rung == "e2":
                path = train_classifier(cfg, dataset.train_paths, dataset.train_labels, out, images=images,
                                        progress=conf.progress)
            else:
                init = paths["E2"] if rung == "e4" else None
                path = train_siamese(cfg, dataset.train_paths, dataset.train_labels, out, init_checkpoint=init,
                                     images=images, progress=conf.progress)
        paths[rung.upper()] = Path(path)
    return paths


def trained_precision(model: Path) -> str:
    """The arithmetic ``model`` was trained in, from its ``model.json`` (before the setting existed:
    float32)."""
    try:
        return str(json.loads(Path(model).with_suffix(".json").read_text())["config"].get("precision", "float32"))
    except (OSError, ValueError, KeyError):
        return "unknown"
