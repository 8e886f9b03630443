"""Benchmark command lines and overrides as a newcomer meets them (issue 25, item 8)."""
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.core.config import ConfigError


def test_multiview_takes_the_layouts_it_documents(monkeypatch, tmp_path, capsys):
    """benchmarks/multiview.py is `retrieval run multiview`: it takes the layouts it documents (folder: a
    labels.csv with a view column or a tree of object folders; multiview: the DS|DU tree) and refuses any
    other reader kind up front, in one line naming the choices."""
    from retrieval.cli import main
    from retrieval.experiments import multiview

    seen = {}
    monkeypatch.setattr(multiview, "main", lambda conf, out, cache: seen.setdefault("conf", conf) and out)
    for kind in ("folder", "multiview"):
        seen.clear()
        assert main(["--quiet", "run", "multiview", "--dataset", kind, "--data", str(tmp_path),
                     "--out", str(tmp_path / "o")]) == 0
        assert seen["conf"].dataset.kind == kind
    assert main(["--quiet", "run", "multiview", "--dataset", "oxford", "--data", str(tmp_path),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "oxford" in err and "folder" in err and "multiview" in err


def test_an_empty_text_override_is_written_either_way():
    from retrieval.experiments.classical import ClassicalConfig

    conf = ClassicalConfig()
    assert conf.whitening_data.path != ""
    assert conf.override(["whitening_data.path="]).whitening_data.path == ""
    assert conf.override(['whitening_data.path=""']).whitening_data.path == ""   # not the two quotes
    assert conf.override(['whitening_data.path="my photos"']).whitening_data.path == "my photos"
    assert conf.override(['whitening_data.path=a"b"']).whitening_data.path == 'a"b"'
    with pytest.raises(ConfigError):
        conf.override(['whitening_images="3"'])   # a number field still wants a number


def test_classical_auto_sift_says_what_it_picked_and_why(tmp_path):
    from retrieval.experiments.classical import LANDMARK_SIFT, sift_choice, sift_for
    from retrieval.datasets.folders import read_folder

    for side in (128, 1024):
        root = tmp_path / f"photos{side}"
        for label in ("a", "b"):
            (root / label).mkdir(parents=True)
            Image.fromarray(np.zeros((side * 3 // 4, side, 3), np.uint8)).save(root / label / "0.jpg")
        ds = read_folder(root)
        name, why = sift_choice("auto", "folder", ds)
        assert name == sift_for("auto", "folder", ds)
        assert f"{side} px" in why
        if side == 1024:
            assert name == "rootsift-c02-4k" and f"--set sift={LANDMARK_SIFT}" in why
        else:
            assert name == "rootsift-small"
    assert sift_choice("auto", "oxford", None) == (LANDMARK_SIFT, "sift = auto: oxford is a landmark dataset kind")
    assert sift_choice("rootsift-1k", "folder", None)[0] == "rootsift-1k"


def test_faiss_kmeans_advice_is_recorded_not_printed(capfd):
    pytest.importorskip("faiss")
    from retrieval.features.codebook import train_codebook

    x = np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32)
    cb = train_codebook(x, 16, backend="faiss", niter=2)
    err = capfd.readouterr().err
    assert "please provide at least" not in err and "WARNING" not in err
    assert cb.config["points_per_word"] == 12.5


def test_fisher_gmm_convergence_is_recorded_not_warned():
    from retrieval.features.encoders.fisher import FisherEncoder

    rng = np.random.default_rng(0)
    feats = [rng.standard_normal((300, 8)).astype(np.float32) for _ in range(3)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        enc = FisherEncoder(k=8, pca_dim=None, seed=0, n_sample=900, gmm_max_iter=1, tol=1e-12).fit(feats)
    assert not [w for w in caught if "converge" in str(w.message).lower()]
    assert enc.fit_info["gmm_converged"] is False and enc.fit_info["gmm_iterations"] == 1


def test_scale_quick_and_full_keep_separate_work_folders(monkeypatch, tmp_path):
    from retrieval.bench import scale
    from retrieval.cli import main

    used = []
    monkeypatch.setattr(scale, "run", lambda out, work, *a, **k: used.append(work) or {"quick": False})
    monkeypatch.setattr(scale, "results_markdown", lambda r: "")
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "scale", "--quick", "--out", "o"]) == 0 and main(["bench", "scale", "--out", "o"]) == 0
    assert used == [Path("cache/scale-quick"), Path("cache/scale")]
    assert main(["bench", "scale", "--quick", "--work", "mine", "--out", "o"]) == 0 and used[-1] == Path("mine")
