"""Fault injection for the ranking side of the pipeline: index options, threads sharing an index,
disk full and kills during ``index build`` / ``index search``, damaged and pickle-laden files,
decompression bombs, path traversal in dataset ids, bad ground truth and bad command lines.

Each test asserts the promise of the README section "What happens when things go wrong": a clear
error naming the file (never a crash or a traceback), the finished work intact, the same results as
a clean run. Crashes that would kill the test process (faiss aborting, disk full, signals) run in a
child process.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.cli import main
from retrieval.features.store import save_global
from retrieval.index import Index, IndexFileError, Ranking

faiss = pytest.importorskip("faiss")

REPO = Path(__file__).resolve().parents[1]


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _child(code: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python with this checkout first on the path."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env, **kwargs)


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------------------------ index options

BAD_OPTIONS = [
    ("faiss-hnsw", {"hnsw_m": 0}, "hnsw_m=0"),       # faiss: SIGABRT
    ("faiss-hnsw", {"hnsw_m": 1}, "hnsw_m=1"),       # faiss: SIGSEGV
    ("faiss-hnsw", {"hnsw_m": -1}, "hnsw_m=-1"),     # faiss: hangs
    ("faiss-hnsw", {"ef_search": 0}, "ef_search=0"),
    ("faiss-hnsw", {"ef_construction": -5}, "ef_construction=-5"),
    ("faiss-ivfpq", {"nbits": 0, "nlist": 2, "m": 2}, "nbits=0"),  # faiss: SIGSEGV at search
    ("faiss-ivfpq", {"m": 0, "nlist": 2}, "m=0"),                # ZeroDivisionError
    ("faiss-ivfpq", {"nbits": 40, "nlist": 2, "m": 2}, "nbits=40"),
    ("faiss-ivf", {"nlist": 0}, "nlist=0"),
    ("faiss-ivf", {"nprobe": -3}, "nprobe=-3"),
    ("faiss-ivf", {"nprobe": 2.5}, "whole number"),
    ("faiss-ivf", {"seed": -1}, "seed=-1"),
    ("exact", {"memory_mb": -1}, "memory_mb=-1"),    # used to be written into the file
    ("exact", {"memory_mb": float("nan")}, "memory_mb=nan"),
    ("faiss-hnsw", {"hnsw_m": "many"}, "whole number"),
]


def test_bad_index_options_are_clear_errors_never_crashes():
    """Every bad option is a ValueError naming it, raised before faiss sees it. Run in a child: on
    the old code faiss aborted, crashed or hung the whole process."""
    proc = _child(f"""
        import json, numpy as np
        from retrieval.index import Index
        rng = np.random.default_rng(0)
        db = rng.standard_normal((300, 8)).astype(np.float32)
        out = []
        for backend, options, _ in json.loads({json.dumps(BAD_OPTIONS)!r}):
            try:
                Index(db, backend=backend, **options).search(db[:3], k=5)
                out.append("accepted")
            except ValueError as exc:
                out.append(str(exc))
        print(json.dumps(out))
    """, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    messages = json.loads(proc.stdout.strip().splitlines()[-1])
    for (backend, options, expected), message in zip(BAD_OPTIONS, messages):
        assert expected in message, (backend, options, message)


def test_bad_search_option_per_call_and_valid_options_still_work(rng):
    db = unit(rng, 400, 8)
    index = Index(db, backend="faiss-ivf", nlist=4, nprobe=np.int64(2))  # numpy ints are accepted
    with pytest.raises(ValueError, match="nprobe=0"):
        index.search(db[:2], k=3, nprobe=0)
    with pytest.raises(ValueError, match="not a search option"):
        index.search(db[:2], k=3, nlist=2)
    exact = Index(db)
    with pytest.raises(ValueError, match="memory_mb=-1"):
        exact.search(db[:2], k=3, memory_mb=-1)
    hnsw = Index(db, backend="faiss-hnsw", M=8, efSearch=16)  # faiss-style aliases
    assert hnsw.options == {"hnsw_m": 8, "ef_construction": 80, "ef_search": 16}


def test_cli_refuses_bad_option_and_writes_no_index(tmp_path, capsys, rng):
    save_global(tmp_path / "db.h5", [f"d{i}" for i in range(50)], unit(rng, 50, 8), config={"name": "toy"})
    code, _, err = _cli(capsys, "index", "build", tmp_path / "db.h5", "--out", tmp_path / "i.npz",
                        "--option", "memory_mb=-1")
    assert code == 2 and "memory_mb=-1" in err and "Traceback" not in err
    assert not (tmp_path / "i.npz").exists()


def test_index_file_with_bad_options_is_refused_on_load(tmp_path, rng):
    """An index written by the old code with memory_mb=-1 is refused when loaded, naming the file."""
    path = Index(unit(rng, 20, 4)).save(tmp_path / "i.npz")
    with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    header = json.loads(str(arrays.pop("header")))
    header["backend_options"] = {"memory_mb": -1}
    header.pop("sha256")
    from retrieval.fileio import digest, save_npz
    header["sha256"] = digest(arrays, header)
    save_npz(tmp_path / "old.npz", arrays, header)
    with pytest.raises(IndexFileError, match=r"old\.npz: invalid backend options .*memory_mb=-1"):
        Index.load(tmp_path / "old.npz")


# ------------------------------------------------------------------------- threads share an index

@pytest.mark.parametrize("backend, option, values", [
    ("faiss-hnsw", "ef_search", (4, 200)),
    ("faiss-ivf", "nprobe", (1, 16)),
    ("faiss-ivfpq", "nprobe", (1, 16)),
    ("exact", "memory_mb", (0.01, 64.0)),
])
def test_threads_with_different_per_call_options_get_the_serial_results(rng, backend, option, values):
    """4 threads, alternating option values, 40 calls: each result equals the serial one. On the old
    code nprobe / efSearch were set on the shared faiss object (HNSW returned wrong results, IVF raised
    'Invalid key')."""
    db, q = unit(rng, 3000, 16), unit(rng, 64, 16)
    build = {"faiss-hnsw": {"hnsw_m": 8, "ef_construction": 40}, "faiss-ivf": {"nlist": 32},
             "faiss-ivfpq": {"nlist": 32, "m": 4, "nbits": 6}, "exact": {}}[backend]
    index = Index(db[:2000], backend=backend, **build)
    if backend == "exact":
        index.add(db[2000:], ids=range(2000, 3000))  # pending additions consolidated once, under a lock
    else:
        index.add(db[2000:])
    serial = {v: index.search(q, k=20, **{option: v}) for v in values}
    assert not np.array_equal(serial[values[0]].indices, serial[values[1]].indices) or backend == "exact"
    failures, errors = [], []
    barrier = threading.Barrier(4)

    def worker(t):
        barrier.wait()
        for call in range(10):
            v = values[(t + call) % 2]
            try:
                got = index.search(q, k=20, **{option: v})
            except Exception as exc:  # noqa: BLE001 - any exception is a failure of the promise
                errors.append(repr(exc))
                continue
            if not (np.array_equal(got.indices, serial[v].indices)
                    and np.array_equal(got.scores, serial[v].scores)):
                failures.append((t, call, v))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not failures, (errors[:3], failures[:5])
