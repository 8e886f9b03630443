"""What the feature stores' fault protection costs: CRC-32 checksums (computed on write, verified on
read) and the space reservation that keeps an HDF5 file valid on a full disk.

Measured in one run, in ``--rounds`` interleaved rounds (the machine may be shared: ratios taken
seconds apart are what to read, absolute figures drift):

* local store ``put`` of ``--entries`` SIFT-sized entries (2000 x 128 float16 + keypoints), with
  everything on, without the reservation, and without both (the pre-checksum cost);
* local store ``get`` of every entry with and without checksum verification;
* global file: ``GlobalFeatureWriter.append`` of ``--rows`` x 1280 float32 in chunks of 256 rows, with
  and without the reservation, and ``load_global`` with and without verification.

    .venv/bin/python benchmarks/store_integrity.py            # 300 entries, 20000 rows, 3 rounds
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

import retrieval.features.store as store_module
from retrieval.features.local import LocalFeatures
from retrieval.features.store import GlobalFeatureWriter, LocalFeatureStore, load_global


@contextmanager
def patched(**replacements):
    """Temporarily replace names in :mod:`features.store` (to switch a protection off)."""
    old = {name: getattr(store_module, name) for name in replacements}
    for name, value in replacements.items():
        setattr(store_module, name, value)
    try:
        yield
    finally:
        for name, value in old.items():
            setattr(store_module, name, value)


def no_reserve(*_args, **_kwargs):
    return None


def no_crc(*_args):
    return 0


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def local_put(folder: Path, entries, tag: str) -> float:
    path = folder / f"local-{tag}.h5"
    path.unlink(missing_ok=True)

    def run():
        with LocalFeatureStore(path, "a", config={"bench": 1}) as s:
            for image_id, feats in entries:
                s.put(image_id, feats)

    return timed(run)


def local_get(path: Path, ids, verify: bool) -> float:
    def run():
        with LocalFeatureStore(path, verify=verify) as s:
            for image_id in ids:
                s.get(image_id)

    return timed(run)


def global_append(folder: Path, ids, vectors, tag: str) -> float:
    path = folder / f"global-{tag}.h5"
    path.unlink(missing_ok=True)

    def run():
        with GlobalFeatureWriter(path, vectors.shape[1], {"bench": 1}) as w:
            for lo in range(0, len(ids), 256):
                w.append(ids[lo:lo + 256], vectors[lo:lo + 256])

    return timed(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=300)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--folder", type=Path, default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    entries = [(f"img/{k:06d}", LocalFeatures(rng.random((2000, 4), dtype=np.float32) * 500,
                                              rng.random((2000, 128), dtype=np.float32), (768, 1024)))
               for k in range(args.entries)]
    ids = [f"{k:016x}" for k in range(args.rows)]
    vectors = rng.standard_normal((args.rows, 1280)).astype(np.float32)
    times = {k: [] for k in ("put", "put_no_reserve", "put_bare", "get_verify", "get_no_verify",
                             "append", "append_no_reserve", "load_verify", "load_no_verify")}
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        folder = Path(tmp)
        for _ in range(args.rounds):
            times["put"].append(local_put(folder, entries, "full"))
            with patched(reserve=no_reserve):
                times["put_no_reserve"].append(local_put(folder, entries, "noreserve"))
            with patched(reserve=no_reserve, crc=no_crc):
                times["put_bare"].append(local_put(folder, entries, "bare"))
            local_ids = [i for i, _ in entries]
            times["get_verify"].append(local_get(folder / "local-full.h5", local_ids, True))
            times["get_no_verify"].append(local_get(folder / "local-full.h5", local_ids, False))
            times["append"].append(global_append(folder, ids, vectors, "full"))
            with patched(reserve=no_reserve):
                times["append_no_reserve"].append(global_append(folder, ids, vectors, "noreserve"))
            path = folder / "global-full.h5"
            times["load_verify"].append(timed(lambda: load_global(path)))
            times["load_no_verify"].append(timed(lambda: load_global(path, verify=False)))

    def ratio(a: str, b: str) -> float:
        return round(statistics.median(x / y for x, y in zip(times[a], times[b])), 3)

    median = {k: round(statistics.median(v), 4) for k, v in times.items()}
    report = {
        "entries": args.entries, "rows": args.rows, "rounds": args.rounds, "median_seconds": median,
        "put_full_vs_bare": ratio("put", "put_bare"),
        "put_reserve_vs_no_reserve": ratio("put", "put_no_reserve"),
        "get_verify_vs_no_verify": ratio("get_verify", "get_no_verify"),
        "append_reserve_vs_no_reserve": ratio("append", "append_no_reserve"),
        "load_verify_vs_no_verify": ratio("load_verify", "load_no_verify"),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
