"""Fault injection on extraction, feature stores and training checkpoints.

Each test breaks something on purpose (a full disk through RLIMIT_FSIZE, SIGKILL and SIGINT at set
points, a second process on the same file, flipped bits, truncation, pickle payloads) and asserts the
promise: a clear one-line error naming the file, the finished work intact, and a resumed run equal to
a clean one. Faults that kill or limit a process run in a child process (``sys.executable``).
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from retrieval.features.extract import extract_local_features
from retrieval.features.sift import SiftExtractor
from retrieval.features.store import (FeatureFileError, GlobalFeatureWriter, LocalFeatureStore, load_global,
                                      save_global)
from retrieval.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
SIFT = "rootsift-small"


def run_child(code: str, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (this checkout first on the path); ``sys.argv[1:]`` are
    ``args``. A child that ends with KeyboardInterrupt exits 130, as the ``retrieval`` CLI does."""
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               OMP_NUM_THREADS="1")
    wrapped = "import sys\ntry:\n" + textwrap.indent(textwrap.dedent(code), "    ") + \
              "\nexcept KeyboardInterrupt:\n    print('interrupted', file=sys.stderr)\n    sys.exit(130)\n"
    return subprocess.run([sys.executable, "-c", wrapped, *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def coil(coil20_dir):
    """12 real COIL-20 images (128 x 128 gray): ids and paths."""
    paths = [coil20_dir / "images" / f"obj{o}__{a}.png" for o in (1, 2, 3) for a in (0, 9, 18, 27)]
    return [p.stem for p in paths], paths


@pytest.fixture(scope="module")
def clean_store(coil, tmp_path_factory):
    """The store an uninterrupted run writes: what every faulty run must end up equal to."""
    ids, paths = coil
    path = tmp_path_factory.mktemp("clean") / "clean.h5"
    extract_local_features(ids, paths, SiftExtractor(SIFT), path, n_jobs=2, progress=False)
    return path


def assert_same_store(path, reference, ids):
    with LocalFeatureStore(path) as got, LocalFeatureStore(reference) as want:
        assert set(got.ids()) == set(ids) and got.config == want.config
        for image_id in ids:
            a, b = got.get(image_id), want.get(image_id)
            np.testing.assert_array_equal(a.keypoints, b.keypoints)
            np.testing.assert_array_equal(a.descriptors, b.descriptors)


def finished_entries(path):
    """Ids of the complete entries, each read back (checksum verified)."""
    with LocalFeatureStore(path) as store:
        ids = list(store.ids())
        for image_id in ids:
            store.get(image_id)
    return ids


EXTRACT_CHILD = """
import os, resource, signal
import numpy as np
from retrieval.features.extract import extract_local_features
from retrieval.features.sift import SiftExtractor
from retrieval.features.store import FeatureFileError
store, limit, fault_at, fault, images = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5:]

class Faulty(SiftExtractor):
    calls = 0
    def extract_path(self, path, box=None):
        Faulty.calls += 1
        if Faulty.calls == fault_at:
            os.kill(os.getpid(), getattr(signal, fault))
            # keep this worker inside OpenCV while the main thread handles the signal
            SiftExtractor("rootsift-1k").extract(np.random.default_rng(0).integers(0, 256, (1200, 1200), np.uint8))
        return super().extract_path(path, box=box)

if limit:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # errno 27 (EFBIG) instead of a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
ids = [os.path.basename(p)[:-4] for p in images]
try:
    result = extract_local_features(ids, images, Faulty("%s"), store, n_jobs=2, batch_size=2, progress=False)
except FeatureFileError as exc:
    print(f"retrieval: error: {exc}", file=sys.stderr)
    sys.exit(2)
print("computed", result.computed)
""" % SIFT


def test_disk_full_during_sift_extraction_keeps_every_finished_entry(coil, clean_store, tmp_path):
    """Serious #1: with RLIMIT_FSIZE below what the store needs, extraction stops with one line naming
    the file (it used to abort: "FATAL: exception not rethrown", or leave an unreadable .h5); every
    finished entry reads back; a rerun without the limit resumes to the clean result."""
    ids, paths = coil
    store = tmp_path / "feats.h5"
    limit = clean_store.stat().st_size // 2
    child = run_child(EXTRACT_CHILD, store, limit, 0, "SIGINT", *paths)
    assert child.returncode == 2, child.stderr
    message = child.stderr.strip().splitlines()[-1]
    assert str(store) in message and "file-size limit" in message and "intact" in message
    kept = finished_entries(store)
    assert 0 < len(kept) < len(ids)
    again = extract_local_features(ids, paths, SiftExtractor(SIFT), store, n_jobs=2, progress=False)
    assert again.skipped == len(kept) and again.computed == len(ids) - len(kept)
    assert_same_store(store, clean_store, ids)


def test_disk_full_before_the_first_entry_leaves_a_valid_store(coil, tmp_path):
    ids, paths = coil
    store = tmp_path / "tiny.h5"
    child = run_child(EXTRACT_CHILD, store, 4096, 0, "SIGINT", *paths[:2])
    assert child.returncode == 2 and str(store) in child.stderr, child.stderr
    assert not store.exists() or finished_entries(store) == []


@pytest.mark.parametrize("fault, code", [("SIGINT", 130), ("SIGKILL", -signal.SIGKILL)])
def test_signal_during_sift_extraction_then_resume(coil, clean_store, tmp_path, fault, code):
    """Serious #2: Ctrl-C in the middle of threaded SIFT extraction exits 130 (it aborted with 134:
    OpenCV worker threads were still running at exit); SIGKILL keeps every flushed entry; both
    resume to exactly the clean result."""
    ids, paths = coil
    store = tmp_path / "feats.h5"
    child = run_child(EXTRACT_CHILD, store, 0, 7, fault, *paths)
    assert child.returncode == code, child.stderr
    assert "FATAL" not in child.stderr
    kept = finished_entries(store)
    assert len(kept) < len(ids)
    again = extract_local_features(ids, paths, SiftExtractor(SIFT), store, n_jobs=2, progress=False)
    assert again.computed == len(ids) - len(kept)
    assert_same_store(store, clean_store, ids)


def test_caught_extraction_error_then_normal_exit(coil, tmp_path):
    """Serious #2: a caller that catches ExtractionError exits normally (it used to get SIGABRT at
    exit), after the workers stopped."""
    ids, paths = coil
    bad = tmp_path / "broken.png"
    bad.write_bytes(paths[0].read_bytes()[:200])
    code = """
    import threading
    from retrieval.features.extract import ExtractionError, extract_local_features
    from retrieval.features.sift import SiftExtractor
    images = sys.argv[2:]
    try:
        extract_local_features([str(i) for i in range(len(images))], images, SiftExtractor("%s"),
                               sys.argv[1], n_jobs=2, batch_size=2, progress=False)
    except ExtractionError as exc:
        print("caught", exc)
    print("workers left:", sum(t.name.startswith("extract") for t in threading.enumerate()))
    """ % SIFT
    child = run_child(code, tmp_path / "s.h5", *paths[:3], bad, *paths[3:])
    assert child.returncode == 0, child.stderr
    assert "caught" in child.stdout and "broken.png" in child.stdout and "workers left: 0" in child.stdout


def test_two_writers_and_a_reader_are_told_the_file_is_in_use(coil, tmp_path):
    """Serious #6: while one process writes a store, a second writer, a reader and an overwrite are
    refused with "in use by another process" (not "damaged... delete it", which once deleted a
    store a running extraction was filling); the writer's work is intact afterwards."""
    ids, paths = coil
    store = tmp_path / "feats.h5"
    code = """
    from retrieval.features.extract import extract_local_features
    from retrieval.features.sift import SiftExtractor
    from retrieval.features.store import FeatureFileError, LocalFeatureStore, load_global
    store, image = sys.argv[1], sys.argv[2]
    attempts = {
        "writer": lambda: extract_local_features(["x"], [image], SiftExtractor("%s"), store, progress=False),
        "reader": lambda: LocalFeatureStore(store),
        "overwrite": lambda: LocalFeatureStore(store, "a", overwrite=True),
    }
    for name, attempt in attempts.items():
        try:
            attempt()
            print(name, "opened")
        except FeatureFileError as exc:
            print(name, exc)
    """ % SIFT
    with LocalFeatureStore(store, "a", config=SiftExtractor(SIFT).config) as writer:
        writer.put(ids[0], SiftExtractor(SIFT).extract_path(paths[0]))
        writer.flush()
        child = run_child(code, store, paths[1])
        writer.put(ids[1], SiftExtractor(SIFT).extract_path(paths[1]))
    assert child.returncode == 0, child.stderr
    lines = child.stdout.strip().splitlines()
    assert len(lines) == 3
    for line in lines:
        assert str(store) in line and "in use by another process" in line and "delete" not in line
    assert store.is_file() and sorted(finished_entries(store)) == sorted(ids[:2])


def test_a_file_of_another_kind_is_named_for_what_it_is(tmp_path):
    """Serious #6: an index (or any other file) passed where a feature file belongs is named, and
    nobody is told to delete it; a damaged HDF5 feature file is still called damaged."""
    from retrieval.indexing.index import Index

    index_path = tmp_path / "db.index"
    Index(np.eye(4, dtype=np.float32), ids=list("abcd")).save(index_path)
    before = index_path.read_bytes()
    for attempt in (lambda: load_global(index_path), lambda: LocalFeatureStore(index_path),
                    lambda: LocalFeatureStore(index_path, "a"), lambda: GlobalFeatureWriter(index_path, 4)):
        with pytest.raises(FeatureFileError) as info:
            attempt()
        assert "hybrid-retrieval/index .npz archive" in str(info.value) and "delete" not in str(info.value)
    assert index_path.read_bytes() == before
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(FeatureFileError, match="is a text file, not a global-feature file"):
        load_global(text)
    damaged = tmp_path / "damaged.h5"
    save_global(damaged, ["a", "b"], np.ones((2, 3)))
    damaged.write_bytes(damaged.read_bytes()[:1000])
    with pytest.raises(FeatureFileError, match="damaged HDF5 file"):
        load_global(damaged)


def _flip_bit(path: Path, offset: int, bit: int = 3) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ (1 << bit)]))


def test_bit_flip_in_a_local_store_names_the_entry(coil, clean_store, tmp_path):
    """Serious #10: one flipped bit in an entry's descriptors is a clear error naming the file and the
    entry (it loaded silently); the other entries still read; removing the entry lets a rerun
    recompute it."""
    ids, paths = coil
    store = tmp_path / "feats.h5"
    store.write_bytes(clean_store.read_bytes())
    with h5py.File(store, "r") as f:
        key = sorted(f["images"])[4]
        offset = f["images"][key]["descriptors"].id.get_offset()
    victim = [i for i in ids if i == key][0]
    _flip_bit(store, offset + 101)
    with LocalFeatureStore(store) as s:
        with pytest.raises(FeatureFileError, match=f"{store}.*entry '{victim}' fails its checksum"):
            s.get(victim)
        assert s.verify() == [victim]
        s.get(ids[0] if ids[0] != victim else ids[1])
    with LocalFeatureStore(store, "a") as s:
        s.remove(victim)
    again = extract_local_features(ids, paths, SiftExtractor(SIFT), store, progress=False)
    assert again.computed == 1
    assert_same_store(store, clean_store, ids)


def test_bit_flips_in_global_files_and_headers(tmp_path):
    """Serious #10: a flipped bit in one row of a global feature file (written at once or appended)
    names the row and its id; a changed configuration header is refused."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((40, 16)).astype(np.float32)
    ids = [f"img/{k}" for k in range(40)]
    whole, appended = tmp_path / "whole.h5", tmp_path / "appended.h5"
    save_global(whole, ids, vectors, {"name": "x"})
    with GlobalFeatureWriter(appended, 16, {"name": "x"}) as writer:
        writer.append(ids[:25], vectors[:25])
        writer.append(ids[25:], vectors[25:])
    for path in (whole, appended):
        got_ids, got, _ = load_global(path)
        assert got_ids == ids and np.array_equal(got, vectors)
        with h5py.File(path, "r") as f:
            offset = f["vectors"].id.get_offset() if f["vectors"].chunks is None else \
                f["vectors"].id.get_chunk_info(0).byte_offset
        _flip_bit(path, offset + 17 * 16 * 4 + 2, bit=6)  # row 17
        with pytest.raises(FeatureFileError, match=rf"{path.name}: 1 row\(s\) fail their checksum, first row 17 "
                                                  r"\(image id 'img/17'\)"):
            load_global(path)
        assert not np.array_equal(load_global(path, verify=False)[1][17], vectors[17])
    with h5py.File(whole, "a") as f:
        f.attrs["config"] = json.dumps({"name": "y"})
    with pytest.raises(FeatureFileError, match="header.*fails its checksum"):
        load_global(whole)


def test_truncated_stores_are_refused_with_the_file_named(clean_store, tmp_path):
    for name, size in (("half.h5", clean_store.stat().st_size // 2), ("empty.h5", 0)):
        path = tmp_path / name
        path.write_bytes(clean_store.read_bytes()[:size])
        with pytest.raises(FeatureFileError, match=str(path)):
            LocalFeatureStore(path).get("obj1__0")


def test_dimension_mismatch_on_resume_is_one_clear_line(tmp_path):
    """Lesser: it raised KeyError (the message was built after the file was closed)."""
    path = tmp_path / "g.h5"
    with GlobalFeatureWriter(path, 8) as writer:
        writer.append(["a"], np.ones((1, 8)))
    with pytest.raises(FeatureFileError, match=r"g.h5: holds 8-d vectors, not 16-d"):
        GlobalFeatureWriter(path, 16)
    assert load_global(path)[0] == ["a"]


# ---------------------------------------------------------------------------------------------
# deep extraction
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def deep_extractor():
    from retrieval.features.efficientnet import EfficientNetExtractor

    torch.set_num_threads(1)
    return EfficientNetExtractor("lite0-gem-512", backend="folded", size=64, batch_size=4)


def test_ctrl_c_in_the_forward_pass_keeps_every_computed_row(deep_extractor, coil, tmp_path, monkeypatch):
    """Serious #7: a KeyboardInterrupt inside the network's forward pass propagates as such (the final
    write raised "expected (12, 1280) vectors, got (8, 1280)" and hid it), every batch computed
    before it is in the file, and a rerun completes it to the clean result."""
    from retrieval.features.deep_extract import extract_global

    ids, paths = coil
    clean = tmp_path / "clean.h5"
    extract_global(deep_extractor, ids, paths, clean, n_jobs=2, write_every=100, progress=False)
    calls = {"n": 0}
    forward = deep_extractor.describe_inputs

    def interrupted_forward(inputs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return forward(inputs)

    monkeypatch.setattr(deep_extractor, "describe_inputs", interrupted_forward)
    out = tmp_path / "global.h5"
    with pytest.raises(KeyboardInterrupt):
        extract_global(deep_extractor, ids, paths, out, n_jobs=2, write_every=100, progress=False)
    assert len(load_global(out)[0]) == 8  # two batches of 4
    monkeypatch.undo()
    result = extract_global(deep_extractor, ids, paths, out, n_jobs=2, progress=False)
    assert result.skipped == 8 and result.computed == 4
    got_ids, got, _ = load_global(out)
    want_ids, want, _ = load_global(clean)
    order = [got_ids.index(i) for i in want_ids]
    np.testing.assert_allclose(got[order], want, atol=1e-5)


def test_disk_full_during_deep_extraction_keeps_written_rows(coil, tmp_path):
    """Serious #1: EfficientNet extraction on a full disk (it segfaulted) stops with one line naming
    the file and keeps every row written before."""
    ids, paths = coil
    out = tmp_path / "global.h5"
    code = """
    import resource, signal, torch
    from retrieval.features.deep_extract import extract_global
    from retrieval.features.efficientnet import EfficientNetExtractor
    from retrieval.features.store import FeatureFileError
    torch.set_num_threads(1)
    ex = EfficientNetExtractor("lite0-gem-512", backend="folded", size=64, batch_size=2)
    images = sys.argv[2:]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (700_000, resource.RLIM_INFINITY))
    try:
        extract_global(ex, [f"i{k}" for k in range(len(images))], images, sys.argv[1], write_every=2,
                       progress=False)
    except FeatureFileError as exc:
        print(f"retrieval: error: {exc}", file=sys.stderr)
        sys.exit(2)
    """
    child = run_child(code, out, *paths, timeout=300)
    assert child.returncode == 2, child.stderr
    assert str(out) in child.stderr and "file-size limit" in child.stderr
    kept, vectors, _ = load_global(out)
    assert 0 < len(kept) < len(ids) and np.isfinite(vectors).all()


# ---------------------------------------------------------------------------------------------
# training checkpoints
# ---------------------------------------------------------------------------------------------

TOY_TRAINING = """
def train_toy(out_dir, step_hook=None):
    import torch
    from retrieval.training.loop import LoopConfig, run_training
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 2)
    X, Y = torch.randn(32, 6), torch.randn(32, 2)

    class Sampler:
        def batches(self, epoch):
            g = torch.Generator().manual_seed(epoch)
            return [b.numpy() for b in torch.randperm(32, generator=g).split(8)]

    def step(batch, ctx):
        if step_hook is not None:
            step_hook()
        x, y = batch
        return ((model(x) - y) ** 2).mean()

    cfg = LoopConfig(epochs=3, lr=0.05, optimizer="sgd", device="cpu", checkpoint_every=1, prefetch=0)
    run_training({"model": model}, [{"params": list(model.parameters())}], Sampler(),
                 lambda b: (X[b], Y[b]), step, cfg, out_dir, run_config={"toy": 1}, progress=False)
    return model
"""
exec(TOY_TRAINING)  # defines train_toy here; children run the same text

TRAIN_CHILD = TOY_TRAINING + """
import os, signal
import retrieval.training.checkpoint as checkpoint
out_dir, fault, fault_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
saves, steps = {"n": 0}, {"n": 0}
write = checkpoint.atomic_write_bytes

def write_then_die(path, data):  # a kill right after last.pt is replaced, before its sidecar
    write(path, data)
    saves["n"] += 1
    if fault == "between" and saves["n"] == fault_at:
        os.kill(os.getpid(), signal.SIGKILL)

def step_hook():
    steps["n"] += 1
    if fault == "SIGKILL" and steps["n"] == fault_at:
        os.kill(os.getpid(), signal.SIGKILL)

checkpoint.atomic_write_bytes = write_then_die
train_toy(out_dir, step_hook)
"""


@pytest.fixture(scope="module")
def clean_training(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean-train")
    return train_toy(out).state_dict()  # noqa: F821 (defined by exec above)


@pytest.mark.parametrize("fault, at", [("between", 5), ("SIGKILL", 9), ("Ctrl-C", 6)])
def test_killed_training_resumes_to_the_clean_result(clean_training, tmp_path, fault, at):
    """Serious #5 ("between": SIGKILL after last.pt is replaced, before its sidecar; resume used to be
    refused for ever), SIGKILL mid-step (child processes) and Ctrl-C mid-step: the rerun resumes and
    ends with exactly the weights of an uninterrupted run."""
    if fault == "Ctrl-C":
        steps = iter(range(1, 100))

        def interrupt():
            if next(steps) == at:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            train_toy(tmp_path, interrupt)  # noqa: F821
    else:
        child = run_child(TRAIN_CHILD, tmp_path, fault, at)
        assert child.returncode == -signal.SIGKILL, child.stderr
    assert load_checkpoint(tmp_path / "last.pt")["state"]["global_step"] < 12  # the run was cut short
    weights = train_toy(tmp_path).state_dict()  # noqa: F821 (resumes)
    for name, value in clean_training.items():
        assert torch.equal(weights[name], value), name
    assert not (tmp_path / "last.json.pending").exists()


def test_checkpoint_bit_flip_truncation_and_empty_file(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", {"w": torch.arange(50.0)}, {"a": 1}, kind="unit")
    good = path.read_bytes()
    _flip_bit(path, len(good) // 2)
    with pytest.raises(CheckpointError, match="last.pt.*SHA-256"):
        load_checkpoint(path)
    path.write_bytes(good[: len(good) // 3])
    with pytest.raises(CheckpointError, match="last.pt.*truncated"):
        load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"last.pt: is empty \(0 bytes\) and does not match the SHA-256"):
        load_checkpoint(path)
    path.with_suffix(".json").unlink()  # no sidecar: the empty file itself is refused (was IndexError)
    with pytest.raises(CheckpointError, match=r"last.pt: is empty \(0 bytes\)"):
        load_checkpoint(path)


class _Payload:
    """Unpickling this creates a marker file: proof that pickled code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickle_payload_in_a_checkpoint_never_runs(tmp_path):
    """A checkpoint whose state carries a pickled callable, with a sidecar digest that matches (an
    attacker can rewrite both), is refused by torch.load(weights_only=True); the payload never runs."""
    import hashlib

    marker = tmp_path / "pwned"
    path = save_checkpoint(tmp_path / "last.pt", {"w": torch.ones(3)}, {"a": 1}, kind="unit")
    torch.save({"format": "hybrid-retrieval-checkpoint", "version": 1, "kind": "unit", "config_json": "{}",
                "state": {"w": _Payload(marker)}}, path)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    sidecar["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_suffix(".json").write_text(json.dumps(sidecar))
    with pytest.raises(CheckpointError, match="last.pt.*weights-only"):
        load_checkpoint(path)
    assert not marker.exists()
