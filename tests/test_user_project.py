"""A user's project with its own ``retrieval.features.py`` and ``retrieval.rerank.py`` imports hybrid-retrieval fine.

The package is built from this checkout into a folder (``pip install --no-deps --target``, as a user's
``pip install`` lays it out), and a script in the user's project (its folder first on ``sys.path``,
as Python puts it) imports both its own modules and the toolkit's. The same check run against the
old layout, which installed ``features`` and ``rerank`` as top-level packages, fails, so the test
can tell the two apart."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

USER_SCRIPT = textwrap.dedent("""
    import features, rerank                      # the user's own modules
    assert features.MINE and rerank.MINE, "the user's modules were shadowed"
    import {pkg}.efficientnet                    # the toolkit's
    from {rerank_pkg} import SpatialVerifier
    from retrieval.indexing.index import Index
    print("ok", features.__file__)
""")


def _user_project(tmp: Path) -> Path:
    project = tmp / "project"
    project.mkdir()
    (project / "features.py").write_text("MINE = True\n")
    (project / "rerank.py").write_text("MINE = True\n")
    return project


def _run_user_script(project: Path, site: Path, pkg: str, rerank_pkg: str) -> subprocess.CompletedProcess:
    script = project / "main.py"
    script.write_text(USER_SCRIPT.format(pkg=pkg, rerank_pkg=rerank_pkg))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)  # the installed package; the script's folder comes first anyway
    return subprocess.run([sys.executable, str(script)], cwd=project, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    build = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                            "--target", str(site), str(REPO)], capture_output=True, text=True, timeout=300)
    if build.returncode != 0:
        pytest.skip(f"cannot build the package here: {build.stderr.strip()[-300:]}")
    return site


def test_user_project_with_own_features_and_rerank(installed, tmp_path):
    assert not (installed / "features").exists() and not (installed / "rerank").exists()
    assert (installed / "retrieval" / "features" / "efficientnet.py").is_file()
    assert (installed / "retrieval" / "experiments" / "global-descriptor.toml").is_file()  # package data
    result = _run_user_script(_user_project(tmp_path), installed, "retrieval.features", "retrieval.rerank")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok") and "project" in result.stdout


def test_the_old_top_level_layout_fails_the_same_check(tmp_path):
    # what the package used to install: features/ and rerank/ as top-level packages next to retrieval/
    site = tmp_path / "old-site"
    site.mkdir()
    for name in ("features", "rerank", "retrieval"):
        (site / name).symlink_to(REPO / name, target_is_directory=True)
    result = _run_user_script(_user_project(tmp_path), site, "features", "rerank")
    assert result.returncode != 0
    assert "is not a package" in result.stderr
