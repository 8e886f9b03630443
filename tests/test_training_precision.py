"""Training precision (``loop.precision``): bfloat16 autocast on CPU trains float32 master weights and
says so; float32 is the path the trainers had before."""
import json

import pytest
import torch
import torch.nn as nn

from retrieval.core.config import ConfigError
from retrieval.features.pooling import GeM, l2n
from retrieval.training import TRAIN_CONFIGS, TrainImages, load_checkpoint, train_siamese
from retrieval.training.augment import AugmentConfig, augment_batch, uint8_to_float
from retrieval.training.embedding import PixelNormalize, embed_augmented, prepare_embedding_model
from retrieval.training.loop import LoopConfig, StepContext, run_training
from retrieval.training.losses import contrastive_loss
from retrieval.training.precision import resolve_precision
from retrieval.training.samplers import PKSampler


def _images(tmp_path, classes=3, per_class=4):
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    paths, labels = [], []
    for c in range(classes):
        base = rng.integers(0, 256, (1, 1, 3))
        for i in range(per_class):
            img = np.clip(base + rng.integers(-40, 40, (40, 40, 3)), 0, 255).astype(np.uint8)
            paths.append(tmp_path / f"c{c}_{i}.png")
            cv2.imwrite(str(paths[-1]), img)
            labels.append(str(c))
    return paths, labels


class BNNet(nn.Module):
    """Conv + BatchNorm (batch statistics update) + GeM: autocast's bfloat16 convolutions, float32 norms."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3))
        self.pool = GeM(3.0)

    def forward(self, x):
        return l2n(self.pool(self.body(x)))


def _bn_run(images, out_dir, precision):
    torch.manual_seed(5)
    model = BNNet()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    normalize = PixelNormalize([127.0] * 3, [128.0] * 3)
    aug = AugmentConfig(out_size=32)
    grads = []

    def step(batch, ctx: StepContext):
        x, y = batch
        loss = contrastive_loss(embed_augmented(model, normalize, x, aug, ctx), y.to(ctx.device))
        assert loss.dtype == torch.float32
        return loss

    def after_backward_check(epoch):
        grads.append([p.grad for p in model.parameters()])

    cfg = LoopConfig(epochs=2, lr=1e-2, device="cpu", precision=precision, max_steps_per_epoch=1)
    result = run_training({"model": model}, [{"params": list(model.parameters())}],
                          PKSampler(images.label_codes, P=2, K=2, seed=0), images.batch, step, cfg, out_dir,
                          run_config={"test": "bn"}, progress=False, on_epoch_end=after_backward_check)
    return model, start, result, grads


def test_bfloat16_step_trains_float32_weights_and_says_so(tmp_path):
    paths, labels = _images(tmp_path)
    images = TrainImages(paths, labels, cache=True, progress=False)
    model, start, result, grads = _bn_run(images, tmp_path / "bf16", "bfloat16")
    assert result.precision == "bfloat16" and result.steps == 2
    state = model.state_dict()
    # master weights stay float32 and moved; BatchNorm statistics updated, finite, variances positive
    assert all(v.dtype == start[k].dtype for k, v in state.items())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not torch.equal(state["body.0.weight"], start["body.0.weight"])
    bn = model.body[1]
    assert not torch.equal(bn.running_mean, start["body.1.running_mean"])
    assert torch.isfinite(bn.running_mean).all() and (bn.running_var > 0).all() and torch.isfinite(bn.running_var).all()
    # the gradients of the last step: float32 and finite (zero_grad keeps them until the next step)
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads[-1])
    ckpt = load_checkpoint(result.checkpoint, kind="training-state")
    assert ckpt["config"]["precision"] == "bfloat16"
    adam = ckpt["state"]["optimizer"]["state"]
    assert adam and all(s["exp_avg"].dtype == torch.float32 for s in adam.values())
    record = json.loads((tmp_path / "bf16" / "losses.json").read_text())
    assert record["precision"] == "bfloat16" and len(record["step_seconds_this_call"]) == 2


def test_bfloat16_changes_the_arithmetic_and_float32_is_the_plain_step(tmp_path):
    paths, labels = _images(tmp_path)
    images = TrainImages(paths, labels, cache=True, progress=False)
    f32, _, r32, _ = _bn_run(images, tmp_path / "f32", "float32")
    bf16, _, _, _ = _bn_run(images, tmp_path / "bf16", "bfloat16")
    assert r32.precision == "float32"
    w32, w16 = f32.body[0].weight, bf16.body[0].weight
    assert not torch.equal(w32, w16)  # autocast did compute in bfloat16 ...
    assert torch.allclose(w32, w16, atol=0.05)  # ... two steps of lr 1e-2 apart at most


def test_float32_embedding_is_the_old_forward_bitwise():
    """The old path ran ``model(x)`` under a null context; float32 now runs feature_map, then pool_map
    on ``.float()`` (a no-op on float32): the same operations, so the same bits."""
    cfg = TRAIN_CONFIGS.get("coil-e3", {"image_size": 32, "loop.precision": "float32"})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, _, _ = prepare_embedding_model(cfg)
    model.eval()
    normalize = PixelNormalize.for_efficientnet(cfg.backbone)
    images = torch.randint(0, 256, (4, 40, 40, 3), dtype=torch.uint8)
    precision = resolve_precision("float32", torch.device("cpu"))

    def ctx(seed):
        gen = torch.Generator().manual_seed(seed)
        return StepContext(torch.device("cpu"), gen, 0, 0, precision.autocast)

    new = embed_augmented(model, normalize, images, cfg.augment, ctx(3))
    old = model(normalize(augment_batch(uint8_to_float(images, "cpu"), cfg.augment, torch.Generator().manual_seed(3))))
    assert torch.equal(new, old)
    # and bfloat16 computes the backbone in bfloat16 but hands float32 unit vectors to the loss
    bf16 = resolve_precision("bfloat16", torch.device("cpu"))
    emb = embed_augmented(model, normalize, images, cfg.augment,
                          StepContext(torch.device("cpu"), torch.Generator().manual_seed(3), 0, 0, bf16.autocast))
    assert emb.dtype == torch.float32 and not torch.equal(emb, old)
    assert torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-5)
    assert (emb * old).sum(dim=1).min() > 0.95


def test_trainer_records_precision_and_layout(tmp_path):
    paths, labels = _images(tmp_path)
    cfg = TRAIN_CONFIGS.get("coil-e3", {"weights": "random", "image_size": 32, "train_blocks": 1, "P": 2, "K": 2,
                                        "loop.epochs": 1, "loop.max_steps_per_epoch": 1, "loop.device": "cpu",
                                        "loop.checkpoint_every": 0, "loop.precision": "bfloat16"})
    model = train_siamese(cfg, paths, labels, tmp_path / "e3", progress=False)
    stored = json.loads(model.with_suffix(".json").read_text())["config"]
    assert stored["precision"] == "bfloat16" and stored["channels_last"] is False  # auto: NCHW on CPU
    assert stored["train_config"]["loop"]["precision"] == "bfloat16"
    weights = load_checkpoint(model, kind="embedding-model")["state"]["model"]
    assert all(v.dtype == torch.float32 for v in weights.values() if v.is_floating_point())


def test_channels_last_follows_the_setting_or_the_device(tmp_path):
    from retrieval.training.embedding import uses_channels_last

    assert uses_channels_last(TRAIN_CONFIGS.get("coil-e3", {"loop.device": "cpu", "loop.precision": "bfloat16"})) is False
    assert uses_channels_last(TRAIN_CONFIGS.get("coil-e3", {"loop.device": "cpu", "channels_last": True})) is True
    paths, labels = _images(tmp_path)
    cfg = TRAIN_CONFIGS.get("coil-e3", {"weights": "random", "image_size": 32, "train_blocks": 1, "P": 2, "K": 2,
                                        "loop.epochs": 1, "loop.max_steps_per_epoch": 1, "loop.device": "cpu",
                                        "loop.checkpoint_every": 0, "loop.precision": "bfloat16",
                                        "channels_last": True})
    model = train_siamese(cfg, paths, labels, tmp_path / "nhwc", progress=False)
    assert json.loads(model.with_suffix(".json").read_text())["config"]["channels_last"] is True


def test_precision_settings():
    cpu = torch.device("cpu")
    assert resolve_precision("float32", cpu).dtype is None
    assert resolve_precision("bfloat16", cpu).dtype == torch.bfloat16
    assert resolve_precision("auto", cpu).name in ("float32", "bfloat16")
    # the older CUDA switch is ignored on CPU, as it always was
    assert resolve_precision("float32", cpu, amp=True).name == "float32"
    with pytest.raises(ConfigError, match="precision must be one of"):
        LoopConfig(precision="float16")
    assert LoopConfig().precision == "float32"  # other trainers (multi-view distillation) are unchanged
