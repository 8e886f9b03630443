"""Training: checkpoints (weights-only round trip, tampering, mismatches), one real training step
lowers the loss, interrupted + resumed runs end with the same weights, E2/E3/E4 entry points on a
handful of COIL-100 images, and loading a trained model back for extraction."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from retrieval.features.pooling import GeM, l2n
from retrieval.training import (TRAIN_CONFIGS, CheckpointError, TrainImages, load_checkpoint,
                                load_trained_efficientnet, save_checkpoint, train_classifier, train_siamese)
from retrieval.training.augment import AugmentConfig
from retrieval.training.checkpoint import load_state_dict_checked
from retrieval.training.embedding import (PixelNormalize, embed_augmented, embed_uint8, prepare_embedding_model)
from retrieval.training.loop import LoopConfig, StepContext, run_training
from retrieval.training.losses import contrastive_loss
from retrieval.training.samplers import PKSampler

OBJECTS = (1, 2, 3, 4)
VIEWS = (0, 40, 80, 120, 160, 200)


@pytest.fixture(scope="module")
def coil_few(coil100_dir):
    paths = [coil100_dir / "images" / f"obj{o}__{a}.png" for o in OBJECTS for a in VIEWS]
    labels = [str(o) for o in OBJECTS for _ in VIEWS]
    return paths, labels


@pytest.fixture(scope="module")
def few_images(coil_few):
    paths, labels = coil_few
    return TrainImages(paths, labels, load_size=64, cache=True, progress=False)


class TinyNet(nn.Module):
    """A small conv net with BatchNorm and dropout: exercises the loop's RNG and BN handling."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Dropout2d(0.2), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU())
        self.pool = GeM(3.0)

    def forward(self, x):
        return l2n(self.pool(self.body(x)))


def _tiny_run(images, out_dir, stop_after=None, epochs=2, seed=0):
    torch.manual_seed(123)  # same initial weights in every run
    model = TinyNet()
    aug = AugmentConfig(out_size=48)
    normalize = PixelNormalize([127.0] * 3, [128.0] * 3)
    sampler = PKSampler(images.label_codes, P=2, K=3, seed=seed)

    def step(batch, ctx: StepContext):
        x, y = batch
        return contrastive_loss(embed_augmented(model, normalize, x, aug, ctx), y.to(ctx.device))

    cfg = LoopConfig(epochs=epochs, lr=1e-2, seed=seed, device="cpu", checkpoint_every=1, warmup_steps=2)
    result = run_training({"model": model}, [{"params": list(model.parameters())}], sampler, images.batch,
                          step, cfg, out_dir, run_config={"test": "tiny", "data": images.fingerprint},
                          progress=False, stop_after_steps=stop_after)
    return model, result


def test_checkpoint_round_trip_weights_only(tmp_path):
    state = {"w": torch.arange(6.0).view(2, 3), "step": 7, "nested": {"names": ["a", "b"]}}
    path = save_checkpoint(tmp_path / "c.pt", state, {"lr": 0.1, "sizes": (1, 2)}, kind="unit")
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write leaves no temporary file
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["config"] == {"lr": 0.1, "sizes": [1, 2]} and len(sidecar["sha256"]) == 64
    loaded = load_checkpoint(path, kind="unit", expected_config={"lr": 0.1, "sizes": [1, 2]})
    assert torch.equal(loaded["state"]["w"], state["w"]) and loaded["state"]["step"] == 7
    assert torch.load(path, weights_only=True)["format"] == "hybrid-retrieval-checkpoint"
    with pytest.raises(CheckpointError, match="different configuration.*lr"):
        load_checkpoint(path, expected_config={"lr": 0.2, "sizes": [1, 2]})
    with pytest.raises(CheckpointError, match="expected 'other'"):
        load_checkpoint(path, kind="other")


def test_tampered_or_foreign_checkpoint_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"w": torch.ones(100)}, {"a": 1}, kind="unit")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(path)
    path.write_bytes(b"not a checkpoint at all")
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="c.pt.*weights-only"):
        load_checkpoint(path)
    # a pickled object (not weights-only) is refused by torch.load(weights_only=True)
    torch.save({"format": "hybrid-retrieval-checkpoint", "obj": TinyNet}, tmp_path / "p.pt")
    with pytest.raises(CheckpointError, match="p.pt.*weights-only"):
        load_checkpoint(tmp_path / "p.pt")
    torch.save({"w": torch.ones(1)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a hybrid-retrieval-checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "missing.pt")


def test_mismatched_weights_name_the_problem(tmp_path):
    net = TinyNet()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["body.0.weight"] = torch.zeros(4, 3, 3, 3)
    state.pop("pool.p")
    state["extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"model.pt.*missing.*pool\.p.*unexpected.*extra.*shapes.*body\.0\.weight"):
        load_state_dict_checked(net, state, tmp_path / "model.pt")


def test_one_step_on_real_images_lowers_the_loss(few_images):
    torch.manual_seed(0)
    cfg = TRAIN_CONFIGS.get("coil-e3", {"train_blocks": 2, "image_size": 64})
    model, params, _ = prepare_embedding_model(cfg)
    normalize = PixelNormalize.for_efficientnet("lite0")
    rows = np.array([0, 1, 6, 7, 12, 13])  # 3 objects x 2 views
    x = normalize(few_images.get(rows).permute(0, 3, 1, 2).float() / 255)
    y = torch.from_numpy(few_images.label_codes[rows])
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen and params["backbone"]
    model.eval()  # BN frozen, no stochastic depth: the same function before and after
    before = contrastive_loss(model(x), y)
    opt = torch.optim.SGD(params["backbone"], lr=0.05)
    before.backward()
    snapshot = [p.detach().clone() for p in frozen]
    opt.step()
    with torch.no_grad():
        after = contrastive_loss(model(x), y)
    assert after.item() < before.item()
    assert all(torch.equal(a, b) for a, b in zip(snapshot, frozen))


def test_loop_resume_gives_the_same_weights(few_images, tmp_path):
    full, full_result = _tiny_run(few_images, tmp_path / "full")
    assert full_result.steps == len(full_result.losses) > 0 and full_result.epochs == 2
    assert (tmp_path / "full" / "losses.png").is_file()
    saved = json.loads((tmp_path / "full" / "losses.json").read_text())
    assert saved["finished"] and len(saved["losses"]) == full_result.steps
    _, first = _tiny_run(few_images, tmp_path / "cut", stop_after=3)
    assert first.steps == 3
    resumed, second = _tiny_run(few_images, tmp_path / "cut")
    assert second.resumed_from_step == 3 and second.steps == full_result.steps
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert second.losses == full_result.losses
    # a finished run called again does nothing; another configuration refuses the folder
    _, again = _tiny_run(few_images, tmp_path / "cut")
    assert again.resumed_from_step == again.steps == full_result.steps
    with pytest.raises(CheckpointError, match="different configuration.*seed"):
        _tiny_run(few_images, tmp_path / "cut", seed=1)


def _quick(cfg_name, **extra):
    return TRAIN_CONFIGS.get(cfg_name, {"image_size": 48, "load_size": 64, "train_blocks": 1, "loop.epochs": 1,
                                        "loop.device": "cpu", "loop.warmup_steps": 0, "loop.checkpoint_every": 0,
                                        "loop.max_steps_per_epoch": 2,
                                        "P": 2, "K": 3, "batch_size": 6, **extra})


def test_siamese_interrupted_and_resumed_matches_uninterrupted(coil_few, few_images, tmp_path):
    paths, labels = coil_few
    cfg = _quick("coil-e3")
    whole = train_siamese(cfg, paths, labels, tmp_path / "whole", images=few_images, progress=False)
    assert train_siamese(cfg, paths, labels, tmp_path / "cut", images=few_images, progress=False,
                         stop_after_steps=1) is None
    resumed = train_siamese(cfg, paths, labels, tmp_path / "cut", images=few_images, progress=False)
    a, b = load_checkpoint(whole, kind="embedding-model"), load_checkpoint(resumed, kind="embedding-model")
    assert a["state"]["model"].keys() == b["state"]["model"].keys()
    assert all(torch.equal(a["state"]["model"][k], b["state"]["model"][k]) for k in a["state"]["model"])


def test_e2_then_e4_and_loading_back(coil_few, few_images, tmp_path):
    paths, labels = coil_few
    e2 = train_classifier(_quick("coil-e2", head="arcface"), paths, labels, tmp_path / "e2",
                          images=few_images, progress=False)
    meta = json.loads(e2.with_suffix(".json").read_text())
    assert meta["kind"] == "embedding-model" and meta["config"]["image_size"] == 48
    model = load_trained_efficientnet(e2)
    state = load_checkpoint(e2)["state"]["model"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    # only the trained block changed: the stem is still ImageNet's
    start, _, _ = prepare_embedding_model(_quick("coil-e2"))
    assert torch.equal(model.net._conv_stem.weight, start.net._conv_stem.weight)
    assert not torch.equal(model.net._conv_head.weight, start.net._conv_head.weight)
    desc = embed_uint8(model, few_images.get(np.arange(4)), 64, PixelNormalize.for_efficientnet("lite0"))
    assert desc.shape == (4, model.out_dim) and np.allclose(np.linalg.norm(desc, axis=1), 1, atol=1e-5)

    e4 = train_siamese(_quick("coil-e4"), paths, labels, tmp_path / "e4", init_checkpoint=tmp_path / "e2",
                       images=few_images, progress=False)
    e4_meta = json.loads(e4.with_suffix(".json").read_text())
    assert e4_meta["config"]["init"]["sha256"] == meta["sha256"]
    with pytest.raises(CheckpointError, match=r"initial embedding model.*unexpected.*pool\.p"):
        train_siamese(_quick("coil-e4", pooling="avg"), paths, labels, tmp_path / "bad", init_checkpoint=e2,
                      images=few_images, progress=False)
    with pytest.raises(ValueError, match="not 'siamese'"):
        train_siamese(_quick("coil-e2"), paths, labels, tmp_path / "x", images=few_images)


def test_unreadable_training_image(coil_few, tmp_path):
    paths, labels = coil_few
    bad = tmp_path / "broken.png"
    bad.write_bytes(paths[0].read_bytes()[:200])
    from retrieval.core.imageio import ImageLoadError

    with pytest.raises(ImageLoadError, match="broken.png"):
        TrainImages(list(paths[:3]) + [bad], labels[:4], progress=False)
    with pytest.warns(UserWarning, match="broken.png"):
        kept = TrainImages(list(paths[:3]) + [bad], labels[:4], on_error="skip", progress=False)
    assert len(kept) == 3 and kept.bad_files[0][0] == str(bad)
    streaming = TrainImages(list(paths[:3]) + [bad], labels[:4], load_size=32, cache=False,
                            on_error="skip", progress=False)
    batch = streaming.get(np.array([0, 3]))
    assert batch.shape == (2, 32, 32, 3) and int(batch[1].max()) == 0 and streaming.bad_files


def test_named_configs_and_overrides():
    from retrieval.training.training_set import parse_label_ranges

    assert {"coil-e2", "coil-e3", "coil-e4", "gldv2-e2-gpu", "gldv2-e3-gpu", "gldv2-e4-gpu"} <= set(TRAIN_CONFIGS)
    cfg = TRAIN_CONFIGS.get("coil-e3", {"loop.epochs": "5", "P": 8, "image_size": 96, "name": "x"})
    assert (cfg.loop.epochs, cfg.P, cfg.augment.out_size, cfg.name) == (5, 8, 96, "x")
    assert TRAIN_CONFIGS["coil-e3"].loop.epochs != 5  # the named configuration is not modified
    with pytest.raises(ValueError, match="unknown key 'epoch' of LoopConfig"):
        TRAIN_CONFIGS.get("coil-e3", {"loop.epoch": 2})
    with pytest.raises(ValueError, match="unknown training configuration"):
        TRAIN_CONFIGS.get("coil-e9")
    assert parse_label_ranges("1-3,7") == {"1", "2", "3", "7"}


def test_classifier_run_does_not_depend_on_the_global_generator(coil_few, few_images, tmp_path):
    """E2's head is initialised from the run's seed: two runs of one configuration give the same
    weights whatever drew from torch's global generator before them."""
    paths, labels = coil_few
    states = []
    for k, seed in enumerate((1, 2)):
        torch.manual_seed(seed)
        torch.rand(17)
        path = train_classifier(_quick("coil-e2"), paths, labels, tmp_path / f"run{k}", images=few_images,
                                progress=False)
        states.append(load_checkpoint(path, kind="embedding-model")["state"]["model"])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_fingerprint_names_the_files_not_the_spelling_of_their_paths(coil_few, monkeypatch):
    paths, labels = coil_few
    pick = [0, 6, 12, 18]  # one view of each object
    absolute = [Path(paths[i]).resolve() for i in pick]
    labels = [labels[i] for i in pick]
    monkeypatch.chdir(absolute[0].parent)
    relative = [Path(os.path.relpath(p)) for p in absolute]
    assert not relative[0].is_absolute()
    a = TrainImages(absolute, labels, cache=False, progress=False)
    b = TrainImages(relative, labels, cache=False, progress=False)
    assert a.fingerprint == b.fingerprint
    assert TrainImages(absolute[:3], labels[:3], cache=False, progress=False).fingerprint != a.fingerprint
    assert TrainImages(absolute, labels[1:] + labels[:1], cache=False,
                       progress=False).fingerprint != a.fingerprint
