"""Fault injection on the writers and on mixing their outputs (issue 22): a feature store deleted,
moved or replaced while an extraction writes it, two ``retrieval extract`` runs into one ``--out``
at once, and query features made otherwise than the index they are searched against.

The promise: the run that would lose its work (or rank incomparable vectors) says so in one line
naming the file; the files of other runs are never touched.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from retrieval.cli import main
from retrieval.features.extract import extract_local_features
from retrieval.features.sift import SiftExtractor
from retrieval.features.store import FeatureFileError, LocalFeatureStore, save_global
from test_commands import make_tree

REPO = Path(__file__).resolve().parents[1]
SIFT = {"max_keypoints": 200, "max_side": 160, "upscale": False}


def _cli(capsys, *argv):
    code = main(["--quiet", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------- item 1: the store goes away while it is written

class _Meddler:
    """A SIFT extractor that, on its ``at``-th image, does ``act(store_path)`` (another process
    deleting, moving or replacing the file)."""

    def __init__(self, store: Path, at: int, act):
        self.inner = SiftExtractor("rootsift-1k", **SIFT)
        self.config, self.store_dtype = self.inner.config, getattr(self.inner, "store_dtype", "float16")
        self.store, self.at, self.act, self.calls = store, at, act, 0

    def extract_path(self, path, box=None):
        self.calls += 1
        if self.calls == self.at:
            self.act(self.store)
        return self.inner.extract_path(path, box=box)


def _images(tmp_path):
    tree = make_tree(tmp_path / "tree")
    paths = sorted(tree.rglob("*.jpg"))
    return [p.relative_to(tree).with_suffix("").as_posix() for p in paths], paths


@pytest.mark.parametrize("fault", ["deleted", "moved", "replaced"])
def test_store_deleted_moved_or_replaced_during_extraction_fails_naming_it(tmp_path, fault):
    """Old code: the run wrote on into the unlinked file, returned 'computed 24, failed 0', and no
    file was left (or, replaced, the other file was truncated by the closing writer)."""
    ids, paths = _images(tmp_path)
    store = tmp_path / "sift.h5"
    replacement = b"another program's file\n" * 100
    acts = {"deleted": lambda p: p.unlink(), "moved": lambda p: p.rename(tmp_path / "elsewhere.h5"),
            "replaced": lambda p: (p.unlink(), p.write_bytes(replacement))}
    extractor = _Meddler(store, at=10, act=acts[fault])
    with pytest.raises(FeatureFileError) as caught:
        extract_local_features(ids, paths, extractor, store, n_jobs=1, batch_size=4, progress=False)
    text = str(caught.value)
    assert text.startswith(f"{store}: was {'replaced by another file' if fault == 'replaced' else 'deleted or moved'}"
                           " while this run wrote it"), text
    assert "Rerun to recompute them" in text and "\n" not in text
    assert extractor.calls < len(ids)  # stopped at the next flush, not at the end
    if fault == "replaced":  # the other program's file is untouched (not truncated by the writer's close)
        assert store.read_bytes() == replacement
    else:
        assert not store.exists()
        extract_local_features(ids, paths, SiftExtractor("rootsift-1k", **SIFT), store, n_jobs=1, progress=False)
        with LocalFeatureStore(store) as done:
            assert len(done) == len(ids)


# ------------------------------------------------------------ item 19: two extractions into one --out

_HOLDER = """
import sys, time
from pathlib import Path
from retrieval.features.shards import ShardedStore
real_merge = ShardedStore.merge
def slow_merge(self, out, ids=None):
    Path(sys.argv[1]).write_text("merging")
    time.sleep(60)
    return real_merge(self, out, ids)
ShardedStore.merge = slow_merge
from retrieval.cli import main
sys.exit(main(["--quiet"] + sys.argv[2:]))
"""


def test_second_extraction_into_the_same_output_is_refused_up_front(tmp_path, capsys):
    """Old code: the second run went ahead; whichever finished first deleted the other's temporary
    shard files ('No such file or directory' on a .tmp name)."""
    tree = make_tree(tmp_path / "tree")
    argv = ["extract", "local", "--dataset", "folder", "--data", str(tree), "--config", "rootsift-1k",
            *[f"--set={k}={str(v).lower()}" for k, v in SIFT.items()], "--shard-size", "6", "--n-jobs", "1",
            "--out", str(tmp_path / "sift.h5")]
    marker = tmp_path / "first-is-merging"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    first = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_HOLDER), str(marker), *argv], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first extraction never reached its merge"
            time.sleep(0.2)
        shards = sorted(p.name for p in (tmp_path / "sift.h5.shards").iterdir())
        code, _, err = _cli(capsys, *argv)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, err
        assert lines[0].startswith(f"retrieval: error: {tmp_path / 'sift.h5'}: in use by another process")
        assert "wait for that run to finish or use another output" in lines[0]
        assert sorted(p.name for p in (tmp_path / "sift.h5.shards").iterdir()) == shards  # nothing touched
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    # the lock went with the killed process: a rerun resumes from its shards and finishes
    code, out, err = _cli(capsys, *argv)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["shards_computed"] == 0 and summary["shards_skipped"] == 4  # the killed run's shards
    with LocalFeatureStore(tmp_path / "sift.h5") as done:
        assert len(done) == 24


# -------------------------------------------------- item 20: queries made otherwise than the index

def _global_file(path, config, rng, n, prefix):
    x = rng.standard_normal((n, 16)).astype(np.float32)
    save_global(path, [f"{prefix}{i}" for i in range(n)], x / np.linalg.norm(x, axis=1, keepdims=True), config=config)
    return path


def test_queries_with_another_pooling_are_refused_unless_allow_mixed(tmp_path, capsys):
    """Old code: a warning, exit 0 and a ranking of incomparable vectors (GeM database, average-pooled
    queries of the same dimension)."""
    from retrieval.features.efficientnet import resolve_config

    rng = np.random.default_rng(0)
    db = _global_file(tmp_path / "db.h5", resolve_config("lite0-gem-224"), rng, 30, "d")
    avg = _global_file(tmp_path / "q-avg.h5", resolve_config("lite0-avg-224"), rng, 4, "q")
    bigger = _global_file(tmp_path / "q-320.h5", resolve_config("lite0-gem-224", size=320), rng, 4, "q")
    assert _cli(capsys, "index", "build", db, "--out", tmp_path / "i.npz")[0] == 0
    code, _, err = _cli(capsys, "search", tmp_path / "i.npz", avg, "--out", tmp_path / "r.json")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and str(avg) in lines[0], err
    assert "made with another gem_p, pooling than the index" in lines[0] and "pooling='avg'" in lines[0]
    assert "--allow-mixed" in lines[0] and not (tmp_path / "r.json").exists()
    code, _, err = _cli(capsys, "search", tmp_path / "i.npz", avg, "--out", tmp_path / "r.json", "--allow-mixed")
    assert code == 0 and "warning" in err and (tmp_path / "r.json").is_file()
    # another query image size of the same extractor is a legitimate choice: a warning only
    code, _, err = _cli(capsys, "search", tmp_path / "i.npz", bigger, "--out", tmp_path / "r320.json")
    assert code == 0 and "warning" in err and (tmp_path / "r320.json").is_file()
