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
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.cli import main
from retrieval.features.store import save_global
from retrieval.indexing.index import Index, IndexFileError, Ranking

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
        from retrieval.indexing.index import Index
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
    from retrieval.core.fileio import digest, save_npz
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


# ------------------------------------------------------------------------------- datasets: helpers

def _png(path: Path, size=(8, 6), value=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)
    return path


def _write(path: Path, text, binary=False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if binary else path.write_text)(text)
    return path


def _bomb_png(path: Path, w=30000, h=30000) -> Path:
    """A 200-byte PNG whose header claims w x h pixels (the 30000 x 30000 bomb of issue 13: Pillow
    refuses it at open, before a byte of it is decoded)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = zlib.compress(b"\x00" * (w + 1) * 4, 9)
    return _write(path, b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                  + chunk(b"IDAT", rows) + chunk(b"IEND", b""), binary=True)


def _oxford(root: Path, query_line="oxc1_a_000001 1 1 5 5", bomb=False) -> Path:
    for i, stem in enumerate(["a_000001", "a_000002", "b_000003"]):
        _png(root / "images" / f"{stem}.png", size=(8, 6), value=40 * i)
    if bomb:
        (root / "images" / "a_000001.png").unlink()
        _bomb_png(root / "images" / "a_000001.png")
    _write(root / "gt/a_1_query.txt", query_line + "\n")
    _write(root / "gt/a_1_good.txt", "a_000001\na_000002\n")
    _write(root / "gt/a_1_ok.txt", "")
    _write(root / "gt/a_1_junk.txt", "")
    return root


def _gldv2(root: Path, solution="id,images,Usage\nfff100,aaa001 abc002,Public\nfee101,None,Ignored\n",
           index_ids=("aaa001", "abc002", "bcd003")) -> Path:
    from retrieval.datasets import gldv2_image_path
    for split, names in (("index", index_ids), ("test", ("fff100", "fee101"))):
        for name in names:
            if ".." not in name and "/" not in name:
                _png(gldv2_image_path(root / split, name))
    _write(root / "index.csv", "id\n" + "\n".join(index_ids) + "\n")
    _write(root / "test.csv", "id\nfff100\nfee101\n")
    _write(root / "retrieval_solution_v2.1.csv", solution)
    return root


# ------------------------------------------------------------------------- decompression bombs

def test_decompression_bomb_is_an_image_load_error_naming_the_file(tmp_path):
    from retrieval.core.imageio import ImageLoadError, image_size, load_image
    bomb = _bomb_png(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 1000
    for read in (load_image, image_size):
        with pytest.raises(ImageLoadError, match=r"bomb\.png: image too large to decode"):
            read(bomb)
    # the cap is configurable, and checked from the header before decoding
    small = _png(tmp_path / "small.png", size=(10, 10))
    with pytest.raises(ImageLoadError, match=r"small\.png: image of 10 x 10 = 100 pixels is larger than the "
                                             r"pixel cap of 50"):
        load_image(small, max_pixels=50)
    assert load_image(small).shape == (10, 10, 3)


def test_cli_dataset_check_and_oxford_info_cope_with_a_bomb(tmp_path, capsys):
    folder = tmp_path / "imgs"
    _png(folder / "fine.png")
    _bomb_png(folder / "bomb.png")
    code, out, err = _cli(capsys, "--quiet", "dataset", "check", folder)
    assert code == 1, err
    report = json.loads(out)
    assert report["unreadable"] == 1 and report["bad_files"][0]["path"].endswith("bomb.png")
    _oxford(tmp_path / "ox", bomb=True)
    code, out, err = _cli(capsys, "dataset", "info", "--dataset", "oxford", "--data", tmp_path / "ox")
    assert code == 2 and "a_000001.png" in err and "too large" in err and "Traceback" not in err
    code, out, err = _cli(capsys, "dataset", "info", "--dataset", "oxford", "--data", tmp_path / "ox",
                          "--on-error", "collect")
    assert code == 2 and "no usable queries" in err


# ------------------------------------------------------------------------------ Oxford boxes

def test_oxford_box_outside_the_image_is_refused_and_overlapping_box_clipped(tmp_path):
    from retrieval.datasets import DatasetError, crop_query, read_oxford
    _oxford(tmp_path / "out", query_line="oxc1_a_000001 20 20 30 30")
    with pytest.raises(DatasetError, match=r"a_1_query\.txt: query box .* lies outside the image .*a_000001\.png"):
        read_oxford(tmp_path / "out", scale=1.0)
    _oxford(tmp_path / "clip", query_line="oxc1_a_000001 4 3 30 30")
    ds = read_oxford(tmp_path / "clip", scale=1.0)
    assert ds.query_boxes == [(4.0, 3.0, 8.0, 6.0)]
    image = np.zeros((6, 8, 3), np.uint8)
    assert crop_query(image, ds.query_boxes[0]).shape == (3, 4, 3)
    with pytest.raises(ValueError, match="outside the image"):
        crop_query(image, (20, 20, 30, 30))


# ------------------------------------------------------------------------------ path traversal

def test_path_traversal_in_gldv2_ids_is_refused(tmp_path):
    from retrieval.datasets import DatasetError, gldv2_image_path, read_gldv2
    secret = _png(tmp_path / "secret" / "x.jpg")  # noqa: F841 - outside the dataset folder
    root = _gldv2(tmp_path / "g", index_ids=("aaa001", "abc002", "../../../../secret/x"))
    with pytest.raises(DatasetError, match=r"index\.csv: row 3: id '\.\./\.\./\.\./\.\./secret/x' is not a plain name"):
        read_gldv2(root)
    for bad in ("../abc", "ab/c", "/etc/passwd", "..", ".hidden", "a\x00b"):
        with pytest.raises(DatasetError, match="not a plain name"):
            gldv2_image_path(root / "index", bad)
    assert gldv2_image_path(root / "index", "0123abcdef").name == "0123abcdef.jpg"


def test_path_traversal_in_folder_and_view_catalog_file_names_is_refused(tmp_path):
    from retrieval.datasets import DatasetError, read_labelled_folder
    from retrieval.datasets.viewsets import read_view_catalog
    _png(tmp_path / "outside.png")
    root = tmp_path / "coil"
    _png(root / "images" / "obj1__0.png")
    _png(root / "images" / "sub" / "obj1__5.png")
    _write(root / "labels.csv", "filename,object_id,azimuth_deg\nobj1__0.png,1,0\nsub/obj1__5.png,1,5\n")
    assert read_labelled_folder(root).db_ids == ["obj1__0", "sub/obj1__5"]  # sub-folders stay fine
    assert len(read_view_catalog(root)) == 2
    for name in ("../../outside.png", "/etc/passwd", "sub/../../../outside.png"):
        _write(root / "labels.csv", f"filename,object_id,azimuth_deg\nobj1__0.png,1,0\n{name},1,5\n")
        with pytest.raises(DatasetError, match=r"labels\.csv:3: .* points outside"):
            read_labelled_folder(root)
        with pytest.raises(DatasetError, match=r"labels\.csv:3: .* points outside"):
            read_view_catalog(root)


def test_path_traversal_in_oxford_and_multiview_ids_never_leaves_the_folder(tmp_path):
    """Oxford and the multi-view tree take ids from the files found under images/ (never from text
    that becomes a path): a query naming '../x' is an unknown image, named with its file."""
    from retrieval.datasets import DatasetError, read_multiview_tree, read_oxford
    _png(tmp_path / "x.png")
    _oxford(tmp_path / "ox", query_line="oxc1_../../x 1 1 5 5")
    with pytest.raises(DatasetError, match=r"a_1_query\.txt: query image '\.\./\.\./x' not in"):
        read_oxford(tmp_path / "ox")
    root = tmp_path / "mv"
    _png(root / "DS/retrieval/chair/chair_1/chair_1.0.png")
    _png(root / "DS/retrieval/chair/chair_1/chair_1.1.png")
    ds = read_multiview_tree(root)
    folder = (root / "DS/retrieval").resolve()
    assert all(folder in Path(p).resolve().parents for p in ds.db_paths)


# ------------------------------------------------------------------------- GLDv2 solution rows

@pytest.mark.parametrize("row", ["fff100,None,Public", "fff100,,Private", "fff100, ,Public"])
def test_scored_solution_row_without_images_is_refused(tmp_path, row):
    """Kaggle / DELF score a Public or Private query with no relevant image 0; leaving it out of the
    mean (the old behaviour) turned a mAP of 0.5 into 0.75. Only Ignored rows may be empty."""
    from retrieval.datasets import DatasetError, read_gldv2
    root = _gldv2(tmp_path, solution=f"id,images,Usage\n{row}\nfee101,aaa001,Public\n")
    with pytest.raises(DatasetError, match=r"retrieval_solution_v2\.1\.csv:2: .* query 'fff100' has no "
                                           r"relevant images"):
        read_gldv2(root)
    pytest.importorskip("pyarrow")
    from retrieval.datasets.gldv2_tables import read_gldv2_tables
    with pytest.raises(DatasetError, match=r"retrieval_solution_v2\.1\.csv:2: .* query 'fff100' has no "
                                           r"relevant images"):
        read_gldv2_tables(root)
    root = _gldv2(tmp_path / "ok", solution="id,images,Usage\nfff100,None,Ignored\nfee101,aaa001,Public\n")
    assert read_gldv2(root).solution() == {"fee101": {"aaa001"}}


# -------------------------------------------------------------------------------- text encodings

def test_non_utf8_csv_and_ground_truth_files_are_named(tmp_path):
    from retrieval.datasets import DatasetError, read_gldv2, read_labelled_folder, read_oxford
    root = _gldv2(tmp_path / "g")
    _write(root / "test.csv", b"id\nfff100\nfee101\n\xff\xfe\n", binary=True)
    with pytest.raises(DatasetError, match=r"test\.csv:4: CSV file is not UTF-8 text \(byte 0xff"):
        read_gldv2(root)
    coil = tmp_path / "c"
    _png(coil / "images" / "a.png")
    _write(coil / "labels.csv", "filename,object_id\na.png,caf\xe9\n".encode("latin-1"), binary=True)
    with pytest.raises(DatasetError, match=r"labels\.csv:2: labels file is not UTF-8"):
        read_labelled_folder(coil)
    ox = _oxford(tmp_path / "o")
    _write(ox / "gt/a_1_good.txt", b"a_000001\n\xe9t\xe9\n", binary=True)
    with pytest.raises(DatasetError, match=r"a_1_good\.txt:2: ground-truth list is not UTF-8"):
        read_oxford(ox)
    # a UTF-8 byte-order mark (Excel) is fine
    _write(coil / "labels.csv", "\ufefffilename,object_id\na.png,1\n".encode("utf-8"), binary=True)
    assert read_labelled_folder(coil).db_labels == ["1"]


# --------------------------------------------------------------- disk full, SIGKILL, SIGINT (CLI)

_CLI_CHILD = """
import os, resource, signal, sys, time
import numpy as np
from retrieval.cli import main
fault, argv = sys.argv[1], sys.argv[2:]
if fault.startswith("fsize="):
    # disk full as RLIMIT_FSIZE: a write beyond the limit fails with EFBIG (errno 27)
    limit = int(fault.split("=")[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
elif fault in ("SIGINT", "SIGKILL"):
    # the signal arrives at a set point: half-way through writing the output file
    real_savez = np.savez
    def savez(fh, **arrays):
        fh.write(b"half a file" * 1000)
        fh.flush()
        os.kill(os.getpid(), getattr(signal, fault))
        time.sleep(5)
        real_savez(fh, **arrays)
    np.savez = savez
    import retrieval.core.fileio as fileio
    real_text = fileio.atomic_write_text
    def atomic_write_text(path, text, encoding="utf-8"):
        def write(fh):
            fh.write(text[: len(text) // 2].encode())
            fh.flush()
            os.kill(os.getpid(), getattr(signal, fault))
            time.sleep(5)
            fh.write(text[len(text) // 2:].encode())
        return fileio.atomic_write(path, write)
    import retrieval.indexing.ranking
    retrieval.indexing.ranking.atomic_write_text = atomic_write_text
sys.exit(main(["--quiet"] + argv))
"""


def _cli_child(fault, *argv, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", _CLI_CHILD, fault, *map(str, argv)], capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.fixture
def built(tmp_path, rng):
    """db.h5 / q.h5 feature files, an index built from them and a ranking: the 'finished work' a
    failing later run must not damage."""
    ids = [f"d{i}" for i in range(3000)]
    save_global(tmp_path / "db.h5", ids, unit(rng, 3000, 32), config={"name": "toy"})
    save_global(tmp_path / "q.h5", [f"q{i}" for i in range(200)], unit(rng, 200, 32), config={"name": "toy"})
    assert main(["--quiet", "index", "build", str(tmp_path / "db.h5"), "--out", str(tmp_path / "i.npz")]) == 0
    assert main(["--quiet", "index", "search", str(tmp_path / "i.npz"), str(tmp_path / "q.h5"), "--k", "50",
                 "--out", str(tmp_path / "r.json")]) == 0
    return tmp_path, (tmp_path / "i.npz").read_bytes(), (tmp_path / "r.json").read_bytes()


def _no_temporaries(folder: Path):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("command", ["build", "search"])
def test_disk_full_during_index_build_or_search_is_one_line_and_keeps_the_old_file(built, command):
    tmp, index_bytes, ranking_bytes = built
    if command == "build":
        argv = ["index", "build", tmp / "db.h5", "--out", tmp / "i.npz", "--backend", "exact"]
        out, old = tmp / "i.npz", index_bytes
    else:
        argv = ["index", "search", tmp / "i.npz", tmp / "q.h5", "--k", "50", "--out", tmp / "r.json"]
        out, old = tmp / "r.json", ranking_bytes
    proc = _cli_child(f"fsize={len(old) // 3}", *argv)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("retrieval: error: cannot write the"), proc.stderr
    assert str(out) in lines[0] and "disk full or file size limit" in lines[0]
    assert out.read_bytes() == old and not _no_temporaries(tmp)


@pytest.mark.parametrize("command", ["build", "search"])
def test_sigint_during_index_build_or_search_exits_130_and_keeps_the_old_file(built, command):
    tmp, index_bytes, ranking_bytes = built
    if command == "build":
        argv = ["index", "build", tmp / "db.h5", "--out", tmp / "i.npz"]
        out, old = tmp / "i.npz", index_bytes
    else:
        argv = ["index", "search", tmp / "i.npz", tmp / "q.h5", "--k", "50", "--out", tmp / "r.json"]
        out, old = tmp / "r.json", ranking_bytes
    proc = _cli_child("SIGINT", *argv)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "retrieval: interrupted" in proc.stderr and "Traceback" not in proc.stderr
    assert out.read_bytes() == old and not _no_temporaries(tmp)


def test_sigkill_during_index_build_keeps_the_old_index(built):
    tmp, index_bytes, _ = built
    proc = _cli_child("SIGKILL", "index", "build", tmp / "db.h5", "--out", tmp / "i.npz")
    assert proc.returncode == -signal.SIGKILL
    assert (tmp / "i.npz").read_bytes() == index_bytes
    assert len(Index.load(tmp / "i.npz")) == 3000


# ------------------------------------------------- damaged files and pickle payloads, every file kind

def _kinds(tmp: Path, rng):
    """name -> (path written, load(path), fingerprint(loaded object)) for every file kind of the
    ranking side: index (exact and faiss), codebook, encoder, whitening, ranking, shortlist."""
    from retrieval.features.codebook import Codebook
    from retrieval.features.encoders import VladEncoder, load_encoder
    from retrieval.features.whitening import PCAWhitening
    from retrieval.rerank.shortlist import Shortlist

    db = unit(rng, 300, 8)
    ranking = Index(db, ids=[f"d{i}" for i in range(300)]).search(db[:6], k=10, query_ids=[f"q{i}" for i in range(6)])
    codebook = Codebook(rng.standard_normal((16, 8)).astype(np.float32), {"trained_on": "toy"})
    kinds = {
        "index": (Index(db).save(tmp / "exact.npz"), Index.load,
                  lambda x: (x.ids, x.vectors, x.options)),
        "faiss-index": (Index(db, backend="faiss-hnsw", hnsw_m=8).save(tmp / "hnsw.npz"), Index.load,
                        lambda x: (x.ids, x.vectors, x.options)),
        "codebook": (codebook.save(tmp / "codebook.npz"), Codebook.load, lambda x: (x.centroids, x.config)),
        "encoder": (VladEncoder(codebook=codebook).save(tmp / "vlad.npz"), load_encoder,
                    lambda x: (x.codebook.centroids, x.config)),
        "whitening": (PCAWhitening(dim=4).fit(rng.standard_normal((100, 8))).save(tmp / "white.npz"),
                      PCAWhitening.load, lambda x: (*x.arrays().values(), x.config)),
        "ranking": (ranking.save(tmp / "ranking.json"), Ranking.load,
                    lambda x: (x.ids, x.scores, x.indices, x.query_ids)),
        "shortlist": (Shortlist.from_ranking(ranking, k=5).save(tmp / "short"), Shortlist.load,
                      lambda x: (x.query_ids, x.db_ids, x.global_scores, x.tail_ids, x.config)),
    }
    return kinds


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _load_path(name: str, path: Path) -> Path:
    return path.with_suffix("") if name == "shortlist" else path  # Shortlist.load takes the stem


def _damaged_copies(path: Path, tmp: Path, rng):
    """(label, bytes): truncations and single bit flips (seeded positions over the whole file)."""
    raw = path.read_bytes()
    for cut in (0, 1, len(raw) // 3, len(raw) // 2, len(raw) - 1):
        yield f"truncated to {cut} bytes", raw[:cut]
    for pos in rng.choice(len(raw) * 8, size=min(48, len(raw) * 8), replace=False):
        flipped = bytearray(raw)
        flipped[pos // 8] ^= 1 << (pos % 8)
        yield f"bit {pos} flipped", bytes(flipped)


@pytest.mark.parametrize("kind", ["index", "faiss-index", "codebook", "encoder", "whitening", "ranking",
                                  "shortlist"])
def test_truncated_or_bit_flipped_files_are_refused_or_read_identically(tmp_path, rng, kind):
    """The promise: a damaged file is a FileFormatError naming it, or (a flip in bytes nothing reads,
    such as a zip timestamp) loads exactly the original. Never another exception, never other data."""
    from retrieval.core.fileio import FileFormatError
    path, load, fingerprint = _kinds(tmp_path, rng)[kind]
    files = [path] + ([path.with_suffix(".json")] if kind == "shortlist" else [])
    original = fingerprint(load(_load_path(kind, path)))
    refused = 0
    for target in files:
        good = target.read_bytes()
        for label, data in _damaged_copies(target, tmp_path, rng):
            target.write_bytes(data)
            try:
                loaded = fingerprint(load(_load_path(kind, path)))
            except FileFormatError as exc:
                assert target.name in str(exc) or path.stem in str(exc), (label, str(exc))
                refused += 1
                continue
            except Exception as exc:  # noqa: BLE001 - the promise is a FileFormatError, nothing else
                pytest.fail(f"{kind} {target.name} {label}: {type(exc).__name__}: {exc}")
            finally:
                target.write_bytes(good)
            assert _same(loaded, original), f"{kind} {target.name} {label}: loaded different data"
    assert refused >= 5


class _Payload:
    """Unpickling this creates the marker file: proof that a pickle ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("kind", ["index", "faiss-index", "codebook", "encoder", "whitening", "ranking",
                                  "shortlist"])
def test_pickle_payloads_are_refused_never_executed(tmp_path, rng, kind):
    import pickle

    from retrieval.core.fileio import FileFormatError
    path, load, _ = _kinds(tmp_path, rng)[kind]
    marker = tmp_path / "PWNED"
    payload = np.empty(1, dtype=object)
    payload[0] = _Payload(marker)
    variants = {"pickle file under the name": pickle.dumps(_Payload(marker))}
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        for name in arrays:  # each array in turn replaced by an object array holding the payload
            np.savez(tmp_path / "evil.npz", **dict(arrays, **{name: payload}))
            variants[f"object array as {name!r}"] = (tmp_path / "evil.npz").read_bytes()
        np.save(tmp_path / "evil.npy", payload, allow_pickle=True)
        variants["an .npy holding a pickle"] = (tmp_path / "evil.npy").read_bytes()
    good = path.read_bytes()
    for label, data in variants.items():
        path.write_bytes(data)
        with pytest.raises(FileFormatError):
            load(_load_path(kind, path))
        assert not marker.exists(), f"{kind}: {label} ran its pickle"
    path.write_bytes(good)
    if kind == "shortlist":  # the JSON half cannot hold a pickle; the npz half was tested above
        assert Shortlist_load_ok(path)


def Shortlist_load_ok(path):
    from retrieval.rerank.shortlist import Shortlist
    return Shortlist.load(path.with_suffix("")).num_queries == 6


# ---------------------------------------------------------------- bad command lines: one clear line

@pytest.fixture
def bad_inputs(tmp_path, rng):
    save_global(tmp_path / "db.h5", [f"d{i}" for i in range(40)], unit(rng, 40, 8), config={"name": "toy"})
    Index(unit(rng, 40, 8)).save(tmp_path / "idx.npz")
    Index(unit(rng, 40, 8)).search(unit(rng, 2, 8), k=3, query_ids=["a", "b"]).save(tmp_path / "r.json")
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("hello")
    (tmp_path / "partial.json").write_text('{"format": "hybrid-retrieval/ranking", "version": 1}')
    coil = tmp_path / "coil"
    for i in range(4):
        _png(coil / "images" / f"obj1__{i}.png")
    _write(coil / "labels.csv", "filename,object_id\n" + "".join(f"obj1__{i}.png,1\n" for i in range(4)))
    _oxford(tmp_path / "ox")
    return tmp_path


# (command line, what the one error line must say); {t} is the fixture folder. Each of these
# printed a traceback, refused without naming the file, or gave the wrong reason before.
VAGUE_ERRORS = [
    ("index build {t}/idx.npz --out {t}/o.npz", "idx.npz: is an .npz archive (an index or model file?), not a feature file"),
    ("index build {t}/empty --out {t}/o.npz", "empty: feature file is empty (0 bytes)"),
    ("index build {t}/adir --out {t}/o.npz", "adir: is a folder, expected a feature file"),
    ("index build {t}/db.h5 --out {t}/afile/o.npz", "afile/o.npz: cannot write the index there: "),
    ("index build {t}/db.h5 --out {t}/adir", "adir: is a folder, expected a file name for the index"),
    ("index search {t}/db.h5 {t}/db.h5 --out {t}/s.json", "db.h5: is an HDF5 file (a feature file?), not an index file"),
    ("index search {t}/idx.npz {t}/idx.npz --out {t}/s.json", "idx.npz: is an .npz archive (an index or model file?), not a query feature file"),
    ("index search {t}/idx.npz {t}/db.h5 --out {t}/s.json --option memory_mb=-1", "idx.npz: backend 'exact' options"),
    ("index search {t}/idx.npz {t}/db.h5 --out {t}/afile/s.json", "cannot write the ranking there"),
    ("evaluate {t}/idx.npz --dataset folder --data {t}/coil", "idx.npz: is an .npz archive (an index or model file?), not a ranking file"),
    ("evaluate {t}/empty --dataset folder --data {t}/coil", "empty: ranking file is empty (0 bytes)"),
    ("evaluate {t}/partial.json --dataset folder --data {t}/coil", "partial.json: ranking file lacks the key(s)"),
    ("evaluate {t}/r.json --dataset folder --data {t}/coil --k 0", "--k must be positive, got 0"),
    ("evaluate {t}/r.json --dataset oxford --data {t}/ox --scale -1", "--scale must be a positive number"),
    ("dataset info --dataset folder --data {t}/coil --every 0", "--every must be at least 1, got 0"),
    ("dataset info --dataset folder --data {t}/coil --out {t}/afile/x.json", "cannot write the dataset summary there"),
    ("dataset check {t}/coil --n-jobs 0", "--n-jobs must be a positive number or -1"),
    ("dataset export-gldv2 --data {t}/coil --out {t}/afile", "afile: is a file, expected an output folder"),
    ("dataset export-gldv2 --data {t}/coil --out {t}/exp --query-step 0", "--query-step must be at least 2"),
    # used to train for hours, then fail writing the results
    ("run e1-e7 --data-root {t} --out {t}/afile --set landmark.enabled=false",
     "afile: is a file, expected an output folder for the results"),
]


@pytest.mark.parametrize("line, expected", VAGUE_ERRORS, ids=[f"case{i}" for i in range(len(VAGUE_ERRORS))])
def test_bad_command_lines_give_one_line_naming_the_file(bad_inputs, capsys, line, expected):
    code, _, err = _cli(capsys, "--quiet", *line.format(t=bad_inputs).split())
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("retrieval: error: "), err
    assert expected in lines[0], lines[0]


def test_training_cli_refuses_unknown_device_and_bad_out_before_any_work(bad_inputs, capsys):
    def train_main(argv):
        return main(["train", *argv])

    base = ["--quiet", "classifier", "--config", "coil-e2", "--data", str(bad_inputs / "coil")]
    for extra, expected in (
            (["--out", str(bad_inputs / "run"), "--set", "loop.device=gpu"],
             "device 'gpu' is not a torch device; use auto, cpu, cuda or cuda:N"),
            (["--out", str(bad_inputs / "afile")], "afile: is a file, expected an output folder"),
            (["--out", str(bad_inputs / "afile" / "run")], "cannot write the training run there")):
        code = train_main(base + extra)
        err = capsys.readouterr().err
        assert code == 2 and err.strip().splitlines() == [f"retrieval: error: {err.split('error: ', 1)[1].strip()}"]
        assert expected in err, err
    assert not (bad_inputs / "run").exists()


def test_training_cli_bad_set_is_one_line_and_exit_code_2(capsys, tmp_path):
    def train_main(argv):
        return main(["train", *argv])

    base = ["--quiet", "siamese", "--config", "coil-e3", "--data", str(tmp_path), "--out", str(tmp_path / "run")]
    for bad, expected in ((["--set", "loop.epochs=x"], "override loop.epochs='x': not a valid value for int"),
                          (["--set", "loop.epoch=2"], "unknown key 'epoch' of LoopConfig"),
                          (["--set", "P"], "override 'P': expected KEY=VALUE"),
                          (["--set", "loop.epochs=0"], "epochs must be >= 1")):
        assert train_main(base + bad) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("retrieval: error: "), lines
        assert expected in lines[0], lines[0]
    assert not (tmp_path / "run").exists()


def test_gldv2_protocol_refuses_a_scored_query_without_relevant_images():
    """The same rule for datasets built in Python: the metrics would leave the query out of the mean."""
    from retrieval.datasets.dataset import QueryTruth, RetrievalDataset
    from retrieval.evaluation.evaluate import evaluate
    ds = RetrievalDataset(name="toy", root=Path("."), db_ids=["a", "b"], db_paths=[Path("a"), Path("b")],
                          query_ids=["q1", "q2"], query_paths=[Path("q1"), Path("q2")],
                          ground_truth={"q1": QueryTruth({"a"}, usage="Public"), "q2": QueryTruth(set(), usage="Public")})
    with pytest.raises(ValueError, match="1 Public query has no relevant images .*'q2'"):
        evaluate(ds, {"q1": ["a", "b"], "q2": ["b", "a"]}, protocol="gldv2")
    ds.ground_truth["q2"].usage = "Ignored"
    assert evaluate(ds, {"q1": ["a", "b"], "q2": ["b", "a"]}, protocol="gldv2")["map@100"] == 1.0
