"""Shared fixtures: the real data folder (``$RETRIEVAL_DATA`` or ../shared/data); tests that need it
skip cleanly when it is absent."""
from pathlib import Path

import numpy as np
import pytest

from retrieval.core.paths import data_root as _data_root


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = _data_root()
    if not root.is_dir():
        pytest.skip(f"data folder {root} not found (set RETRIEVAL_DATA)")
    return root


def _sub(data_root: Path, name: str) -> Path:
    path = data_root / name
    if not path.is_dir():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="session")
def coil100_dir(data_root) -> Path:
    return _sub(data_root, "coil100")


@pytest.fixture(scope="session")
def coil20_dir(data_root) -> Path:
    return _sub(data_root, "coil20")


@pytest.fixture(scope="session")
def oxford_dir(data_root) -> Path:
    return _sub(data_root, "oxford5k_subset")


@pytest.fixture(scope="session")
def pairs_dir(data_root) -> Path:
    return _sub(data_root, "pairs")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module's forward passes: two threads are many times slower on a loaded
    shared 2-core machine (use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def tiny_oxford(oxford_dir, tmp_path) -> Path:
    """An Oxford-layout folder of 13 images: one query (all_souls_1) with 4 good, 2 ok and 1 junk images and
    5 images of another landmark (linked from the subset)."""
    root, source = tmp_path / "ox", oxford_dir
    gt = source / "gt"
    (root / "gt").mkdir(parents=True)
    (root / "images").mkdir()
    lists = {t: (gt / f"all_souls_1_{t}.txt").read_text().split() for t in ("good", "ok", "junk")}
    keep = {"good": lists["good"][:4], "ok": lists["ok"][:2], "junk": lists["junk"][:1]}
    query_line = (gt / "all_souls_1_query.txt").read_text()
    query_stem = query_line.split()[0].replace("oxc1_", "")
    listed = {s for names in lists.values() for s in names}
    others = [p.stem for p in sorted((source / "images").glob("radcliffe_camera_*.jpg")) if p.stem not in listed][:5]
    (root / "gt" / "all_souls_1_query.txt").write_text(query_line)
    for t, names in keep.items():
        (root / "gt" / f"all_souls_1_{t}.txt").write_text("\n".join(names) + "\n")
    for stem in {query_stem, *others, *(s for names in keep.values() for s in names)}:
        (root / "images" / f"{stem}.jpg").symlink_to(source / "images" / f"{stem}.jpg")
    return root
