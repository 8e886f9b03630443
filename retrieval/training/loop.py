"""The generic training loop every trainer here (E2 classification, E3/E4 Siamese, the multi-view
distillation) runs: optimiser, learning-rate schedule, seeding, precision (float32, bfloat16 autocast,
CUDA AMP), checkpoint / resume, progress bar, loss curves.

The caller supplies what is specific to a method:

* ``modules``: ``{name: nn.Module}`` whose weights are trained and checkpointed (e.g. the
  embedding network and a classification head);
* ``param_groups``: ``[{"params": [...], "lr_mult": float, "weight_decay": float?}]``;
* ``sampler``: an object with ``batches(epoch) -> list of index arrays`` (deterministic in the epoch);
* ``fetch(indices) -> batch``: loads a batch (run ahead in a background thread);
* ``step_loss(batch, ctx) -> scalar loss`` (forward pass; ``ctx`` gives the device, the seeded
  augmentation generator and the autocast context).

Learning rate at optimiser step ``t`` (0-based) of ``T``: linear warm-up over ``w`` steps, then
``'cosine'``: ``lr_min + (lr - lr_min) (1 + cos(pi (t - w) / (T - w))) / 2`` with
``lr_min = min_lr_frac * lr``; ``'constant'``: ``lr``; ``'step'``: ``lr * gamma^floor(epoch / step_epochs)``.
Each group's rate is multiplied by its ``lr_mult``.

Resuming: ``out_dir/last.pt`` holds the weights, optimiser, AMP scaler, epoch and step within the
epoch, the per-step losses, and every random state (torch CPU / CUDA, the augmentation generator);
the sampler is a function of (seed, epoch). A run started again in the same folder with the same
configuration continues from there and ends with the same weights as an uninterrupted run (on the
same device and thread count); with another configuration it refuses to start.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from retrieval.core.config import Config, ConfigError
from retrieval.features.trained import resolve_device

from retrieval.training.checkpoint import CheckpointError, atomic_write_text, load_checkpoint, load_state_dict_checked, save_checkpoint
from retrieval.training.data import BatchPrefetcher
from retrieval.training.precision import PRECISIONS, resolve_precision

PathLike = Union[str, os.PathLike]

__all__ = ["LoopConfig", "StepContext", "TrainResult", "run_training", "run_precision", "resolve_device", "seeded_init", "seed_everything",
           "lr_factor", "plot_losses", "LAST_CHECKPOINT", "LOSSES_JSON", "LOSSES_PNG"]

LAST_CHECKPOINT = "last.pt"
LOSSES_JSON = "losses.json"
LOSSES_PNG = "losses.png"
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "constant", "step")


@dataclass(frozen=True)
class LoopConfig(Config):
    """Optimisation settings. ``device``: 'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1'...
    ``precision``: 'auto' | 'float32' | 'bfloat16', the forward pass's autocast dtype on CPU or CUDA
    (:mod:`retrieval.training.precision`; auto: bfloat16 where the hardware has it natively; the
    EfficientNet trainers' :class:`~retrieval.training.settings.TrainConfig` sets its own default).
    ``amp``: the older CUDA mixed precision (ignored on CPU; wins over ``precision`` on CUDA),
    ``amp_dtype`` 'float16' (with loss scaling) or 'bfloat16'. ``checkpoint_every``: also checkpoint every that many steps (0: at epoch ends only).
    ``max_steps_per_epoch``: cap the batches of an epoch (0: no cap)."""

    epochs: int = 3
    lr: float = 1e-3
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr_frac: float = 0.01
    step_epochs: int = 1
    gamma: float = 0.1
    grad_clip: float = 0.0
    seed: int = 0
    device: str = "auto"
    precision: str = "float32"
    amp: bool = False
    amp_dtype: str = "float16"
    checkpoint_every: int = 0
    max_steps_per_epoch: int = 0
    prefetch: int = 2

    def check(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose one of {SCHEDULES}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.amp_dtype not in ("float16", "bfloat16"):
            raise ConfigError(f"amp_dtype must be float16 or bfloat16, got {self.amp_dtype!r}")

    def resume_key(self) -> dict:
        """The settings a resumed run must share with the run that wrote the checkpoint (all but
        the ones that only change how the work is carried out)."""
        d = self.to_dict()
        for k in ("device", "checkpoint_every", "prefetch"):
            d.pop(k)
        return d


@dataclass
class StepContext:
    device: torch.device
    generator: torch.Generator
    epoch: int
    step: int
    autocast: Callable[[], Any]


@dataclass
class TrainResult:
    checkpoint: Path
    losses: List[float]
    epochs: int
    steps: int
    seconds: float
    resumed_from_step: int
    loss_curve: Optional[Path] = None
    precision: str = "float32"
    step_seconds: List[float] = field(default_factory=list)
    step_cpu_seconds: List[float] = field(default_factory=list)


@contextlib.contextmanager
def seeded_init(seed: int):
    """Random initialisation that belongs to a run: torch's CPU generator seeded with ``seed`` inside
    the block and restored after it, so what was drawn before (another model, a test) cannot change
    the run, and the run's draws do not leak out."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def run_precision(cfg: LoopConfig):
    """The :class:`~retrieval.training.precision.Precision` a run of ``cfg`` computes in on this machine
    ('auto' resolved)."""
    return resolve_precision(cfg.precision, resolve_device(cfg.device), cfg.amp, cfg.amp_dtype)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def lr_factor(cfg: LoopConfig, step: int, epoch: int, total_steps: int) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (module docstring)."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return cfg.gamma ** (epoch // max(1, cfg.step_epochs))
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))


def _make_optimizer(cfg: LoopConfig, param_groups: Sequence[dict]) -> torch.optim.Optimizer:
    groups = []
    for g in param_groups:
        params = [p for p in g["params"] if p.requires_grad]
        if not params:
            continue
        groups.append({"params": params, "lr": cfg.lr * float(g.get("lr_mult", 1.0)),
                       "lr_mult": float(g.get("lr_mult", 1.0)),
                       "weight_decay": float(g.get("weight_decay", cfg.weight_decay))})
    if not groups:
        raise ValueError("nothing to train: no parameter requires a gradient")
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)


def plot_losses(losses: Sequence[float], steps_per_epoch: Sequence[int], path: PathLike,
                title: str = "training loss") -> Path:
    """Per-step loss (light), its moving average (dark) and epoch boundaries, as a PNG (Agg)."""
    from retrieval.core.report import save_figure, subplots

    y = np.asarray(losses, dtype=np.float64)
    fig, ax = subplots(figsize=(7, 4))
    if len(y):
        x = np.arange(1, len(y) + 1)
        ax.plot(x, y, color="tab:blue", alpha=0.3, lw=1, label="per step")
        window = max(1, min(50, len(y) // 10))
        if window > 1:
            smooth = np.convolve(y, np.ones(window) / window, mode="valid")
            ax.plot(x[window - 1:], smooth, color="tab:blue", lw=2, label=f"mean of {window} steps")
        boundary = 0
        for n in steps_per_epoch[:-1]:
            boundary += n
            ax.axvline(boundary + 0.5, color="gray", ls=":", lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(y):
        ax.legend()
    return save_figure(fig, path, dpi=100, fmt="png")


def _rng_state(generator: torch.Generator, device: torch.device) -> dict:
    # the sampler draws from its own (seed, epoch) generator, so torch's states are all there is
    state = {"torch_cpu": torch.get_rng_state(), "augment": generator.get_state()}
    if device.type == "cuda":
        state["torch_cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, generator: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch_cpu"])
    generator.set_state(state["augment"])
    if device.type == "cuda" and "torch_cuda" in state:
        torch.cuda.set_rng_state(state["torch_cuda"], device)


def run_training(modules: Dict[str, nn.Module], param_groups: Sequence[dict], sampler, fetch: Callable,
                 step_loss: Callable[[Any, StepContext], torch.Tensor], cfg: LoopConfig, out_dir: PathLike,
                 run_config: dict, set_train_mode: Optional[Callable[[], None]] = None,
                 resume: bool = True, progress: bool = True, stop_after_steps: Optional[int] = None,
                 title: str = "training loss", on_epoch_end: Optional[Callable[[int], None]] = None) -> TrainResult:
    """Train ``modules`` for ``cfg.epochs`` epochs; returns where the last checkpoint is.

    ``run_config`` (JSON) describes the whole run (model, data fingerprint, method settings); it is
    stored in the checkpoint together with ``cfg`` and a resumed run must match it.
    ``set_train_mode`` puts the modules in their training mode (default: ``.train()`` on each),
    e.g. keeping frozen BatchNorm layers in eval mode. ``stop_after_steps`` ends the call after
    that many optimiser steps in this call (after checkpointing), as an interruption would.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    precision = run_precision(cfg)
    # the resolved precision, not 'auto': a run resumed on other hardware must not change arithmetic
    full_config = {"run": run_config, "loop": cfg.resume_key(), "precision": precision.name}
    last = out_dir / LAST_CHECKPOINT
    for m in modules.values():
        m.to(device)

    seed_everything(cfg.seed)
    generator = torch.Generator()  # CPU: same augmentation on any device
    generator.manual_seed(cfg.seed)
    optimizer = _make_optimizer(cfg, param_groups)
    scaler = torch.amp.GradScaler("cuda", enabled=precision.loss_scaling)
    autocast = precision.autocast

    epoch_lengths = [len(sampler.batches(e)) for e in range(cfg.epochs)]
    if cfg.max_steps_per_epoch > 0:
        epoch_lengths = [min(n, cfg.max_steps_per_epoch) for n in epoch_lengths]
    if min(epoch_lengths) == 0:
        raise ValueError("the sampler yields no batch for an epoch: too few images or classes for "
                         "the batch size / P x K")
    total_steps = sum(epoch_lengths)

    losses: List[float] = []
    epoch, step_in_epoch, global_step, finished = 0, 0, 0, False
    if resume and last.is_file():
        ckpt = load_checkpoint(last, kind="training-state", expected_config=full_config,
                               map_location="cpu")  # RNG states must stay CPU tensors
        state = ckpt["state"]
        for name, module in modules.items():
            load_state_dict_checked(module, state["modules"][name], last, what=name)
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(last, f"optimiser state does not fit ({exc})") from None
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"], generator, device)
        epoch, step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        global_step, finished = int(state["global_step"]), bool(state["finished"])
        losses = [float(v) for v in state["losses"].tolist()]
    resumed_from = global_step

    def save(finished_now: bool) -> None:
        state = {"modules": {n: m.state_dict() for n, m in modules.items()},
                 "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                 "rng": _rng_state(generator, device), "epoch": epoch, "step_in_epoch": step_in_epoch,
                 "global_step": global_step, "finished": finished_now,
                 "losses": torch.tensor(losses, dtype=torch.float64)}
        save_checkpoint(last, state, full_config, kind="training-state",
                        meta={"epochs_done": epoch, "global_step": global_step, "total_steps": total_steps,
                              "precision": precision.name})
        atomic_write_text(out_dir / LOSSES_JSON, json.dumps(
            {"losses": losses, "steps_per_epoch": epoch_lengths, "global_step": global_step,
             "total_steps": total_steps, "finished": finished_now, "precision": precision.name,
             # wall seconds of each optimiser step of this call (batch wait, forward, backward, update)
             "step_seconds_this_call": step_seconds,
             # and the CPU seconds of the process (all threads): the work, less the wait for a shared CPU
             "step_cpu_seconds_this_call": step_cpu_seconds}, indent=1))

    start = time.perf_counter()
    step_seconds: List[float] = []
    step_cpu_seconds: List[float] = []
    steps_this_call = 0
    interrupted = False
    while not finished and epoch < cfg.epochs:
        batches = sampler.batches(epoch)[:epoch_lengths[epoch]]
        if set_train_mode is not None:
            set_train_mode()
        else:
            for m in modules.values():
                m.train()
        bar = tqdm(total=len(batches), initial=step_in_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   unit="step", disable=not progress, leave=False)
        step_start, step_cpu_start = time.perf_counter(), time.process_time()
        for batch in BatchPrefetcher(batches[step_in_epoch:], fetch, depth=cfg.prefetch):
            factor = lr_factor(cfg, global_step, epoch, total_steps)
            for g in optimizer.param_groups:
                g["lr"] = cfg.lr * g["lr_mult"] * factor
            ctx = StepContext(device=device, generator=generator, epoch=epoch, step=global_step,
                              autocast=autocast)
            optimizer.zero_grad(set_to_none=True)
            loss = step_loss(batch, ctx)
            if not torch.isfinite(loss):
                save(False)
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}, step "
                                         f"{step_in_epoch + 1}; last good state is in {last} (lower the "
                                         "learning rate or enable grad_clip)")
            scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                params = [p for g in optimizer.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            losses.append(float(loss.detach()))
            now, cpu_now = time.perf_counter(), time.process_time()
            step_seconds.append(now - step_start)
            step_cpu_seconds.append(cpu_now - step_cpu_start)
            step_start, step_cpu_start = now, cpu_now
            step_in_epoch += 1
            global_step += 1
            steps_this_call += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{cfg.lr * factor:.2e}")
            if step_in_epoch >= len(batches):
                break
            if cfg.checkpoint_every > 0 and global_step % cfg.checkpoint_every == 0:
                save(False)
            if stop_after_steps is not None and steps_this_call >= stop_after_steps:
                save(False)
                interrupted = True
                break
        bar.close()
        if interrupted:
            break
        epoch += 1
        step_in_epoch = 0
        finished = epoch >= cfg.epochs
        save(finished)
        if on_epoch_end is not None:
            on_epoch_end(epoch)
        if progress:
            done = losses[-epoch_lengths[epoch - 1]:]
            tqdm.write(f"epoch {epoch}/{cfg.epochs}: mean loss {np.mean(done):.4f} "
                       f"({time.perf_counter() - start:.0f} s so far)")
        if stop_after_steps is not None and steps_this_call >= stop_after_steps:
            interrupted = not finished
            break
    curve = None
    if losses:
        curve = plot_losses(losses, epoch_lengths, out_dir / LOSSES_PNG, title=title)
    return TrainResult(checkpoint=last, losses=list(losses), epochs=epoch, steps=global_step,
                       seconds=time.perf_counter() - start, resumed_from_step=resumed_from,
                       loss_curve=curve, precision=precision.name, step_seconds=step_seconds,
                       step_cpu_seconds=step_cpu_seconds)
