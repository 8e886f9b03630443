"""A missing optional extra is one line naming it (``pip install 'hybrid-retrieval[EXTRA]'``), never a
traceback. The missing module is simulated with ``sys.modules[name] = None`` (Python then refuses to
import it, exactly as when it is not installed)."""
import configparser
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.core import extras
from retrieval.cli import main
from retrieval.features.store import save_global

ROOT = Path(__file__).resolve().parent.parent


def _hide(monkeypatch, *modules):
    for name in modules:
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            monkeypatch.delitem(sys.modules, loaded)
        monkeypatch.setitem(sys.modules, name, None)


def _one_line_naming(err: str, extra: str) -> None:
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    assert err.startswith("retrieval: error: ")
    assert f"pip install 'hybrid-retrieval[{extra}]'" in err


def test_serve_without_its_extra_is_one_line(monkeypatch, tmp_path, capsys):
    _hide(monkeypatch, "uvicorn")
    code = main(["serve", "--features", str(tmp_path / "db.h5"), "--images", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    _one_line_naming(err, "serve")
    assert "retrieval serve" in err and "uvicorn" in err


def test_faiss_backend_without_faiss_is_one_line(monkeypatch, tmp_path, capsys, rng):
    save_global(tmp_path / "db.h5", ["a", "b", "c"], rng.standard_normal((3, 8)).astype(np.float32))
    _hide(monkeypatch, "faiss")
    code = main(["index", "build", str(tmp_path / "db.h5"), "--out", str(tmp_path / "i.npz"),
                 "--backend", "faiss-flat"])
    assert code == 2
    _one_line_naming(capsys.readouterr().err, "faiss")
    assert not (tmp_path / "i.npz").exists()


def test_ray_engine_without_ray_is_one_line(monkeypatch, tmp_path, capsys):
    images = tmp_path / "photos" / "cat"
    images.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(images / f"{i}.png")
    _hide(monkeypatch, "ray")
    code = main(["extract", "local", "--dataset", "folder", "--data", str(tmp_path / "photos"),
                 "--config", "rootsift-2k", "--out", str(tmp_path / "sift.h5"), "--engine", "ray"])
    assert code == 2
    _one_line_naming(capsys.readouterr().err, "ray")


def test_a_raw_import_of_any_extra_module_is_one_line(monkeypatch, capsys):
    """The general mechanism: whatever command imports a module of an extra unguarded, main() reports
    the extra; an ImportError of a module that no extra installs stays a traceback (a bug)."""
    import retrieval.cli as cli

    def fake_register(subparsers):
        parser = subparsers.add_parser("needs")
        parser.add_argument("module")
        parser.set_defaults(func=lambda args: __import__(args.module))

    monkeypatch.setattr(cli, "COMMAND_GROUPS", cli.COMMAND_GROUPS + (fake_register,))
    for extra, (modules, _) in extras.EXTRAS.items():
        _hide(monkeypatch, modules[0])
        assert main(["needs", modules[0]]) == 2
        _one_line_naming(capsys.readouterr().err, extra)
    _hide(monkeypatch, "not_an_extra_module")
    with pytest.raises(ImportError):
        main(["needs", "not_an_extra_module"])


def test_require_reraises_a_broken_dependency_of_an_installed_module(monkeypatch, tmp_path):
    # the extra's module is there but one of ITS imports fails: the real error, not "install the extra"
    (tmp_path / "kornia").mkdir()
    (tmp_path / "kornia" / "__init__.py").write_text("import not_a_real_module_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "kornia", raising=False)
    extras.require("learned", "kornia")          # installed: require checks presence, imports nothing
    with pytest.raises(ImportError) as info:
        import kornia  # noqa: F401
    assert not isinstance(info.value, extras.MissingExtra)
    assert info.value.name == "not_a_real_module_xyz"
    assert extras.missing_extra_message(info.value) is None    # a real bug keeps its traceback


def test_every_extra_of_setup_cfg_is_known_and_in_the_readme():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    declared = [k for k in cfg["options.extras_require"]]
    readme = (ROOT / "README.md").read_text()
    for extra in declared:
        assert extra in extras.EXTRAS, f"setup.cfg extra {extra!r} missing from retrieval.core.extras.EXTRAS"
        assert f"`{extra}`" in readme, f"README does not name the extra {extra!r}"
