"""Training multi-view networks on view sets: the P x K batch of *sets* of views, the per-batch
pipeline (uint8 views -> augmented, normalised (B, V, 3, S, S) -> view-pooled descriptors), and
MV-AlexNet's metric-learning training and model file.

Batches (:class:`ViewSetSampler`): :class:`~retrieval.training.samplers.PKSampler` picks P instances x
K anchor images per batch (labels = instance); each anchor becomes a view set of V views: the
anchor plus V - 1 other views drawn from the anchor's own view set (consecutive azimuths, as the
evaluation's sets are). V is drawn per batch from ``views`` (so the network sees sets of 1 and of
several views), every item of a batch has the same V. Everything is a function of (seed, epoch).

MV-AlexNet training: that batch through :class:`retrieval.features.alexnet.MVAlexNet` (random init) and a
metric loss of :mod:`retrieval.training.losses` (triplet, batch-hard, by default) on the 256-d set
descriptors, with :func:`retrieval.training.loop.run_training` doing optimisation, checkpoint / resume
and the loss curve.

Model file (``model.pt`` + ``model.json``, kind ``'mv-alexnet'``): state ``{"model": state_dict}``;
configuration ``{"architecture": "MVAlexNet", "model": AlexNetConfig, "image_size", "train": ...,
"data": ...}``; loaded by :func:`load_mv_alexnet` with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from retrieval.core.config import Config, ConfigError
from retrieval.features.alexnet import AlexNetConfig, MVAlexNet, normalise

from retrieval.training.augment import AugmentConfig, augment_batch, uint8_to_float
from retrieval.training.checkpoint import load_checkpoint, load_state_dict_checked, save_checkpoint
from retrieval.training.loop import LoopConfig, TrainResult, run_training, seeded_init
from retrieval.training.losses import make_metric_loss
from retrieval.training.samplers import PKSampler

PathLike = Union[str, os.PathLike]

__all__ = ["ViewSetSampler", "MultiViewTrainConfig", "describe_training_data", "embed_view_batch",
           "run_multiview_training", "snapshot_path", "train_mv_alexnet", "save_mv_alexnet", "load_mv_alexnet", "MV_ALEXNET_KIND", "MODEL_FILE"]

MV_ALEXNET_KIND = "mv-alexnet"
MODEL_FILE = "model.pt"


class ViewSetSampler:
    """(B, V) batches of image indices, B = P x K view sets, laid out instance by instance
    (rows ``p*K:(p+1)*K`` share a label). ``set_codes[i]``: the view set image i belongs to."""

    def __init__(self, labels: Sequence, set_codes: Sequence[int], P: int, K: int,
                 views: Sequence[int] = (1, 2, 3), seed: int = 0):
        set_codes = np.asarray(set_codes, dtype=np.int64)
        if len(set_codes) != len(labels):
            raise ValueError(f"{len(labels)} labels but {len(set_codes)} view-set codes")
        views = tuple(int(v) for v in views)
        if not views or min(views) < 1:
            raise ValueError(f"views must be positive view counts, got {views}")
        self.pk = PKSampler(labels, P, K, seed=seed)
        self.views, self.seed = views, int(seed)
        order = np.argsort(set_codes, kind="stable")
        bounds = np.flatnonzero(np.diff(set_codes[order])) + 1
        self._members = {int(set_codes[m[0]]): m for m in np.split(order, bounds)}
        self.set_codes = set_codes

    def batches(self, epoch: int) -> List[np.ndarray]:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(epoch), 7]))
        out = []
        for anchors in self.pk.batches(epoch):
            v = int(rng.choice(self.views))
            rows = np.empty((len(anchors), v), dtype=np.int64)
            for r, a in enumerate(anchors):
                rows[r, 0] = a
                if v > 1:
                    others = self._members[int(self.set_codes[a])]
                    others = others[others != a]
                    if len(others) == 0:
                        others = np.asarray([a])
                    rows[r, 1:] = rng.choice(others, size=v - 1, replace=len(others) < v - 1)
            out.append(rows)
        return out

    def __len__(self) -> int:
        return len(self.pk)


@dataclass(frozen=True)
class MultiViewTrainConfig(Config):
    """A multi-view training run (MV-AlexNet metric learning, or the distillation that follows).
    ``views``: the set sizes V batches are drawn with. ``image_size``: the network input side
    (the augmentation's output). ``bn``: 'train' updates BatchNorm statistics, 'frozen' keeps
    them (useful when fine-tuning from a trained model)."""

    name: str = "mv-alexnet"
    model: AlexNetConfig = field(default_factory=AlexNetConfig)
    image_size: int = 128
    P: int = 16
    K: int = 4
    views: Tuple[int, ...] = (1, 2, 3)
    loss: str = "triplet"
    margin: Optional[float] = 0.2
    mining: str = "batch_hard"
    bn: str = "train"
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(
        out_size=128, scale=(0.6, 1.0), ratio=(0.8, 1.25), hflip_prob=0.5, rotation_deg=10.0,
        brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02))
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(
        epochs=8, lr=1e-3, optimizer="adamw", weight_decay=1e-4, schedule="cosine", warmup_steps=20,
        seed=0, device="auto", checkpoint_every=50))

    def __post_init__(self) -> None:
        super().__post_init__()
        # the augmentation's output is the network input (as in TrainConfig)
        if self.augment.out_size != self.image_size:
            object.__setattr__(self, "augment", replace(self.augment, out_size=self.image_size))

    def check(self) -> None:
        if self.bn not in ("train", "frozen"):
            raise ConfigError(f"bn must be 'train' or 'frozen', got {self.bn!r}")
        if self.image_size < 35:
            raise ConfigError(f"image_size must be >= 35 for the AlexNet trunk, got {self.image_size}")


def describe_training_data(images, labels: Sequence, set_codes: Sequence[int]) -> dict:
    """What a run's configuration records about its data: counts, image shape and a SHA-256 over
    the labels, set codes and a strided sample of pixels (a resumed run refuses other data)."""
    arr = images.numpy() if torch.is_tensor(images) else np.asarray(images)
    digest = hashlib.sha256()
    digest.update(np.asarray(labels, dtype=np.int64).tobytes())
    digest.update(np.asarray(set_codes, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(arr[:: max(1, len(arr) // 256), ::7, ::7]).tobytes())
    return {"n_images": int(len(arr)), "n_classes": int(len(np.unique(labels))),
            "n_sets": int(len(np.unique(set_codes))), "shape": list(arr.shape[1:]),
            "fingerprint": digest.hexdigest()}


def embed_view_batch(model: nn.Module, views_uint8: torch.Tensor, aug: Optional[AugmentConfig],
                     ctx, normalize: Callable[[torch.Tensor], torch.Tensor] = normalise,
                     return_views: bool = False,
                     mix: Optional[Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = None):
    """uint8 (B, V, H, W, 3) -> every view augmented independently (``aug``; None: no augmentation)
    and normalised -> ``model`` on (B, V, 3, S, S) -> (B, D) set descriptors. ``mix`` (optional)
    then transforms the augmented batch as a whole, (B, V, 3, S, S) in [0, 1] -> same (e.g.
    :func:`retrieval.training.augment.mixup`). ``return_views=True`` also returns the views the
    model saw, before normalisation (what a teacher must see to be matched on the same inputs)."""
    b, v = views_uint8.shape[:2]
    x = uint8_to_float(views_uint8.flatten(0, 1), ctx.device)
    if aug is not None:
        x = augment_batch(x, aug, ctx.generator)
    x = x.unflatten(0, (b, v))
    if mix is not None:
        x = mix(x, ctx.generator)
    with ctx.autocast():
        desc = model(normalize(x.flatten(0, 1)).unflatten(0, (b, v)))
    return (desc, x) if return_views else desc


def _check_training_inputs(images, labels, set_codes) -> None:
    n = len(images)
    if n == 0:
        raise ValueError("no training images")
    if len(labels) != n or len(set_codes) != n:
        raise ValueError(f"{n} images but {len(labels)} labels and {len(set_codes)} set codes")
    if tuple(images.shape[1:])[-1] != 3 or images.dtype not in (np.uint8, torch.uint8):
        raise ValueError(f"training images must be uint8 (N, H, W, 3), got {tuple(images.shape)} {images.dtype}")


def _train_mode(model: nn.Module, bn: str) -> Callable[[], None]:
    def apply() -> None:
        model.train()
        if bn == "frozen":
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
    return apply


def save_mv_alexnet(path: PathLike, model: MVAlexNet, image_size: int, extra: Optional[dict] = None,
                    meta: Optional[dict] = None) -> Path:
    """Write ``model.pt`` + ``model.json`` (kind 'mv-alexnet'); ``meta`` (e.g. training time) goes
    to the sidecar only, not into the configuration."""
    config = {"architecture": "MVAlexNet", "model": model.config.to_dict(), "image_size": int(image_size)}
    config.update(extra or {})
    state = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    return save_checkpoint(path, state, config, kind=MV_ALEXNET_KIND, meta=meta)


def load_mv_alexnet(path: PathLike, device: Union[str, torch.device] = "cpu") -> Tuple[MVAlexNet, dict]:
    """(MV-AlexNet in eval mode, its stored configuration) from a model file or the folder holding
    ``model.pt``; ``config["image_size"]`` is its input side."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    ckpt = load_checkpoint(path, kind=MV_ALEXNET_KIND)
    cfg = ckpt["config"]
    model = MVAlexNet(AlexNetConfig.from_dict(cfg["model"]))
    load_state_dict_checked(model, ckpt["state"]["model"], path, what="MV-AlexNet")
    return model.to(device).eval(), cfg


def _sidecar_sha(path: Path) -> Optional[str]:
    import json

    try:
        return json.loads(path.with_suffix(".json").read_text()).get("sha256")
    except (OSError, ValueError):
        return None


def run_multiview_training(model: MVAlexNet, cfg: MultiViewTrainConfig, images, labels: Sequence,
                           set_codes: Sequence[int], out_dir: PathLike,
                           batch_loss: Callable[[torch.Tensor, np.ndarray, torch.Tensor, object], torch.Tensor],
                           extra_modules: Optional[Dict[str, nn.Module]] = None, run_extra: Optional[dict] = None,
                           resume: bool = True, progress: bool = True,
                           stop_after_steps: Optional[int] = None, title: str = "loss",
                           model_extra: Optional[dict] = None, pass_views: bool = False,
                           mix: Optional[Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = None,
                           snapshot_epochs: Sequence[int] = ()
                           ) -> Tuple[Optional[Path], TrainResult]:
    """Shared body of MV-AlexNet training and distillation: P x K view-set batches through
    ``model``; ``batch_loss(descriptors (B, D), index batch (B, V), labels (B,), ctx) -> loss``
    (``pass_views=True``: ``batch_loss(..., ctx, views)`` with the augmented views in [0, 1]);
    ``mix``: a batch-level transform of the augmented views (:func:`embed_view_batch`).
    Writes ``out_dir/model.pt`` when the last epoch is done, and ``out_dir/epoch-E.pt``
    (:func:`snapshot_path`) at the end of every epoch E in ``snapshot_epochs`` (the model after E
    epochs of this schedule: early stopping as a candidate setting); returns (its path or None, result)."""
    _check_training_inputs(images, labels, set_codes)
    images_t = images if torch.is_tensor(images) else torch.from_numpy(np.ascontiguousarray(images))
    label_codes = np.unique(np.asarray(labels), return_inverse=True)[1].astype(np.int64)
    sampler = ViewSetSampler(label_codes, set_codes, cfg.P, cfg.K, cfg.views, seed=cfg.loop.seed)
    out_dir = Path(out_dir)
    modules = {"model": model, **(extra_modules or {})}
    groups = [{"params": list(m.parameters())} for m in modules.values()]

    def fetch(rows: np.ndarray):
        index = torch.from_numpy(rows.reshape(-1))
        views = images_t[index].unflatten(0, rows.shape)
        return views, rows, torch.from_numpy(label_codes[rows[:, 0]])

    model_mode = _train_mode(model, cfg.bn)

    def set_mode() -> None:
        model_mode()
        for m in (extra_modules or {}).values():
            m.train()

    def step_loss(batch, ctx):
        views, rows, y = batch
        if pass_views:
            desc, seen = embed_view_batch(model, views, cfg.augment, ctx, return_views=True, mix=mix)
            return batch_loss(desc.float(), rows, y.to(ctx.device), ctx, seen)
        desc = embed_view_batch(model, views, cfg.augment, ctx, mix=mix)
        return batch_loss(desc.float(), rows, y.to(ctx.device), ctx)

    data = describe_training_data(images_t, label_codes, set_codes)
    run_config = {"train": cfg.to_dict(), "data": data, **(run_extra or {})}
    bad = [e for e in snapshot_epochs if not 1 <= int(e) <= cfg.loop.epochs]
    if bad:
        raise ValueError(f"snapshot epochs {bad} are outside 1..{cfg.loop.epochs}")

    def on_epoch_end(epoch: int) -> None:
        if epoch in set(int(e) for e in snapshot_epochs):
            save_mv_alexnet(snapshot_path(out_dir, epoch), model, cfg.image_size,
                            extra={"train": cfg.to_dict(), "data": data, "epochs_done": epoch,
                                   **(model_extra or {})})
            model_mode()  # saving does not change the mode, but keep the training mode explicit

    result = run_training(modules, groups, sampler, fetch, step_loss, cfg.loop, out_dir, run_config,
                          set_train_mode=set_mode, resume=resume, progress=progress,
                          stop_after_steps=stop_after_steps, title=title, on_epoch_end=on_epoch_end)
    if result.epochs < cfg.loop.epochs:
        return None, result
    model_path = out_dir / MODEL_FILE
    # rewritten only when this call trained: the file (and its digest, which a distillation started
    # from it records) stays the same across reruns that find the run finished
    if result.steps > result.resumed_from_step or not model_path.is_file():
        save_mv_alexnet(model_path, model.to("cpu").eval(), cfg.image_size,
                        extra={"train": cfg.to_dict(), "data": data, **(model_extra or {})},
                        meta={"train_seconds": result.seconds, "steps": result.steps})
    return model_path, result


def snapshot_path(out_dir: PathLike, epoch: int) -> Path:
    """Where :func:`run_multiview_training` keeps the model after ``epoch`` epochs."""
    return Path(out_dir) / f"epoch-{int(epoch)}.pt"


def train_mv_alexnet(images, labels: Sequence, set_codes: Sequence[int], out_dir: PathLike,
                     cfg: Optional[MultiViewTrainConfig] = None, resume: bool = True,
                     progress: bool = True, stop_after_steps: Optional[int] = None
                     ) -> Tuple[Optional[Path], TrainResult]:
    """Train MV-AlexNet from random initialisation with ``cfg.loss`` on P x K view-set batches.

    ``images``: uint8 (N, H, W, 3) training views (numpy or tensor); ``labels``: instance of each
    view; ``set_codes``: view set of each view (views of one set are pooled together). Resumes from
    ``out_dir/last.pt``; returns (``out_dir/model.pt``, or None when stopped early, result)."""
    cfg = cfg or MultiViewTrainConfig()
    with seeded_init(cfg.loop.seed):
        model = MVAlexNet(cfg.model)
    loss_fn = make_metric_loss(cfg.loss, cfg.margin,
                               **({"mining": cfg.mining} if cfg.loss == "triplet" else {}))

    def batch_loss(desc, rows, y, ctx):
        return loss_fn(desc, y)

    return run_multiview_training(model, cfg, images, labels, set_codes, out_dir, batch_loss,
                                  resume=resume, progress=progress, stop_after_steps=stop_after_steps,
                                  title=f"{cfg.name}: {cfg.loss} loss")
