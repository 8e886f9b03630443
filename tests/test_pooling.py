"""Pooling of real EfficientNet-Lite0 feature maps: avg / max / GeM, L2, multi-scale."""
import numpy as np
import pytest
import torch

from retrieval.features.efficientnet import EfficientNetGlobal, preprocess
from retrieval.features.pooling import (GeM, avg_pool, gem_pool, l2n, make_pooling, max_pool, multiscale_descriptor,
                              resize_tensor)
from retrieval.core.imageio import load_image


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One intra-op thread: on a loaded shared machine OpenMP's spinning threads make a 2-thread
    forward pass up to 50x slower; one thread keeps these tests fast and their timing stable."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def fmap(coil100_dir):
    """Lite0 feature maps of three real COIL-100 photos at their native 128 px (4 x 4 cells)."""
    images = np.stack([load_image(coil100_dir / "images" / f"obj{k}__0.png") for k in (1, 2, 3)])
    model = EfficientNetGlobal("lite0", weights="imagenet", pooling="avg")
    with torch.inference_mode():
        return model.feature_map(preprocess(images)).clone()


def test_shapes_and_unit_norms(fmap):
    assert fmap.shape == (3, 1280, 4, 4)
    for name in ("avg", "max", "gem"):
        d = l2n(make_pooling(name)(fmap))
        assert d.shape == (3, 1280)
        np.testing.assert_allclose(d.norm(dim=1).numpy(), 1.0, atol=1e-5)
        assert torch.all(d >= 0)  # ReLU6 activations


def test_gem_p1_is_average_and_large_p_tends_to_max(fmap):
    x = fmap.double()
    torch.testing.assert_close(gem_pool(x, 1.0), avg_pool(x), atol=1e-6, rtol=1e-6)
    mx = max_pool(x)
    err = [float(((gem_pool(x, p) - mx).abs()).max()) for p in (3.0, 20.0, 200.0)]
    assert err[0] > err[1] > err[2]
    assert err[2] < 0.05 * float(mx.max())
    # GeM lies between average and max for p >= 1
    g = gem_pool(x, 3.0)
    # (clamping at eps = 1e-6 lifts all-zero channels to 1e-6)
    assert torch.all(g >= avg_pool(x) - 1e-9) and torch.all(g <= mx + 1e-5)


def test_descriptors_differ_between_objects(fmap):
    d = l2n(gem_pool(fmap, 3.0))
    sim = d @ d.T
    assert float(sim[0, 1]) < 0.99 and float(sim[0, 0]) == pytest.approx(1.0, abs=1e-5)


def test_learned_p_gets_a_gradient(fmap):
    pool = GeM(3.0, learn_p=True)
    assert [n for n, _ in pool.named_parameters()] == ["p"]
    l2n(pool(fmap)).sum().backward()
    assert pool.p.grad is not None and torch.isfinite(pool.p.grad).all()
    fixed = GeM(3.0)
    assert list(fixed.parameters()) == [] and "p" in dict(fixed.named_buffers())


def test_bad_pooling_arguments():
    with pytest.raises(ValueError, match="unknown pooling"):
        make_pooling("median")
    with pytest.raises(ValueError, match="p must be > 0"):
        GeM(0.0)


def test_multiscale_shape_and_norm(coil100_dir):
    img = load_image(coil100_dir / "images" / "obj5__0.png")
    model = EfficientNetGlobal("lite0", weights="imagenet", pooling="gem")
    x = preprocess(img)
    assert resize_tensor(x, 2 ** 0.5).shape[-2:] == (181, 181)
    with torch.inference_mode():
        single = model(x)
        multi = model.forward_multiscale(x, (1.0, 2 ** -0.5, 2 ** 0.5))
        assert multi.shape == (1, 1280)
        assert float(multi.norm()) == pytest.approx(1.0, abs=1e-5)
        # one scale = the single-scale descriptor; three scales differ from it but stay close
        torch.testing.assert_close(multiscale_descriptor(model, x, (1.0,)), single)
        assert 0.8 < float((multi * single).sum()) < 0.9999
    with pytest.raises(ValueError):
        multiscale_descriptor(model, x, ())
