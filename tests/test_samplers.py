"""Batch samplers: P distinct classes x K images, determinism per (seed, epoch), small classes."""
import numpy as np
import pytest

from retrieval.training.samplers import PKSampler, RandomBatchSampler, encode_labels


def _labels(sizes):
    return [f"c{c}" for c, n in enumerate(sizes) for _ in range(n)]


def test_pk_batches_have_p_distinct_classes_with_k_each():
    labels = _labels([10, 9, 8, 7, 12, 5, 6, 11])
    codes, _ = encode_labels(labels)
    sampler = PKSampler(labels, P=4, K=3, seed=1)
    batches = sampler.batches(0)
    assert len(batches) > 0 and len(sampler) == len(batches)
    for b in batches:
        assert len(b) == 12
        groups = codes[b].reshape(4, 3)
        assert (groups == groups[:, :1]).all()            # each block of K shares a class
        assert len(set(groups[:, 0].tolist())) == 4        # P distinct classes
        assert len(set(b.tolist())) == 12                  # no image twice (classes have >= K images)
    # an epoch sees nearly every image (only chunks of the last < P classes are left over)
    seen = np.unique(np.concatenate(batches))
    assert len(seen) >= 0.8 * len(labels)


def test_pk_deterministic_per_seed_and_epoch():
    labels = _labels([8] * 10)
    a, b = PKSampler(labels, 4, 2, seed=3), PKSampler(labels, 4, 2, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a.batches(2), b.batches(2)))
    assert not all(np.array_equal(x, y) for x, y in zip(a.batches(0), a.batches(1)))
    assert not all(np.array_equal(x, y) for x, y in zip(a.batches(0), PKSampler(labels, 4, 2, seed=4).batches(0)))


def test_pk_small_classes_replace_or_skip():
    labels = _labels([6, 6, 2, 1, 6])
    codes, classes = encode_labels(labels)
    replace = PKSampler(labels, P=2, K=4, seed=0, small_classes="replace")
    seen_classes = {int(codes[i]) for b in replace.batches(0) for i in b}
    for e in range(5):
        seen_classes |= {int(codes[i]) for b in replace.batches(e) for i in b}
    assert {2, 3} <= seen_classes                         # small classes used, with repeats
    skip = PKSampler(labels, P=2, K=4, seed=0, small_classes="skip")
    assert skip.skipped_classes == 2
    for e in range(5):
        for b in skip.batches(e):
            assert not ({2, 3} & {int(codes[i]) for i in b})
    with pytest.raises(ValueError, match="at least P=3"):
        PKSampler(_labels([6, 6, 2]), P=3, K=4, small_classes="skip")
    with pytest.raises(ValueError, match="small_classes"):
        PKSampler(labels, 2, 2, small_classes="drop")


def test_random_batch_sampler():
    s = RandomBatchSampler(10, 4, seed=0)
    batches = s.batches(0)
    assert len(batches) == len(s) == 2 and all(len(b) == 4 for b in batches)
    assert len(set(np.concatenate(batches).tolist())) == 8
    keep = RandomBatchSampler(10, 4, seed=0, drop_last=False)
    assert sorted(np.concatenate(keep.batches(1)).tolist()) == list(range(10))
    assert np.array_equal(s.batches(1)[0], RandomBatchSampler(10, 4, seed=0).batches(1)[0])
    with pytest.raises(ValueError, match="empty"):
        RandomBatchSampler(0, 4)
