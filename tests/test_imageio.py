"""retrieval.core.imageio on synthesised files: every format becomes 8-bit RGB with the right values, and
every kind of broken file raises ImageLoadError naming the file."""
import numpy as np
import pytest
from PIL import Image

from retrieval.datasets import check_images
from retrieval.core.imageio import ImageLoadError, image_size, load_image, resize_longest_side


def _blocks(h=32, w=48):
    """Four flat colour quadrants: survive JPEG compression and show any rotation or flip."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = (255, 0, 0)
    a[: h // 2, w // 2:] = (0, 255, 0)
    a[h // 2:, : w // 2] = (0, 0, 255)
    a[h // 2:, w // 2:] = (255, 255, 0)
    return a


def _quadrant_colours(img):
    h, w = img.shape[:2]
    cy, cx = h // 4, w // 4
    return [tuple(int(v) for v in img[y, x]) for y, x in ((cy, cx), (cy, w - cx), (h - cy, cx), (h - cy, w - cx))]


def _close(c1, c2, tol=40):
    return all(abs(a - b) <= tol for a, b in zip(c1, c2))


@pytest.mark.parametrize("orientation,expected", [
    (1, lambda a: a),
    (3, lambda a: np.rot90(a, 2)),
    (6, lambda a: np.rot90(a, -1)),   # stored image must be turned 90 degrees clockwise to display
    (8, lambda a: np.rot90(a, 1)),
    (2, lambda a: a[:, ::-1]),
    (4, lambda a: a[::-1]),
    (5, lambda a: a.transpose(1, 0, 2)),
    (7, lambda a: np.rot90(a, 2).transpose(1, 0, 2)),
])
def test_exif_orientation_applied(tmp_path, orientation, expected):
    raw = _blocks()
    path = tmp_path / f"o{orientation}.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(raw).save(path, quality=95, exif=exif)
    img = load_image(path)
    want = expected(raw)
    assert img.shape == want.shape and img.dtype == np.uint8
    for got, ref in zip(_quadrant_colours(img), _quadrant_colours(want)):
        assert _close(got, ref), (got, ref)
    assert image_size(path) == want.shape[:2]


def test_grayscale_becomes_rgb_with_same_values(tmp_path):
    gray = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    img = load_image(tmp_path / "g.png")
    assert img.shape == (16, 16, 3) and img.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(img[:, :, c], gray)


def test_rgba_composited_on_black(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (200, 100, 50, 255)  # opaque: unchanged
    rgba[0, 1] = (200, 100, 50, 0)    # transparent: black
    rgba[0, 2] = (200, 100, 50, 128)  # half: about half
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img.shape == (4, 4, 3)
    assert tuple(img[0, 0]) == (200, 100, 50)
    assert tuple(img[0, 1]) == (0, 0, 0)
    assert all(abs(int(g) - v // 2) <= 1 for g, v in zip(img[0, 2], (200, 100, 50)))


@pytest.mark.parametrize("transparent", [False, True])
def test_palette_image(tmp_path, transparent):
    idx = np.array([[0, 1], [2, 1]], np.uint8)
    pal = Image.fromarray(idx, "P")
    pal.putpalette([10, 20, 30, 200, 150, 100, 0, 255, 0] + [0] * (256 * 3 - 9))
    kwargs = {"transparency": 1} if transparent else {}
    pal.save(tmp_path / "p.png", **kwargs)
    img = load_image(tmp_path / "p.png")
    assert img.shape == (2, 2, 3)
    assert tuple(img[0, 0]) == (10, 20, 30)
    assert tuple(img[1, 0]) == (0, 255, 0)
    assert tuple(img[0, 1]) == ((0, 0, 0) if transparent else (200, 150, 100))


def test_cmyk_jpeg(tmp_path):
    cmyk = np.zeros((16, 32, 4), np.uint8)
    cmyk[:, 16:, 0] = 255  # full cyan on the right half, white (no ink) on the left
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "c.jpg", quality=95)
    with Image.open(tmp_path / "c.jpg") as check:
        assert check.mode == "CMYK"
    img = load_image(tmp_path / "c.jpg")
    assert img.shape == (16, 32, 3) and img.dtype == np.uint8
    assert _close(tuple(int(v) for v in img[8, 4]), (255, 255, 255), 10)
    assert _close(tuple(int(v) for v in img[8, 28]), (0, 255, 255), 10)


def test_16bit_png_scaled_to_8bit(tmp_path):
    values = np.array([[0, 257 * 100, 65535, 257 * 7]], np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    with Image.open(tmp_path / "d.png") as check:
        assert check.mode.startswith("I")
    img = load_image(tmp_path / "d.png")
    assert img.dtype == np.uint8 and img.shape == (1, 4, 3)
    np.testing.assert_array_equal(img[0, :, 0], [0, 100, 255, 7])
    np.testing.assert_array_equal(img[..., 0], img[..., 2])


def test_dark_16bit_png_not_stretched(tmp_path):
    # a 16-bit image that only uses low values must stay dark (scale by the dtype range, not max)
    values = np.full((2, 2), 257 * 3, np.uint16)
    Image.fromarray(values).save(tmp_path / "dark.png")
    assert int(load_image(tmp_path / "dark.png").max()) == 3


def test_longest_side_resize(tmp_path):
    Image.fromarray(_blocks(50, 100)).save(tmp_path / "r.png")
    assert load_image(tmp_path / "r.png", max_side=40).shape == (20, 40, 3)
    assert load_image(tmp_path / "r.png", max_side=400).shape == (50, 100, 3)  # no upscale
    assert load_image(tmp_path / "r.png", max_side=200, upscale=True).shape == (100, 200, 3)
    small = resize_longest_side(_blocks(50, 100), 10)
    assert small.shape == (5, 10, 3)
    assert _close(tuple(int(v) for v in small[1, 1]), (255, 0, 0), 5)


def _broken_files(tmp_path):
    Image.fromarray(_blocks(64, 64)).save(tmp_path / "ok.jpg", quality=90)
    Image.fromarray(_blocks(64, 64)).save(tmp_path / "ok.png")
    jpg, png = (tmp_path / "ok.jpg").read_bytes(), (tmp_path / "ok.png").read_bytes()
    files = {
        "half.jpg": jpg[: len(jpg) // 2],
        "half.png": png[: len(png) // 2],
        "empty.jpg": b"",
        "text.png": b"this is not an image\n" * 10,
        "corrupt.jpg": jpg[:20] + bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8)),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return [tmp_path / n for n in files]


def test_broken_files_raise_naming_the_file(tmp_path):
    for path in _broken_files(tmp_path):
        with pytest.raises(ImageLoadError) as info:
            load_image(path)
        assert str(path) in str(info.value) and info.value.path == str(path)
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "missing.png")


def test_check_images_collects_every_bad_file(tmp_path):
    bad = _broken_files(tmp_path)
    good = [tmp_path / "ok.jpg", tmp_path / "ok.png"]
    paths = good + bad
    for n_jobs in (1, 2):
        report = check_images(paths, n_jobs=n_jobs, progress=False)
        assert [p for p, _ in report] == [str(p) for p in bad]
        assert all(reason for _, reason in report)
    assert check_images(good, progress=False) == []
