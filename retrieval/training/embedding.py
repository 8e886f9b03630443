"""The embedding network as training sees it: an :class:`~retrieval.features.efficientnet.EfficientNetGlobal`
built from a :class:`~retrieval.training.settings.TrainConfig`, which of its layers train, its input
normalisation, the shared per-batch pipeline (uint8 batch -> augmented, normalised input ->
embeddings), and the trained-model file that extraction loads back.

Trained-model file (``model.pt`` + ``model.json``, kind ``'embedding-model'``): state
``{"model": state_dict}``; configuration ``{"architecture": "EfficientNetGlobal", "backbone",
"pooling", "gem_p", "learn_p", "image_size", "method", "train_config", "data"}``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from retrieval.features.efficientnet import EfficientNetGlobal, normalisation
# the trained-model format is read at the features level, so extractors need not import training
from retrieval.features.trained import MODEL_FILE, MODEL_KIND, load_trained_efficientnet, read_trained_config

from retrieval.training.augment import AugmentConfig, augment_batch, uint8_to_float
from retrieval.training.checkpoint import load_state_dict_checked, save_checkpoint

PathLike = Union[str, os.PathLike]

__all__ = ["uses_channels_last", "PixelNormalize", "build_embedding_model", "prepare_embedding_model", "run_embedding_training", "set_trainable", "bn_aware_train_mode",
           "embed_augmented", "save_trained_model", "load_trained_efficientnet", "read_trained_config",
           "embed_uint8", "MODEL_KIND", "MODEL_FILE"]



class PixelNormalize(nn.Module):
    """[0, 1] images -> network input ``(255 x - offset) / scale`` per channel (EfficientNet-Lite:
    offset 127, scale 128, i.e. ``(x*255 - 127) / 128``; B0..B7: ImageNet mean / std)."""

    def __init__(self, offset: Sequence[float], scale: Sequence[float]):
        super().__init__()
        self.register_buffer("offset", torch.as_tensor(offset, dtype=torch.float32).view(1, -1, 1, 1) / 255.0,
                             persistent=False)
        self.register_buffer("inv_scale", 255.0 / torch.as_tensor(scale, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)

    @classmethod
    def for_efficientnet(cls, name: str) -> "PixelNormalize":
        offset, scale = normalisation(name)
        return cls(offset.tolist(), scale.tolist())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.offset) * self.inv_scale


def build_embedding_model(cfg, weights: Optional[str] = None) -> EfficientNetGlobal:
    """The EfficientNetGlobal of ``cfg`` (backbone, pooling, GeM p) with ``weights`` ('imagenet',
    'random' or a state-dict path; default ``cfg.weights``)."""
    return EfficientNetGlobal(cfg.backbone, weights=weights or cfg.weights, pooling=cfg.pooling,
                              gem_p=cfg.gem_p, learn_p=cfg.learn_p)


def set_trainable(model: EfficientNetGlobal, train_blocks: int) -> Dict[str, List[nn.Parameter]]:
    """Freeze all but the last ``train_blocks`` MBConv blocks (+ head conv / BN, pooling); -1 trains
    everything. Returns ``{"backbone": [...], "pool": [...]}`` of the parameters left trainable, and
    records the frozen modules on ``model._frozen_modules`` for :func:`bn_aware_train_mode`."""
    net = model.net
    blocks = list(net._blocks)
    if train_blocks < 0:
        frozen: List[nn.Module] = []
    else:
        first = max(0, len(blocks) - int(train_blocks))
        frozen = [net._conv_stem, net._bn0] + blocks[:first]
    for p in model.parameters():
        p.requires_grad_(True)
    for module in frozen:
        for p in module.parameters():
            p.requires_grad_(False)
    model._frozen_modules = frozen
    backbone = [p for p in net.parameters() if p.requires_grad]
    pool = [p for p in model.pool.parameters() if p.requires_grad]
    return {"backbone": backbone, "pool": pool}


def bn_aware_train_mode(model: nn.Module, bn: str = "frozen") -> Callable[[], None]:
    """A function putting ``model`` in training mode, except frozen modules (eval: no stochastic
    depth, fixed statistics) and, with ``bn='frozen'``, every BatchNorm layer (eval: the
    pretrained running statistics are used and kept)."""
    def apply() -> None:
        model.train()
        for module in getattr(model, "_frozen_modules", []):
            module.eval()
        if bn == "frozen":
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
    return apply


def embed_augmented(model: nn.Module, normalize: nn.Module, images: torch.Tensor, aug: AugmentConfig,
                    ctx, channels_last: bool = False) -> torch.Tensor:
    """uint8 (B, H, W, 3) batch -> augmented, normalised input on ``ctx.device`` -> (B, D) float32
    embeddings (the backbone under ``ctx.autocast()``, pooling and L2 normalisation in float32)."""
    x = uint8_to_float(images, ctx.device)
    x = normalize(augment_batch(x, aug, ctx.generator))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if not hasattr(model, "pool_map"):
        with ctx.autocast():
            return model(x).float()
    with ctx.autocast():
        fmap = model.feature_map(x)
    # GeM's cube and root and the unit vectors the losses compare stay float32: bfloat16's 8-bit
    # mantissa cannot resolve the cosines near 1 that contrastive distances and cosine logits use
    return model.pool_map(fmap.float())


def save_trained_model(path: PathLike, model: EfficientNetGlobal, cfg, data_description: dict,
                       extra: Optional[dict] = None) -> Path:
    """Write the trained embedding network (``model.pt`` + ``model.json``)."""
    config = {"architecture": "EfficientNetGlobal", "backbone": cfg.backbone, "pooling": cfg.pooling,
              "gem_p": cfg.gem_p, "learn_p": cfg.learn_p, "image_size": cfg.image_size,
              "method": cfg.method, "train_config": cfg.to_dict(), "data": data_description}
    if extra:
        config.update(extra)
    state = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    return save_checkpoint(path, state, config, kind=MODEL_KIND)


def prepare_embedding_model(cfg, init_checkpoint: Optional[PathLike] = None):
    """The network to train: ImageNet weights (``cfg.weights``) or the trained model in
    ``init_checkpoint`` (E4 starts from E2), with the layers ``cfg`` trains left trainable.
    Returns ``(model, {"backbone": params, "pool": params}, init_info)``; ``init_info`` (path and
    digest of the starting checkpoint, or None) goes into the run configuration."""
    init_info = None
    if init_checkpoint is not None:
        init_path = Path(init_checkpoint)
        if init_path.is_dir():
            init_path = init_path / MODEL_FILE
        start = load_trained_efficientnet(init_path)
        model = build_embedding_model(cfg, weights="random")
        load_state_dict_checked(model, start.state_dict(), init_path, what="initial embedding model")
        init_info = {"path": str(init_path), "sha256": _sidecar_hash(init_path)}
    else:
        model = build_embedding_model(cfg)
    params = set_trainable(model, cfg.train_blocks)
    return model, params, init_info


def run_embedding_training(cfg, model: EfficientNetGlobal, params: Dict[str, list], init_info: Optional[dict],
                           images, out_dir: PathLike, sampler, loss_fn: Callable,
                           extra_modules: Optional[Dict[str, nn.Module]] = None,
                           extra_groups: Sequence[dict] = (), resume: bool = True, progress: bool = True,
                           stop_after_steps: Optional[int] = None, run_extra: Optional[dict] = None):
    """Shared body of :func:`~retrieval.training.finetune.train_classifier` and
    :func:`~retrieval.training.siamese.train_siamese`: run
    :func:`~retrieval.training.loop.run_training` on ``model`` (from :func:`prepare_embedding_model`)
    with ``loss_fn(embeddings, labels) -> loss`` and write ``out_dir/model.pt`` once finished.
    Returns ``(model path or None when interrupted, TrainResult)``."""
    from retrieval.training.loop import run_training

    out_dir = Path(out_dir)
    channels_last = uses_channels_last(cfg)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    normalize = PixelNormalize.for_efficientnet(cfg.backbone)
    modules: Dict[str, nn.Module] = {"model": model, **(extra_modules or {})}
    groups = [{"params": params["backbone"], "lr_mult": cfg.backbone_lr_mult},
              {"params": params["pool"], "lr_mult": cfg.backbone_lr_mult, "weight_decay": 0.0},
              *extra_groups]
    train_mode = bn_aware_train_mode(model, cfg.bn)
    heads = extra_modules or {}

    def set_mode() -> None:
        train_mode()
        for m in heads.values():
            m.train()

    def step_loss(batch, ctx):
        normalize.to(ctx.device)
        x_uint8, labels = batch
        labels = labels.to(ctx.device)
        emb = embed_augmented(model, normalize, x_uint8, cfg.augment, ctx, channels_last)
        return loss_fn(emb, labels)  # the head and the loss in float32 (embed_augmented)

    run_config = {"train_config": cfg.to_dict(), "data": images.describe(), "init": init_info,
                  **(run_extra or {})}
    result = run_training(modules, groups, sampler, images.batch, step_loss, cfg.loop, out_dir,
                          run_config=run_config, set_train_mode=set_mode, resume=resume,
                          progress=progress, stop_after_steps=stop_after_steps,
                          title=f"{cfg.name}: {cfg.method} loss")
    model_path = out_dir / MODEL_FILE
    finished = result.epochs >= cfg.loop.epochs
    # a finished run called again trains nothing: keep the model file (and its timing) it wrote
    if finished and (result.steps > result.resumed_from_step or not model_path.is_file()):
        save_trained_model(model_path, model.to("cpu").to(memory_format=torch.contiguous_format), cfg,
                           images.describe(),
                           extra={"init": init_info, "train_seconds": result.seconds,
                                  "steps": result.steps, "precision": result.precision,
                                  "channels_last": channels_last})
    return (model_path if finished else None), result


def uses_channels_last(cfg) -> bool:
    """``cfg.channels_last``, or when it is None (auto): NHWC for reduced precision on CUDA (the layout
    tensor cores read), NCHW on CPU, where NHWC made Lite0's bfloat16 steps slower, not faster (E2
    0.86 against 0.75 s of CPU a step, E3 0.82 against 0.80: ``retrieval bench train-speed``)."""
    from retrieval.training.loop import run_precision

    if cfg.channels_last is not None:
        return bool(cfg.channels_last)
    precision = run_precision(cfg.loop)
    return precision.device_type == "cuda" and precision.dtype is not None


def _sidecar_hash(path: Path) -> Optional[str]:
    import json

    try:
        return json.loads(path.with_suffix(".json").read_text()).get("sha256")
    except (OSError, ValueError):
        return None


@torch.no_grad()
def embed_uint8(model: nn.Module, images: Union[torch.Tensor, Sequence], image_size: Optional[int],
                normalize: nn.Module, batch_size: int = 64, device: Union[str, torch.device] = "cpu",
                mode: str = "centre", progress: bool = False) -> "np.ndarray":
    """(N, D) float32 descriptors of uint8 RGB images ((N, H, W, 3) tensor / array, or a list of
    (H, W, 3) arrays of any sizes), with the deterministic :func:`~retrieval.training.augment.eval_transform`
    to ``image_size`` (None: as they are; a list of mixed sizes then goes one image at a time)."""
    import numpy as np
    from tqdm.auto import tqdm

    from retrieval.training.augment import eval_transform

    device = torch.device(device)
    model = model.to(device).eval()
    normalize = normalize.to(device)
    if torch.is_tensor(images) or isinstance(images, np.ndarray):
        chunks = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
    else:
        same = len({tuple(im.shape) for im in images}) == 1
        step = batch_size if (same or image_size is not None) else 1
        chunks = [images[i:i + step] for i in range(0, len(images), step)]
    out = []
    for chunk in tqdm(chunks, desc="embed", unit="batch", disable=not progress, leave=False):
        if torch.is_tensor(chunk) or isinstance(chunk, np.ndarray):
            x = uint8_to_float(torch.as_tensor(chunk), device)
        else:
            x = [uint8_to_float(torch.as_tensor(im)[None], device) for im in chunk]
            x = torch.cat([eval_transform(t, image_size, mode) for t in x]) if image_size else torch.cat(x)
        if image_size is not None:
            x = eval_transform(x, image_size, mode)
        out.append(model(normalize(x)).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, getattr(model, "out_dim", 0)), np.float32)
