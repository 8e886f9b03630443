"""retrieval.core.fileio: atomic writes, .npz reading without pickle, JSON header checks, digests."""
import hashlib
import json

import numpy as np
import pytest

from retrieval.features.store import FeatureFileError
from retrieval.core.fileio import (FileFormatError, atomic_write, atomic_write_bytes, atomic_write_text,
                              check_header, digest, pop_header, read_json, read_npz, save_npz)
from retrieval.core.imageio import ImageLoadError
from retrieval.indexing.index import IndexFileError
from retrieval.training.checkpoint import CheckpointError


def test_error_classes_share_the_base():
    for cls in (IndexFileError, FeatureFileError, CheckpointError, ImageLoadError):
        err = cls("some/file.npz", "broken")
        assert isinstance(err, FileFormatError) and isinstance(err, ValueError)
        assert str(err) == "some/file.npz: broken" and err.path == "some/file.npz" and err.reason == "broken"


def test_atomic_write_replaces_content_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "out.bin"
    atomic_write_bytes(path, b"first")
    atomic_write_text(path, "second")
    assert path.read_text() == "second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.bin"]

    def failing(fh):
        fh.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, failing)
    assert path.read_text() == "second"  # the old content survives a failed write
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.bin"]


def test_save_npz_round_trip(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "ids": np.array(["x", "yy"])}
    path = save_npz(tmp_path / "f.npz", arrays, {"format": "t", "version": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npz"]
    loaded = read_npz(path)
    assert pop_header(path, loaded) == {"format": "t", "version": 1}
    np.testing.assert_array_equal(loaded["a"], arrays["a"])
    assert loaded["ids"].tolist() == ["x", "yy"]
    with pytest.raises(ValueError, match="reserved"):
        save_npz(tmp_path / "g.npz", {"header": np.zeros(1)}, {"format": "t"})


def test_read_npz_refuses_missing_truncated_and_foreign_files(tmp_path):
    path = save_npz(tmp_path / "ok.npz", {"x": np.arange(1000)})
    raw = path.read_bytes()
    cases = {"missing.npz": None, "truncated.npz": raw[: len(raw) // 2], "empty.npz": b"",
             "junk.npz": b"not a zip file at all"}
    for name, data in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
        with pytest.raises(FileFormatError) as info:
            read_npz(tmp_path / name, "thing")
        assert info.value.path == str(tmp_path / name) and name in str(info.value)
    np.save(tmp_path / "single.npy", np.arange(3))
    with pytest.raises(FileFormatError, match="single.npy.*not an .npz archive"):
        read_npz(tmp_path / "single.npy")
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(FileFormatError, match="pickled.npy"):
        read_npz(tmp_path / "pickled.npy")
    with pytest.raises(IndexFileError, match="missing.npz: index file not found"):
        read_npz(tmp_path / "missing.npz", "index", error=IndexFileError)


def test_headers_of_other_kinds_or_versions_are_refused(tmp_path):
    path = tmp_path / "h.json"
    header = {"format": "demo", "version": 1}
    assert check_header(path, header, "demo", 1) is header
    with pytest.raises(FileFormatError, match=r"h\.json: not a demo file \(format='other'\)"):
        check_header(path, {"format": "other", "version": 1}, "demo", 1)
    with pytest.raises(FileFormatError, match=r"h\.json: format version 3 is newer than this code reads \(version 1\)"):
        check_header(path, {"format": "demo", "version": 3}, "demo", 1)
    with pytest.raises(FileFormatError, match="format version 0, this code reads version 1; rebuild"):
        check_header(path, {"format": "demo", "version": 0}, "demo", 1, hint="rebuild")
    check_header(path, {"format": "demo", "version": 0}, "demo", 1, older_ok=True)
    with pytest.raises(FileFormatError, match="not a 'codebook' file"):
        check_header(path, {"kind": "vlad", "version": 1}, "codebook", 1, kind_key="kind", label="'codebook'")
    with pytest.raises(FileFormatError, match="not a demo file"):
        check_header(path, ["not", "a", "dict"], "demo", 1)


def test_read_json_names_the_file(tmp_path):
    path = tmp_path / "r.json"
    with pytest.raises(FileFormatError, match="r.json: ranking file not found"):
        read_json(path, "ranking")
    path.write_text(json.dumps({"format": "demo", "version": 1})[:10])
    with pytest.raises(FileFormatError, match="r.json: ranking file is not valid JSON, truncated or corrupt"):
        read_json(path, "ranking")
    path.write_text("[1, 2]")
    with pytest.raises(FileFormatError, match="not a JSON object"):
        read_json(path)


def test_digest_changes_with_one_byte_and_keeps_each_definition():
    arrays = {"v": np.arange(12, dtype=np.float32).reshape(3, 4), "ids": np.array(["a", "b", "c"])}
    header = {"format": "demo", "count": 3}
    base = digest(arrays, header)
    assert len(base) == 64 and base == digest(dict(reversed(list(arrays.items()))), dict(header))
    changed = arrays["v"].copy()
    changed.reshape(-1).view(np.uint8)[17] ^= 1  # one bit of one byte
    assert digest(dict(arrays, v=changed), header) != base
    assert digest(arrays, dict(header, count=4)) != base
    assert digest(arrays, header, separator="") != base
    # the separator-free, header-free definition (shortlist caches) is the plain concatenation
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = arrays[name]
        h.update(name.encode() + a.dtype.str.encode() + str(a.shape).encode() + a.tobytes())
    assert digest(arrays, separator="") == h.hexdigest()


def test_file_errors_survive_pickling_for_worker_processes():
    """loky / Ray workers hand exceptions back pickled: every file error must round-trip (the
    two-argument constructor made them unpicklable)."""
    import pickle

    from retrieval.features.extract import ExtractionError
    from retrieval.features.store import FeatureDiskFullError
    from retrieval.core.fileio import DiskFullError

    for err in (FileFormatError("f.bin", "broken"), FeatureFileError("f.h5", "damaged"),
                CheckpointError("last.pt", "empty"), ImageLoadError("a.png", "truncated"),
                FeatureDiskFullError("f.h5", "disk full", 27), ExtractionError("id", "a.png", "truncated")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)
    full = pickle.loads(pickle.dumps(DiskFullError("f.h5", "disk full", 28)))
    assert isinstance(full, OSError) and isinstance(full, ValueError) and full.errno == 28
    assert str(full) == "f.h5: disk full"


def test_describe_file_names_what_a_file_is(tmp_path):
    from retrieval.core.fileio import describe_file

    cases = {"empty": (b"", "an empty file (0 bytes)"), "t.txt": (b"hello", "a text file"),
             "j.json": (b'{"a": 1}', "JSON text"), "p.png": (b"\x89PNG\r\n\x1a\n....", "a PNG image"),
             "b.bin": (bytes(range(200, 256)), "a file of unknown kind")}
    for name, (data, want) in cases.items():
        (tmp_path / name).write_bytes(data)
        assert describe_file(tmp_path / name).startswith(want)
    save_npz(tmp_path / "m.npz", {"x": np.zeros(2)}, header={"format": "hybrid-retrieval/index"})
    assert describe_file(tmp_path / "m.npz") == "a hybrid-retrieval/index .npz archive"
    assert describe_file(tmp_path / "missing").startswith("an unreadable file")
