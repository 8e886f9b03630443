"""Reduced-precision extraction (retrieval.features.precision): the int8 model (ONNX Runtime static
quantization calibrated on other images) keeps descriptors close to float32, the feature file records
the precision used, precision="auto" decides once per machine, and batches of equal-size images give
the descriptors of per-image extraction. Real COIL-100 images at 64 px (a few seconds)."""
import json

import numpy as np
import pytest

from retrieval.core.config import ConfigError
from retrieval.core.imageio import load_image
from retrieval.features.deep_extract import extract_global
from retrieval.features.efficientnet import EfficientNetExtractor, resolve_config
from retrieval.features.store import load_global
from retrieval.steps.search import incomparable

pytest.importorskip("onnxruntime")

#: smallest cosine to float32 of int8 descriptors measured here at 64 px (0.984 on COIL-20 in
#: benchmarks/deep_speed.py at 64 px; 0.996 and more at 512 px on Oxford), with a margin
MIN_COSINE_64PX = 0.95


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Quantized models and auto decisions in a folder of this test session, not the user's cache."""
    monkeypatch.setenv("RETRIEVAL_CACHE", str(tmp_path_factory.getbasetemp() / "model-cache"))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def calibration(coil100_dir, tmp_path_factory):
    """A calibration folder of 6 COIL-100 objects (51-56) that the tests never describe."""
    import shutil

    folder = tmp_path_factory.mktemp("calibration")
    for obj in range(51, 57):
        shutil.copy(coil100_dir / "images" / f"obj{obj}__0.png", folder / f"obj{obj}.png")
    return folder


@pytest.fixture(scope="module")
def images(coil100_dir):
    """10 images of objects 1-10, two thirds cropped to other aspect ratios (three input sizes)."""
    out = []
    for k in range(10):
        img = load_image(coil100_dir / "images" / f"obj{k + 1}__{5 * k}.png")
        out.append(img if k % 3 == 0 else img[:, 16:112] if k % 3 == 1 else img[24:104])
    return out


def _int8(calibration, **kw):
    return EfficientNetExtractor("lite0-gem-512", size=64, precision="int8", calibration=str(calibration), **kw)


def test_int8_descriptors_are_close_to_float32_and_recorded(calibration, images):
    int8 = _int8(calibration)
    fp32 = EfficientNetExtractor("lite0-gem-512", size=64, precision="float32")
    assert int8.precision == "int8" and int8.backend == "onnxruntime"
    a, b = int8.extract_arrays(images), fp32.extract_arrays(images)
    cos = np.sum(a * b, axis=1)
    assert cos.min() > MIN_COSINE_64PX, cos
    assert np.abs(a - b).max() > 1e-4  # really another arithmetic, not the float32 graph again
    cfg = int8.config
    assert cfg["precision"] == "int8" and cfg["calibration"] == str(calibration)
    assert len(cfg["calibration_sha256"]) == 16
    # float32 is recorded by omission, as in every feature file made before precision existed
    assert "precision" not in fp32.config and "calibration" not in fp32.config
    # the recorded configuration rebuilds the same int8 model (the cached one): the same vectors
    again = EfficientNetExtractor(json.loads(json.dumps(cfg)))
    assert again.precision == "int8" and "quantize_seconds" not in again.precision_probe
    np.testing.assert_array_equal(again.extract_arrays(images[:3]), a[:3])


def test_the_feature_file_records_the_precision(calibration, images, coil100_dir, tmp_path):
    paths = [coil100_dir / "images" / f"obj{k}__0.png" for k in (1, 2, 3)]
    out = tmp_path / "int8.h5"
    extract_global(_int8(calibration), ["a", "b", "c"], paths, out, n_jobs=1, progress=False)
    _, vectors, config = load_global(out)
    assert config["precision"] == "int8" and config["calibration_sha256"]
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    # a float32 query file is comparable with an int8 database: precision is a query-side key ...
    fp32 = EfficientNetExtractor("lite0-gem-512", size=64, precision="float32").config
    assert incomparable(config, fp32) == []
    # ... while another network is not
    assert incomparable(config, dict(fp32, pooling="avg")) == ["pooling"]


def test_a_damaged_cached_model_is_rebuilt(calibration, images, tmp_path, monkeypatch):
    from retrieval.features.precision import cache_dir

    monkeypatch.setenv("RETRIEVAL_CACHE", str(tmp_path / "cache"))
    first = _int8(calibration)
    assert first.precision_probe["quantize_seconds"] >= 0
    [model] = (cache_dir() / "onnx").glob("int8-*.onnx")
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    rebuilt = _int8(calibration)
    assert "quantize_seconds" in rebuilt.precision_probe  # checksum mismatch: quantized again
    np.testing.assert_array_equal(rebuilt.extract_arrays(images[:2]), first.extract_arrays(images[:2]))


def test_auto_probes_once_and_records_what_it_chose(calibration, images, tmp_path, monkeypatch):
    from retrieval.features import precision

    monkeypatch.setenv("RETRIEVAL_CACHE", str(tmp_path / "cache"))
    auto = EfficientNetExtractor("lite0-gem-512", size=64, calibration=str(calibration))
    probe = auto.precision_probe
    assert auto.precision == probe["precision"] in precision.PRECISIONS
    assert set(probe["img_per_s"]) == set(probe["candidates"]) >= {"float32", "int8"}
    assert probe["min_cosine"]["int8"] > MIN_COSINE_64PX
    assert auto.config.get("precision", "float32") == auto.precision
    # the decision is kept: a second extractor (another worker, a later run) does not probe again
    monkeypatch.setattr(precision, "probe", lambda *a, **k: pytest.fail("probed twice"))
    assert EfficientNetExtractor("lite0-gem-512", size=64, calibration=str(calibration)).precision == auto.precision
    # a backend named explicitly is float32 (a reference), and float32 is one option away
    assert EfficientNetExtractor("lite0-gem-512", size=64, backend="folded").precision == "float32"
    assert EfficientNetExtractor("lite0-gem-512", size=64, precision="float32").precision == "float32"


def test_bucketed_batches_equal_per_image_extraction(calibration, images, tmp_path):
    import cv2

    paths = []
    for k, img in enumerate(images):
        paths.append(tmp_path / f"{k}.png")
        cv2.imwrite(str(paths[-1]), img[:, :, ::-1])
    ids = [str(k) for k in range(len(paths))]
    for ext in (EfficientNetExtractor("lite0-gem-512", size=64, precision="float32"), _int8(calibration)):
        one = extract_global(ext, ids, paths, tmp_path / "one.h5", batch_size=1, n_jobs=1, progress=False,
                             overwrite=True)
        assert one.computed == len(ids)
        extract_global(ext, ids, paths, tmp_path / "eight.h5", batch_size=8, n_jobs=1, progress=False,
                       overwrite=True)
        rows = {}
        for name in ("one", "eight"):  # rows are written batch by batch: align them by id
            got_ids, vectors, _ = load_global(tmp_path / f"{name}.h5")
            rows[name] = vectors[np.argsort(np.asarray(got_ids, dtype=int))]
        assert np.linalg.matrix_rank(rows["one"]) == len(ids)  # ten different descriptors
        np.testing.assert_allclose(rows["eight"], rows["one"], atol=2e-5)


def test_bad_precision_settings_are_refused(calibration, tmp_path):
    with pytest.raises(ConfigError, match="precision must be 'auto' or one of"):
        resolve_config("lite0-gem-512", precision="int4")
    with pytest.raises(ValueError, match="precision 'int8' runs on ONNX Runtime"):
        _int8(calibration, backend="torchscript")
    with pytest.raises(ValueError, match="calibration folder not found"):
        EfficientNetExtractor("lite0-gem-512", size=64, precision="int8", calibration=str(tmp_path / "none"))
    # a configuration recorded before precision existed reads as float32
    legacy = EfficientNetExtractor("lite0-gem-512", size=64, precision="float32").config
    assert resolve_config(legacy)["precision"] == "float32"


def test_strided_convolutions_pad_themselves_exactly(calibration):
    """same_pad_convs: the float32 graph without its run-time Pad nodes gives the same numbers at odd and
    even input sizes, and the cached int8 model has no Pad left (every strided convolution is int8)."""
    import tempfile

    import onnx
    import torch

    from retrieval.features.fast_inference import _FeaturesAndDescriptor, fold_efficientnet, ort_session
    from retrieval.features.precision import _export, cache_dir, same_pad_convs

    ext = EfficientNetExtractor("lite0-gem-512", size=64, weights="random", precision="float32")
    module = _FeaturesAndDescriptor(fold_efficientnet(ext.model.net, True), ext.model.pool).eval()
    with tempfile.TemporaryDirectory() as tmp:
        _export(module, torch.zeros(1, 3, 64, 64), f"{tmp}/m.onnx")
        model = onnx.load(f"{tmp}/m.onnx")
    before = ort_session(model.SerializeToString(), 1)
    assert same_pad_convs(model) == 5  # the stem and the four stride-2 depthwise convolutions of Lite0
    assert [n for n in model.graph.node if n.op_type in ("Pad", "Shape")] == []
    after = ort_session(model.SerializeToString(), 1)
    rng = np.random.default_rng(0)
    for h, w in ((64, 64), (65, 96), (64, 97), (33, 17)):
        x = rng.standard_normal((1, 3, h, w), dtype=np.float32)
        for want, got in zip(before.run(None, {"image": x}), after.run(None, {"image": x})):
            assert want.shape == got.shape
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    _int8(calibration)
    quantized = [onnx.load(p) for p in (cache_dir() / "onnx").glob("int8-*.onnx")]
    assert quantized and all(n.op_type != "Pad" for m in quantized for n in m.graph.node)
