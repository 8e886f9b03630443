"""What the feature stores' fault protection costs: CRC-32 checksums (computed on write, verified on
read) and the space reservation that keeps an HDF5 file valid on a full disk.

Measured in one run, in ``--rounds`` interleaved rounds (the machine may be shared: ratios taken
seconds apart are what to read, absolute figures drift):

* local store ``put`` of ``--entries`` SIFT-sized entries (2000 x 128 float16 + keypoints), with
  everything on, without the reservation, and without both (the pre-checksum cost);
* local store ``get`` of every entry with and without checksum verification;
* global file: ``GlobalFeatureWriter.append`` of ``--rows`` x 1280 float32 in chunks of 256 rows, with
  and without the reservation, and ``load_global`` with and without verification.

The report (entries, rows, rounds, median_seconds and the five ratios) is printed as JSON and written
to ``--out``/results.json (with a results.md table of the medians); :func:`main` returns that folder.
No dataset: the entries are random arrays of fixed, SIFT-like shapes.
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Union

import numpy as np

__all__ = ["NAME", "run", "measure", "patched"]

NAME = "store_integrity"


@contextmanager
def patched(**replacements):
    """Temporarily replace names in :mod:`retrieval.features.store` (to switch a protection off)."""
    import retrieval.features.store as store_module

    old = {name: getattr(store_module, name) for name in replacements}
    for name, value in replacements.items():
        setattr(store_module, name, value)
    try:
        yield
    finally:
        for name, value in old.items():
            setattr(store_module, name, value)


def _no_reserve(*_args, **_kwargs):
    return None


def _no_crc(*_args):
    return 0


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _local_put(folder: Path, entries, tag: str) -> float:
    from retrieval.features.store import LocalFeatureStore

    path = folder / f"local-{tag}.h5"
    path.unlink(missing_ok=True)

    def run():
        with LocalFeatureStore(path, "a", config={"bench": 1}) as s:
            for image_id, feats in entries:
                s.put(image_id, feats)

    return _timed(run)


def _local_get(path: Path, ids, verify: bool) -> float:
    from retrieval.features.store import LocalFeatureStore

    def run():
        with LocalFeatureStore(path, verify=verify) as s:
            for image_id in ids:
                s.get(image_id)

    return _timed(run)


def _global_append(folder: Path, ids, vectors, tag: str) -> float:
    from retrieval.features.store import GlobalFeatureWriter

    path = folder / f"global-{tag}.h5"
    path.unlink(missing_ok=True)

    def run():
        with GlobalFeatureWriter(path, vectors.shape[1], {"bench": 1}) as w:
            for lo in range(0, len(ids), 256):
                w.append(ids[lo:lo + 256], vectors[lo:lo + 256])

    return _timed(run)


def measure(entries: int, rows: int, rounds: int, folder: Optional[Path] = None) -> dict:
    """The report (module docstring) of one run."""
    from retrieval.features.local import LocalFeatures
    from retrieval.features.store import load_global

    rng = np.random.default_rng(0)
    local = [(f"img/{k:06d}", LocalFeatures(rng.random((2000, 4), dtype=np.float32) * 500,
                                            rng.random((2000, 128), dtype=np.float32), (768, 1024)))
             for k in range(entries)]
    ids = [f"{k:016x}" for k in range(rows)]
    vectors = rng.standard_normal((rows, 1280)).astype(np.float32)
    times = {k: [] for k in ("put", "put_no_reserve", "put_bare", "get_verify", "get_no_verify",
                             "append", "append_no_reserve", "load_verify", "load_no_verify")}
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        where = Path(tmp)
        local_ids = [i for i, _ in local]
        for _ in range(rounds):
            times["put"].append(_local_put(where, local, "full"))
            with patched(reserve=_no_reserve):
                times["put_no_reserve"].append(_local_put(where, local, "noreserve"))
            with patched(reserve=_no_reserve, crc=_no_crc):
                times["put_bare"].append(_local_put(where, local, "bare"))
            times["get_verify"].append(_local_get(where / "local-full.h5", local_ids, True))
            times["get_no_verify"].append(_local_get(where / "local-full.h5", local_ids, False))
            times["append"].append(_global_append(where, ids, vectors, "full"))
            with patched(reserve=_no_reserve):
                times["append_no_reserve"].append(_global_append(where, ids, vectors, "noreserve"))
            path = where / "global-full.h5"
            times["load_verify"].append(_timed(lambda: load_global(path)))
            times["load_no_verify"].append(_timed(lambda: load_global(path, verify=False)))

    def ratio(a: str, b: str) -> float:
        return round(statistics.median(x / y for x, y in zip(times[a], times[b])), 3)

    return {
        "entries": entries, "rows": rows, "rounds": rounds,
        "median_seconds": {k: round(statistics.median(v), 4) for k, v in times.items()},
        "put_full_vs_bare": ratio("put", "put_bare"),
        "put_reserve_vs_no_reserve": ratio("put", "put_no_reserve"),
        "get_verify_vs_no_verify": ratio("get_verify", "get_no_verify"),
        "append_reserve_vs_no_reserve": ratio("append", "append_no_reserve"),
        "load_verify_vs_no_verify": ratio("load_verify", "load_no_verify"),
    }


def run(entries: int = 300, rows: int = 20000, rounds: int = 3, folder: Optional[Path] = None,
        out: Union[str, Path] = f"results/{NAME}") -> Path:
    """Measure (module docstring), print the report and write results.json + results.md into ``out``;
    returns ``out``."""
    from retrieval.core.fileio import atomic_write_text
    from retrieval.core.report import markdown_table

    for name, value in (("entries", entries), ("rows", rows), ("rounds", rounds)):
        if value < 1:
            raise ValueError(f"--{name} must be at least 1")
    report = measure(entries, rows, rounds, folder)
    text = json.dumps(report, indent=1)
    print(text)
    out = Path(out)
    atomic_write_text(out / "results.json", text + "\n")
    table = markdown_table([{"measure": k, "median_seconds": v} for k, v in report["median_seconds"].items()])
    atomic_write_text(out / "results.md", f"## Feature store integrity: {entries} local entries, "
                                          f"{rows} global rows, {rounds} rounds\n\n{table}\n")
    return out
