"""Fault injection on index files (issue 22): headers edited and re-signed, faiss bytes replaced, a
feature file given as an index, a full disk during ``Index.save``, and sharded / on-disk index folders
whose shards were copied over each other, whose manifest counts were edited, or whose ids file holds
a pickle under a matching checksum.

A checksum only says that a file is as it was written; these files were re-signed after the edit,
so each case is caught by checking what the file holds against what its header or manifest says.
The promise: one error naming the file and saying what to do, never numpy's, faiss' or an
IndexError, and never a silently wrong ranking.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from retrieval.core.fileio import digest, file_hash
from retrieval.indexing.index import Index, IndexFileError

faiss = pytest.importorskip("faiss")

REPO = Path(__file__).resolve().parents[1]


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _resign(path: Path, header_edit=None, arrays_edit=None) -> None:
    """Edit an index file's header and / or arrays and sign it again (a valid SHA-256 for the edit)."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    header = json.loads(str(arrays.pop("header")))
    header.pop("sha256")
    if header_edit:
        header_edit(header)
    if arrays_edit:
        arrays_edit(arrays)
    header["sha256"] = digest(arrays, header)
    with open(path, "wb") as fh:
        np.savez(fh, header=np.array(json.dumps(header)), **arrays)


# --------------------------------------------------------- item 7: header fields against the arrays

@pytest.mark.parametrize("backend", ["exact", "faiss-flat"])
def test_index_header_edited_and_resigned_is_refused_on_load(tmp_path, rng, backend, capsys):
    """Old code: loaded, then numpy's matmul ValueError (or a faiss assertion) at search time."""
    from retrieval.cli import main
    from retrieval.features.store import save_global

    path = Index(unit(rng, 50, 8), backend=backend).save(tmp_path / "i.npz")
    _resign(path, header_edit=lambda h: h.update(dim=9))
    with pytest.raises(IndexFileError, match=r"i\.npz: header says 50 vectors of dimension 9, (the file holds 50 "
                                             r"of dimension 8|its faiss index holds 50 of dimension 8); rebuild"):
        Index.load(path)
    save_global(tmp_path / "q.h5", ["q0", "q1"], unit(rng, 2, 9))
    code = main(["--quiet", "search", str(path), str(tmp_path / "q.h5"), "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and str(path) in err and "rebuild the index" in err
    # the count, and the ids' kind
    path = Index(unit(rng, 50, 8), backend=backend).save(tmp_path / "j.npz")
    _resign(path, header_edit=lambda h: h.update(count=60))
    with pytest.raises(IndexFileError, match=r"j\.npz: header says 60 vectors"):
        Index.load(path)
    path = Index(unit(rng, 50, 8), backend=backend).save(tmp_path / "k.npz")
    _resign(path, header_edit=lambda h: h.update(id_type="str"))
    with pytest.raises(IndexFileError, match=r"k\.npz: ids are int64 but the header says id_type='str'"):
        Index.load(path)


# ------------------------------------------------------------------- item 8: faiss bytes replaced

def test_garbage_faiss_bytes_under_a_valid_checksum_are_one_line_naming_the_file(tmp_path, rng):
    """Old code: faiss' C++ RuntimeError ("Error in ... read_index ...") with no file name."""
    path = Index(unit(rng, 50, 8), backend="faiss-flat").save(tmp_path / "f.npz")

    def garbage(arrays):
        n = len(arrays["faiss_index"])
        arrays["faiss_index"] = np.frombuffer((b"not an index " * n)[:n], dtype=np.uint8).copy()
    _resign(path, arrays_edit=garbage)
    with pytest.raises(IndexFileError) as caught:
        Index.load(path)
    text = str(caught.value)
    assert text.startswith(str(path)) and "faiss cannot read the index stored in it" in text
    assert "rebuild the index" in text and "\n" not in text


# ------------------------------------------------------------ item 13: a feature file as an index

def test_feature_file_given_as_an_index_is_named_for_what_it_is(tmp_path, rng):
    """Old code: 'not a readable index .npz archive ... (Cannot load file containing pickled data
    when allow_pickle=False)': numpy's reason, blaming pickles."""
    from retrieval.features.store import save_global

    save_global(tmp_path / "db.h5", ["a", "b"], unit(rng, 2, 4))
    with pytest.raises(IndexFileError) as caught:
        Index.load(tmp_path / "db.h5")
    assert str(caught.value) == f"{tmp_path / 'db.h5'}: is an HDF5 feature file, not an index .npz archive; check the path"


# ------------------------------------------------------------------- item 14: disk full in save

def test_disk_full_in_index_save_names_the_file_and_keeps_the_old_one(tmp_path, rng):
    """Old code: a bare 'OSError: [Errno 27] File too large' without the file name. Run in a child:
    the file-size limit (ulimit -f) is per process."""
    old = Index(unit(rng, 20, 8)).save(tmp_path / "i.npz").read_bytes()
    code = f"""
        import resource, numpy as np
        from retrieval.indexing.index import Index
        resource.setrlimit(resource.RLIMIT_FSIZE, ({len(old)}, {len(old)}))
        try:
            Index(np.random.default_rng(1).standard_normal((3000, 8)).astype(np.float32)).save({str(tmp_path / 'i.npz')!r})
        except OSError as exc:
            print(type(exc).__name__, exc.errno, str(exc), sep="|")
    """
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=60, env=env)
    name, errno_, message = proc.stdout.strip().split("|")
    assert name == "DiskFullError" and int(errno_) == 27, proc.stdout + proc.stderr
    assert message.startswith(str(tmp_path / "i.npz") + ": disk full or file size limit")
    assert "earlier file there is unchanged" in message and "free space" in message
    assert (tmp_path / "i.npz").read_bytes() == old
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------ sharded index folders

@pytest.fixture
def sharded(tmp_path):
    """Three equal shards (300 vectors each) indexed shard by shard, and their queries."""
    from retrieval.scale.ivf_build import build_sharded_index
    from retrieval.scale.sources import h5_shards, write_synthetic_shards

    paths, queries = write_synthetic_shards(tmp_path / "shards", n=900, dim=16, shards=3, clusters=6,
                                            queries=5, seed=3)
    out = build_sharded_index(h5_shards(paths), tmp_path / "idx", backend="faiss-ivf", nlist=4, progress=False)
    return out, queries, h5_shards(paths)


def _edit_manifest(folder: Path, edit) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_shard_replaced_by_a_copy_of_another_is_refused(sharded):
    """Old code: 900 vectors of which 600 distinct ids searched and merged without an error."""
    from retrieval.scale.ivf_build import ShardedIndex, build_sharded_index
    from retrieval.scale.ondisk import merge_on_disk

    out, queries, source = sharded
    clean = ShardedIndex.load(out).search(queries, k=5)
    shutil.copyfile(out / "shard-00000.npz", out / "shard-00001.npz")  # each file valid on its own
    for load in (lambda: ShardedIndex.load(out), lambda: ShardedIndex.load(out, resident=False).search(queries, k=5),
                 lambda: merge_on_disk(out, progress=False)):
        with pytest.raises(IndexFileError, match=r"shard-00001\.npz: holds other ids than the manifest records "
                                                 r"for this shard \(a copy of another shard\?\); rebuild"):
            load()
    # rebuilding resumes every shard but the copy, which is rebuilt from its own vectors
    build_sharded_index(source, out, backend="faiss-ivf", nlist=4, progress=False)
    np.testing.assert_array_equal(ShardedIndex.load(out).search(queries, k=5).ids, clean.ids)
    shutil.copyfile(out / "shard-00000.npz", out / "shard-00001.npz")
    # a manifest that records no digests (written before them): the repeated ids give it away
    _edit_manifest(out, lambda m: [e.pop("ids_sha256") for e in m["shards"]])
    for load in (lambda: ShardedIndex.load(out), lambda: ShardedIndex.load(out, resident=False).search(queries, k=5),
                 lambda: merge_on_disk(out, progress=False)):
        with pytest.raises(IndexFileError, match=r"idx: id '00000-0000000' occurs more than once \(in shard-00000\.npz, "
                                                 r"shard-00001\.npz\)"):
            load()


def test_manifest_shard_count_edited_is_refused_naming_the_shard(sharded):
    """Old code: 'IndexError: index 903 is out of bounds' from the search."""
    from retrieval.scale.ivf_build import ShardedIndex
    from retrieval.scale.ondisk import merge_on_disk

    out, queries, _ = sharded

    def edit(manifest):
        manifest["shards"][1]["count"] += 3
        manifest["count"] += 3  # kept consistent, so only the shard file can tell
    _edit_manifest(out, edit)
    for load in (lambda: ShardedIndex.load(out), lambda: ShardedIndex.load(out, resident=False).search(queries, k=900),
                 lambda: merge_on_disk(out, progress=False)):
        with pytest.raises(IndexFileError, match=r"shard-00001\.npz: holds 300 vectors, the manifest says 303"):
            load()
    _edit_manifest(out, lambda m: m.update(count=m["count"] + 1))
    with pytest.raises(IndexFileError, match=r"manifest\.json: its shards hold 903 vectors, its count says 904"):
        ShardedIndex.load(out)


def test_pickled_on_disk_ids_under_a_matching_checksum_are_refused_unread(sharded, tmp_path):
    """Old code: numpy's 'Object arrays cannot be loaded when allow_pickle=False', no file name."""
    from retrieval.scale.ondisk import ON_DISK_FILES, load_on_disk, merge_on_disk

    out, queries, _ = sharded
    merge_on_disk(out, progress=False)
    assert len(load_on_disk(out).search(queries, k=3).ids) == 5
    marker = tmp_path / "PWNED"
    payload = np.empty(900, dtype=object)
    payload[:] = [f"id{i}" for i in range(900)]
    payload[0] = _Payload(marker)
    ids_path = out / ON_DISK_FILES["ids"]
    np.save(ids_path, payload, allow_pickle=True)

    def resign(manifest):
        record = manifest["on_disk"]["files"]["ids"]
        record.update(bytes=ids_path.stat().st_size, sha256=file_hash(ids_path).hexdigest())
    _edit_manifest(out, resign)
    with pytest.raises(IndexFileError) as caught:
        load_on_disk(out)
    assert str(caught.value).startswith(str(ids_path) + ": holds pickled Python objects")
    assert "rebuild the index" in str(caught.value)
    assert not marker.exists()


class _Payload:
    """Unpickling this creates the marker file: proof that a pickle ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))
