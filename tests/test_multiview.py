"""View pooling (features.multiview) and MV-AlexNet (features.alexnet)."""
import numpy as np
import pytest
import torch

from retrieval.features.alexnet import ALEXNET_CONFIGS, AlexNetConfig, AlexNetGlobal, MVAlexNet, count_parameters, preprocess
from retrieval.features.global_extractor import GlobalExtractor
from retrieval.features.multiview import (MultiViewExtractor, MultiViewNet, as_embedding_fn, pool_view_embeddings,
                                pool_views)


@pytest.fixture(scope="module")
def small_mv():
    torch.manual_seed(0)
    return MVAlexNet(ALEXNET_CONFIGS.get("alexnet-half", {"out_dim": 32})).eval()


def _views(b=2, v=4, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, v, 3, size, size, generator=g)


def test_pool_views_max_mean():
    x = torch.tensor([[[1.0, 5.0], [3.0, 2.0]]])  # (B=1, V=2, D=2)
    assert torch.equal(pool_views(x, "max"), torch.tensor([[3.0, 5.0]]))
    assert torch.equal(pool_views(x, "mean"), torch.tensor([[2.0, 3.5]]))
    with pytest.raises(ValueError, match="view pooling"):
        pool_views(x, "median")


@pytest.mark.parametrize("pooling", ["max", "mean"])
@pytest.mark.parametrize("level", ["feature_map", "embedding"])
def test_order_invariance_and_single_view_identity(pooling, level):
    torch.manual_seed(1)
    base = AlexNetGlobal(ALEXNET_CONFIGS.get("alexnet-half", {"out_dim": 16})).eval()
    net = MultiViewNet(base, view_pooling=pooling, level=level).eval()
    x = _views(b=3, v=5)
    with torch.no_grad():
        out = net(x)
        shuffled = net(x[:, torch.tensor([4, 2, 0, 3, 1])])
        one = net(x[:, :1])
        single = base(x[:, 0])
    assert out.shape == (3, 16)
    assert torch.allclose(out, shuffled, atol=1e-6)
    # one view: exactly the single-view model
    assert torch.equal(one, single)
    # and pooling several views is not a no-op
    assert not torch.allclose(out, single, atol=1e-3)


def test_single_view_identity_with_efficientnet():
    from retrieval.features.efficientnet import EfficientNetGlobal

    base = EfficientNetGlobal("lite0", weights="random").eval()
    x = _views(b=2, v=2, size=64)
    for level in ("feature_map", "embedding"):
        net = MultiViewNet(base, "max", level).eval()
        with torch.no_grad():
            assert torch.equal(net(x[:, :1]), base(x[:, 0]))
            assert net(x).shape == (2, base.out_dim)


def test_describe_sets_matches_forward(small_mv):
    x = _views(b=1, v=6)[0]  # six views
    sets = [[0, 1, 2], [3], [4, 5, 0], [1, 3]]
    with torch.no_grad():
        feats = small_mv.view_features(x)
        got = small_mv.describe_sets(feats, sets)
        want = torch.cat([small_mv(x[s].unsqueeze(0)) for s in sets])
    assert torch.allclose(got, want, atol=1e-6)
    with pytest.raises(ValueError, match="empty"):
        small_mv.describe_sets(feats, [[0], []])


def test_mv_alexnet_shape_and_normalisation():
    torch.manual_seed(0)
    model = MVAlexNet().eval()
    assert model.out_dim == 256
    with torch.no_grad():
        out = model(_views(b=2, v=3, size=128))
        out96 = model(_views(b=2, v=1, size=96))
    assert out.shape == (2, 256) and out96.shape == (2, 256)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    # conv5 map at 128 px is 7x7 (stride-4 conv1, two stride-2 pools)
    assert model.view_features(torch.zeros(1, 3, 128, 128)).shape == (1, 256, 7, 7)
    assert 2_000_000 < count_parameters(model) < 3_000_000
    with pytest.raises(ValueError, match="at least 35"):
        model(torch.zeros(1, 1, 3, 32, 32))
    with pytest.raises(ValueError, match="B, V, 3, H, W"):
        model(torch.zeros(3, 64, 64))


def test_mv_alexnet_without_batch_norm_and_preprocess():
    model = MVAlexNet(AlexNetConfig(widths=(8, 16, 16, 16, 16), batch_norm=False, out_dim=8)).eval()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    img = np.full((64, 64, 3), 255, np.uint8)
    x = preprocess(img)
    assert x.shape == (1, 3, 64, 64)
    # white normalises to (1 - mean) / std
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224,
                                                       (1 - 0.406) / 0.225]), atol=1e-5)
    with pytest.raises(TypeError, match="uint8"):
        preprocess(img.astype(np.float32))
    with torch.no_grad():
        assert model(x.unsqueeze(1)).shape == (1, 8)
    with pytest.raises(ValueError, match="widths"):
        AlexNetConfig(widths=(8, 16))


def test_feature_map_level_needs_methods():
    class Plain(torch.nn.Module):
        out_dim = 4

        def forward(self, x):
            return torch.nn.functional.normalize(x.mean(dim=(2, 3)).repeat(1, 2)[:, :4], dim=1)

    with pytest.raises(TypeError, match="feature_map"):
        MultiViewNet(Plain(), level="feature_map")
    net = MultiViewNet(Plain(), "mean", "embedding")
    assert net(_views(b=2, v=3, size=8)).shape == (2, 4)


def test_pool_view_embeddings_numpy(rng):
    e = rng.standard_normal((5, 8)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    out = pool_view_embeddings(e, [[0, 1], [2], [3, 4, 0]], "mean")
    assert out.shape == (3, 8)
    assert np.array_equal(out[1], e[2])  # one view: untouched
    want = e[[3, 4, 0]].mean(0)
    assert np.allclose(out[2], want / np.linalg.norm(want), atol=1e-6)
    assert np.allclose(pool_view_embeddings(e, [[1, 0]], "max")[0],
                       np.maximum(e[0], e[1]) / np.linalg.norm(np.maximum(e[0], e[1])), atol=1e-6)


class _MeanColour(GlobalExtractor):
    name = "mean-colour"

    @property
    def dim(self):
        return 3

    @property
    def config(self):
        return {}

    def extract_arrays(self, images):
        x = np.stack([im.reshape(-1, 3).mean(0) for im in images]).astype(np.float32) + 1.0
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_multiview_extractor_wraps_any_global_extractor(rng):
    ext = _MeanColour()
    views = [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in range(4)]
    mv = MultiViewExtractor(ext, "mean", batch_size=3)
    out = mv.extract_sets([[views[0]], [views[1], views[2], views[3]]])
    assert out.shape == (2, 3)
    assert np.array_equal(out[0], ext.extract_arrays([views[0]])[0])
    swapped = mv.extract_sets([[views[3], views[1], views[2]]])
    assert np.allclose(out[1], swapped[0], atol=1e-6)


def test_embedding_hook_checks_output():
    images = np.zeros((2, 8, 8, 3), np.uint8)
    tokens = as_embedding_fn(lambda ims: np.ones((len(ims), 5, 4)))  # (N, T, D): not a global embedding
    with pytest.raises(ValueError, match="global token"):
        tokens(images)
    raw = as_embedding_fn(lambda ims: torch.full((len(ims), 4), 3.0))  # unnormalised tensor output
    out = raw(images)
    assert out.shape == (2, 4) and np.allclose(np.linalg.norm(out, axis=1), 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        as_embedding_fn(lambda ims: np.full((len(ims), 4), np.nan))(images)
    with pytest.raises(TypeError):
        as_embedding_fn(42)
