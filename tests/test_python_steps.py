"""The README's Python chain runs as written: every step from its config's defaults, the dataset as a
``DatasetConfig``, on a small class-per-folder tree of COIL-100 objects (the block is read from the
README, so the documentation cannot drift from the code)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_block() -> str:
    text = README.read_text()
    match = re.search(r"<!-- python-steps -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README lost its Python steps block"
    return match.group(1)


def test_readme_python_chain_runs(coil100_dir, tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    for obj in (1, 2, 3, 4):
        (photos / f"obj{obj}").mkdir(parents=True)
        for azimuth in range(0, 40, 5):
            name = f"obj{obj}__{azimuth}.png"
            (photos / f"obj{obj}" / name).symlink_to(coil100_dir / "images" / name)
    code = _python_block().replace('"~/photos"', repr(str(photos)))
    code = code.replace("rootsift-2k", "rootsift-small")        # 128 px images: the small-image SIFT
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    metrics = json.loads(Path(scope["metrics"]).read_text())
    assert metrics["protocol"] == "general" and metrics["num_queries"] == 8
    assert metrics["mean_ap"] > 0.5            # views of one object find each other
    reranked = json.loads(Path(scope["reranked"]).read_text())
    assert len(reranked["ids"]) == 8 and all(len(row) == 32 for row in reranked["ids"])
